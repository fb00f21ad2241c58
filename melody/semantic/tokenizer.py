"""The semantic tokenizer: self-supervised frame features at 25 Hz → k-means codes (MeLoDy §3.1, Fig. 1).

MeLoDy's semantic tokens are the nearest of **1024 k-means centroids** to each **25 Hz** frame of a
self-supervised audio model (a 199.5 M Wav2Vec2-Conformer in the paper, not released). This
module gives two ways to get those features and one way to quantise them:

- `SSLEncoder`, our own HuBERT-style encoder (Hsu et al. 2021), trained here by masked prediction:
  waveform → log-mel frames at exactly `frame_rate` Hz → Linear → a learned mask embedding over
  spans of frames → bidirectional `Transformer` (melody's one transformer) → hidden states of
  every layer; a Linear head predicts each frame's k-means target class.
- `HFFeatureExtractor`, an adapter for a user's own local `transformers` checkpoint
  (`HubertModel` or `Wav2Vec2ConformerModel`, never downloaded), brought to the same 25 Hz grid.
- `SemanticTokenizer`: either of them + the hidden states of `feature_layer` + a
  `KMeansQuantizer` (`melody.modules.kmeans`) → LongTensor tokens `(b, frames)`.

Choices where the papers are silent or do not fit 25 Hz:
- **Frame grid.** hop = sample_rate / frame_rate (960 samples at 24 kHz, 25 Hz) and a clip of n
  samples has exactly `frame_count(n, hop) = ceil(n / hop)` frames, so the token rate is
  exactly `frame_rate` per second for any length (1 sample → 1 token, 10 s → 250). Frame i is the
  Hann window of n_fft = 2048 samples (the power of two ≥ two hops) centred on the middle of its
  hop span [i·hop, (i+1)·hop): the clip is zero-padded by (n_fft − hop) / 2 = 544 samples on the
  left and up to the last window on the right, and `torch.stft(center=False)` runs over that.
  `melody.audio.log_mel` is not called because its `center=True` framing gives n // hop + 1
  frames; the filterbank (`melody.audio.mel_filterbank`, Slaney) and the log floor and fixed
  affine normalisation (`LOG_MEL_FLOOR`, `LOG_MEL_OFFSET`, `LOG_MEL_SCALE`) are MuLan's, imported.
- **Padding.** Samples beyond `lengths` are zeroed before the STFT, frames beyond
  ceil(length / hop) are set to the silence floor and masked as keys in attention, so a clip's
  valid frames get the same features in a padded batch as alone. Tokens of padding frames are
  meaningless: keep the first `frame_count(lengths, hop)` of each row.
- **Masking** (`span_mask`): HuBERT masks spans of 10 frames at 50 Hz, each frame starting a span
  with probability p = 0.08; at 25 Hz we keep the duration, **5 frames** (200 ms). Every frame is a
  start with probability p independently (Bernoulli, wav2vec 2.0's rule without its fixed
  count), spans may overlap and are cut at the clip's end, so a long clip has about
  1 − (1 − p)^span of its frames masked (34 % at p = 0.08, span 5). The draw takes a
  `torch.Generator`. The mask embedding (uniform init, as fairseq) replaces the projected frames.
- **Loss** (`masked_prediction_loss`): cross-entropy of the head's logits against the targets on
  the masked frames only (HuBERT's α = 1 choice, their best), averaged over all masked frames of
  the batch. The head is a Linear classifier over the target classes (HuBERT scores cosine
  similarity to learned class embeddings with a temperature of 0.1; a Linear layer is the same
  family, simpler).
- **Targets** (`mel_targets`): the first iteration's targets are k-means on the encoder's
  normalised log-mel frames (HuBERT's first iteration clustered MFCCs; log-mel is what the
  encoder already computes, MFCCs are a linear map of it plus a truncation). Later iterations
  cluster the encoder's own `feature_layer` features (`SemanticTokenizer.fit_codebook`).
- **Hidden states** are (input projection, block 1, …, block L) before the final RMSNorm, so
  `feature_layer = i` is block i's output (0: the projected log-mel); the head reads the final
  RMSNorm of the last block, i.e. the `Transformer`'s own output.
- **Onset strength** (`tokenizer.onset_weight` > 0, outside the paper): the k-means features are the
  encoder's `feature_layer` states plus one column, the frame's spectral flux (`onset_strength`: the
  mean rise of the log-mel bins since the previous frame, librosa's onset-strength function on the
  encoder's own 25 Hz frames), scaled by `onset_weight · onset_scale`, where `onset_scale` (a buffer
  set by `fit_codebook`) makes the column's variance equal to the features' total. A 2-layer encoder's
  features barely mark onsets, so their k-means tokens keep a clip's sound but lose its pulse, and
  the DPD, which follows its tokens' timing frame for frame, cannot put the beat back
  (`benchmarks/dpd_tempo.py`). Built-in encoder only: a transformers checkpoint has no log-mel.
- **Adapters.** 24 kHz → 16 kHz with soxr (HQ, `melody.audio.resample`), clip by clip on the CPU so
  that padding never leaks in: the adapter is frozen and inference-only, so nothing needs a
  gradient through the resampler. The 50 Hz frames (conv stack: stride 320, receptive field 400
  at 16 kHz) are average-pooled in pairs to 25 Hz; the 16 kHz clip is padded so that the model
  emits exactly 2 · ceil(n / 960) frames, frame j centred on the middle of its 320-sample hop
  (left pad (400 − 320) / 2 = 40 samples), so both encoders share one frame grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melody.audio import mel_filterbank, resample
from melody.config import TokenizerConfig
from melody.errors import MelodyError
from melody.modules.kmeans import KMeansQuantizer, fit_kmeans
from melody.modules.transformer import Transformer, TransformerConfig
from melody.mulan import LOG_MEL_FLOOR, LOG_MEL_OFFSET, LOG_MEL_SCALE

MASK_SPAN = 5  # frames at 25 Hz: HuBERT's 10 frames at 50 Hz, the same 200 ms
HF_MODELS = {"hubert": "HubertModel", "wav2vec2-conformer": "Wav2Vec2ConformerModel"}


# --- pure functions -----------------------------------------------------------------------------

def frame_count(samples, hop: int):
    """Frames of a clip of `samples` samples (an int or a tensor): ceil(samples / hop), so exactly
    frame_rate frames per second for any length (0 samples → 0 frames)."""
    return -(-samples // hop)


def span_mask(batch: int, frames: int, prob: float, span: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """HuBERT / wav2vec 2.0 span masking: `(batch, frames)` bool, True = masked.

    Every frame starts a span with probability `prob` (independent Bernoulli draws from
    `generator`); a start at s masks frames s … s + span − 1, cut at the end. About
    1 − (1 − prob)^span of a long clip's frames are masked. On the generator's device.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    starts = torch.rand(batch, frames, generator=generator, device=device) < prob  # (b, t)
    # frame j is masked if any of frames j − span + 1 … j is a start: a max-pool over a causal window
    padded = F.pad(starts.float()[:, None, :], (span - 1, 0))  # (b, 1, t + span − 1)
    return F.max_pool1d(padded, span, stride=1)[:, 0, :] > 0


def masked_prediction_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """HuBERT's loss with α = 1: cross-entropy of logits `(b, t, K)` against targets `(b, t)` long on
    the frames where `mask` `(b, t)` is True only, averaged over them → `()`. No masked frame: 0."""
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), targets[mask])  # unmasked logits are never read


def onset_strength(log_mel: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Spectral flux `(b, t)` of log-mel frames `(b, t, n_mels)`: mean over bins of max(0, m_t − m_{t−1}); frame 0
    and padding frames (`keep` False) are 0. librosa's `onset_strength` (Böck & Widmer 2013) without its max filter."""
    rise = (log_mel[:, 1:] - log_mel[:, :-1]).clamp_min(0).mean(-1)
    return F.pad(rise, (1, 0)) * keep


def mel_targets(frames: torch.Tensor, k: int, seed: int, **kmeans) -> KMeansQuantizer:
    """First-iteration targets: k-means with `k` centroids on a bag of log-mel frames `(n, n_mels)`
    (the valid frames of `SSLEncoder.log_mel`); the quantizer maps frames to target classes."""
    return KMeansQuantizer.fit(frames.reshape(-1, frames.shape[-1]), k, seed, **kmeans)


def _lengths(wav: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Checked `(b,)` long lengths in samples for mono `wav` `(b, samples)`; None → all full."""
    if wav.dim() != 2:
        raise ValueError(f"the tokenizer wants mono waveforms (b, samples), got shape {tuple(wav.shape)}")
    b, n = wav.shape
    if lengths is None:
        return torch.full((b,), n, device=wav.device, dtype=torch.long)
    lengths = torch.as_tensor(lengths).to(device=wav.device, dtype=torch.long)
    if bool((lengths > n).any()) or bool((lengths < 0).any()):
        raise ValueError(f"lengths must lie in [0, {n}], got {lengths.tolist()}")
    return lengths


# --- our own HuBERT-style encoder ---------------------------------------------------------------

@dataclass
class SSLOutput:
    """What `SSLEncoder.forward` returns.

    hidden_states: layers + 1 tensors `(b, t, dim)`: the input projection, then each block's output.
    logits: `(b, t, num_targets)` target-class scores. keep: `(b, t)` bool, True = a valid frame.
    mask: `(b, t)` bool, True = replaced by the mask embedding (None: nothing masked).
    log_mel: `(b, t, n_mels)` the normalised log-mel frames the encoder read.
    """

    hidden_states: tuple[torch.Tensor, ...]
    logits: torch.Tensor
    keep: torch.Tensor
    mask: torch.Tensor | None
    log_mel: torch.Tensor


class SSLEncoder(nn.Module):
    """HuBERT-style encoder: waveform `(b, samples)` at `sample_rate` → `SSLOutput` at `frame_rate` Hz."""

    def __init__(self, config: TokenizerConfig, sample_rate: int = 24_000, num_targets: int | None = None) -> None:
        super().__init__()
        if sample_rate % config.frame_rate:
            raise ValueError(f"sample rate {sample_rate} is not a multiple of the {config.frame_rate} Hz frame rate")
        self.config, self.sample_rate, self.dim = config, sample_rate, config.dim
        self.hop = sample_rate // config.frame_rate  # 960 at 24 kHz / 25 Hz
        self.n_fft = 2 ** math.ceil(math.log2(2 * self.hop))  # 2048 at 24 kHz
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("mel_basis", mel_filterbank(sample_rate, self.n_fft, config.n_mels).float(), persistent=False)
        self.project = nn.Linear(config.n_mels, config.dim)
        self.mask_embedding = nn.Parameter(torch.empty(config.dim).uniform_())
        self.transformer = Transformer(TransformerConfig(config.dim, config.layers, config.heads, causal=False))
        self.head = nn.Linear(config.dim, num_targets or config.codebook_size)

    def log_mel(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel frames `(b, ceil(n / hop), n_mels)` and their keep mask `(b, frames)` bool."""
        lengths = _lengths(wav, lengths)
        b, n = wav.shape
        frames = frame_count(n, self.hop)
        left = (self.n_fft - self.hop) // 2  # frame i's window is centred on the middle of [i·hop, (i+1)·hop)
        right = self.n_fft + (frames - 1) * self.hop - n - left
        with torch.autocast(device_type=wav.device.type, enabled=False):
            inside = torch.arange(n, device=wav.device)[None, :] < lengths[:, None]  # (b, n)
            padded = F.pad(wav.float() * inside, (left, right))  # (b, n_fft + (frames − 1) · hop)
            spec = torch.stft(padded, self.n_fft, self.hop, window=self.window, center=False,
                              return_complex=True).abs()  # (b, n_fft/2 + 1, frames)
            mel = torch.log((self.mel_basis @ spec).clamp_min(LOG_MEL_FLOOR)).transpose(1, 2)  # (b, frames, n_mels)
            keep = torch.arange(frames, device=wav.device)[None, :] < frame_count(lengths, self.hop)[:, None]
            mel = mel.masked_fill(~keep[..., None], math.log(LOG_MEL_FLOOR))
            mel = (mel - LOG_MEL_OFFSET) / LOG_MEL_SCALE
        return mel, keep

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> SSLOutput:
        """`mask` `(b, frames)` bool (from `span_mask`): frames to replace by the mask embedding."""
        mel, keep = self.log_mel(wav, lengths)
        x = self.project(mel.to(self.project.weight.dtype))  # (b, t, dim)
        if mask is not None:
            mask = mask.to(x.device) & keep  # padding frames are never masked
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        hidden = [x]
        for block in self.transformer.blocks:
            x = block(x, mask=keep)
            hidden.append(x)
        logits = self.head(self.transformer.norm(x))  # (b, t, num_targets)
        return SSLOutput(tuple(hidden), logits, keep, mask, mel)

    def features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of `layer` (default: the config's `feature_layer`) `(b, t, dim)` and keep `(b, t)`."""
        layer = self.checked_layer(self.config.feature_layer if layer is None else layer)
        out = self(wav, lengths)
        return out.hidden_states[layer], out.keep

    def checked_layer(self, layer: int) -> int:
        if not 0 <= layer <= len(self.transformer.blocks):
            raise MelodyError(f"feature layer {layer} is out of range: the encoder has layers 0..{len(self.transformer.blocks)}")
        return layer

    def masked_prediction(self, wav: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None,
                          lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, SSLOutput]:
        """One training objective: draw `span_mask` (config `mask_prob`, `MASK_SPAN`), run, score the
        masked valid frames against `targets` `(b, frames)` long → (loss `()`, output)."""
        frames = frame_count(wav.shape[1], self.hop)
        mask = span_mask(wav.shape[0], frames, self.config.mask_prob, MASK_SPAN, generator)
        out = self(wav, lengths, mask=mask)
        return masked_prediction_loss(out.logits, targets.to(out.logits.device), out.mask), out


# --- adapter for local transformers checkpoints ------------------------------------------------

class HFFeatureExtractor(nn.Module):
    """A local `HubertModel` / `Wav2Vec2ConformerModel` folder → hidden states of `layer` at `frame_rate` Hz.

    Frozen and in eval mode; never downloads (`local_files_only=True`). `features` takes 24 kHz
    (`sample_rate`) audio, resamples it to the model's 16 kHz with soxr, runs the model and
    average-pools its 50 Hz frames in pairs, returning `(b, ceil(n / hop), hidden)` and keep.
    """

    model_rate = 16_000

    def __init__(self, folder: str | Path, layer: int, sample_rate: int = 24_000, frame_rate: int = 25) -> None:
        super().__init__()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MelodyError(f"no transformers checkpoint at {folder} (config.json missing); pass a local HuBERT or Wav2Vec2-Conformer folder")
        import transformers

        try:
            model_type = transformers.AutoConfig.from_pretrained(folder, local_files_only=True).model_type
        except Exception as err:  # a malformed config.json
            raise MelodyError(f"cannot read the model config in {folder}: {str(err).splitlines()[0][:160]}") from None
        if model_type not in HF_MODELS:
            raise MelodyError(f"{folder} holds a '{model_type}' model; the tokenizer supports {', '.join(HF_MODELS)}")
        try:
            model = getattr(transformers, HF_MODELS[model_type]).from_pretrained(folder, local_files_only=True)
        except Exception as err:  # weights missing or unreadable
            raise MelodyError(f"cannot load {folder}: {str(err).splitlines()[0][:160]}") from None
        # Not a registered submodule: a tokenizer's checkpoint holds its k-means codebook, not the user's model
        # (which stays in its folder, named by the config and checked by fingerprint).
        object.__setattr__(self, "model", model.requires_grad_(False).eval())
        c = model.config
        self.dim, self.layers = int(c.hidden_size), int(c.num_hidden_layers)
        if not 0 <= layer <= self.layers:
            raise MelodyError(f"feature layer {layer} is out of range: {folder} has layers 0..{self.layers}")
        if sample_rate % frame_rate:
            raise MelodyError(f"sample rate {sample_rate} is not a multiple of the {frame_rate} Hz frame rate")
        self.layer, self.sample_rate, self.hop = layer, sample_rate, sample_rate // frame_rate
        self.stride = math.prod(c.conv_stride)  # 320 at 16 kHz: 50 Hz
        self.receptive = 1 + sum((k - 1) * math.prod(c.conv_stride[:i]) for i, k in enumerate(c.conv_kernel))  # 400
        if (self.model_rate // self.stride) % frame_rate or self.model_rate % self.stride:
            raise MelodyError(f"the model's {self.model_rate / self.stride:g} Hz frames cannot be pooled to {frame_rate} Hz")
        self.pool = self.model_rate // self.stride // frame_rate  # 2
        self.use_attention_mask = c.feat_extract_norm == "layer"  # transformers' rule for these models

    def train(self, mode: bool = True) -> HFFeatureExtractor:
        super().train(mode)
        self.model.eval()  # always frozen
        return self

    def _apply(self, fn, *args, **kwargs):
        self.model._apply(fn, *args, **kwargs)  # `.to(device)` and friends reach the unregistered model too
        return super()._apply(fn, *args, **kwargs)

    def fingerprint(self) -> str:
        from melody.checkpoint import fingerprint

        return fingerprint(self.model)

    @torch.no_grad()
    def features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = _lengths(wav, lengths)
        layer = self.layer if layer is None else layer
        if not 0 <= layer <= self.layers:
            raise MelodyError(f"feature layer {layer} is out of range: the model has layers 0..{self.layers}")
        b, n = wav.shape
        frames = frame_count(n, self.hop)  # 25 Hz frames
        model_frames = self.pool * frames  # 50 Hz frames wanted
        left = (self.receptive - self.stride) // 2  # 40: model frame j centred on the middle of its hop
        total = self.receptive + (model_frames - 1) * self.stride  # 16 kHz samples giving exactly model_frames
        batch = np.zeros((b, max(total, 0)), dtype=np.float32)
        valid16 = []
        wav_np = wav.detach().float().cpu().numpy()
        for i, length in enumerate(lengths.tolist()):
            clip = resample(wav_np[i:i + 1, :length], self.sample_rate, self.model_rate)[0] if length else np.zeros(0, np.float32)
            clip = clip[: max(total - left, 0)]
            batch[i, left:left + len(clip)] = clip
            valid16.append(left + len(clip))
        device = next(self.model.parameters()).device
        x = torch.from_numpy(batch).to(device=device, dtype=next(self.model.parameters()).dtype)
        keep = torch.arange(frames, device=wav.device)[None, :] < frame_count(lengths, self.hop)[:, None]
        if frames == 0:
            return x.new_zeros(b, 0, self.dim).to(wav.device), keep
        kwargs = {}
        if self.use_attention_mask:
            kwargs["attention_mask"] = (torch.arange(x.shape[1], device=device)[None, :]
                                        < torch.tensor(valid16, device=device)[:, None]).long()
        hidden = self.model(x, output_hidden_states=True, **kwargs).hidden_states[layer]  # (b, model_frames, dim)
        hidden = hidden[:, :model_frames].reshape(b, frames, self.pool, self.dim).mean(2)  # (b, frames, dim)
        return hidden.to(wav.device), keep


# --- the tokenizer ----------------------------------------------------------------------------

class SemanticTokenizer(nn.Module):
    """Waveform `(b, samples)` → semantic tokens `(b, ceil(samples / hop))` long in [0, codebook_size).

    `encoder`: an `SSLEncoder` (built from `config` if None) or an `HFFeatureExtractor`; the
    features are its hidden states of `feature_layer` (default: the config's). Fit the codebook
    with `fit_codebook` on features of many clips before asking for tokens.
    """

    def __init__(self, config: TokenizerConfig, encoder: SSLEncoder | HFFeatureExtractor | None = None,
                 sample_rate: int = 24_000, feature_layer: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else SSLEncoder(config, sample_rate)
        self.feature_layer = config.feature_layer if feature_layer is None else feature_layer
        self.hop = self.encoder.hop
        self.onset_weight = config.onset_weight
        if self.onset_weight < 0:
            raise MelodyError(f"tokenizer.onset_weight must be ≥ 0, got {self.onset_weight}")
        if self.onset_weight and not isinstance(self.encoder, SSLEncoder):
            raise MelodyError("tokenizer.onset_weight needs the built-in encoder's log-mel frames; "
                              "set it to 0 with tokenizer.pretrained")
        if self.onset_weight:
            self.register_buffer("onset_scale", torch.ones(()))  # set by fit_codebook
        self.quantizer = KMeansQuantizer(config.codebook_size, self.encoder.dim + (1 if self.onset_weight else 0))

    @classmethod
    def from_config(cls, config: TokenizerConfig, sample_rate: int = 24_000) -> SemanticTokenizer:
        """The built-in tokenizer (an `SSLEncoder` whose head predicts `config.targets` classes), or, with
        `config.pretrained`, the features of that local transformers model (its recorded fingerprint checked)."""
        if not config.pretrained:
            return cls(config, SSLEncoder(config, sample_rate, num_targets=config.targets), sample_rate)
        from melody.checkpoint import check_same_model

        extractor = HFFeatureExtractor(config.pretrained, config.feature_layer, sample_rate, config.frame_rate)
        check_same_model(config.pretrained, extractor.model, config.pretrained_fingerprint,
                         "model than the one this tokenizer's codebook was fitted on", "fit a new tokenizer on this one")
        return cls(config, extractor, sample_rate)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> SSLOutput:
        """The encoder's training pass (masked prediction); only for the built-in `SSLEncoder`."""
        if not isinstance(self.encoder, SSLEncoder):
            raise MelodyError("only the built-in SSL encoder trains; a transformers checkpoint is used frozen")
        return self.encoder(wav, lengths, mask)

    def frame_features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """What the codebook is fitted on, `(b, ceil(samples / hop), dim [+ 1])`: the `feature_layer` states, and
        with `onset_weight` their onset strength as a last, unscaled column; rows past `frame_count` are padding."""
        if not self.onset_weight:
            return self.encoder.features(wav, lengths, self.feature_layer)[0]
        out = self.encoder(wav, lengths)  # the built-in encoder (checked in __init__): its log-mel frames come with it
        hidden = out.hidden_states[self.encoder.checked_layer(self.feature_layer)]
        return torch.cat((hidden, onset_strength(out.log_mel, out.keep)[..., None].to(hidden.dtype)), dim=-1)

    def features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """What the quantiser reads `(b, ceil(samples / hop), dim [+ 1])`: `frame_features` with the onset column
        weighted."""
        return self._weighted(self.frame_features(wav, lengths))

    def _weighted(self, frames: torch.Tensor) -> torch.Tensor:
        if not self.onset_weight:
            return frames
        return torch.cat((frames[..., :-1], frames[..., -1:] * (self.onset_weight * self.onset_scale)), dim=-1)

    @torch.no_grad()
    def tokens(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Semantic tokens `(b, ceil(samples / hop))` long; codes of padding frames are meaningless."""
        return self.quantizer(self.features(wav, lengths))

    def fit_codebook(self, frames: torch.Tensor, seed: int, **kmeans) -> SemanticTokenizer:
        """Fit the `codebook_size` centroids with `fit_kmeans` to a bag of valid `frame_features` `(..., d)`; with
        `onset_weight`, first set `onset_scale` so that the onset column's variance equals the features' total."""
        flat = frames.detach().reshape(-1, frames.shape[-1]).float()
        if self.onset_weight:
            ratio = flat[:, :-1].var(0).sum() / flat[:, -1].var().clamp_min(1e-12)
            self.onset_scale.copy_(ratio.sqrt())
        centroids = fit_kmeans(self._weighted(flat), self.config.codebook_size, seed, **kmeans)
        self.quantizer.centroids.copy_(centroids)
        return self
