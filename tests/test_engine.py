"""The shared training engine, driven through the VAE stage at toy sizes (each run a few seconds)."""

import json
import math
import shutil

import pytest
import soundfile as sf
import torch
from test_shards import RATE, make_corpus

from melody.checkpoint import load_model, read_tensors, unprefixed
from melody.config import preset
from melody.data.loader import make_loader
from melody.errors import MelodyError
from melody.train.engine import Engine, audio_or_caption, lr_factor
from melody.train.vae import SAMPLE_SECONDS, VAEStage
from melody.vae import VAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 0.1 s crops of the 8 kHz test corpus, width-16 VAE, two mel scales, small discriminators that join
# at step 2 so the adversarial branch runs, six steps with a checkpoint at 3.
FAST = [
    f"data.sample_rate={RATE}", f"vae.sample_rate={RATE}", "vae.encoder_channels=16", "vae.decoder_channels=16",
    "vae.crop_seconds=0.1", "vae.mel_windows=64,256", "vae.mel_bins=10,40", "vae.stft_ffts=256", "vae.mpd_periods=2,3",
    "vae.disc_start_step=2", "train.batch_size=2", "train.steps=6", "train.checkpoint_every=3", "train.log_every=1",
    "train.sample_every=0", "train.num_workers=0", "train.warmup_steps=2",
]
LOSSES = ("mel/loss", "kl/loss", "vae/total")
ADVERSARIAL = ("adv/loss", "feat/loss", "disc/loss")


def config(*overrides: str):
    return preset("tiny", [*FAST, *overrides])


def engine(cfg, data, run, resume=False) -> Engine:
    return Engine(VAEStage(cfg, data), run, resume=resume, progress=False, cpu=True)


def train(cfg, data, run, stop_at=None, resume=False):
    return engine(cfg, data, run, resume).fit(stop_at)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 train clips in 3 shards (4 batches of 2 per epoch), 2 valid clips, 8 kHz."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), clips=10, per_shard=3)


def test_a_kept_checkpoint_of_a_chosen_step_is_exported(corpus, tmp_path):
    """`melody export RUN --step N`: the raw weights of that kept checkpoint, with its config; a step the run does not
    keep is one line naming those it does."""
    from melody.train.recipes import export_model

    run = tmp_path / "run"
    train(config(), corpus, run)
    path = export_model(run, tmp_path / "step3", "vae", step=3)
    exported, meta = read_tensors(path)
    kept, _ = read_tensors(run / "checkpoints" / "step-00000003" / "models.safetensors")
    raw = unprefixed(kept, "vae")
    assert meta["stage"] == "vae" and set(exported) == set(raw) and all(torch.equal(exported[k], raw[k]) for k in raw)
    later, _ = read_tensors(run / "checkpoints" / "step-00000006" / "models.safetensors")
    assert any(not torch.equal(raw[k], unprefixed(later, "vae")[k]) for k in raw)  # step 3, not the newest
    assert load_model(tmp_path / "step3", "vae", "vae", lambda c: VAE(c.vae)) is not None
    with pytest.raises(MelodyError, match=r"no checkpoint of step 4; it keeps 3, 6$"):
        export_model(run, tmp_path / "step4", "vae", step=4)
    assert not (tmp_path / "step4").exists()


@pytest.fixture(scope="module")
def corpus_of_many_shards(tmp_path_factory):
    """16 train clips in 8 shards of 2: two workers read 4 shards each (8 batches of 2 per epoch)."""
    return make_corpus(tmp_path_factory.mktemp("many"), clips=20, per_shard=2)


def test_a_run_writes_checkpoints_metrics_and_the_exported_model(corpus, tmp_path):
    run = tmp_path / "run"
    position = train(config(), corpus, run)
    assert (position.step, position.epoch, position.batch_in_epoch) == (6, 1, 2)
    assert json.loads((run / "latest.json").read_text()) == {"step": 6, "path": "checkpoints/step-00000006"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    for step, epoch, batch in ((3, 0, 3), (6, 1, 2)):
        folder = run / "checkpoints" / f"step-{step:08d}"
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "models.safetensors", "optimizers.safetensors",
                                                            "trainer.json"]
        trainer = json.loads((folder / "trainer.json").read_text())
        assert (trainer["stage"], trainer["step"], trainer["epoch"], trainer["batch_in_epoch"]) == ("vae", step, epoch, batch)
        models, meta = read_tensors(folder / "models.safetensors")
        assert meta["stage"] == "vae" and {k.split(".")[0] for k in models} == {"vae", "discriminators"}
        optimizers, _ = read_tensors(folder / "optimizers.safetensors")
        assert "rng.torch" in optimizers
        assert {k.split(".")[0] for k in optimizers if ".state." in k} == {"vae", "discriminators"}
        assert json.loads((folder / "config.json").read_text())["vae"]["decoder_channels"] == 16

    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in LOSSES)
        # The discriminators join at (0-based) step 2, i.e. from the third logged step on.
        assert all((k in r) == (r["step"] > 2) for k in ADVERSARIAL), r
        # The logged learning rate follows the warm-up + cosine schedule: lr · factor(steps taken).
        assert r["train/lr"] == pytest.approx(3e-4 * lr_factor(r["step"], 2, 6), rel=1e-9)

    assert json.loads((run / "config.json").read_text())["vae"]["encoder_channels"] == 16
    vae = load_model(run, "vae", "vae", lambda c: VAE(c.vae))
    final, _ = read_tensors(run / "checkpoints" / "step-00000006" / "models.safetensors")
    raw = unprefixed(final, "vae")
    assert set(raw) == set(vae.state_dict())
    assert all(torch.equal(v, raw[k]) for k, v in vae.state_dict().items())  # no EMA: the export is the raw weights
    # The export's latent clamp is measured on the training data: it cuts vae.latent_cut of the latents.
    clamp = json.loads((run / "config.json").read_text())["vae"]["latent_clamp"]
    assert clamp != 3.0 and vae.cfg.latent_clamp == clamp
    audio = torch.cat([b["audio"] for b in make_loader(VAEStage(config(), corpus).dataset("train"), 2, 0)])
    posterior = vae.encode(audio)
    z = torch.cat([posterior.sample(torch.Generator().manual_seed(i)) for i in range(20)])
    assert (z.abs() > clamp).float().mean() < 0.005 and (z.abs() > 0.5 * clamp).float().mean() > 0.005


def compare_runs(a, b, ema: bool):
    """Every tensor of the final checkpoints and the exports of runs `a` and `b` is identical."""
    step = json.loads((a / "latest.json").read_text())["path"]
    assert json.loads((b / "latest.json").read_text())["path"] == step
    names = ["models.safetensors", "optimizers.safetensors"] + (["ema.safetensors"] if ema else [])
    for name in names:
        ta, _ = read_tensors(a / step / name)
        tb, _ = read_tensors(b / step / name)
        assert set(ta) == set(tb), name
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    ea, _ = read_tensors(a / "vae.safetensors")
    eb, _ = read_tensors(b / "vae.safetensors")
    assert set(ea) == set(eb) and all(torch.equal(ea[k], eb[k]) for k in ea)
    trainer_a = json.loads((a / step / "trainer.json").read_text())
    trainer_b = json.loads((b / step / "trainer.json").read_text())
    for key in ("step", "epoch", "batch_in_epoch", "schedulers"):
        assert trainer_a[key] == trainer_b[key], key
    # The losses logged after the resume are the uninterrupted run's, bit for bit.
    rows_a, rows_b = metrics(a), metrics(b)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if "/loss" in k} == {k: v for k, v in rb.items() if "/loss" in k}, ra["step"]


@pytest.mark.parametrize(
    ("workers", "steps", "stop_at", "ema"),
    [
        (0, 6, 3, True),  # stops mid-epoch 0 (4 batches an epoch), finishes in epoch 1
        (2, 10, 3, False),  # stops after an odd number of batches (worker rotation), crosses the epoch at 8
    ],
    ids=["no-workers-ema", "two-workers"],
)
def test_resume_continues_exactly(corpus, corpus_of_many_shards, tmp_path, workers, steps, stop_at, ema):
    data = corpus if workers == 0 else corpus_of_many_shards
    cfg = config(f"train.num_workers={workers}", f"train.steps={steps}", f"train.ema_decay={0.9 if ema else 0}")
    train(cfg, data, tmp_path / "a")
    position = train(cfg, data, tmp_path / "b", stop_at=stop_at)
    assert position.step == stop_at and not (tmp_path / "b" / "vae.safetensors").exists()
    position = train(cfg, data, tmp_path / "b", resume=True)
    assert position.step == steps
    compare_runs(tmp_path / "a", tmp_path / "b", ema)


def test_resume_at_the_end_of_an_epoch_continues_exactly(corpus, tmp_path):
    # 4 batches an epoch: a checkpoint after batch 4 records (epoch 0, 4 batches done).
    cfg = config()
    train(cfg, corpus, tmp_path / "a")
    train(cfg, corpus, tmp_path / "b", stop_at=4)
    train(cfg, corpus, tmp_path / "b", resume=True)
    compare_runs(tmp_path / "a", tmp_path / "b", ema=False)


@pytest.fixture(scope="module")
def started_run(corpus, tmp_path_factory, one_torch_thread):
    """A run stopped after one step (a checkpoint at step 1)."""
    run = tmp_path_factory.mktemp("started") / "run"
    train(config(), corpus, run, stop_at=1)
    return run


def test_a_folder_holding_a_run_needs_resume(corpus, started_run):
    with pytest.raises(MelodyError) as excinfo:
        engine(config(), corpus, started_run)
    assert "pass --resume" in one_line(excinfo)


def test_resume_without_a_checkpoint_is_an_error(corpus, tmp_path):
    with pytest.raises(MelodyError) as excinfo:
        engine(config(), corpus, tmp_path / "empty", resume=True)
    assert "no checkpoint to resume from" in one_line(excinfo)


def test_a_truncated_checkpoint_is_a_one_line_error_on_resume(corpus, started_run, tmp_path):
    run = shutil.copytree(started_run, tmp_path / "run")
    models = run / "checkpoints" / "step-00000001" / "models.safetensors"
    data = models.read_bytes()
    models.write_bytes(data[: len(data) // 2])
    with pytest.raises(MelodyError) as excinfo:
        engine(config(), corpus, run, resume=True)
    assert "corrupt or truncated" in one_line(excinfo)


def test_resuming_with_another_config_does_not_fit(corpus, started_run):
    with pytest.raises(MelodyError) as excinfo:
        engine(config("vae.decoder_channels=32"), corpus, started_run, resume=True)
    assert "do not fit" in one_line(excinfo)


def test_samples_are_written_for_the_valid_split(corpus, tmp_path):
    run = tmp_path / "run"
    train(config("train.steps=3", "train.sample_every=3", "vae.disc_start_step=100"), corpus, run)
    folder = run / "samples" / "step-00000003"
    # The corpus's valid split holds 2 clips; a sample batch is min(4, batch_size) = 2 of them.
    assert sorted(p.name for p in folder.iterdir()) == ["0-real.wav", "0-reconstructed.wav", "1-real.wav",
                                                        "1-reconstructed.wav", "spectrograms.png"]
    real, rate = sf.read(folder / "0-real.wav")
    fake, _ = sf.read(folder / "0-reconstructed.wav")
    # Held-out samples are cut longer than the training crops (0.1 s here), to be listened to, and
    # a clip shorter than that (clip-004: 1 s < SAMPLE_SECONDS) is written without its padding.
    assert SAMPLE_SECONDS > 1.0
    assert rate == RATE and real.shape == fake.shape == (RATE,)
    assert abs(real).max() > 0.1 and not (real == fake).all()
    assert (folder / "spectrograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ema_weights_are_checkpointed_and_exported(corpus, tmp_path):
    run = tmp_path / "run"
    train(config("train.ema_decay=0.9", "train.steps=3", "train.checkpoint_every=1", "vae.disc_start_step=100"), corpus, run)
    raw = [unprefixed(read_tensors(run / "checkpoints" / f"step-{s:08d}" / "models.safetensors")[0], "vae") for s in (1, 2, 3)]
    ema_file, _ = read_tensors(run / "checkpoints" / "step-00000003" / "ema.safetensors")
    assert ema_file["vae.n_averaged"].item() == 3
    ema = unprefixed(ema_file, "vae.module")
    exported, _ = read_tensors(run / "vae.safetensors")
    assert set(exported) == set(ema) == set(raw[2])
    for k, v in exported.items():
        assert torch.equal(v, ema[k]), k
        # The first update copies; then e ← 0.9 e + 0.1 w: e₃ = 0.81 w₁ + 0.09 w₂ + 0.1 w₃.
        assert torch.allclose(v, 0.81 * raw[0][k] + 0.09 * raw[1][k] + 0.1 * raw[2][k], rtol=0, atol=1e-6), k
    assert any(not torch.equal(exported[k], raw[2][k]) for k in exported)
    assert "vae.n_averaged" not in read_tensors(run / "checkpoints" / "step-00000003" / "models.safetensors")[0]


def test_the_discriminator_step_sees_only_its_own_gradients(corpus, tmp_path):
    # The generator's adversarial and feature losses flow back into the discriminators' parameters;
    # those gradients must not be carried into the discriminators' next update.
    eng = engine(config("vae.disc_start_step=0", "train.steps=3"), corpus, tmp_path / "run")
    disc = eng.unwrapped("discriminators")
    optimize, backward = eng.optimize, eng.accelerator.backward
    current, seen = {}, []

    def spy_optimize(name, loss):
        current["name"] = name
        return optimize(name, loss)

    def spy_backward(loss, **kwargs):
        if current["name"] == "discriminators":
            seen.append(sum(float(p.grad.abs().sum()) for p in disc.parameters() if p.grad is not None))
        return backward(loss, **kwargs)

    eng.optimize, eng.accelerator.backward = spy_optimize, spy_backward
    eng.fit()
    assert seen == [0.0, 0.0, 0.0]


def test_lr_factor_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    assert [lr_factor(s, 4, 100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 100) == 1.0
    assert lr_factor(52, 4, 100) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lr_factor(28, 4, 100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, 4, 100) == pytest.approx(0.1) and lr_factor(500, 4, 100) == pytest.approx(0.1)
    assert lr_factor(100, 4, 100, floor=0.0) == pytest.approx(0.0, abs=1e-12)
    decay = [lr_factor(s, 4, 100) for s in range(4, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_factor(0, 0, 10) == 1.0  # no warm-up


def test_a_clip_without_a_caption_keeps_its_audio_s_mulan_tokens():
    """However the draw falls, an uncaptioned clip is told its audio's MuLan tokens, not those of ""; the draw itself is
    the one a fully captioned batch makes, so a captioned corpus trains exactly as before."""
    audio = torch.arange(12).view(4, 3)
    text = 100 + audio
    batch = {"caption": ["a", "", "b", " "], "text_mulan": text}
    generator = torch.Generator().manual_seed(0)
    tokens, told = audio_or_caption(audio, batch, 1.0, generator, caption_tokens=None)
    assert told.tolist() == [True, False, True, False]
    assert torch.equal(tokens, torch.stack([text[0], audio[1], text[2], audio[3]]))
    captioned = torch.Generator().manual_seed(0)
    _, all_told = audio_or_caption(audio, {**batch, "caption": ["a", "c", "b", "d"]}, 1.0, captioned, None)
    assert all_told.all() and torch.equal(generator.get_state(), captioned.get_state())
