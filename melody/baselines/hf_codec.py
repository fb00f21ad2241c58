"""A user's own neural codec (EnCodec or DAC, local `transformers` folders) as the MusicLM-style baseline's acoustic codec.

MusicLM (Agostinelli et al. 2023) takes its acoustic tokens from a pretrained neural codec (SoundStream);
`melody.baselines.codec.LatentCodec` stands in for it with the bundled VAE and a k-means RVQ, since nothing
may be downloaded. A user who owns an EnCodec (Défossez et al. 2022) or DAC (Kumar et al. 2023) checkpoint
can use it instead: `load_hf_codec(folder, kind)` reads a `transformers` `EncodecModel` or `DacModel`
folder (config.json + weights, saved with `save_pretrained`; never downloaded, `local_files_only=True`)
and `HFCodec` offers the baseline what `LatentCodec` does — codes `(b, frames, levels)` from audio, audio
from codes, the frame rate, the levels and the coarse / fine split.

Choices where the papers and the checkpoints leave it to us:
- **Sample rate.** melody's audio is 24 kHz mono; it is resampled to the codec's `sampling_rate` with soxr
  (`melody.audio.resample`, HQ), the whole batch in one call on the CPU (the codec is frozen and
  inference-only), and decoded audio is resampled back. A clip of n samples becomes exactly
  m = ⌈n · rate / 24 000⌉ samples at the codec's rate (soxr's own count is within one sample: the rest
  is cut or zero-padded), so the frame count is known in advance.
- **Frames.** hop = the product of the codec's strides (EnCodec `upsampling_ratios`, DAC
  `downsampling_ratios`), frame rate = rate / hop exactly (a `Fraction`: EnCodec 24 kHz 75 Hz, DAC 44.1 kHz
  44 100 / 512 ≈ 86.13 Hz; `transformers`' own `config.frame_rate` rounds it up), and a clip of m samples has
  ⌈m / hop⌉ frames. EnCodec pads its last frame itself; DAC is given zeros to whole hops first, as its
  feature extractor does. Decoded audio is cut or zero-padded to the frames' span, then to the asked length.
- **Levels.** EnCodec: the levels its `bandwidth` (kbps, one of `config.target_bandwidths`) uses,
  ⌊1000 · bandwidth / (frame_rate · log2 K)⌋ as `transformers` counts them (6 kbps at 24 kHz: 8 levels);
  DAC: all `n_codebooks`. Codebook size K from the config.
- **Coarse levels**: the first `coarse_levels`; 0 asks for a third of the levels, rounded (MusicLM's 4 of 12;
  EnCodec at 6 kbps: 3 of 8, DAC 44 kHz: 3 of 9), at least 1 and leaving at least one fine level.
- **Mono only.** Multi-channel input is averaged; a stereo EnCodec (the 48 kHz one) is refused, as is any
  EnCodec that normalises or chunks its input: its codes come with per-chunk scales the LMs do not model.
- The model is frozen, in eval mode (DAC's quantizer dropout off) and held outside the module's registered
  children, so the baseline's `musiclm.safetensors` does not copy the user's codec: the baseline records its
  folder (`CodecConfig.path`) and its fingerprint, and refuses to load against another.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from melody.audio import resample
from melody.baselines.codec import KINDS, CodecConfig, coarse_split
from melody.errors import MelodyError, first_line

HF_CODECS = {"encodec": "EncodecModel", "dac": "DacModel"}  # CodecConfig.kind → the transformers class


class HFCodec(nn.Module):
    """A frozen `EncodecModel` / `DacModel`: audio `(b, c, n)` at `sample_rate` ⇄ codes `(b, frames, levels)` long.

    The same interface as `LatentCodec` offers the baseline (`encode_audio`, `decode_audio`, `audio_frames`,
    `frame_rate`, `levels`, `coarse_levels`, `fine_levels`, `codebook_size`); their `vae` argument is unused.
    """

    def __init__(self, model: nn.Module, kind: str, bandwidth: float = 6.0, coarse_levels: int = 0,
                 sample_rate: int = 24_000) -> None:
        super().__init__()
        if kind not in HF_CODECS:
            raise MelodyError(f"unknown pretrained codec kind '{kind}'; choose one of: {', '.join(HF_CODECS)}")
        c = model.config
        self.kind, self.sample_rate, self.model_rate = kind, int(sample_rate), int(c.sampling_rate)
        if kind == "encodec":
            if int(c.audio_channels) != 1:
                raise MelodyError(f"this EnCodec has {c.audio_channels} channels; the baseline is mono: use a mono "
                                  "EnCodec (e.g. the 24 kHz one)")
            if c.normalize or c.chunk_length_s is not None:
                raise MelodyError("this EnCodec normalises or chunks its input (as the 48 kHz one does); its codes need "
                                  "per-chunk scales the acoustic LMs do not model: use a mono EnCodec without them")
            offered = [float(b) for b in c.target_bandwidths]
            if float(bandwidth) not in offered:
                raise MelodyError(f"codec.bandwidth {bandwidth:g} kbps is not one this EnCodec offers; choose one of: "
                                  f"{', '.join(f'{b:g}' for b in offered)}")
            self.bandwidth = float(bandwidth)
            self.hop = math.prod(c.upsampling_ratios)
            self.levels = int(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))
        else:
            self.bandwidth = None
            self.hop = math.prod(c.downsampling_ratios)
            self.levels = int(c.n_codebooks)
        if self.levels < 2:
            raise MelodyError(f"this {kind} codec quantises with {self.levels} level; the baseline needs coarse and fine "
                              "levels, at least 2" + ("; choose a higher codec.bandwidth" if kind == "encodec" else ""))
        self.codebook_size = int(c.codebook_size)
        self.coarse_levels = coarse_split(coarse_levels, self.levels)
        self.frame_rate = Fraction(self.model_rate, self.hop)  # exact: 75 for EnCodec 24 kHz, 44 100 / 512 for DAC 44 kHz
        model.requires_grad_(False).eval()
        object.__setattr__(self, "model", model)  # bypasses nn.Module.__setattr__: not registered, not in state_dict()

    @property
    def fine_levels(self) -> int:
        return self.levels - self.coarse_levels

    def _apply(self, fn, recurse: bool = True):
        self.model._apply(fn, recurse)  # the unregistered model follows .to() / .half() like a child would
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> HFCodec:
        super().train(False)
        self.model.eval()  # always frozen
        return self

    def model_samples(self, samples: int) -> int:
        """Samples at the codec's rate of a clip of `samples` at `sample_rate`: ⌈samples · rate / sample_rate⌉."""
        return -(-samples * self.model_rate // self.sample_rate)

    def audio_frames(self, samples: int, vae: Any = None) -> int:
        """Codec frames that encode a clip of `samples` samples at `sample_rate` (`vae` unused)."""
        return -(-self.model_samples(samples) // self.hop)

    @torch.no_grad()
    def to_model_rate(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio `(b, c, n)` at `sample_rate` → mono `(b, 1, m)` at the codec's rate, on the model's device and dtype
        (m = `model_samples(n)`, made whole hops for DAC): what the codec encodes."""
        if audio.dim() != 3:
            raise ValueError(f"the codec wants audio (b, channels, samples), got shape {tuple(audio.shape)}")
        m = self.model_samples(audio.shape[-1])
        wav = resample(audio.float().mean(1).cpu().numpy(), self.sample_rate, self.model_rate)  # (b, ≈m): rows as channels
        x = torch.from_numpy(wav)[:, :m]
        total = m if self.kind == "encodec" else -(-m // self.hop) * self.hop  # DAC: zeros to whole hops
        x = torch.nn.functional.pad(x, (0, total - x.shape[-1]))
        p = next(self.model.parameters())
        return x[:, None].to(device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def encode_audio(self, audio: torch.Tensor, vae: Any = None) -> torch.Tensor:
        """Audio `(b, c, n)` at `sample_rate` → codes `(b, audio_frames(n), levels)` long, on the audio's device."""
        x = self.to_model_rate(audio)
        if self.kind == "encodec":
            codes = self.model.encode(x, bandwidth=self.bandwidth, return_dict=True).audio_codes[0]  # (b, levels, frames)
        else:
            codes = self.model.encode(x, return_dict=True).audio_codes  # (b, levels, frames)
        return codes.transpose(1, 2).long().to(audio.device)

    @torch.no_grad()
    def decode_audio(self, codes: torch.Tensor, samples: int, vae: Any = None) -> torch.Tensor:
        """Codes `(b, n, k)` of the first k ≤ levels levels → mono audio `(b, 1, samples)` at `sample_rate`,
        float32, clamped to [−1, 1], on the codes' device."""
        b, n, k = codes.shape
        if not 1 <= k <= self.levels or ((codes < 0) | (codes >= self.codebook_size)).any():
            raise ValueError(f"codes must be (b, frames, 1…{self.levels}) in [0, {self.codebook_size})")
        device = next(self.model.parameters()).device
        per_level = codes.transpose(1, 2).to(device)  # (b, k, n)
        if self.kind == "encodec":
            y = self.model.decode(per_level[None], [None], return_dict=True).audio_values  # (b, 1, ≈ n · hop)
        else:
            y = self.model.decode(audio_codes=per_level, return_dict=True).audio_values[:, None]  # (b, 1, ≈ n · hop)
        span = n * self.hop
        y = torch.nn.functional.pad(y.float(), (0, max(span - y.shape[-1], 0)))[..., :span]  # the frames' span exactly
        wav = torch.from_numpy(resample(y[:, 0].cpu().numpy(), self.model_rate, self.sample_rate))[:, :samples]
        wav = torch.nn.functional.pad(wav, (0, samples - wav.shape[-1]))
        return wav[:, None].clamp(-1.0, 1.0).to(codes.device)


def load_hf_codec(folder: str | Path, kind: str, bandwidth: float = 6.0, coarse_levels: int = 0,
                  sample_rate: int = 24_000) -> HFCodec:
    """An `HFCodec` from a local `transformers` `EncodecModel` (kind "encodec") or `DacModel` ("dac") folder;
    a one-line `MelodyError` if the folder is missing, holds another model or cannot be read."""
    if kind not in HF_CODECS:
        raise MelodyError(f"unknown pretrained codec kind '{kind}'; choose one of: {', '.join(HF_CODECS)}")
    cls_name = HF_CODECS[kind]
    if not str(folder).strip():
        raise MelodyError(f"codec.kind={kind} needs codec.path: a local folder saved with {cls_name}.save_pretrained")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MelodyError(f"no {kind} codec at {folder} (config.json missing); give a local folder saved with "
                          f"{cls_name}.save_pretrained")
    import transformers

    from melody.mulan import _quiet_transformers

    try:
        model_type = transformers.AutoConfig.from_pretrained(folder, local_files_only=True).model_type
    except Exception as err:  # a malformed config.json, an unknown model type
        raise MelodyError(f"cannot read the model config in {folder}: {first_line(err)}") from None
    if model_type != kind:
        hint = f"; set codec.kind={model_type}" if model_type in HF_CODECS else ""
        raise MelodyError(f"{folder} holds a '{model_type}' model, not a {cls_name} (codec.kind={kind}){hint}")
    try:
        with _quiet_transformers():
            model = getattr(transformers, cls_name).from_pretrained(folder, local_files_only=True)
    except Exception as err:  # weights missing or unreadable
        raise MelodyError(f"cannot load the {kind} codec from {folder}: {first_line(err)}") from None
    return HFCodec(model, kind, bandwidth, coarse_levels, sample_rate)


def codec_from_config(config: CodecConfig, sample_rate: int = 24_000) -> HFCodec:
    """The pretrained codec `config` names (`kind`, `path`, `bandwidth`, `coarse_levels`)."""
    if config.kind not in KINDS:
        raise MelodyError(f"unknown codec.kind '{config.kind}'; choose one of: {', '.join(KINDS)}")
    return load_hf_codec(config.path, config.kind, config.bandwidth, config.coarse_levels, sample_rate)

