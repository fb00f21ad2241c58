"""Residual vector quantisation with EMA codebooks: how MeLoDy turns a MuLan embedding into tokens.

MeLoDy conditions its semantic LM on **12 MuLan tokens**: the MuLan embedding quantised by a
residual VQ of 12 levels (§3.1, Fig. 1; MusicLM §3.1 uses 1024 codes per level). This module is
that RVQ, written once for every stage that needs one.

- **Residual VQ** (SoundStream, Zeghidour et al. 2021, Alg. 1): level 1 quantises x to its
  nearest codeword q₁, level l quantises the residual r_l = x − Σ_{i<l} q_i; the output is
  Σ_l q_l and the codes are the chosen indices, one per level (`residual_quantize`, `dequantize`).
- **EMA codebooks** (van den Oord et al. 2017, App. A.1; Razavi et al. 2019, VQ-VAE-2): per code,
  N_i ← γ N_i + (1 − γ) n_i (how many vectors chose it) and m_i ← γ m_i + (1 − γ) Σ_{j→i} r_j;
  the codeword is e_i = m_i / N_i, with N_i Laplace-smoothed (as in the reference Sonnet
  implementation) so that an unused code does not divide by zero (`ema_codebook_update`).
  Codebooks are buffers, changed only in training mode, under `torch.no_grad`; no optimiser
  touches them.
- **k-means initialisation** from the first training batch, level by level on the residuals
  (SoundStream §3.3), with `melody.modules.kmeans.fit_kmeans`; or explicitly, from a larger
  sample, with `initialize`. The `initialized` buffer records it, and travels with checkpoints.
- **Dead-code restart** (SoundStream §3.3; EnCodec's EMA-cluster-size threshold): after each EMA
  step a code whose EMA cluster size is below `dead_threshold` is replaced by a random residual
  vector of the current batch at its level, drawn from the passed-in `torch.Generator`, and its
  statistics are reset to (N_i, m_i) = (threshold, threshold · vector) so the EMA agrees with the
  new codeword (`restart_dead_codes`).
- **Commitment loss** β Σ_l ‖r_l − sg(q_l)‖² (mean over elements, summed over levels; van den
  Oord et al. 2017, Eq. 3, third term) and the **straight-through estimator**
  x + sg(Σ q_l − x), whose gradient with respect to x is the identity.

Choices where the papers are silent: β = 0.25 (VQ-VAE's value); `dead_threshold` counts
vectors per batch (EMA of per-batch counts), so it must stay well below `vectors per batch /
codebook_size` — 12 × 1024 MuLan codes want batches of thousands of embeddings (k-means
initialisation also needs at least `codebook_size` vectors); the restart draws one candidate per
code every step, used or not, so the generator advances the same way whatever is dead; the
EMA statistics are per process (no all-reduce across data-parallel ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from melody.errors import MelodyError
from melody.modules.kmeans import assign, fit_kmeans


@dataclass
class RVQResult:
    """What `ResidualVQ.forward` returns (audiocraft's `QuantizedResult`, minus the bandwidth)."""

    quantized: torch.Tensor  # (b, ..., d) Σ_l q_l, straight-through: its gradient reaches the input unchanged
    codes: torch.Tensor  # (b, ..., levels) long
    commitment_loss: torch.Tensor  # () β Σ_l mean ‖r_l − sg(q_l)‖²
    perplexity: torch.Tensor  # (levels,) exp(entropy) of this batch's code histogram, in [1, codebook_size]
    usage: torch.Tensor  # (levels,) fraction of each level's codes this batch used


def residual_quantize(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """SoundStream Alg. 1 over `x` `(n, d)` with `codebooks` `(levels, k, d)`.

    Returns the codes `(n, levels)`, the residual each level quantised (r₁ = x, with x's
    gradient) and the codeword each level chose (no gradient), both lists of `(n, d)`.
    """
    residual = x
    codes, residuals, chosen = [], [], []
    for codebook in codebooks:
        index = assign(residual, codebook)  # (n,)
        q = codebook[index]  # (n, d); a copy, so later in-place codebook updates do not touch it
        codes.append(index)
        residuals.append(residual)
        chosen.append(q)
        residual = residual - q
    return torch.stack(codes, -1), residuals, chosen


def sum_levels(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Σ_l q_l, accumulated level by level (the one summation order `forward` and `decode` share)."""
    total = torch.zeros_like(vectors[0])
    for q in vectors:
        total = total + q
    return total


def dequantize(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Codes `(..., l)` → Σ_{i<l} codebooks[i][codes[..., i]] `(..., d)`, for any l ≤ levels."""
    if codes.shape[-1] > codebooks.shape[0]:
        raise ValueError(f"codes of {codes.shape[-1]} levels cannot be decoded with {codebooks.shape[0]} codebooks")
    if codes.shape[-1] == 0:
        return codebooks.new_zeros(*codes.shape[:-1], codebooks.shape[-1])
    return sum_levels([codebooks[level][codes[..., level]] for level in range(codes.shape[-1])])


def ema(moving: torch.Tensor, new: torch.Tensor, decay: float) -> torch.Tensor:
    """γ · moving + (1 − γ) · new (van den Oord et al. 2017, App. A.1)."""
    return moving * decay + new * (1.0 - decay)


def laplace_smoothed(cluster_size: torch.Tensor, eps: float) -> torch.Tensor:
    """(N_i + ε) / (Σ N + k ε) · Σ N: cluster sizes kept positive, their total unchanged."""
    total = cluster_size.sum()
    return ((cluster_size + eps) / (total + cluster_size.numel() * eps) * total).clamp_min(eps)


def code_statistics(vectors: torch.Tensor, codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per code: how many of `vectors` `(n, d)` chose it `(k,)` and their sum `(k, d)`."""
    counts = torch.bincount(codes, minlength=codebook_size).to(vectors.dtype)
    sums = vectors.new_zeros(codebook_size, vectors.shape[-1]).index_add_(0, codes, vectors)
    return counts, sums


def ema_codebook_update(cluster_size: torch.Tensor, embed_sum: torch.Tensor, vectors: torch.Tensor,
                        codes: torch.Tensor, decay: float, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EMA step (VQ-VAE App. A.1): returns the new (N `(k,)`, m `(k, d)`, codebook e = m / N `(k, d)`)."""
    counts, sums = code_statistics(vectors, codes, cluster_size.shape[0])
    cluster_size = ema(cluster_size, counts, decay)
    embed_sum = ema(embed_sum, sums, decay)
    return cluster_size, embed_sum, embed_sum / laplace_smoothed(cluster_size, eps)[:, None]


def restart_dead_codes(codebook: torch.Tensor, cluster_size: torch.Tensor, embed_sum: torch.Tensor, vectors: torch.Tensor,
                       threshold: float, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace codes with N_i < `threshold` by random rows of `vectors` `(n, d)`; returns (codebook, N, m).

    One candidate row per code is drawn from `generator` (on its own device) every call, so the
    generator advances identically whether or not any code is dead; restarted codes get
    N_i = threshold and m_i = threshold · vector, consistent with their new codeword.
    """
    k = codebook.shape[0]
    device = generator.device if generator is not None else vectors.device
    picks = torch.randint(vectors.shape[0], (k,), generator=generator, device=device).to(vectors.device)
    fresh = vectors[picks]  # (k, d)
    dead = cluster_size < threshold  # (k,)
    codebook = torch.where(dead[:, None], fresh, codebook)
    embed_sum = torch.where(dead[:, None], fresh * threshold, embed_sum)
    cluster_size = torch.where(dead, torch.full_like(cluster_size, threshold), cluster_size)
    return codebook, cluster_size, embed_sum


def code_perplexity(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per level of `codes` `(n, levels)`: exp(entropy) of the code histogram and the fraction of codes used."""
    n, levels = codes.shape
    counts = torch.zeros(levels, codebook_size, device=codes.device).scatter_add_(
        1, codes.T, torch.ones(levels, n, device=codes.device))  # (levels, k)
    p = counts / max(n, 1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return entropy.exp(), (counts > 0).float().mean(-1)


class ResidualVQ(nn.Module):
    """`(b, ..., dim)` → `RVQResult`; `encode` / `decode` for codes `(b, ..., levels)`.

    Buffers (all persistent): `codebooks` `(levels, k, dim)`, `cluster_size` `(levels, k)`,
    `embed_sum` `(levels, k, dim)` (the EMA statistics N and m), `initialized` `()` bool. Math in
    float32 whatever the input's dtype; `quantized` comes back in the input's dtype.
    """

    def __init__(self, dim: int, levels: int, codebook_size: int, decay: float = 0.99, commitment: float = 0.25,
                 dead_threshold: float = 2.0, eps: float = 1e-5, kmeans_iters: int = 50) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.dim, self.levels, self.codebook_size = dim, levels, codebook_size
        self.decay, self.commitment, self.dead_threshold, self.eps = decay, commitment, dead_threshold, eps
        self.kmeans_iters = kmeans_iters
        self.register_buffer("codebooks", torch.zeros(levels, codebook_size, dim))
        self.register_buffer("cluster_size", torch.zeros(levels, codebook_size))
        self.register_buffer("embed_sum", torch.zeros(levels, codebook_size, dim))
        self.register_buffer("initialized", torch.tensor(False))

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"ResidualVQ of width {self.dim} got vectors of width {x.shape[-1]}")
        return x.reshape(-1, self.dim).to(self.codebooks.dtype)  # (n, d)

    def _require_initialized(self) -> None:
        if not bool(self.initialized):
            raise MelodyError("the residual VQ has no codebooks yet; train it (k-means starts them) or load its weights")

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, seed: int = 0) -> None:
        """k-means codebooks from `x` `(..., dim)`, level by level on the residuals (needs ≥ codebook_size vectors)."""
        residual = self._flat(x).detach()
        for level in range(self.levels):
            centroids = fit_kmeans(residual, self.codebook_size, seed + level, max_iter=self.kmeans_iters)
            centroids = centroids.to(residual.dtype)
            index = assign(residual, centroids)
            counts, sums = code_statistics(residual, index, self.codebook_size)
            self.codebooks[level].copy_(centroids)
            self.cluster_size[level].copy_(counts)
            self.embed_sum[level].copy_(sums)
            residual = residual - centroids[index]
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> RVQResult:
        """Quantise `x` `(b, ..., dim)`; in training mode also initialise (first call), EMA-update and restart codes."""
        flat = self._flat(x)  # (n, d)
        if self.training and not bool(self.initialized):
            seed_device = generator.device if generator is not None else "cpu"
            self.initialize(flat, seed=int(torch.randint(2**31 - 1, (), generator=generator, device=seed_device)))
        self._require_initialized()
        codes, residuals, chosen = residual_quantize(flat, self.codebooks)  # with the codebooks as they were on entry
        quantized = sum_levels(chosen)  # (n, d)
        commitment_loss = self.commitment * sum_levels([F.mse_loss(r, q) for r, q in zip(residuals, chosen)])
        if self.training and flat.shape[0] > 0:
            self._update(residuals, codes, generator)
        perplexity, usage = code_perplexity(codes, self.codebook_size)
        straight_through = flat + (quantized - flat).detach()
        return RVQResult(
            quantized=straight_through.reshape(x.shape).to(x.dtype),
            codes=codes.reshape(*x.shape[:-1], self.levels),
            commitment_loss=commitment_loss,
            perplexity=perplexity,
            usage=usage,
        )

    @torch.no_grad()
    def _update(self, residuals: list[torch.Tensor], codes: torch.Tensor, generator: torch.Generator | None) -> None:
        """EMA step, then dead-code restart, for each level on the residuals it quantised."""
        for level, residual in enumerate(residuals):
            residual = residual.detach()
            cluster_size, embed_sum, codebook = ema_codebook_update(
                self.cluster_size[level], self.embed_sum[level], residual, codes[:, level], self.decay, self.eps)
            codebook, cluster_size, embed_sum = restart_dead_codes(
                codebook, cluster_size, embed_sum, residual, self.dead_threshold, generator)
            self.codebooks[level].copy_(codebook)
            self.cluster_size[level].copy_(cluster_size)
            self.embed_sum[level].copy_(embed_sum)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """`x` `(b, ..., dim)` → codes `(b, ..., levels)` with the first `levels` codebooks (all by default); no updates."""
        self._require_initialized()
        levels = self.levels if levels is None else levels
        if not 1 <= levels <= self.levels:
            raise ValueError(f"encode with 1 to {self.levels} levels, not {levels}")
        flat = self._flat(x)
        codes, _, _ = residual_quantize(flat, self.codebooks[:levels])
        return codes.reshape(*x.shape[:-1], codes.shape[-1])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `(b, ..., l)`, l ≤ levels → the sum of their codewords `(b, ..., dim)` (float32)."""
        return dequantize(codes, self.codebooks)
