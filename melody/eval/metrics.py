"""Audio distances shared by every evaluation (pure functions over tensors)."""

from __future__ import annotations

import numpy as np
import torch

from melody.audio import log_mel


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB (Le Roux et al. 2019, Eq. 3), over the last axis; zero-mean first.

    s_target = <ŝ, s> s / ‖s‖²,  e = ŝ − s_target,  SI-SDR = 10 log10(‖s_target‖² / ‖e‖²).
    """
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def mel_distance(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int, n_mels: int = 80) -> torch.Tensor:
    """Mean |log mel(ŝ) − log mel(s)| (natural log, 1024-point STFT, hop 256, 80 bins) over all but the batch axis."""
    a = log_mel(estimate, sample_rate, n_mels=n_mels)
    b = log_mel(reference, sample_rate, n_mels=n_mels)
    return (a - b).abs().reshape(a.shape[0], -1).mean(1)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k for two score vectors (tagger outputs)."""
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def spectral_flux(wav: torch.Tensor, sample_rate: int, hop: int = 256) -> torch.Tensor:
    """Frame-to-frame change of the log mel spectrum, mean |log mel_t − log mel_{t−1}| over bins:
    `(samples,)` → `(frames − 1,)`; entry t is the change into frame t + 1 (frames `hop` samples apart)."""
    mel = log_mel(wav, sample_rate, hop=hop)
    return (mel[..., 1:] - mel[..., :-1]).abs().mean(-2)


def boundary_flux(wav: torch.Tensor, sample_rate: int, boundaries: list[int], hop: int = 256) -> tuple[float, float]:
    """(mean spectral flux at the frames that cross `boundaries` (sample indices), mean flux of all the
    other frames): a seam between two separately made chunks shows as a boundary flux above the inside one."""
    flux = spectral_flux(wav, sample_rate, hop)
    at = torch.zeros_like(flux, dtype=torch.bool)
    for b in boundaries:
        # with centred frames, frame f covers samples around f·hop: the changes into the frames nearest b cross it
        f = round(b / hop)
        at[max(0, f - 2):min(len(flux), f + 1)] = True
    return float(flux[at].mean()), float(flux[~at].mean())
