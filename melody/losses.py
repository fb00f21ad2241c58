"""Losses of the audio VAE-GAN (MeLoDy §3.3; the paper gives no terms or weights, so we follow
vocoder/codec practice, as `shared/reference/melody-paper.md` records):

- multi-scale mel reconstruction (DAC, Kumar et al. 2023): L1 between log-mel spectrograms at 7
  window lengths (32 … 2048 samples, 5 … 320 mel bins), plus L1 between the mel magnitudes;
- multi-resolution STFT distance (Parallel WaveGAN, Yamamoto et al. 2020, Eq. 1–3): spectral
  convergence + log-magnitude L1, used as an evaluation distance;
- adversarial: least squares (HiFi-GAN, Eq. 1–2) or hinge (EnCodec/MelGAN), summed over
  sub-discriminators; feature matching: L1 between the discriminator's hidden activations on
  real and generated audio, each map normalised by its mean magnitude on real audio (EnCodec §3.4).

All spectra are computed in float32 even under mixed precision. Each function returns a mean
over the batch unless its name says `per_example`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from melody.audio import mel_filterbank
from melody.discriminators import DiscriminatorOutput


def _magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """`(b, c, t)` → `(b·c, bins, frames)` STFT magnitude in float32."""
    x = audio.reshape(-1, audio.shape[-1]).float()
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True).abs()


def mel_loss_per_example(
    fake: torch.Tensor,
    real: torch.Tensor,
    sample_rate: int,
    windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048),
    bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320),
    eps: float = 1e-5,
) -> torch.Tensor:
    """Σ over scales of mean |log mel(fake) − log mel(real)| + mean |mel(fake) − mel(real)|; `(b,)`."""
    b = real.shape[0]
    total = real.new_zeros(b, dtype=torch.float32)
    for n_fft, n_mels in zip(windows, bins, strict=True):
        fb = mel_filterbank(sample_rate, n_fft, n_mels).to(real.device)
        mf = fb @ _magnitude(fake, n_fft, n_fft // 4)
        mr = fb @ _magnitude(real, n_fft, n_fft // 4)
        log_term = (mf.clamp_min(eps).log10() - mr.clamp_min(eps).log10()).abs()
        lin_term = (mf - mr).abs()
        total = total + log_term.reshape(b, -1).mean(1) + lin_term.reshape(b, -1).mean(1)
    return total


def stft_distance_per_example(
    fake: torch.Tensor, real: torch.Tensor, ffts: tuple[int, ...] = (2048, 1024, 512), eps: float = 1e-7
) -> torch.Tensor:
    """Multi-resolution STFT distance: mean over resolutions of spectral convergence + log-magnitude L1; `(b,)`."""
    b = real.shape[0]
    total = real.new_zeros(b, dtype=torch.float32)
    for n_fft in ffts:
        sf = _magnitude(fake, n_fft, n_fft // 4).reshape(b, -1)
        sr = _magnitude(real, n_fft, n_fft // 4).reshape(b, -1)
        convergence = (sf - sr).norm(dim=1) / sr.norm(dim=1).clamp_min(eps)
        log_mag = (sf.clamp_min(eps).log() - sr.clamp_min(eps).log()).abs().mean(1)
        total = total + convergence + log_mag
    return total / len(ffts)


def discriminator_loss(real: list[DiscriminatorOutput], fake: list[DiscriminatorOutput], kind: str = "lsgan") -> torch.Tensor:
    """LSGAN: E(D(x) − 1)² + E D(x̂)²; hinge: E relu(1 − D(x)) + E relu(1 + D(x̂)); summed over sub-discriminators."""
    total = 0.0
    for r, f in zip(real, fake, strict=True):
        if kind == "lsgan":
            total = total + (r.logits - 1).pow(2).mean() + f.logits.pow(2).mean()
        elif kind == "hinge":
            total = total + F.relu(1 - r.logits).mean() + F.relu(1 + f.logits).mean()
        else:
            raise ValueError(f"unknown adversarial loss '{kind}' (lsgan or hinge)")
    return total


def generator_adversarial_loss(fake: list[DiscriminatorOutput], kind: str = "lsgan") -> torch.Tensor:
    """LSGAN: E(D(x̂) − 1)²; hinge: E relu(1 − D(x̂)); summed over sub-discriminators."""
    total = 0.0
    for f in fake:
        if kind == "lsgan":
            total = total + (f.logits - 1).pow(2).mean()
        elif kind == "hinge":
            total = total + F.relu(1 - f.logits).mean()
        else:
            raise ValueError(f"unknown adversarial loss '{kind}' (lsgan or hinge)")
    return total


def feature_matching_loss(real: list[DiscriminatorOutput], fake: list[DiscriminatorOutput]) -> torch.Tensor:
    """Mean over sub-discriminators and layers of |D_l(x) − D_l(x̂)|₁ / mean|D_l(x)| (real maps detached)."""
    terms = []
    for r, f in zip(real, fake, strict=True):
        for fr, ff in zip(r.features, f.features, strict=True):
            fr = fr.detach()
            terms.append((fr - ff).abs().mean() / fr.abs().mean().clamp_min(1e-5))
    return torch.stack(terms).mean()
