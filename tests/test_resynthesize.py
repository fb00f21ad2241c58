"""`MeLoDy.resynthesize` and `melody eval music --source tokens|vae`: real clips made again by the DPD from their own
semantic tokens, or by the VAE alone, judged like music from captions (tiny random bundle)."""

import json

import pytest
import torch
from test_eval_music import CAPTIONS, make_captioned_corpus
from test_pipeline import bundle, melody  # noqa: F401 (the fixtures)
from test_semantic_stages import one_line_error, run_ok

from melody.data.loader import mix_seeds
from melody.errors import MelodyError
from melody.eval.music import evaluate_music
from melody.pipeline import MeLoDy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clips(melody, seconds, rows=2, seed=0):  # noqa: F811
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(rows, 1, round(seconds * melody.vae.cfg.sample_rate), generator=g)


def test_through_the_dpd_renders_the_clips_own_tokens_with_generates_noise(melody):  # noqa: F811
    audio = clips(melody, 1.3)
    out = melody.resynthesize(audio, "dpd", steps=2, guidance=2.0, seed=5)
    assert out.audio.shape == audio.shape and out.audio.dtype == torch.float32
    tokens = melody.tokenizer.tokens(audio.mean(1))
    assert torch.equal(out.semantic_tokens, tokens)
    # exactly the DPD's sampler on those tokens, seeded as generate seeds its rows, then the VAE decoder
    latents = melody.latents(melody.dpd_for_sampling(), tokens, 1.3, 2, 2.0, seed=5)
    assert torch.equal(out.latents, latents)
    assert torch.equal(out.audio, melody.vae.decode_latents(latents, audio.shape[-1]).clamp(-1, 1))
    assert out.forward_passes == {"tokenizer": 1, "dpd": 2 * 2, "vae": 1}  # 1.3 s: two 1 s windows of 2 steps
    # a batch is its rows alone, seeded seed + i
    second = melody.resynthesize(audio[1:], "dpd", steps=2, guidance=2.0, seed=6)
    assert torch.equal(second.semantic_tokens[0], out.semantic_tokens[1])
    torch.testing.assert_close(second.audio[0], out.audio[1], rtol=0, atol=1e-5)
    # the tokens steer it: another clip's tokens with the same noise give other music
    t = torch.arange(audio.shape[-1]) / melody.vae.cfg.sample_rate
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * t)[None, None]  # the random tokenizer hears noise as one code, a tone as another
    other = melody.resynthesize(tone, "dpd", steps=2, guidance=2.0, seed=5)
    assert not torch.equal(other.semantic_tokens[0], tokens[0]) and not torch.equal(other.audio[0], out.audio[0])


def test_through_the_vae_is_a_seeded_posterior_sample_decoded(melody):  # noqa: F811
    audio = clips(melody, 0.7)
    out = melody.resynthesize(audio, "vae", seed=2)
    assert out.audio.shape == audio.shape
    generators = [torch.Generator().manual_seed(mix_seeds(2 + i, 3)) for i in range(2)]  # clip i: (seed + i, 3)
    latents = melody.vae.encode_latents(audio, generators)
    assert torch.equal(out.latents, latents)
    assert torch.equal(out.audio, melody.vae.decode_latents(latents, audio.shape[-1]).clamp(-1, 1))
    assert out.forward_passes == {"tokenizer": 1, "vae": 2}
    assert not torch.equal(melody.resynthesize(audio, "vae", seed=3).audio, out.audio)  # the posterior is sampled


@pytest.mark.parametrize("through, audio, message", [
    ("lm", torch.zeros(1, 1, 800), "choose one of dpd, vae"),
    ("dpd", torch.zeros(1, 800), r"must be \(batch, 1, samples\)"),
    ("vae", torch.zeros(1, 1, 0), r"must be \(batch, 1, samples\)"),
])
def test_bad_input_is_one_line(melody, through, audio, message):  # noqa: F811
    with pytest.raises(MelodyError, match=message):
        melody.resynthesize(audio, through)


@pytest.fixture(scope="module")
def reports(bundle, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("sources")
    corpus = make_captioned_corpus(root / "corpus")
    out = {}
    for source in ("caption", "tokens", "vae"):
        done = run_ok("eval", "music", str(bundle), "--data", str(corpus), "--limit", "4", "--seconds", "1", "--steps",
                      "2", "--seed", "3", "--batch-size", "3", "--source", source, "--out", str(root / source))
        out[source] = (json.loads((root / source / "music_eval.json").read_text()),
                       (root / source / "music_eval.md").read_text(), done.stdout)
    return corpus, out


def test_eval_music_judges_each_source_against_the_same_real_clips_and_captions(reports):
    _, out = reports
    caption, tokens, vae = (out[s][0] for s in ("caption", "tokens", "vae"))
    assert (caption["source"], tokens["source"], vae["source"]) == ("caption", "tokens", "vae")
    for report in (tokens, vae):
        assert [c["caption"] for c in report["per_clip"]] == CAPTIONS[:4]
        assert report["mcc"]["real"] == caption["mcc"]["real"]  # the same real clips, the same captions
        assert report["fad"]["musicnn"]["fad"]["real_vs_real"] == caption["fad"]["musicnn"]["fad"]["real_vs_real"]
        assert report["per_clip"][0]["bpm_real"] == caption["per_clip"][0]["bpm_real"]
    # what made the music: the LM only from captions; the DPD from captions or tokens
    assert caption["forward_passes"] == {"mulan": 1, "semantic_lm": 25, "dpd": 2, "vae": 1}
    assert tokens["forward_passes"] == {"tokenizer": 1, "dpd": 2, "vae": 1} and tokens["steps"] == 2
    assert vae["forward_passes"] == {"tokenizer": 1, "vae": 2} and vae["steps"] == 0
    # three different sets of music
    mcc = [r["mcc"]["generated"] for r in (caption, tokens, vae)]
    assert len(set(mcc)) == 3
    assert "own semantic tokens (the semantic LM left out) (DPD 2 steps" in out["tokens"][1]
    assert "each real clip encoded and decoded by the VAE (clip i seeded 3 + i" in out["vae"][1]
    assert "music from each clip's caption (DPD 2 steps" in out["caption"][1]


def test_resynthesised_clips_are_the_pipelines_own_resynthesis_of_each_clip(reports, bundle):  # noqa: F811
    """Clip i of `--source tokens` is `resynthesize(clip i, "dpd", seed=seed + i)`: its MuLan cosine with the caption
    is the report's."""
    from melody.data.shards import iter_samples
    from melody.eval.quality import pair_cosines

    corpus, out = reports
    model = MeLoDy.from_pretrained(bundle)
    sample = list(iter_samples(corpus, "test"))[2]
    clip = torch.from_numpy(sample["audio"][:, : model.vae.cfg.sample_rate])[None]  # the first second, (1, 1, n)
    made = model.resynthesize(clip, "dpd", steps=2, seed=3 + 2)
    with torch.no_grad():
        cosine = pair_cosines(model.mulan.embed_text([CAPTIONS[2]]).float(), model.mulan.embed_audio(made.audio.mean(1)))
    assert out["tokens"][0]["per_clip"][2]["mcc_generated"] == pytest.approx(float(cosine[0]), abs=1e-5)


@pytest.mark.parametrize("source, extra, message", [
    ("tokens", {"fit_tempo": True}, "go with --source caption"),
    ("vae", {"baseline": object()}, "go with --source caption"),
    ("lm", {}, "choose one of caption, tokens, vae"),
])
def test_sources_that_make_no_music_from_captions_refuse_caption_options(reports, bundle, source, extra,  # noqa: F811
                                                                          message):
    corpus, _ = reports
    with pytest.raises(MelodyError, match=message):
        evaluate_music(MeLoDy.from_pretrained(bundle), corpus, source=source, **extra)


def test_an_unknown_source_on_the_command_line_is_one_line(reports, bundle, tmp_path):  # noqa: F811
    from test_cli import melody_one_thread

    corpus, _ = reports
    done = melody_one_thread("eval", "music", str(bundle), "--data", str(corpus), "--source", "lm", "--out",
                             str(tmp_path / "r"), "--no-progress")
    assert "choose one of caption, tokens, vae" in one_line_error(done)
    assert not (tmp_path / "r").exists()
