import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_cli import TINY_VAE, melody_one_thread
from test_shards import RATE, make_corpus

from melody.checkpoint import load_model, save_model
from melody.config import preset
from melody.eval.metrics import boundary_flux, mel_distance, si_sdr, spectral_flux, top_k_overlap
from melody.eval.vae import evaluate_vae
from melody.vae import VAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_si_sdr_is_scale_invariant_and_matches_a_known_snr():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 48_000, generator=g)
    noise = torch.randn(4, 48_000, generator=g)
    noise = noise - (noise * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True) * s  # orthogonal to s
    noise = noise / noise.norm(dim=-1, keepdim=True) * s.norm(dim=-1, keepdim=True) * 10 ** (-20 / 20)  # 20 dB below
    assert torch.allclose(si_sdr(s + noise, s), torch.full((4,), 20.0), atol=0.05)
    assert torch.allclose(si_sdr(3.0 * (s + noise), s), si_sdr(s + noise, s), atol=1e-4)  # gain does not matter
    assert (si_sdr(s, s) > 60).all() and (si_sdr(-s, s) > 60).all()  # any gain, even a negative one
    assert (si_sdr(noise, s) < -60).all()  # nothing of the reference in it


def test_mel_distance_is_zero_for_the_same_audio_and_grows_with_noise():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 1, 24_000, generator=g) * 0.1
    n = torch.randn(2, 1, 24_000, generator=g)
    d = [mel_distance(s + a * n, s, 24_000) for a in (0.0, 0.01, 0.1)]
    assert d[0].shape == (2,) and d[0].abs().max() < 1e-6
    assert (d[1] > 0).all() and (d[2] > d[1]).all()


def test_spectral_flux_marks_a_seam_and_not_a_steady_tone():
    rate, n = 24_000, 48_000
    t = torch.arange(n) / rate
    steady = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    flux = spectral_flux(steady, rate)
    assert flux.shape == (n // 256,)  # centred frames: n / hop + 1 of them, one change fewer
    at_joins, inside = boundary_flux(steady, rate, [n // 2])
    assert at_joins == pytest.approx(inside, rel=0.2)  # a tone has no seam
    seam = torch.cat((steady[: n // 2], 0.3 * torch.sin(2 * torch.pi * 1320 * t[n // 2:])))  # the pitch jumps at n/2
    at_joins, inside = boundary_flux(seam, rate, [n // 2])
    assert at_joins > 5 * inside  # measured: 1.45 vs 0.16


def test_top_k_overlap_counts_shared_tags():
    a = np.array([0.9, 0.8, 0.1, 0.0, 0.7])
    b = np.array([0.9, 0.0, 0.8, 0.1, 0.7])
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3) and top_k_overlap(a, a, 3) == 1.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A corpus (with a test split) and an untrained tiny VAE exported like a run's model."""
    root = tmp_path_factory.mktemp("eval")
    corpus = make_corpus(root / "corpus", clips=10, per_shard=3)
    # make_corpus writes train/valid; evaluate the valid split (2 clips of 1 and 2 s).
    cfg = preset("tiny", TINY_VAE)
    torch.manual_seed(0)
    model = root / "model"
    save_model(model, "vae", VAE(cfg.vae), cfg, "vae")
    return corpus, model


def test_the_report_measures_every_held_out_clip(tiny_model):
    corpus, model = tiny_model
    vae = load_model(model, "vae", "vae", lambda c: VAE(c.vae))
    report, examples = evaluate_vae(vae, corpus, "valid")
    assert report.clips == 2 and [r["key"] for r in report.per_clip] == ["clip-004", "clip-009"]
    assert report.latent_rate_hz == RATE / 192 and len(report.latent_dim_std) == 16
    assert 0.0 <= report.latent_cut_fraction <= 1.0
    for key in ("mel_distance", "multiscale_mel", "stft_distance", "si_sdr_db"):
        assert np.isfinite(getattr(report, key))
    assert report.mel_distance > 0.1  # an untrained model does not reconstruct
    assert report.tag_top5_overlap is None  # no tagger given
    assert len(examples) == 2 and examples[0][1].shape == examples[0][2].shape


def test_eval_and_export_commands(tiny_model, tmp_path):
    corpus, model = tiny_model
    out = melody_one_thread("eval", "vae", str(model), "--data", str(corpus), "--split", "valid", "--out", str(tmp_path / "r"),
                            "--no-progress")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r" / "vae_eval.json").read_text())
    assert report["clips"] == 2 and "mel distance" in out.stdout and "musicnn top-5 tag overlap" in out.stdout
    assert report["tag_top5_overlap"] is not None and report["tag_top5_overlap_between_different_clips"] is not None
    assert (tmp_path / "r" / "vae_eval.png").read_bytes()[:4] == b"\x89PNG"

    empty = melody_one_thread("eval", "vae", str(model), "--data", str(corpus), "--split", "test", "--no-tagger",
                              "--out", str(tmp_path / "r2"), "--no-progress")
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1 and "split" in empty.stderr

    half = melody_one_thread("export", str(model), "--out", str(tmp_path / "half"), "--half")
    assert half.returncode == 0, half.stderr
    with safe_open(str(tmp_path / "half" / "vae.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    full = load_model(model, "vae", "vae", lambda c: VAE(c.vae))
    small = load_model(tmp_path / "half", "vae", "vae", lambda c: VAE(c.vae))
    assert next(small.parameters()).dtype == torch.float32
    audio = torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        a, b = full(audio, sample=False).audio, small(audio, sample=False).audio
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=1e-2 * a.abs().max().item() + 1e-6)
