"""The MusicLM-style baseline (melody/baselines): codec, acoustic LMs, windows, passes, seeds, checkpoints, training."""

import json
import math
from fractions import Fraction

import pytest
import torch
from test_shards import make_corpus

from melody.baselines.codec import CodecConfig, LatentCodec, decode_audio, encode_audio
from melody.baselines.musiclm import (CoarseLM, FineLM, MusicLMStyle, flatten_codes, parameter_count, preset,
                                      sample_acoustic, semantic_span)
from melody.bundled import BUNDLE
from melody.config import preset as melody_preset
from melody.errors import MelodyError
from melody.semantic.lm import lm_loss
from melody.vae import VAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["codec.codebook_size=16", "coarse.dim=32", "coarse.depth=2", "coarse.heads=2", "fine.dim=32", "fine.depth=2",
         "fine.heads=2"]


def small_config(*more):
    return preset("tiny", [*SMALL, *more])


@pytest.fixture(scope="module")
def melody():
    from melody.pipeline import MeLoDy

    return MeLoDy.from_pretrained(BUNDLE)


@pytest.fixture(scope="module")
def baseline(melody):
    return MusicLMStyle.random(small_config(), melody, seed=0)


def lms(**sizes):
    torch.manual_seed(0)
    cfg = small_config(*(f"{k}={v}" for k, v in sizes.items()))
    tiny = melody_preset("tiny")
    return cfg, CoarseLM.from_config(cfg, tiny).eval(), FineLM.from_config(cfg).eval()


# --- codec -----------------------------------------------------------------------------------------


def test_codec_is_50hz_by_12_levels_and_decodes_to_the_input_length():
    vae = VAE(melody_preset("tiny").vae).eval()
    codec = LatentCodec(CodecConfig(codebook_size=16), vae.cfg.latent_dim, vae.latent_rate)
    assert (codec.p, codec.q, codec.frame_dim) == (5, 2, 40)  # 5 latent frames of 125 Hz ↔ 2 codec frames of 50 Hz
    audio = torch.randn(2, 1, 48_000) * 0.1  # 2 s
    codec.fit(torch.randn(1, 250, 16), seed=0)
    codes = encode_audio(vae, codec, audio)
    assert codes.shape == (2, 100, 12) and codes.dtype == torch.long and 0 <= int(codes.min()) <= int(codes.max()) < 16
    assert decode_audio(vae, codec, codes, 48_000).shape == (2, 1, 48_000)
    odd = decode_audio(vae, codec, codes[:, :51], 24_480)  # 1.02 s: ⌈50·T⌉ = 51 frames, padded to whole groups
    assert odd.shape == (2, 1, 24_480) and odd.abs().max() <= 1
    coarse_only = codec.decode(codes[..., :4], 250)  # the first levels decode alone
    assert coarse_only.shape == (2, 250, 16)


def test_grouping_is_lossless_and_interpolation_is_not():
    z = torch.randn(3, 125, 16)
    group = LatentCodec(CodecConfig(codebook_size=8), 16, 125.0)
    assert torch.equal(group.from_frames(group.to_frames(z), 125), z)
    interpolate = LatentCodec(CodecConfig(codebook_size=8, mapping="interpolate"), 16, 125.0)
    assert interpolate.to_frames(z).shape == (3, 50, 16)
    assert (interpolate.from_frames(interpolate.to_frames(z), 125) - z).abs().mean() > 0.1
    with pytest.raises(MelodyError, match="codec.mapping"):
        LatentCodec(CodecConfig(mapping="nearest"), 16, 125.0)


def test_more_levels_quantise_better():
    torch.manual_seed(0)
    z = torch.randn(4, 500, 16)
    codec = LatentCodec(CodecConfig(codebook_size=32, kmeans_iters=20), 16, 125.0)
    codec.fit(z, seed=0)
    errors = [float((codec.decode(codec.encode(z, k), 500) - z).pow(2).mean()) for k in (1, 4, 12)]
    assert errors[0] > errors[1] > errors[2]


# --- acoustic LMs ----------------------------------------------------------------------------------


def test_cached_decoding_scores_what_one_full_pass_scores():
    _, coarse, fine = lms()
    mulan, semantic = torch.randint(0, 128, (2, 12)), torch.randint(0, 256, (2, 5))
    tokens = torch.randint(0, 16, (2, 40))
    full = coarse(tokens, mulan, semantic)
    cache = coarse.new_cache()
    first = coarse(tokens[:, :7], mulan, semantic, cache=cache)
    logits = [first.logits] + [coarse(tokens[:, i:i + 1], cache=cache).logits for i in range(7, 40)]
    torch.testing.assert_close(torch.cat(logits, 1), full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.next_logits, full.next_logits, atol=1e-5, rtol=1e-5)
    coarse_codes = torch.randint(0, 16, (2, 5, 4))
    assert fine(torch.randint(0, 16, (2, 16)), coarse_codes).logits.shape == (2, 16, 16)


def naive_sample(lm, condition, frames, window, stride):
    """Greedy decoding recomputed from scratch for every token by the window rule (no cache)."""
    levels, tokens = lm.levels, []
    for i in range(frames * levels):
        frame = i // levels
        first = 0 if frame < window else ((frame - window) // stride + 1) * stride  # the window that makes token i
        context = torch.tensor(tokens[first * levels:], dtype=torch.long)[None]
        logits = lm(context, *condition(first, min(window, frames - first))).next_logits
        tokens.append(int(logits.argmax(-1)))
    return torch.tensor(tokens).view(1, frames, levels)


def test_windows_match_the_naive_rule_for_any_length():
    _, coarse, fine = lms()
    mulan, semantic = torch.randint(0, 128, (1, 12)), torch.randint(0, 256, (1, 12))
    ratio = Fraction(1, 2)

    def coarse_condition(first, n):
        a, b = semantic_span(first, n, ratio, semantic.shape[1])
        return mulan, semantic[:, a:b]

    for frames in (3, 8, 13):  # inside one window, exactly one, several slides with a short last window
        made = sample_acoustic(coarse, coarse_condition, frames, 8, 3, temperature=0)
        assert torch.equal(made.codes, naive_sample(coarse, coarse_condition, frames, 8, 3))
        assert made.forward_passes == frames * 4
    coarse_codes = torch.randint(0, 16, (1, 13, 4))
    made = sample_acoustic(fine, lambda f, n: (coarse_codes[:, f:f + n],), 13, 6, 4, temperature=0)
    assert made.windows == 3 and made.codes.shape == (1, 13, 8)
    assert torch.equal(made.codes, naive_sample(fine, lambda f, n: (coarse_codes[:, f:f + n],), 13, 6, 4))


def test_a_tiny_coarse_lm_overfits_one_sequence():
    _, coarse, _ = lms(**{"coarse.dropout": 0.0, "coarse.dim": 64})
    torch.manual_seed(1)
    mulan, semantic = torch.randint(0, 128, (1, 12)), torch.randint(0, 256, (1, 6))
    target = torch.randint(0, 16, (1, 12, 4))
    flat = flatten_codes(target)
    optimiser = torch.optim.Adam(coarse.parameters(), lr=3e-3)
    coarse.train()
    losses = []
    for _ in range(120):
        loss = lm_loss(coarse(flat, mulan, semantic).logits, flat).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    coarse.eval()
    assert losses[0] > 2.0 and losses[-1] < 0.05
    made = sample_acoustic(coarse, lambda f, n: (mulan, semantic), 12, 12, 6, temperature=0)
    assert torch.equal(made.codes, target)


def test_paper_shapes_are_musiclm_sized():
    counts = parameter_count(preset("paper"), melody_preset("paper"))
    assert 290e6 < counts["coarse"] < 340e6 and 290e6 < counts["fine"] < 340e6  # MusicLM: 430 M per stage (FF 4096)
    cfg = preset("paper")
    assert (cfg.codec.frame_rate, cfg.codec.levels, cfg.codec.coarse_levels, cfg.codec.codebook_size) == (50, 12, 4, 1024)
    assert (cfg.coarse.dim, cfg.coarse.depth, cfg.coarse.heads) == (1024, 24, 16)


# --- end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [1.0, 3.0, 2.4])
def test_forward_passes_are_25_200_and_400_per_second(baseline, seconds):
    out = baseline.generate(["a calm piano piece"], seconds, seed=0)
    assert out.forward_passes["semantic_lm"] == math.ceil(25 * seconds)
    assert out.forward_passes["coarse"] == round(200 * seconds) and out.forward_passes["fine"] == round(400 * seconds)
    assert out.audio.shape == (1, 1, round(seconds * 24_000)) and out.acoustic_tokens.shape == (1, round(50 * seconds), 12)
    assert set(out.seconds) == {"mulan", "semantic_lm", "coarse", "fine", "codec"}


def test_generation_is_seeded_and_a_batch_equals_single_runs(baseline):
    a = baseline.generate(["a calm piano piece", "fast techno"], 1.0, seed=3)
    again = baseline.generate(["a calm piano piece", "fast techno"], 1.0, seed=3)
    assert torch.equal(a.acoustic_tokens, again.acoustic_tokens) and torch.equal(a.audio, again.audio)
    second = baseline.generate(["fast techno"], 1.0, seed=4)
    assert torch.equal(a.acoustic_tokens[1:], second.acoustic_tokens)
    assert not torch.equal(a.acoustic_tokens[:1], baseline.generate(["a calm piano piece"], 1.0, seed=5).acoustic_tokens)


def test_the_semantic_stage_is_melodys_own(baseline, melody):
    ours = baseline.generate(["a calm piano piece"], 1.0, seed=7)
    theirs = melody.generate(["a calm piano piece"], 1.0, seed=7)
    assert torch.equal(ours.semantic_tokens, theirs.semantic_tokens)


# --- checkpoints -----------------------------------------------------------------------------------


def test_save_and_load_round_trip(baseline, melody, tmp_path):
    baseline.save_pretrained(tmp_path)
    loaded = MusicLMStyle.from_pretrained(tmp_path, melody)
    for ours, theirs in ((baseline.codec, loaded.codec), (baseline.coarse, loaded.coarse), (baseline.fine, loaded.fine)):
        assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())
    assert loaded.config == baseline.config
    assert torch.equal(baseline.generate(["jazz"], 0.5, seed=1).audio, loaded.generate(["jazz"], 0.5, seed=1).audio)


def test_corrupt_or_mismatched_checkpoints_are_one_line_errors(baseline, melody, tmp_path):
    def refused(folder, match):
        with pytest.raises(MelodyError, match=match) as err:
            MusicLMStyle.from_pretrained(folder, melody)
        assert "\n" not in str(err.value)

    refused(tmp_path / "nowhere", "no musiclm.json")
    baseline.save_pretrained(tmp_path / "good")
    meta = json.loads((tmp_path / "good" / "musiclm.json").read_text())
    weights = (tmp_path / "good" / "musiclm.safetensors").read_bytes()

    def variant(name, meta_change=None, data=weights):
        folder = tmp_path / name
        folder.mkdir()
        changed = json.loads(json.dumps(meta))
        (meta_change or (lambda m: None))(changed)
        (folder / "musiclm.json").write_text(json.dumps(changed))
        (folder / "musiclm.safetensors").write_bytes(data)
        return folder

    refused(variant("truncated", data=weights[: len(weights) // 2]), "corrupt or truncated")
    refused(variant("version", lambda m: m.update(format_version=99)), "format version 99")
    refused(variant("wider", lambda m: m["config"]["coarse"].update(dim=64)), "do not fit this model's config")
    refused(variant("unknown", lambda m: m["config"]["coarse"].update(width=64)), "unknown config key 'config.coarse.width'")
    refused(variant("other-vae", lambda m: m["trained_against"].update(vae="0123456789abcdef")), "another vae")


# --- training --------------------------------------------------------------------------------------


def test_training_fits_the_codec_once_resumes_and_exports(melody, tmp_path):
    from melody.train.musiclm import train_musiclm

    corpus = make_corpus(tmp_path / "corpus", clips=10, per_shard=3, seconds=(2.0, 3.0))
    run = tmp_path / "run"
    overrides = [*SMALL, "codec.fit_clips=4", "coarse.window_seconds=1", "coarse.stride_seconds=0.5",
                 "fine.window_seconds=0.4", "fine.stride_seconds=0.2", "train.batch_size=2", "train.steps=4",
                 "train.lr=3e-3", "train.warmup_steps=1", "train.checkpoint_every=2", "train.sample_every=4",
                 "train.log_every=1", "train.num_workers=0", "train.ema_decay=0"]
    stopped = train_musiclm(corpus, BUNDLE, run, "tiny", overrides, progress=False, stop_at=2)
    assert stopped.step == 2 and "--resume" in stopped.summary() and (run / "codec.safetensors").is_file()
    codec = (run / "codec.safetensors").read_bytes()
    done = train_musiclm(corpus, BUNDLE, run, "tiny", [], resume=True, progress=False)
    assert done.step == 4 and (run / "codec.safetensors").read_bytes() == codec  # fitted once, read back on resume
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "coarse/total" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(0 < r["coarse/total"] < 2 * math.log(16) and 0 < r["fine/total"] < 2 * math.log(16) for r in train_rows)
    assert any("valid/coarse_ppl" in r for r in rows)
    model = MusicLMStyle.from_pretrained(run, melody)
    assert model.generate(["a calm piano piece"], 0.4, seed=0).forward_passes["fine"] == 160
    with pytest.raises(MelodyError, match="holds a run already"):
        train_musiclm(corpus, BUNDLE, run, "tiny", overrides, progress=False)


def test_eval_music_judges_the_baseline_on_melodys_clips_and_seeds(baseline, tmp_path):
    """`melody eval music --baseline RUN`: the baseline makes the music, the bundle's MuLan judges it, same clips."""
    from test_cli import melody_one_thread
    from test_eval_music import make_captioned_corpus

    corpus = make_captioned_corpus(tmp_path / "corpus")
    baseline.save_pretrained(tmp_path / "baseline")
    out = melody_one_thread("eval", "music", "--data", str(corpus), "--baseline", str(tmp_path / "baseline"), "--limit", "4",
                            "--seconds", "1", "--attribute-clips", "0", "--out", str(tmp_path / "report"), "--no-progress")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report" / "music_eval.json").read_text())
    assert report["clips"] == 4 and report["steps"] == 0 and report["bundle"] == str(tmp_path / "baseline")
    assert report["forward_passes"] == {"mulan": 1, "semantic_lm": 25, "coarse": 200, "fine": 400, "codec": 1}
    assert report["fad"]["musicnn"]["fad"]["generated_vs_real"] > 0 and -1 <= report["mcc"]["generated"] <= 1
    assert "the MusicLM-style baseline" in (tmp_path / "report" / "music_eval.md").read_text()
