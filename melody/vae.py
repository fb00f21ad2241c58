"""Audio VAE-GAN: waveform ⇄ continuous latents (MeLoDy §3.3, "Audio VAE-GAN"; Fig. 1).

MeLoDy's diffusion runs on the latents of a VAE trained adversarially (an LDM-style
autoencoder): the encoder maps 24 kHz audio, down-sampled 96× (strides 2·4·4·3), to 250 Hz
frames of 16-dimensional Gaussian posteriors N(μ, σ²); a sample z = μ + σ·ε is decoded back by
a HiFi-GAN-style transposed-conv upsampler with residual blocks. For the diffusion the latents
are mapped into [−1, 1] (§3.3: "fewer than 0.1 % of values are cut").

Choices where the paper is silent (documented in `shared/reference/melody-paper.md`):
- layout: DAC's (Kumar et al. 2023) encoder/decoder blocks with Snake activations, widths given
  at the latent end (encoder 256, decoder 768) halving per stride towards the waveform;
- the [−1, 1] map: clamp at ±`latent_clamp`, then divide by it (no tanh), so it is exactly
  invertible inside the range; `latent_clamp` starts at 3 and, when training ends, is set from
  the training data to the value that cuts `latent_cut` (0.05 %) of the sampled latents
  (`calibrate_clamp`; the paper's "fewer than 0.1 %"), because a KL-regularised VAE's latents
  have heavier tails than N(0, 1) (3 % of them lay beyond ±3 in our tiny run). `melody eval vae`
  reports the share cut on held-out clips;
- KL against N(0, I) in closed form, weighted 0.004 (the lineage's weight);
- a tanh at the output keeps the waveform in [−1, 1].

Latent frame rate: `sample_rate / prod(strides)` — 250 Hz for `paper` (24 000 / 96), 125 Hz for
`tiny` (24 000 / 192, the lower rate the lineage later moved to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from melody.config import VAEConfig
from melody.modules.conv import DecoderBlock, EncoderBlock, Snake, conv1d
from melody.modules.convnext import ConvNeXtStack


def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, generator=None) -> torch.Tensor:
    """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2014, Eq. 10); ε is drawn from `generator`, or row i of the
    batch from `generator[i]` (a sequence), so that a row's sample does not depend on the other rows."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != mean.shape[0]:
            raise ValueError(f"{len(generator)} generators for {mean.shape[0]} rows")
        eps = torch.cat([torch.randn(1, *mean.shape[1:], generator=g, device=g.device, dtype=mean.dtype)
                         for g in generator]).to(mean.device)
    else:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1 − log σ²), element-wise (closed form)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def to_diffusion_range(z: torch.Tensor, clamp: float) -> torch.Tensor:
    """Latents → [−1, 1] for the diffusion: clamp at ±`clamp`, divide by it."""
    return z.clamp(-clamp, clamp) / clamp


def from_diffusion_range(x: torch.Tensor, clamp: float) -> torch.Tensor:
    """The inverse of `to_diffusion_range` inside the range."""
    return x * clamp


def calibrate_clamp(z: torch.Tensor, cut: float) -> float:
    """The clamp that cuts a share `cut` of the values of `z`: the (1 − cut) quantile of |z|."""
    flat = z.detach().abs().flatten().float()
    if flat.numel() > 1_000_000:  # torch.quantile's input limit; a strided subset is plenty
        flat = flat[:: -(-flat.numel() // 1_000_000)]
    return float(torch.quantile(flat, 1.0 - cut))


def stage_widths(top: int, stages: int, floor: int) -> list[int]:
    """Widths from the waveform end to the latent end: `top` at the latent end, halving per stage."""
    return [max(top >> (stages - i), floor) for i in range(stages + 1)]


@dataclass
class Posterior:
    """The encoder's diagonal Gaussian over latent frames."""

    mean: torch.Tensor  # (b, d, l)
    logvar: torch.Tensor  # (b, d, l)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return reparameterise(self.mean, self.logvar, generator)

    def kl(self) -> torch.Tensor:
        return kl_divergence(self.mean, self.logvar)


@dataclass
class VAEOutput:
    audio: torch.Tensor  # (b, c, t) reconstruction, same length as the input
    posterior: Posterior
    latents: torch.Tensor  # (b, d, l) the sample that was decoded


class Encoder(nn.Module):
    """`(b, c, t)` waveform, t divisible by the hop → `(b, 2d, t / hop)` posterior parameters."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = stage_widths(cfg.encoder_channels, len(cfg.strides), cfg.min_channels)
        layers: list[nn.Module] = [conv1d(cfg.channels, widths[0], 7)]
        for i, stride in enumerate(cfg.strides):
            layers.append(EncoderBlock(widths[i], widths[i + 1], stride, cfg.dilations))
        layers += [Snake(widths[-1]), conv1d(widths[-1], 2 * cfg.latent_dim, 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.net(audio)


class Decoder(nn.Module):
    """`(b, d, l)` latents → `(b, c, l · hop)` waveform in [−1, 1]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = stage_widths(cfg.decoder_channels, len(cfg.strides), cfg.min_channels)[::-1]
        layers: list[nn.Module] = [conv1d(cfg.latent_dim, widths[0], 7)]
        for i, stride in enumerate(reversed(cfg.strides)):
            layers.append(DecoderBlock(widths[i], widths[i + 1], stride, cfg.dilations))
        layers += [Snake(widths[-1]), conv1d(widths[-1], cfg.channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def stft_same(audio: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """`(b, t)` with t = L·hop → complex `(b, n_fft/2 + 1, L)`: frame l centred on sample l·hop + hop/2."""
    pad = (n_fft - hop) // 2
    x = F.pad(audio, (pad, pad))  # zeros: any length works, even one frame
    return torch.stft(x, n_fft, hop, window=window, center=False, return_complex=True)


def istft_same(spec: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """The inverse of `stft_same`: windowed overlap-add, normalised by the window envelope; `(b, L·hop)`."""
    frames = torch.fft.irfft(spec, n_fft, dim=1) * window[:, None]  # (b, n_fft, L)
    length = (spec.shape[-1] - 1) * hop + n_fft
    fold = dict(output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
    audio = F.fold(frames, **fold)[:, 0, 0]
    envelope = F.fold(window.square()[None, :, None].expand(1, n_fft, spec.shape[-1]), **fold)[0, 0, 0]
    pad = (n_fft - hop) // 2
    return audio[:, pad:-pad] / envelope[pad:-pad].clamp_min(1e-8)


class STFTEncoder(nn.Module):
    """`(b, c, t)`, t divisible by the hop → `(b, 2d, t / hop)`: the STFT (window 4 hops) as
    power-compressed real and imaginary parts (|S|^0.3 · e^{iφ}, bounded but phase-aware), then
    ConvNeXt blocks at the latent frame rate."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.hop = math.prod(cfg.strides)
        self.n_fft = cfg.window_hops * self.hop
        bins = self.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.stack = ConvNeXtStack(2 * bins * cfg.channels, cfg.encoder_channels, cfg.encoder_layers, embed_kernel=3)
        self.out = nn.Conv1d(cfg.encoder_channels, 2 * cfg.latent_dim, 1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, c, t = audio.shape
        spec = stft_same(audio.reshape(b * c, t).float(), self.n_fft, self.hop, self.window)
        spec = spec * spec.abs().clamp_min(1e-5).pow(-0.7)
        feats = torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(b, c * 2 * spec.shape[1], spec.shape[2])
        return self.out(self.stack(feats))


class ISTFTDecoder(nn.Module):
    """`(b, d, l)` → `(b, c, l · hop)`: ConvNeXt blocks at the frame rate predict each frame's
    log-magnitude and phase (Vocos), turned into audio by the inverse STFT."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.hop = math.prod(cfg.strides)
        self.n_fft = cfg.window_hops * self.hop
        self.channels = cfg.channels
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.stack = ConvNeXtStack(cfg.latent_dim, cfg.decoder_channels, cfg.decoder_layers)
        self.head = nn.Linear(cfg.decoder_channels, 2 * (self.n_fft // 2 + 1) * cfg.channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, _, frames = z.shape
        h = self.head(self.stack(z).transpose(1, 2)).float()  # (b, l, 2 · bins · c)
        log_mag, phase = h.reshape(b, frames, self.channels, 2, -1).permute(3, 0, 2, 4, 1)  # each (b, c, bins, l)
        magnitude = log_mag.clamp(max=math.log(100.0)).exp()  # Vocos's bound: no runaway spectra early on
        spec = torch.polar(magnitude, phase).reshape(b * self.channels, -1, frames)
        return istft_same(spec, self.n_fft, self.hop, self.window).reshape(b, self.channels, -1)


class VAE(nn.Module):
    """The VAE-GAN generator: `encode` (any length; padded to the hop) and `decode`."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if cfg.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown VAE architecture '{cfg.architecture}'; choose one of: {', '.join(ARCHITECTURES)}")
        self.cfg = cfg
        self.hop = math.prod(cfg.strides)
        encoder, decoder = ARCHITECTURES[cfg.architecture]
        self.encoder = encoder(cfg)
        self.decoder = decoder(cfg)

    @property
    def latent_rate(self) -> float:
        """Latent frames per second."""
        return self.cfg.sample_rate / self.hop

    def latent_length(self, samples: int) -> int:
        return -(-samples // self.hop)

    def encode(self, audio: torch.Tensor) -> Posterior:
        """`(b, c, t)` → posterior over `ceil(t / hop)` frames; the tail is zero-padded to a whole frame."""
        if audio.dim() != 3 or audio.shape[1] != self.cfg.channels:
            raise ValueError(f"expected audio (batch, {self.cfg.channels}, samples), got {tuple(audio.shape)}")
        pad = self.latent_length(audio.shape[-1]) * self.hop - audio.shape[-1]
        params = self.encoder(F.pad(audio, (0, pad)))
        mean, logvar = params.chunk(2, dim=1)
        # The LDM autoencoder's bound: keeps exp(logvar) finite early in training.
        return Posterior(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """`(b, d, l)` → `(b, c, length or l · hop)`."""
        audio = self.decoder(z)
        return audio if length is None else audio[..., :length]

    def forward(self, audio: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> VAEOutput:
        posterior = self.encode(audio)
        z = posterior.sample(generator) if sample else posterior.mean
        return VAEOutput(self.decode(z, audio.shape[-1]), posterior, z)

    def encode_latents(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Audio → diffusion-ready latents `(b, l, d)` in [−1, 1] (a posterior sample, §3.3)."""
        return self.posterior_latents(self.encode(audio), generator)

    def posterior_latents(self, posterior: Posterior, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample of `posterior` as diffusion-ready latents `(b, l, d)` in [−1, 1] (cached posteriors start here)."""
        return to_diffusion_range(posterior.sample(generator), self.cfg.latent_clamp).transpose(1, 2)

    def decode_latents(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Diffusion latents `(b, l, d)` in [−1, 1] → audio `(b, c, t)`."""
        return self.decode(from_diffusion_range(x, self.cfg.latent_clamp).transpose(1, 2), length)


ARCHITECTURES = {"conv": (Encoder, Decoder), "stft": (STFTEncoder, ISTFTDecoder)}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
