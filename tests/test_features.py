"""Cached features (`melody data encode`): what is stored equals what the frozen models compute, crops keep latents and
tokens aligned, stages train from them, and features of other checkpoints or another corpus are refused."""

import json
import math

import numpy as np
import pytest
import torch
from test_cli import TINY_VAE, melody_one_thread
from test_distributed import semantic_stage
from test_pipeline import TINY_DPD, bundle  # noqa: F401 (the fixture)
from test_semantic_stages import TINY_STACK
from test_shards import RATE, make_corpus

from melody.config import preset
from melody.data.features import FEATURES_FILE, FeatureDataset, encode_corpus, find_features, pack, unpack
from melody.eval.semantic import tokenize_split, tokenized_features
from melody.data.loader import ShardDataset, make_loader
from melody.errors import MelodyError
from melody.semantic.lm import tempo_bucket
from melody.train.dpd import DPDStage
from melody.train.engine import Engine
from melody.train.recipes import load_stage
from melody.vae import VAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(bundle, tmp_path_factory):
    """test_pipeline's tiny random bundle (its MuLan's text encoder is a tiny BERT) and a corpus of 1–2 s clips."""
    corpus = make_corpus(tmp_path_factory.mktemp("features") / "corpus", clips=10, per_shard=3, seconds=(1.0, 2.0))
    models = {name: load_stage(bundle / name, name)[0].eval() for name in ("vae", "tokenizer", "mulan")}
    cfg = load_stage(bundle / "dpd", "dpd")[1]
    out = melody_one_thread("data", "encode", str(corpus), "--bundle", str(bundle), "--batch-size", "3", "--no-progress")
    assert out.returncode == 0, out.stderr
    folder = find_features(corpus, models)
    assert out.stdout.strip() == f"wrote {folder}"
    return corpus, cfg, models, folder, cfg.mulan.text_encoder


def cached(folder, split):
    import webdataset as wds

    record = json.loads((folder / FEATURES_FILE).read_text())
    for shard in record["splits"][split]["shards"]:
        for raw in wds.tarfile_to_samples()([{"url": str(folder / shard)}]):
            yield raw["__key__"], unpack(raw["npz"]), json.loads(raw["json"])


def test_stored_features_are_what_the_models_compute(setup):
    corpus, cfg, models, folder, _ = setup
    record = json.loads((folder / FEATURES_FILE).read_text())
    assert set(record["fingerprints"]) == {"vae", "tokenizer", "mulan"} and record["token_rate"] == 25
    assert record["latent_rate"] == 50 and record["splits"]["train"]["clips"] == 8
    whole = {s["key"]: s for s in ShardDataset.whole_clips(corpus, "train", RATE)}
    seen = 0
    for key, f, meta in cached(folder, "train"):
        clip = whole[key]
        n = int(clip["length"])
        audio = clip["audio"][None, :, :n]
        with torch.no_grad():
            posterior = models["vae"].encode(audio)
            tokens = models["tokenizer"].tokens(audio.mean(1), torch.tensor([n]))
            mulan = models["mulan"].tokens_from_audio(audio.mean(1), torch.tensor([n]))
            text = models["mulan"].tokens_from_text([clip["caption"]])
        assert f["mean"].dtype == np.float16 and f["tokens"].dtype == np.int16
        assert f["mean"].shape == (n // 160, 16) == f["logvar"].shape and f["tokens"].shape == (n // 320,)
        np.testing.assert_allclose(f["mean"], posterior.mean[0].T.numpy(), atol=2e-3, rtol=2e-3)
        np.testing.assert_array_equal(f["tokens"], tokens[0].numpy())
        np.testing.assert_array_equal(f["mulan"], mulan[0].numpy())
        np.testing.assert_array_equal(f["text_mulan"], text[0].numpy())
        assert meta["caption"] == clip["caption"] and meta["seconds"] == n / RATE
        seen += 1
    assert seen == 8


def test_crops_start_latents_and_tokens_together(setup):
    _, _, _, folder, _ = setup
    whole = {key: f for key, f, _ in cached(folder, "train")}
    data = FeatureDataset(folder, "train", 0.5, shuffle=0, seed=3)  # 25 latent frames, 12 tokens... of 1–2 s clips
    assert data.latents_per_token == 2 and (data.shape.latent_frames, data.shape.tokens) == (25, 12)
    starts = set()
    for item in data:
        f = whole[item["key"]]
        t0 = next(t for t in range(len(f["tokens"]) - 11) if np.array_equal(f["tokens"][t:t + 12], item["tokens"].numpy())
                  and np.allclose(f["mean"][2 * t:2 * t + 24], item["mean"][:24].numpy()))
        starts.add(t0)
        assert item["length"] == 24 and item["token_length"] == 12  # 12 tokens cover 24 latent frames; frame 25 is padding
        assert item["logvar"][24:].eq(-30).all() and item["mean"][24:].eq(0).all()
    assert len(starts) > 1  # random offsets, on the token grid
    batch = next(iter(make_loader(data, 4)))
    assert batch["mean"].shape == (4, 25, 16) and batch["tokens"].dtype == torch.int64 and batch["mulan"].shape == (4, 4)
    assert batch["text_mulan"].shape == (4, 4)


def test_the_semantic_lm_trains_from_features_as_from_audio(setup, tmp_path):
    """The test clips fit in the 2 s window whole, so the cached tokens are the crops' own and the runs must agree."""
    corpus, _, models, _, bert = setup
    weights = {}
    for name, extra in (("audio", []), ("cached", ["train.cached_features=true"])):
        stage = semantic_stage(corpus, bert, tmp_path / name, "train.batch_size=4", "train.steps=2", "semantic_lm.window_seconds=2",
                               *extra, conditioners=(models["mulan"], models["tokenizer"]))
        engine = Engine(stage, tmp_path / name, progress=False, cpu=True)
        assert isinstance(stage.dataset("train"), FeatureDataset) == bool(extra)
        engine.fit()
        weights[name] = engine.unwrapped("semantic_lm").state_dict()
    for key in weights["audio"]:
        torch.testing.assert_close(weights["cached"][key], weights["audio"][key], atol=1e-5, rtol=1e-4, msg=key)


def test_the_dpd_trains_from_features(setup, tmp_path):
    corpus, cfg, models, _, _ = setup
    run = tmp_path / "dpd"
    cfg = preset("tiny", [*TINY_STACK, *TINY_VAE, *TINY_DPD, "train.cached_features=true", "train.batch_size=2", "train.steps=2",
                          "train.num_workers=0", "train.sample_every=0", "train.log_every=1", "train.checkpoint_every=100"])
    stage = DPDStage(cfg, corpus, run, (models["vae"], cfg), (models["tokenizer"], cfg))
    assert isinstance(stage.dataset("train"), FeatureDataset) and not isinstance(stage.dataset("valid"), FeatureDataset)
    Engine(stage, run, progress=False, cpu=True).fit()
    losses = [json.loads(line)["dpd/total"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))


def mulan_dpd_stage(setup, run, *overrides):
    corpus, cfg, models, _, _ = setup
    cfg = preset("tiny", [*TINY_STACK, *TINY_VAE, *TINY_DPD, "dpd.mulan_condition=true", "train.batch_size=4",
                          "train.steps=2", "train.num_workers=0", "train.sample_every=0", "train.log_every=1",
                          "train.checkpoint_every=100", *overrides])
    return DPDStage(cfg, corpus, run, (models["vae"], cfg), (models["tokenizer"], cfg), (models["mulan"], cfg))


@pytest.mark.parametrize("cached_features", [True, False])
def test_a_dpd_hearing_mulan_is_told_each_example_s_audio_or_caption_tokens(setup, tmp_path, cached_features):
    """From features or from audio alike: `text_condition_prob` 0 gives every example its own audio's MuLan tokens,
    1 its caption's; the run copies MuLan's codebooks into the DPD and records MuLan among its conditioners."""
    _, _, models, _, _ = setup
    mulan = models["mulan"]
    for p in (0.0, 1.0):
        stage = mulan_dpd_stage(setup, tmp_path / f"p{p}", f"dpd.text_condition_prob={p}",
                                f"train.cached_features={str(cached_features).lower()}")
        batch = next(iter(make_loader(stage.dataset("train"), 4, 0)))
        told = stage.mulan_condition(batch, torch.Generator().manual_seed(0), torch.device("cpu"))
        with torch.no_grad():
            if p == 1.0:
                expected = mulan.tokens_from_text(batch["caption"])
            elif cached_features:  # the whole clip's audio tokens, as `melody data encode` stored them
                expected = batch["mulan"]
            else:
                expected = mulan.tokens_from_audio(batch["audio"].mean(1), batch["length"])
        assert torch.equal(told, expected)
        assert torch.equal(stage.models["dpd"].mulan_codebooks, mulan.rvq.codebooks)
        assert set(json.loads((tmp_path / f"p{p}" / "conditioners.json").read_text())) == {"vae", "tokenizer", "mulan"}
    Engine(stage, tmp_path / "p1.0", progress=False, cpu=True).fit()
    losses = [json.loads(line)["dpd/total"] for line in (tmp_path / "p1.0" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_a_dpd_hearing_mulan_needs_a_mulan_to_train(setup, tmp_path):
    corpus, cfg, models, _, _ = setup
    cfg = preset("tiny", [*TINY_STACK, *TINY_VAE, *TINY_DPD, "dpd.mulan_condition=true"])
    with pytest.raises(MelodyError, match="training needs a MuLan; give --mulan"):
        DPDStage(cfg, corpus, tmp_path, (models["vae"], cfg), (models["tokenizer"], cfg))
    with pytest.raises(MelodyError, match=r"dpd.text_condition_prob must be in \[0, 1\]"):
        mulan_dpd_stage(setup, tmp_path / "bad", "dpd.text_condition_prob=1.5")


def test_features_of_other_checkpoints_or_another_corpus_are_refused(setup, tmp_path):
    corpus, cfg, models, folder, _ = setup
    other = VAE(cfg.vae)
    with pytest.raises(MelodyError, match="no cached features for these tokenizer \\+ vae checkpoints") as err:
        find_features(corpus, {"vae": other, "tokenizer": models["tokenizer"]})
    assert "\n" not in str(err.value) and "melody data encode" in str(err.value)
    copy = tmp_path / "corpus"
    import shutil

    shutil.copytree(corpus, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["edited"] = True
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MelodyError, match="another version of the corpus"):
        find_features(copy, {"vae": models["vae"], "tokenizer": models["tokenizer"]})


def test_encode_needs_its_models(setup, tmp_path):
    corpus = setup[0]
    out = melody_one_thread("data", "encode", str(corpus))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--bundle" in lines[0]


def test_encoding_is_deterministic(setup, tmp_path):
    """The same command again gives the same bytes; another batch size gives the same tokens and, where a CPU's
    kernels round a batch of 5 otherwise than one of 3, latents within float rounding (seen here: one float16 step
    of one logvar)."""
    corpus, _, models, folder, _ = setup
    import shutil

    again = {}
    for batch in (3, 5):
        copy = tmp_path / f"batch-{batch}"
        shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("features"))
        again[batch] = encode_corpus(copy, models["vae"], models["tokenizer"], models["mulan"], batch_size=batch,
                                     progress=False)
        assert again[batch].name == folder.name
    for a, b in zip(sorted(folder.rglob("*.tar")), sorted(again[3].rglob("*.tar")), strict=True):
        assert a.read_bytes() == b.read_bytes()
    for split in json.loads((folder / FEATURES_FILE).read_text())["splits"]:
        for (key, f, _), (key5, f5, _) in zip(cached(folder, split), cached(again[5], split), strict=True):
            assert key == key5 and np.array_equal(f["tokens"], f5["tokens"]) and np.array_equal(f["mulan"], f5["mulan"])
            np.testing.assert_allclose(f5["mean"], f["mean"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(f5["logvar"], f["logvar"], atol=2e-3, rtol=0)


def test_uint8_latents_are_the_posterior_mean_within_half_a_step_at_a_quarter_of_the_size(setup, tmp_path):
    corpus, cfg, models, folder, _ = setup
    out = melody_one_thread("data", "encode", str(corpus), "--bundle", "x", "--latents", "int4")
    assert out.returncode == 2 and "--latents int4: choose one of float16, uint8" in out.stderr
    compact = encode_corpus(corpus, models["vae"], models["tokenizer"], models["mulan"], batch_size=3, progress=False,
                            latents="uint8")
    assert compact.name == folder.name + "-uint8"
    assert json.loads((compact / FEATURES_FILE).read_text())["latents"] == "uint8"
    full = {key: f for key, f, _ in cached(folder, "train")}
    ten_seconds = {"mean": torch.randn(1250, 16), "logvar": torch.randn(1250, 16) - 4, "tokens": torch.arange(250)}
    sizes = {fmt: len(pack(ten_seconds, fmt)) for fmt in ("float16", "uint8")}  # 10 s of `tiny` latents (125 Hz)
    assert sizes["uint8"] < 0.3 * sizes["float16"]
    seen = 0
    for key, f, _ in cached(compact, "train"):
        mean, logvar = full[key]["mean"].astype(np.float32), full[key]["logvar"].astype(np.float32)
        step = (mean.max(0) - mean.min(0)) / 255
        assert f["mean"].shape == mean.shape == f["logvar"].shape
        assert np.all(np.abs(f["mean"] - mean) <= step / 2 + 2e-3 * np.abs(mean) + 1e-6)  # + float16's own rounding
        np.testing.assert_allclose(f["logvar"], np.broadcast_to(logvar.mean(0), logvar.shape), atol=1e-3)
        np.testing.assert_array_equal(f["tokens"], full[key]["tokens"])
        seen += 1
    assert seen == 8
    crops = FeatureDataset(compact, "train", 1.0, shuffle=0)
    sample = next(iter(crops))
    assert sample["mean"].dtype == torch.float32 and sample["logvar"].shape == sample["mean"].shape
    with pytest.raises(MelodyError, match="unknown latent format 'int4'"):
        encode_corpus(corpus, models["vae"], models["tokenizer"], latents="int4", progress=False)


def test_quantize_round_trips_within_half_a_step():
    from melody.data.features import dequantize, quantize

    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    x[:, 3] = 0.7  # a constant column comes back exactly
    codes, lo, step = quantize(x)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes[:, :3].max() == 255
    back = dequantize(codes, lo, step)
    assert np.all(np.abs(back - x) <= step / 2 + 1e-6) and np.array_equal(back[:, 3], x[:, 3])


def test_a_split_with_no_clips_is_skipped(setup, tmp_path):
    """A corpus subset may keep no test clips (benchmarks/corpus_subset.py --test 0): encoding skips that split."""
    import shutil

    corpus, _, models, _, _ = setup
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("features"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["test"] = {"shards": [], "clips": 0, "seconds": 0}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = encode_corpus(copy, models["vae"], models["tokenizer"], progress=False, latents="uint8")
    assert set(json.loads((out / FEATURES_FILE).read_text())["splits"]) == set(manifest["splits"]) - {"test"}


def test_features_without_latents_are_the_same_tokens_and_need_no_vae(setup, bundle, tmp_path):  # noqa: F811
    """`--latents none`: tokens and both MuLan token sets, no VAE in the key or the files; the DPD cannot use them."""
    corpus, _, models, folder, _ = setup
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("features"))
    out = melody_one_thread("data", "encode", str(copy), "--latents", "uint8", "--tokenizer", str(bundle / "tokenizer"))
    assert out.returncode == 2 and "--latents none" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = melody_one_thread("data", "encode", str(copy), "--tokenizer", str(bundle / "tokenizer"), "--mulan",
                            str(bundle / "mulan"), "--latents", "none", "--no-progress")
    assert out.returncode == 0, out.stderr
    lean = find_features(copy, {"tokenizer": models["tokenizer"], "mulan": models["mulan"]})
    assert lean.name.endswith("-none")
    record = json.loads((lean / FEATURES_FILE).read_text())
    assert set(record["fingerprints"]) == {"tokenizer", "mulan"} and record["latent_rate"] is None and record["latents"] == "none"
    full = {key: f for key, f, _ in cached(folder, "train")}
    for key, f, _ in cached(lean, "train"):
        assert set(f) == {"tokens", "mulan", "text_mulan"}
        for name in f:
            np.testing.assert_array_equal(f[name], full[key][name])
    batch = next(iter(make_loader(FeatureDataset(lean, "train", 2.0, shuffle=0), 4)))
    assert "mean" not in batch and batch["tokens"].shape == (4, 50) and batch["text_mulan"].shape == (4, 4)
    with pytest.raises(MelodyError, match="no cached features for these tokenizer \\+ vae"):
        find_features(copy, {"vae": models["vae"], "tokenizer": models["tokenizer"]})
    with pytest.raises(MelodyError, match="--latents none"):
        encode_corpus(copy, models["vae"], models["tokenizer"], latents="none", progress=False)
    with pytest.raises(MelodyError, match="--latents none"):
        encode_corpus(copy, None, models["tokenizer"], latents="uint8", progress=False)


def test_the_split_read_from_features_is_the_split_the_conditioners_tokenise(setup):
    """Clips no longer than the window: the cached whole-clip tokens are the crop's own."""
    corpus, _, models, folder, _ = setup
    cached_split = tokenized_features(folder, "train", 2.0)
    live = tokenize_split(models["mulan"], models["tokenizer"], corpus, "train", 2.0)
    assert cached_split.keys == live.keys and cached_split.captions == live.captions
    for name in ("keep", "audio_mulan", "text_mulan"):
        assert torch.equal(getattr(cached_split, name), getattr(live, name)), name
    assert torch.equal(cached_split.semantic[live.keep], live.semantic[live.keep])  # padding frames are masked either way
    assert torch.equal(cached_split.bpm.isnan(), live.bpm.isnan())
    assert tokenized_features(folder, "train", 2.0, limit=3).semantic.shape[0] == 3


def test_the_semantic_lm_trains_and_is_judged_from_features_alone(setup, tmp_path):
    """Without the corpus's audio and with a text encoder that could not run: every split from the features, the
    tempo stretch on (the clips state a tempo) and its held-out perplexities logged."""
    _, _, models, _, bert = setup
    import shutil

    corpus = make_corpus(tmp_path / "corpus", clips=10, per_shard=3, seconds=(1.0, 2.0), tempo=True)
    encode_corpus(corpus, None, models["tokenizer"], models["mulan"], latents="none", progress=False)
    for split in ("train", "valid"):
        shutil.rmtree(corpus / split)
    copy = corpus
    stage = semantic_stage(copy, bert, tmp_path / "run", "train.batch_size=4", "train.steps=2", "semantic_lm.window_seconds=2",
                           "train.cached_features=true", "semantic_lm.text_condition_prob=0.5", "semantic_lm.tempo_buckets=8",
                           "semantic_lm.tempo_stretch=0.25", "train.sample_every=2", conditioners=(models["mulan"], models["tokenizer"]))
    stage.caption_tokens = None  # the captions' tokens must come from the features
    assert isinstance(stage.dataset("valid"), FeatureDataset)
    Engine(stage, tmp_path / "run", progress=False, cpu=True).fit()
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = next(log for log in logs if "valid/ppl_text" in log)
    assert all(np.isfinite(valid[k]) for k in ("valid/ppl", "valid/ppl_text", "valid/ppl_stretched_told", "valid/ppl_stretched_stale"))


def tempo_stage(setup, tmp_path, *overrides):
    """The semantic LM's stage on cached features of 10 clips stating tempos (clip i: 60 + 10 i BPM), with the tempo
    token and the tempo stretch."""
    _, _, models, _, bert = setup
    corpus = make_corpus(tmp_path / "corpus", clips=10, per_shard=3, seconds=(1.0, 2.0), tempo=True)
    encode_corpus(corpus, None, models["tokenizer"], models["mulan"], latents="none", progress=False)
    return semantic_stage(corpus, bert, tmp_path / "run", "train.batch_size=4", "train.cached_features=true",
                          "semantic_lm.tempo_buckets=8", "semantic_lm.tempo_stretch=0.25", *overrides,
                          conditioners=(models["mulan"], models["tokenizer"]))


def test_tempo_restate_conditions_a_stretched_example_on_its_caption_saying_the_new_tempo(setup, tmp_path):
    """`semantic_lm.tempo_restate`: the stretched examples are text-conditioned ones, each on its caption restating its
    new tempo (clip i states 60 + 10 i BPM; the stretch is within ×0.8 … ×1.25); the held-out log adds
    `told_restated`."""
    import re

    stage = tempo_stage(setup, tmp_path, "train.steps=4", "semantic_lm.window_seconds=2", "semantic_lm.text_condition_prob=0.5",
                        "semantic_lm.tempo_restate=true", "semantic_lm.tempo_dropout=0", "train.sample_every=4")
    asked, tokens = [], stage.caption_tokens

    def recording(captions, device):
        asked.extend(captions)
        return tokens(captions, device)

    stage.caption_tokens = recording
    Engine(stage, tmp_path / "run", progress=False, cpu=True).fit()
    said = [re.fullmatch(r"clip number (\d+), at (\d+) BPM\.", c) for c in asked]
    assert asked and all(said), asked
    assert all(0.8 - 0.01 <= int(m[2]) / (60 + 10 * int(m[1])) <= 1.25 + 0.01 for m in said)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = next(log for log in logs if "valid/ppl_stretched_told_restated" in log)
    assert np.isfinite(valid["valid/ppl_stretched_told_restated"])


def test_the_beat_clock_trains_on_each_example_s_moved_tempo_from_where_its_crop_falls_in_the_piece(setup, tmp_path):
    """`semantic_lm.tempo_clock`: every example that keeps its tempo is clocked at the pace its tempo token says (after
    the stretch), from the beat where its crop starts (`clip_beat_phase`); one without a tempo gets no clock."""
    from melody.data.loader import clip_beat_phase

    stage = tempo_stage(setup, tmp_path, "train.steps=3", "semantic_lm.window_seconds=1", "semantic_lm.tempo_clock=true",
                        "semantic_lm.tempo_dropout=0.5", "train.sample_every=3")
    seen, step = [], stage.train_step

    def watched(engine, batch, generator):
        lm = engine.model("semantic_lm")
        hook = lm.register_forward_hook(lambda m, args, kwargs, out: seen.append((batch, kwargs)), with_kwargs=True)
        try:
            return step(engine, batch, generator)
        finally:
            hook.remove()

    stage.train_step = watched
    Engine(stage, tmp_path / "run", progress=False, cpu=True).fit()
    assert len(seen) == 3
    frame_rate, cfg = stage.tokenizer.config.frame_rate, stage.cfg.semantic_lm
    clocked = 0
    for batch, kwargs in seen:
        beats, tempo = kwargs["beats"], kwargs["tempo"]
        assert beats.shape == (4, 2) and beats.dtype == torch.float64
        told = tempo_bucket(beats[:, 1] * 60 * frame_rate, cfg.tempo_buckets, cfg.tempo_range)
        assert torch.equal(told, tempo.cpu())  # the clock's pace is the tempo token's, stretched or not, absent or not
        phases = [clip_beat_phase(meta, float(s)) for meta, s in zip(batch["meta"], batch["start"])]
        assert beats[:, 0].tolist() == pytest.approx([p for p in phases])  # the stretch keeps the first beat
        clocked += int(beats[:, 1].isfinite().sum())
    assert 0 < clocked < 12  # dropout leaves some examples without a tempo
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = next(log for log in logs if "valid/ppl_stretched_told" in log)
    assert np.isfinite(valid["valid/ppl_stretched_told"])
    assert valid["valid/ppl_stretched_told"] != valid["valid/ppl_stretched_stale"]
    assert np.isfinite(valid["valid/ppl_text_tempo"]) and valid["valid/ppl_text_tempo"] != valid["valid/ppl_text"]


def test_a_clip_s_first_beat_is_where_its_crop_falls_in_the_piece():
    from melody.data.loader import clip_beat_phase

    meta = {"offset": 10.0, "attributes": {"tempo_bpm": 120}}
    assert clip_beat_phase(meta) == 20.0 and clip_beat_phase(meta, 0.75) == 21.5
    assert clip_beat_phase({"attributes": {"tempo_bpm": 90}}, 2.0) == 3.0  # no offset: the clip is the piece
    assert math.isnan(clip_beat_phase({"offset": 10.0, "attributes": {}}))


def test_the_tempo_stretch_needs_the_tempo_token_and_a_spread_of_at_least_0(setup, tmp_path):
    corpus, _, models, _, bert = setup
    with pytest.raises(MelodyError, match="tempo_buckets") as err:
        semantic_stage(corpus, bert, tmp_path / "run", "semantic_lm.tempo_stretch=0.25", conditioners=(models["mulan"], models["tokenizer"]))
    assert "\n" not in str(err.value)
    with pytest.raises(MelodyError, match="tempo_stretch must be ≥ 0") as err:
        semantic_stage(corpus, bert, tmp_path / "run", "semantic_lm.tempo_buckets=8", "semantic_lm.tempo_stretch=-0.1",
                       conditioners=(models["mulan"], models["tokenizer"]))
    assert "\n" not in str(err.value)
