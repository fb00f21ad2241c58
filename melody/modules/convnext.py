"""ConvNeXt blocks over frame sequences (Liu et al. 2022, 1-D as in Vocos, Siuzdak 2023).

A block: depth-wise conv (kernel 7) → LayerNorm → Linear(d, 3d) → GELU → Linear(3d, d) → learned
per-channel scale (init 1/n_layers) → residual. Dense matrix products at the frame rate: the cheap
way to give a frame-rate model capacity, and fast on CPUs.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNeXtBlock(nn.Module):
    """`(b, d, t)` → `(b, d, t)`."""

    def __init__(self, dim: int, layer_scale: float, expansion: int = 3, kernel: int = 7) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.up = nn.Linear(dim, expansion * dim)
        self.act = nn.GELU()
        self.down = nn.Linear(expansion * dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)  # (b, t, d)
        h = self.down(self.act(self.up(self.norm(h))))
        return x + (self.scale * h).transpose(1, 2)


class ConvNeXtStack(nn.Module):
    """Input projection → `layers` ConvNeXt blocks → LayerNorm; `(b, c_in, t)` → `(b, dim, t)`."""

    def __init__(self, c_in: int, dim: int, layers: int, embed_kernel: int = 7) -> None:
        super().__init__()
        self.embed = nn.Conv1d(c_in, dim, embed_kernel, padding=embed_kernel // 2)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, 1.0 / layers) for _ in range(layers))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_in(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.norm_out(x.transpose(1, 2)).transpose(1, 2)
