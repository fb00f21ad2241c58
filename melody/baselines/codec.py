"""The acoustic codec of the MusicLM-style baseline: 50 Hz frames × 12 residual-quantised levels.

MusicLM (Agostinelli et al. 2023) takes its acoustic tokens from SoundStream (Zeghidour et al.
2021): 24 kHz audio → 50 Hz embeddings → a residual VQ of 12 levels × 1024 codes (6 kbps); the first 4
levels are the *coarse* tokens, the other 8 the *fine* ones (AudioLM, Borsos et al. 2022). We
have no SoundStream and may download none, so the codec is built from what the project has:

    audio ──VAE encoder (posterior mean)──▶ z (125 Hz × 16) ──to_frames──▶ x (50 Hz × D) ──RVQ──▶ codes (50 Hz × 12)
    codes ──dequantise──▶ x̂ (50 Hz × D) ──from_frames──▶ ẑ (125 Hz × 16) ──VAE decoder──▶ audio

The RVQ is `melody.modules.rvq.ResidualVQ` (the project's one RVQ), fitted once by k-means, level by
level on the residuals (`ResidualVQ.initialize`, SoundStream §3.3's initialisation), on the frames of
training clips (`melody.train.musiclm.fit_codec`); it is never trained further (no EMA steps: the codec
is frozen before the LMs learn its tokens, as SoundStream is for MusicLM).

How the 125 Hz latents become 50 Hz frames (`CodecConfig.mapping`, a choice the papers cannot make for us;
measured by `benchmarks/musiclm_codec_floor.py`: mel distance to the original on 26 held-out clips, the
VAE's own reconstruction 0.428; docs/baselines.md):
- **"group"** (the default): the latent rate over the codec rate in lowest terms, p / q (125 / 50 = 5 / 2),
  says that p latent frames span exactly q codec frames; the p·16 numbers of each group (time-major)
  are cut into q frames of D = p·16 / q = 40 numbers. Lossless before quantisation: the codec's only
  loss is the RVQ's (12 levels: 0.446 with 1024 codes, 0.464 with 256; the 4 coarse levels alone 0.58 /
  0.64). A clip's latents are padded to whole groups by repeating their last frame.
- **"interpolate"**: z resampled to 50 Hz by linear interpolation (D = 16) and back. Lossy before any
  quantisation, since 50 Hz cannot hold what 125 Hz frames carry: 0.927 with or without the RVQ.

Token counts: a clip of l latent frames has `frames(l)` codec frames (⌈l / p⌉·q for "group"); a
generated clip of T seconds has ⌈50·T⌉, which `decode` pads to whole groups by repeating the last
frame (at most q − 1 = 1 frame, 20 ms, and only when ⌈50·T⌉ is odd).

`CodecConfig.kind` chooses the codec: "latent" (this one, the default) or a user's own pretrained EnCodec or
DAC ("encodec", "dac": `melody.baselines.hf_codec`, read from `CodecConfig.path`). Both offer the baseline one
interface: `encode_audio(audio, vae)`, `decode_audio(codes, samples, vae)`, `audio_frames(samples, vae)`,
`frame_rate`, `levels`, `coarse_levels`, `fine_levels`, `codebook_size`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from melody.errors import MelodyError
from melody.modules.rvq import ResidualVQ
from melody.vae import VAE

MAPPINGS = ("group", "interpolate")
KINDS = ("latent", "encodec", "dac")  # CodecConfig.kind: this module's codec, or a pretrained one (hf_codec.py)


@dataclass
class CodecConfig:
    """MusicLM's acoustic tokens (SoundStream: 50 Hz, 12 levels × 1024 codes, coarse = the first 4).

    `kind` "latent" is this module's codec, which `frame_rate`, `levels`, `codebook_size`, `mapping`, `fit_clips`
    and `kmeans_iters` describe; a pretrained codec ("encodec", "dac", read from `path`) has its own frame rate,
    levels and codebook size (`melody.baselines.hf_codec`) and ignores them. `coarse_levels` applies to both.
    """

    frame_rate: int = 50
    levels: int = 12
    coarse_levels: int = 4  # the first levels are coarse; 0: a third of the codec's levels, rounded (MusicLM's 4 of 12)
    codebook_size: int = 1024
    mapping: str = "group"  # how 125 Hz VAE latents become 50 Hz frames: "group" or "interpolate" (module docstring)
    fit_clips: int = 400  # training clips (10 s each) whose frames the k-means fit reads
    kmeans_iters: int = 50  # per level (mini-batch epochs above 50 000 frames)
    kind: str = "latent"  # "latent" (this module), or a pretrained "encodec" / "dac" (hf_codec.py)
    path: str = ""  # a pretrained codec's local transformers folder (config.json + weights)
    bandwidth: float = 6.0  # kbps, EnCodec only: one of its target_bandwidths, which sets its levels (6: 8 levels at 24 kHz)

    @property
    def fine_levels(self) -> int:
        return self.levels - coarse_split(self.coarse_levels, self.levels)


def coarse_split(coarse_levels: int, levels: int) -> int:
    """How many of a codec's `levels` levels are coarse: `coarse_levels`, or when 0 a third of them, rounded
    (MusicLM's 4 of 12); a `MelodyError` unless it leaves at least one coarse and one fine level."""
    coarse = max(1, round(levels / 3)) if coarse_levels == 0 else coarse_levels
    if not 1 <= coarse < levels:
        raise MelodyError(f"codec.coarse_levels {coarse_levels} must lie in [1, {levels}) for a codec of {levels} levels "
                          "(0: a third of them)")
    return coarse


class LatentCodec(nn.Module):
    """VAE latents `(b, l, latent_dim)` at `latent_rate` Hz ⇄ codes `(b, n, levels)` at `frame_rate` Hz.

    Holds only the RVQ (buffers: the k-means codebooks); the VAE it works with is passed to
    `encode_audio` / `decode_audio`, so the bundle's VAE is not saved twice.
    """

    def __init__(self, config: CodecConfig, latent_dim: int, latent_rate: float) -> None:
        super().__init__()
        if config.mapping not in MAPPINGS:
            raise MelodyError(f"unknown codec mapping '{config.mapping}'; choose one of: {', '.join(MAPPINGS)}")
        self.coarse_levels = coarse_split(config.coarse_levels, config.levels)
        self.config, self.latent_dim, self.latent_rate = config, latent_dim, float(latent_rate)
        ratio = Fraction(latent_rate).limit_denominator(1000) / config.frame_rate
        self.p, self.q = ratio.numerator, ratio.denominator  # p latent frames ↔ q codec frames
        if config.mapping == "group":
            if (self.p * latent_dim) % self.q:
                raise MelodyError(f"{latent_rate:g} Hz × {latent_dim} latents cannot be cut into whole {config.frame_rate} Hz "
                                  "frames; use codec.mapping=interpolate")
            self.frame_dim = self.p * latent_dim // self.q
        else:
            self.frame_dim = latent_dim
        self.rvq = ResidualVQ(self.frame_dim, config.levels, config.codebook_size, kmeans_iters=config.kmeans_iters)

    @property
    def frame_rate(self) -> int:
        return self.config.frame_rate

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def fine_levels(self) -> int:
        return self.levels - self.coarse_levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def frames(self, latent_frames: int) -> int:
        """Codec frames that encode `latent_frames` latent frames."""
        if self.config.mapping == "group":
            return -(-latent_frames // self.p) * self.q
        return math.ceil(latent_frames * self.q / self.p)

    def to_frames(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `(b, l, d)` → codec frames `(b, frames(l), frame_dim)` (before quantisation)."""
        if self.config.mapping == "interpolate":
            x = F.interpolate(z.transpose(1, 2).float(), size=self.frames(z.shape[1]), mode="linear", align_corners=False)
            return x.transpose(1, 2)
        pad = -z.shape[1] % self.p
        z = torch.cat((z, z[:, -1:].expand(-1, pad, -1)), dim=1) if pad else z  # whole groups, last frame repeated
        groups = rearrange(z.float(), "b (g p) d -> b g (p d)", p=self.p)  # (b, l / p, p·d) time-major
        return rearrange(groups, "b g (q e) -> b (g q) e", q=self.q)  # (b, frames, frame_dim)

    def from_frames(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """Codec frames `(b, n, frame_dim)` → latents `(b, length, d)`; n is padded to whole groups first."""
        if self.config.mapping == "interpolate":
            return F.interpolate(x.transpose(1, 2), size=length, mode="linear", align_corners=False).transpose(1, 2)
        pad = -x.shape[1] % self.q
        x = torch.cat((x, x[:, -1:].expand(-1, pad, -1)), dim=1) if pad else x
        z = rearrange(x, "b (g q) e -> b g (q e)", q=self.q)
        z = rearrange(z, "b g (p d) -> b (g p) d", p=self.p)
        if z.shape[1] < length:  # fewer frames than asked: hold the last one
            z = torch.cat((z, z[:, -1:].expand(-1, length - z.shape[1], -1)), dim=1)
        return z[:, :length]

    @torch.no_grad()
    def fit(self, latents: torch.Tensor | Sequence[torch.Tensor], seed: int = 0) -> None:
        """k-means codebooks, level by level on the residuals, from latents `(b, l, d)` or a sequence of
        such (clips of different lengths); every frame is used."""
        latents = [latents] if torch.is_tensor(latents) else list(latents)
        frames = torch.cat([self.to_frames(z).reshape(-1, self.frame_dim) for z in latents])
        if frames.shape[0] < self.config.codebook_size:
            raise MelodyError(f"the codec's k-means needs at least {self.config.codebook_size} frames, got {frames.shape[0]}; "
                              "fit it on more clips (codec.fit_clips)")
        self.rvq.initialize(frames, seed=seed)

    @torch.no_grad()
    def randomize(self, generator: torch.Generator, scale: float = 1.0) -> None:
        """Random codebooks (N(0, scale² / level)) marked initialised: for pass counts and speed, not for listening."""
        shape = self.rvq.codebooks.shape
        noise = torch.randn(shape, generator=generator, device=generator.device).to(self.rvq.codebooks)
        self.rvq.codebooks.copy_(noise * scale / torch.arange(1, shape[0] + 1, device=noise.device)[:, None, None])
        self.rvq.initialized.fill_(True)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Latents `(b, l, d)` → codes `(b, frames(l), levels)` long (all levels by default)."""
        return self.rvq.encode(self.to_frames(z), levels)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int) -> torch.Tensor:
        """Codes `(b, n, k)` of the first k ≤ levels levels → latents `(b, length, d)` (float32)."""
        return self.from_frames(self.rvq.decode(codes), length)

    # the interface the baseline uses for every codec kind (hf_codec.HFCodec has the same)

    def audio_frames(self, samples: int, vae: VAE) -> int:
        """Codec frames that encode a clip of `samples` audio samples (⌈samples / hop⌉ latent frames)."""
        return self.frames(vae.latent_length(samples))

    def encode_audio(self, audio: torch.Tensor, vae: VAE) -> torch.Tensor:
        """Audio `(b, c, n)` → codes `(b, audio_frames(n), levels)` long."""
        return encode_audio(vae, self, audio)

    def decode_audio(self, codes: torch.Tensor, samples: int, vae: VAE) -> torch.Tensor:
        """Codes `(b, n, levels)` → audio `(b, c, samples)`, clamped to [−1, 1]."""
        return decode_audio(vae, self, codes, samples)


@torch.no_grad()
def vae_latents(vae: VAE, audio: torch.Tensor) -> torch.Tensor:
    """Audio `(b, c, n)` → the VAE's posterior means `(b, ⌈n / hop⌉, d)`: the deterministic latents the codec reads."""
    return vae.encode(audio).mean.transpose(1, 2)


@torch.no_grad()
def encode_audio(vae: VAE, codec: LatentCodec, audio: torch.Tensor) -> torch.Tensor:
    """Audio `(b, c, n)` → codes `(b, frames, levels)`."""
    return codec.encode(vae_latents(vae, audio))


@torch.no_grad()
def decode_audio(vae: VAE, codec: LatentCodec, codes: torch.Tensor, samples: int) -> torch.Tensor:
    """Codes `(b, n, levels)` → audio `(b, c, samples)`, clamped to [−1, 1]."""
    z = codec.decode(codes, vae.latent_length(samples))
    return vae.decode(z.transpose(1, 2).to(next(vae.parameters()).dtype), samples).clamp(-1.0, 1.0).float()
