"""Convolution stacks for waveform models: the HiFi-GAN / DAC family used by the audio VAE-GAN.

A residual unit is Snake → dilated conv (kernel 7) → Snake → 1×1 conv, added to its input; an
encoder block is three residual units (dilations 1, 3, 9) then a strided convolution; a decoder
block is a transposed convolution then three residual units. Snake (x + sin²(αx)/α, learnable α
per channel; Ziyin et al. 2020, used by BigVGAN and DAC) is chosen over HiFi-GAN's LeakyReLU
because its periodic bias suits audio; every convolution is weight-normalised, as in both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake activation: x + sin²(αx) / α, with α `(channels, 1)` broadcast over `(b, c, t)`."""
    return x + torch.sin(alpha * x).pow(2) / (alpha + 1e-9)


class Snake(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x, self.alpha)


def conv1d(c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv1d:
    """Weight-normalised conv whose 'same' padding keeps `t / stride` frames for `t` divisible by `stride`."""
    padding = (dilation * (kernel - 1) - (stride - 1) + 1) // 2 if stride == 1 else (kernel - stride + 1) // 2
    return weight_norm(nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation, padding=padding))


def conv_transpose1d(c_in: int, c_out: int, stride: int) -> nn.ConvTranspose1d:
    """Weight-normalised transposed conv (kernel 2·stride) that turns `t` frames into exactly `t · stride`."""
    kernel = 2 * stride
    return weight_norm(nn.ConvTranspose1d(c_in, c_out, kernel, stride=stride, padding=(kernel - stride + 1) // 2,
                                          output_padding=stride % 2))


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, kernel: int = 7) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake(channels), conv1d(channels, channels, kernel, dilation=dilation),
            Snake(channels), conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """`(b, c_in, t)` → `(b, c_out, t / stride)`."""

    def __init__(self, c_in: int, c_out: int, stride: int, dilations: tuple[int, ...] = (1, 3, 9)) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[ResidualUnit(c_in, d) for d in dilations],
            Snake(c_in), conv1d(c_in, c_out, 2 * stride, stride=stride),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """`(b, c_in, t)` → `(b, c_out, t · stride)`."""

    def __init__(self, c_in: int, c_out: int, stride: int, dilations: tuple[int, ...] = (1, 3, 9)) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake(c_in), conv_transpose1d(c_in, c_out, stride),
            *[ResidualUnit(c_out, d) for d in dilations],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)
