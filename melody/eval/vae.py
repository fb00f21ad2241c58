"""`melody eval vae`: how well the trained VAE-GAN reconstructs held-out music.

For each held-out clip (whole clips, not crops) the report measures, between the original and
its reconstruction through the posterior mean: the mel distance (80-bin log-mel L1), the
multi-scale mel loss the VAE trained on, the multi-resolution STFT distance, SI-SDR; the
latent statistics (posterior mean and spread, and the fraction of sampled latent values that the
[−1, 1] map for the diffusion cuts, §3.3: "fewer than 0.1 %"); and whether the pretrained
musicnn tagger hears the same music: the share of the original's top-5 tags that are also the
reconstruction's, beside the same overlap between two *different* originals (the chance level).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from melody.data.loader import ShardDataset, make_loader
from melody.data.plots import spectrogram_grid
from melody.eval.metrics import mel_distance, si_sdr, top_k_overlap
from melody.errors import MelodyError
from melody.io import write_json_atomic
from melody.losses import mel_loss_per_example, stft_distance_per_example
from melody.vae import VAE



@dataclass
class VAEReport:
    clips: int
    split: str
    seconds: float
    mel_distance: float
    multiscale_mel: float
    stft_distance: float
    si_sdr_db: float
    si_sdr_db_median: float
    latent_rate_hz: float
    latent_mean: float
    latent_std: float  # spread of posterior means over frames and dims
    posterior_sigma: float  # mean σ of the posterior
    latent_cut_fraction: float  # share of sampled values beyond ±latent_clamp
    latent_dim_std: list[float]
    tag_top5_overlap: float | None
    tag_top1_match: float | None
    tag_top5_overlap_between_different_clips: float | None
    per_clip: list[dict]


@torch.no_grad()
def evaluate_vae(vae: VAE, data_root: str | Path, split: str = "test", limit: int | None = None, tagger=None,
                 seed: int = 0, progress=None) -> tuple[VAEReport, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Reconstruct the clips of `split`, each whole; returns the report and (key, real, reconstructed) for pictures."""
    rate = vae.cfg.sample_rate
    dataset = ShardDataset.whole_clips(data_root, split, rate, vae.cfg.channels)
    device = next(vae.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    rows, examples, cut, total, means, sigmas, seconds = [], [], 0, 0, [], [], 0.0
    tags_real, tags_fake = [], []
    for batch in make_loader(dataset, 1, 0, drop_last=False):
        n = int(batch["length"][0])
        real = batch["audio"][..., :n].to(device)  # the whole clip, without the loader's padding
        posterior = vae.encode(real)
        fake = vae.decode(posterior.mean, n)
        z = posterior.sample(generator)
        cut += int((z.abs() > vae.cfg.latent_clamp).sum())
        total += z.numel()
        means.append(posterior.mean[0].T)
        sigmas.append(torch.exp(0.5 * posterior.logvar).mean().item())
        seconds += n / rate
        row = {
            "key": batch["key"][0],
            "mel_distance": float(mel_distance(fake, real, rate)[0]),
            "multiscale_mel": float(mel_loss_per_example(fake, real, rate, vae.cfg.mel_windows, vae.cfg.mel_bins)[0]),
            "stft_distance": float(stft_distance_per_example(fake, real)[0]),
            "si_sdr_db": float(si_sdr(fake.reshape(1, -1), real.reshape(1, -1))[0]),
        }
        r, f = real[0].float().cpu().numpy(), fake[0].float().cpu().numpy()
        if tagger is not None:
            tr, tf = tagger.tags(r.mean(0), rate), tagger.tags(f.mean(0), rate)
            tags_real.append(tr)
            tags_fake.append(tf)
            row["tags_real"] = [tagger.labels[j] for j in np.argsort(-tr)[:5]]
            row["tags_reconstructed"] = [tagger.labels[j] for j in np.argsort(-tf)[:5]]
        rows.append(row)
        if len(examples) < 4:
            examples.append((batch["key"][0], r, f))
        if progress is not None:
            progress()
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise MelodyError(f"{data_root}: the '{split}' split has no clips; choose another --split")
    flat = torch.cat(means)
    overlap = top1 = chance = None
    if tagger is not None:
        k = len(rows)
        overlap = float(np.mean([top_k_overlap(tags_real[i], tags_fake[i], 5) for i in range(k)]))
        top1 = float(np.mean([np.argmax(tags_real[i]) == np.argmax(tags_fake[i]) for i in range(k)]))
        # Pair each clip with one half the split away: another piece (a split lists clips piece by piece).
        chance = float(np.mean([top_k_overlap(tags_real[i], tags_real[(i + k // 2) % k], 5) for i in range(k)])) if k > 1 else None
    report = VAEReport(
        clips=len(rows), split=split, seconds=round(seconds, 3),
        mel_distance=_mean(rows, "mel_distance"), multiscale_mel=_mean(rows, "multiscale_mel"),
        stft_distance=_mean(rows, "stft_distance"), si_sdr_db=_mean(rows, "si_sdr_db"),
        si_sdr_db_median=float(np.median([r["si_sdr_db"] for r in rows])),
        latent_rate_hz=vae.latent_rate, latent_mean=float(flat.mean()), latent_std=float(flat.std()),
        posterior_sigma=float(np.mean(sigmas)), latent_cut_fraction=cut / max(total, 1),
        latent_dim_std=[round(float(s), 4) for s in flat.std(0)],
        tag_top5_overlap=overlap, tag_top1_match=top1, tag_top5_overlap_between_different_clips=chance,
        per_clip=rows,
    )
    return report, examples


def write_vae_report(report: VAEReport, examples, sample_rate: int, out: str | Path) -> tuple[Path, Path]:
    """`out/vae_eval.json` and `out/vae_eval.png` (real vs reconstructed log-mels)."""
    out = Path(out)
    json_path = write_json_atomic(out / "vae_eval.json", asdict(report))
    rows = {"real": [(k, r.mean(0)) for k, r, _ in examples], "reconstructed": [(k, f.mean(0)) for k, _, f in examples]}
    png = spectrogram_grid(rows, sample_rate, out / "vae_eval.png")
    return json_path, png


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))
