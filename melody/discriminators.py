"""Discriminators of the audio VAE-GAN (MeLoDy §3.3: "a multi-period discriminator and a
multi-resolution spectrogram discriminator").

- Multi-period (HiFi-GAN, Kong et al. 2020, §2.2): the waveform folded into `(t / p, p)` for
  periods 2, 3, 5, 7, 11, each seen by a stack of `(5, 1)` 2-D convolutions, so every
  sub-discriminator looks at samples `p` apart.
- Multi-resolution complex STFT (EnCodec, Défossez et al. 2022, §3.4): real and imaginary
  parts of the STFT at several window lengths, seen by 2-D convolutions dilated in time.

Every sub-discriminator returns its logits and the list of its intermediate feature maps (for
the feature-matching loss), as one `DiscriminatorOutput`; `Discriminators` runs all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from melody.config import VAEConfig

LEAK = 0.1


@dataclass
class DiscriminatorOutput:
    logits: torch.Tensor  # (b, 1, ...) real/fake scores per patch
    features: list[torch.Tensor]  # every hidden activation, for feature matching


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's sub-discriminator for one period `p`: `(b, 1, t)` → `(b, 1, t/(p·3⁴), p)` logits."""

    def __init__(self, period: int, channels: int, in_channels: int = 1) -> None:
        super().__init__()
        self.period = period
        widths = [in_channels] + [min(channels * 4**i, channels * 32) for i in range(4)]  # HiFi-GAN: 32, 128, 512, 1024
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(widths[i], widths[i + 1], (5, 1), stride=(3, 1), padding=(2, 0))) for i in range(4)
        )
        self.convs.append(weight_norm(nn.Conv2d(widths[-1], widths[-1], (5, 1), padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        b, c, t = audio.shape
        pad = (-t) % self.period
        x = F.pad(audio, (0, pad), mode="reflect" if pad < t else "constant")
        x = x.reshape(b, c, -1, self.period)  # (b, 1, t / p, p): columns are samples p apart
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAK)
            features.append(x)
        return DiscriminatorOutput(self.post(x), features)


class STFTDiscriminator(nn.Module):
    """EnCodec's sub-discriminator for one window length: `(b, 1, t)` → logits over (frames, bins)."""

    def __init__(self, n_fft: int, channels: int, in_channels: int = 1) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([weight_norm(nn.Conv2d(2 * in_channels, channels, (3, 9), padding=(1, 4)))])
        for dilation in (1, 2, 4):
            self.convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(dilation, 1),
                                                    padding=(dilation, 4))))
        self.convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        b, c, t = audio.shape
        spec = torch.stft(audio.reshape(b * c, t).float(), self.n_fft, self.hop, window=self.window,
                          center=True, return_complex=True)  # (b·c, bins, frames)
        x = torch.view_as_real(spec).reshape(b, c, *spec.shape[1:], 2)
        x = x.permute(0, 1, 4, 3, 2).reshape(b, 2 * c, spec.shape[2], spec.shape[1])  # (b, 2c, frames, bins)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return DiscriminatorOutput(self.post(x), features)


class Discriminators(nn.Module):
    """All sub-discriminators of the VAE-GAN: multi-period, then multi-resolution STFT."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, cfg.mpd_channels, cfg.channels) for p in cfg.mpd_periods]
            + [STFTDiscriminator(n, cfg.stft_channels, cfg.channels) for n in cfg.stft_ffts]
        )

    def forward(self, audio: torch.Tensor) -> list[DiscriminatorOutput]:
        return [d(audio) for d in self.discriminators]
