"""A MusicLM-style baseline run in the same process as melody: semantic LM → coarse → fine acoustic LMs → codec.

MusicLM (Agostinelli et al. 2023) generates in AudioLM's hierarchy (Borsos et al. 2022):

1. MuLan tokens of the prompt (12 RVQ levels of the text embedding);
2. **semantic** tokens (25 Hz), an LM conditioned on the MuLan tokens;
3. **coarse acoustic** tokens: the first 4 RVQ levels of a 50 Hz codec, an LM conditioned on the MuLan
   tokens and the semantic tokens;
4. **fine acoustic** tokens: the other 8 levels, an LM conditioned on the coarse tokens, in ~3 s windows;
5. the codec decoder → audio.

Every token costs one forward pass, so T seconds cost (25 + 50·4 + 50·8)·T = (25 + 200 + 400)·T passes
(MeLoDy Table 3), against melody's 25·T + the DPD's steps. Steps 1–2 here *are* melody's: the same MuLan, the
same semantic LM, the same sampling settings and seeds (`MusicLMStyle.generate` draws exactly the semantic
tokens `MeLoDy.generate` draws for the same prompt and seed), so a comparison isolates the acoustic stage:
melody's DPD + VAE decoder against the coarse and fine LMs + codec decoder. The codec is
`melody.baselines.codec` (the bundled VAE's latents made 50 Hz × 12 RVQ levels: we have no SoundStream), or a
user's own EnCodec / DAC (`codec.kind`, `codec.path`: `melody.baselines.hf_codec`); the acoustic LMs' levels,
codebook size and token rates are the codec's (`codec.frame_rate` Hz × `codec.levels`, as built), so the
counts above read (25 + rate·coarse + rate·fine)·T for another codec.

The acoustic LMs (`CoarseLM`, `FineLM`, one base `AcousticLM`) are decoder-only `melody.modules.transformer.
Transformer`s with a KV cache. A window's stream is

    coarse: [ m_1 … m_12 | s_a … s_b | BOS | a_{f,1} a_{f,2} a_{f,3} a_{f,4} a_{f+1,1} … ]
    fine:   [ a_{f,1} … a_{f,4} a_{f+1,1} … (the window's coarse tokens) | BOS | a_{f,5} … a_{f,12} a_{f+1,5} … ]

tokens flattened frame by frame in level order (AudioLM's flattening), MuLan tokens m, the semantic tokens s of the
window's frames (a 50 Hz frame f lies in 25 Hz token ⌊f / 2⌋). As melody's semantic LM does for MuLan
levels, code k at level l is row l·K + k of one embedding table, so each level has its own vectors; the
output heads are per level too (`head` `(levels, K, dim)`: position i, of level i mod L, is scored by its
level's head). Training is teacher-forced next-token cross-entropy (`melody.semantic.lm.lm_loss`).

Sampling (`sample_acoustic`): temperature and top-k (`melody.semantic.sampling.sample_token`), one seeded
`torch.Generator` per row, and windows so that any length works — the semantic LM's rule
(`melody.semantic.sampling.generate`) in frames: a window holds at most `window` frames; when it is full and
more are wanted, the next starts `stride` frames later from a fresh cache, re-encoding its condition (the
semantic or coarse tokens of *its* frames) and its first `window − stride` frames in one pass. Every token's
scores come from exactly one forward call, so `forward_passes` = tokens generated, however many windows.

Choices where MusicLM's paper is silent or was not available to us (docs/baselines.md):
- sizes: `paper` = 24 layers × 1024 wide, 16 heads for each acoustic LM (MusicLM's 430 M-parameter stages;
  ours have SwiGLU and rotary positions, `parameter_count`: ≈ 326 M coarse, 313 M fine); `tiny` = melody's tiny LM sizes;
- windows: coarse 10 s advancing by 5 s (melody's semantic LM windows), fine 3 s advancing by 1.5 s;
  `tiny` trains and samples 2.56 s coarse and 1.28 s fine windows (melody's DPD crop);
- temperatures 0.95 (coarse) and 0.4 (fine), no top-k: our choice, cooler for the finer, noisier levels (MusicLM's
  own values were not at hand); no classifier-free guidance in the acoustic stages (one pass per token, Table 3's count);
- the fine LM reads codes as the codec's vectors (`fine.code_vectors`, `fine.context_frames`, on in the presets;
  `AcousticLM`, `FineLM`): with a free embedding row per code the tiny fine LM stayed at held-out perplexity ≈ 252
  of 256 (fine codes are near-uniform one by one, but the residual each quantises is predictable from neighbouring
  frames' vectors, a geometry free rows never learned), and each fine token also reads its own and ±2 frames'
  coarse vectors, frame-aligned. The coarse LM keeps free rows (`coarse.code_vectors` false);
- training: the coarse LM conditioned on the MuLan tokens of the crop's *audio* (MusicLM's recipe, as
  melody's LM), never dropped; both LMs learn from the same crops in one step, each with its own AdamW;
  `tiny` takes the data of melody's DPD run and the optimiser of melody's LM run, for the DPD run's wall clock
  (5 500 steps, `benchmarks/musiclm_train_budget.py`).
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from melody.baselines.codec import CodecConfig, LatentCodec, coarse_split
from melody.baselines.hf_codec import HFCodec, codec_from_config
from melody.checkpoint import fingerprint, load_weights, prefixed, read_tensors, unprefixed, write_tensors
from melody.config import MelodyConfig, TrainConfig, apply_overrides, from_dict, to_dict
from melody.data.loader import mix_seeds
from melody.errors import MelodyError
from melody.io import read_json, write_json_atomic
from melody.modules.transformer import KVCache, Transformer, TransformerConfig
from melody.semantic.lm import LMOutput, window_and_stride
from melody.semantic.sampling import generate as generate_semantic
from melody.semantic.sampling import sample_token

if typing.TYPE_CHECKING:
    from melody.pipeline import MeLoDy

FORMAT = "melody-musiclm"
FORMAT_VERSION = 1
FROZEN = ("mulan", "tokenizer", "vae")  # the melody models whose outputs the acoustic LMs learned


# --- configuration ---------------------------------------------------------------------------------


@dataclass
class AcousticLMConfig:
    """One acoustic LM: decoder sizes, its window (training crop and sampling window) and sampling settings."""

    dim: int = 1024
    depth: int = 24
    heads: int = 16
    dropout: float = 0.1  # MusicLM's
    window_seconds: float = 10.0
    stride_seconds: float = 5.0
    temperature: float = 0.95
    top_k: int = 0
    # Codes as the codec's vectors (`AcousticLM`): each code is embedded as a learned map of the vector it stands for
    # (`codec_vectors`) and scored through that vector too, not by a free row per code. False: free rows (the
    # default here, so runs and exports from before this field load as they were built; the fine LM's default is True).
    code_vectors: bool = False
    # Fine LM only, with code_vectors: each fine token also reads the summed coarse vectors of its own frame and of
    # `context_frames` frames either side, frame-aligned (`FineLM.frame_context`). 0: none.
    context_frames: int = 0


@dataclass
class MusicLMConfig:
    """The baseline's acoustic half; the semantic half is the melody bundle it runs beside. Defaults: `paper`."""

    preset: str = "paper"
    codec: CodecConfig = field(default_factory=CodecConfig)
    coarse: AcousticLMConfig = field(default_factory=AcousticLMConfig)
    fine: AcousticLMConfig = field(default_factory=lambda: AcousticLMConfig(window_seconds=3.0, stride_seconds=1.5,
                                                                            temperature=0.4, code_vectors=True,
                                                                            context_frames=2))
    train: TrainConfig = field(default_factory=TrainConfig)


# Presets are overrides of the `paper` defaults, written as `--set` writes them (as melody.config's are).
PRESETS: dict[str, tuple[str, ...]] = {
    "paper": (),
    "tiny": (
        "codec.codebook_size=256",  # 12 levels: mel distance 0.464 vs 0.446 with 1024 (docs/baselines.md)
        "coarse.dim=128", "coarse.depth=4", "coarse.heads=4",  # melody's tiny semantic LM
        "coarse.window_seconds=2.56", "coarse.stride_seconds=1.28",  # melody's tiny DPD crop: 64 semantic tokens
        "fine.dim=128", "fine.depth=4", "fine.heads=4",
        "fine.window_seconds=1.28", "fine.stride_seconds=0.64",
        # the data of melody's tiny DPD run (batch 8 × 2.56 s crops) with its LM's optimiser (lr 1e-3, weight decay
        # 0.1, melody/train/recipes.py); steps: the DPD run's wall clock on 2 CPU cores (docs/baselines.md)
        "train.batch_size=8", "train.lr=1e-3", "train.weight_decay=0.1", "train.steps=5500", "train.warmup_steps=100",
        "train.checkpoint_every=250", "train.log_every=25", "train.sample_every=250", "train.num_workers=1",
        "train.mixed_precision=no",
    ),
}


def preset(name: str, overrides: Sequence[str] = ()) -> MusicLMConfig:
    """The named preset with `section.key=value` overrides on top (`coarse.depth=2`, `train.steps=100`)."""
    if name not in PRESETS:
        raise MelodyError(f"unknown MusicLM preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return apply_overrides(apply_overrides(MusicLMConfig(preset=name), PRESETS[name]), overrides)


def window_frames(config: AcousticLMConfig, frame_rate: int | Fraction) -> tuple[int, int]:
    """(frames per window, frames per slide) at the codec's frame rate: 10 s and 5 s at 50 Hz → (500, 250)."""
    window, stride = round(config.window_seconds * frame_rate), round(config.stride_seconds * frame_rate)
    if window < 1 or not 1 <= stride <= window:
        raise MelodyError(f"acoustic LM window {window} and stride {stride} frames: need 1 ≤ stride ≤ window; "
                          "check window_seconds and stride_seconds")
    return window, stride


def codec_shape(config: CodecConfig, codec: LatentCodec | HFCodec | None = None) -> tuple[int, int, int]:
    """(codebook size, coarse levels, fine levels) of a built `codec`, or without one of the latent codec `config` describes."""
    if codec is not None:
        return codec.codebook_size, codec.coarse_levels, codec.fine_levels
    coarse = coarse_split(config.coarse_levels, config.levels)
    return config.codebook_size, coarse, config.levels - coarse


@torch.no_grad()
def codec_vectors(codec: LatentCodec | HFCodec) -> torch.Tensor:
    """The vector each code stands for, `(levels, K, D)` float32: what the codec's decoder sums over the levels (the
    latent codec's RVQ codebooks; EnCodec's codebooks; DAC's codebook rows through each level's output projection)."""
    if isinstance(codec, LatentCodec):
        return codec.rvq.codebooks.float()
    quantizer = codec.model.quantizer
    if codec.kind == "encodec":
        return torch.stack([layer.codebook.embed for layer in quantizer.layers[:codec.levels]]).float()
    return torch.stack([q.out_proj(q.codebook.weight.T[None])[0].T for q in quantizer.quantizers[:codec.levels]]).float()


def code_vector_dim(config: CodecConfig, codec: LatentCodec | HFCodec | None = None,
                    melody_cfg: MelodyConfig | None = None) -> int:
    """D of `codec_vectors(codec)`; without a codec, of the latent codec `config` describes for `melody_cfg`'s VAE
    (by default `MelodyConfig()`'s)."""
    if codec is not None:
        return int(codec_vectors(codec).shape[-1])
    vae = (melody_cfg or MelodyConfig()).vae
    with torch.device("meta"):
        return LatentCodec(config, vae.latent_dim, vae.sample_rate / math.prod(vae.strides)).frame_dim


# --- the acoustic LMs ------------------------------------------------------------------------------


def flatten_codes(codes: torch.Tensor) -> torch.Tensor:
    """Codes `(b, frames, levels)` → `(b, frames · levels)`, frame by frame in level order (AudioLM)."""
    return rearrange(codes, "b n l -> b (n l)")


def unflatten_codes(tokens: torch.Tensor, levels: int) -> torch.Tensor:
    """The inverse of `flatten_codes`: `(b, n · levels)` → `(b, n, levels)`."""
    return rearrange(tokens, "b (n l) -> b n l", l=levels)


@dataclass
class AcousticLMCache:
    """The decoder's per-layer `KVCache`s, the scores of the next token, and how many target tokens were fed."""

    layers: list[KVCache]
    next_logits: torch.Tensor | None = None  # (b, K), None before the first call
    fed: int = 0  # target tokens in the window so far: the next one is of level fed mod levels
    context: torch.Tensor | None = None  # (b, n, dim): the window's per-frame context (`AcousticLM.frame_context`)

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0


class AcousticLM(nn.Module):
    """p(target codes | condition): [condition | BOS | flattened codes of `levels` levels from `first_level`].

    forward(tokens `(b, t)` long, flattened codes of the window's first frames; *condition, the subclass's
    `condition` arguments (none with a filled cache); cache) → `LMOutput`: `logits[:, i]` scores tokens[:, i],
    `next_logits` the token after the last (of level t mod levels). The embedding table holds
    `embedded_levels` levels (the fine LM also embeds the coarse levels it is conditioned on).

    With `config.code_vectors` (and `vector_dim`, the D of `codec_vectors`), codes are the codec's vectors v(l, k)
    (`set_code_vectors`, scaled to unit RMS): code k at level l is embedded as e_l + W_in v(l, k) (a learned row per
    level, one learned map) instead of a free row, and scored by head(l, k)·h + b(l, k) + (W_out,l h)·v(l, k). What a
    fine level's code is depends on the residual's *vector*, which neighbouring frames' vectors predict; free rows
    would have to learn the codebooks' geometry from the tokens, and the tiny fine LM never did (held-out perplexity
    252 of 256 after 3 000 steps, where a linear predictor on the vectors reaches ≈ 209).
    """

    def __init__(self, config: AcousticLMConfig, codebook_size: int, first_level: int, levels: int,
                 embedded_levels: int, vector_dim: int = 0) -> None:
        super().__init__()
        if first_level + levels > embedded_levels:
            raise ValueError(f"levels {first_level} … {first_level + levels - 1} are not all embedded ({embedded_levels})")
        if config.code_vectors and vector_dim < 1:
            raise ValueError("code_vectors needs the size of the codec's code vectors (vector_dim)")
        self.config, self.codebook_size, self.first_level, self.levels = config, codebook_size, first_level, levels
        self.vector_dim = vector_dim if config.code_vectors else 0
        d = config.dim
        if self.vector_dim:
            self.codec_embedding = None
            self.level_embedding = nn.Parameter(torch.zeros(embedded_levels, d))
            self.vector_in = nn.Linear(vector_dim, d, bias=False)
            # the codec's, set by `set_code_vectors` (zeros until then); not saved: the codec is the one source
            self.register_buffer("code_vectors", torch.zeros(embedded_levels * codebook_size, vector_dim), persistent=False)
        else:
            self.codec_embedding = nn.Embedding(embedded_levels * codebook_size, d)  # row l·K + k: code k at level l
        self.bos = nn.Parameter(torch.randn(d))
        self.transformer = Transformer(TransformerConfig(d, config.depth, config.heads, causal=True, dropout=config.dropout))
        self.head = nn.Parameter(torch.empty(levels, codebook_size, d).uniform_(-d ** -0.5, d ** -0.5))  # per-level heads
        if self.vector_dim:
            self.vector_out = nn.Parameter(torch.zeros(levels, vector_dim, d))  # W_out per level: 0 at first
            self.head_bias = nn.Parameter(torch.zeros(levels, codebook_size))

    @torch.no_grad()
    def set_code_vectors(self, vectors: torch.Tensor) -> None:
        """The codec's code vectors `(levels, K, D)` (`codec_vectors`), scaled to unit RMS over the levels this LM
        embeds; a no-op without `code_vectors`. Called wherever an LM meets its codec (`MusicLMStyle`, training)."""
        if not self.vector_dim:
            return
        embedded = self.code_vectors.shape[0] // self.codebook_size
        if vectors.dim() != 3 or vectors.shape[0] < embedded or tuple(vectors.shape[1:]) != (self.codebook_size, self.vector_dim):
            raise MelodyError(f"the codec's code vectors are {tuple(vectors.shape)}, this acoustic LM was built for "
                              f"({embedded}+, {self.codebook_size}, {self.vector_dim}); build it for this codec")
        v = vectors[:embedded].float()
        rms = v.pow(2).mean().sqrt()
        self.code_vectors.copy_((v / rms if rms > 0 else v).reshape(-1, self.vector_dim))

    def new_cache(self) -> AcousticLMCache:
        return AcousticLMCache(self.transformer.new_cache())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed_codes(self, tokens: torch.Tensor, first_level: int, levels: int, start: int = 0) -> torch.Tensor:
        """Flattened codes `(b, t)` whose position j is of level first_level + (start + j) mod levels → `(b, t, dim)`."""
        if ((tokens < 0) | (tokens >= self.codebook_size)).any():
            raise ValueError(f"codec tokens must lie in [0, {self.codebook_size})")
        level = first_level + (start + torch.arange(tokens.shape[1], device=tokens.device)) % levels
        rows = tokens + level * self.codebook_size
        if self.vector_dim:
            return self.level_embedding[level] + self.vector_in(self.code_vectors[rows].to(self.vector_in.weight.dtype))
        return self.codec_embedding(rows)

    def target_logits(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Decoder outputs `(b, t, dim)` predicting target positions start … start + t − 1 → logits `(b, t, K)`,
        each position by its level's head. Padded to whole frames, so all levels go in one einsum."""
        b, t, _ = h.shape
        front = start % self.levels
        back = -(front + t) % self.levels
        frames = rearrange(F.pad(h, (0, 0, front, back)), "b (n l) d -> b n l d", l=self.levels)
        scores = torch.einsum("bnld,lkd->bnlk", frames, self.head.to(h.dtype))
        if self.vector_dim:
            vectors = self.code_vectors.view(-1, self.codebook_size, self.vector_dim)
            vectors = vectors[self.first_level:self.first_level + self.levels]  # (levels, K, D): the target levels'
            query = torch.einsum("bnld,led->bnle", frames, self.vector_out.to(h.dtype))
            scores = scores + torch.einsum("bnle,lke->bnlk", query, vectors.to(h.dtype)) + self.head_bias.to(h.dtype)
        return rearrange(scores, "b n l k -> b (n l) k")[:, front:front + t]

    def condition(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The embedded condition `(b, c, dim)` (the subclasses say of what)."""
        raise NotImplementedError

    def frame_context(self, *inputs: torch.Tensor) -> torch.Tensor | None:
        """Per frame of the window, what is added to each of its target tokens' inputs `(b, n, dim)`; None: nothing."""
        return None

    def context_at(self, context: torch.Tensor | None, start: int, t: int) -> torch.Tensor | float:
        """The context rows of target positions start … start + t − 1 `(b, t, dim)` (0 without a context)."""
        if context is None:
            return 0.0
        frames = (start + torch.arange(t, device=context.device)) // self.levels
        if t and int(frames[-1]) >= context.shape[1]:
            raise ValueError(f"target {start + t - 1} lies in frame {int(frames[-1])}, past the condition's "
                             f"{context.shape[1]} frames")
        return context[:, frames]

    def forward(self, tokens: torch.Tensor, *condition: torch.Tensor, cache: AcousticLMCache | None = None) -> LMOutput:
        b, t = tokens.shape
        if cache is None or cache.length == 0:
            if not condition:
                raise ValueError("a fresh stream needs its condition")
            prefix = self.condition(*condition)  # (b, c, dim)
            context = self.frame_context(*condition)  # (b, n, dim) or None
            # [condition | BOS | targets]; outputs at BOS … target t − 1 predict targets 0 … t
            x = torch.cat((prefix, self.bos.expand(b, 1, -1).to(prefix.dtype),
                           self.embed_codes(tokens, self.first_level, self.levels) + self.context_at(context, 0, t)), dim=1)
            h = self.transformer(x, cache=None if cache is None else cache.layers)
            scores = self.target_logits(h[:, -(t + 1):], 0)  # (b, t + 1, K)
            logits, next_logits, start = scores[:, :t], scores[:, t], 0
            if cache is not None:
                cache.context = context
        else:
            if condition:
                raise ValueError("the condition is already in the cache; pass none")
            if t == 0:
                return LMOutput(cache.next_logits.new_empty(b, 0, self.codebook_size), cache.next_logits)
            start = cache.fed
            x = self.embed_codes(tokens, self.first_level, self.levels, start) + self.context_at(cache.context, start, t)
            h = self.transformer(x, cache=cache.layers)
            scores = self.target_logits(h, start + 1)  # the output at target j predicts target j + 1
            logits = torch.cat((cache.next_logits[:, None], scores[:, :-1]), dim=1)
            next_logits = scores[:, -1]
        if cache is not None:
            cache.next_logits, cache.fed = next_logits, start + t
        return LMOutput(logits, next_logits)


class CoarseLM(AcousticLM):
    """Coarse acoustic tokens (codec levels 1–4) given MuLan tokens and semantic tokens (MusicLM)."""

    def __init__(self, config: AcousticLMConfig, codebook_size: int, coarse_levels: int, mulan_levels: int,
                 mulan_codebook_size: int, semantic_vocab: int, vector_dim: int = 0) -> None:
        if config.context_frames:
            raise MelodyError("coarse.context_frames is the fine LM's (context of coarse codes); set it to 0")
        super().__init__(config, codebook_size, 0, coarse_levels, coarse_levels, vector_dim)
        self.mulan_levels, self.mulan_codebook_size, self.semantic_vocab = mulan_levels, mulan_codebook_size, semantic_vocab
        self.mulan_embedding = nn.Embedding(mulan_levels * mulan_codebook_size, config.dim)  # row l·K_m + k
        self.register_buffer("mulan_offsets", torch.arange(mulan_levels) * mulan_codebook_size, persistent=False)
        self.semantic_embedding = nn.Embedding(semantic_vocab, config.dim)

    @classmethod
    def from_config(cls, cfg: MusicLMConfig, melody_cfg: MelodyConfig,
                    codec: LatentCodec | HFCodec | None = None) -> CoarseLM:
        """Sized for `codec`'s codebook and coarse levels (without one: the latent codec of `cfg.codec`)."""
        size, coarse, _ = codec_shape(cfg.codec, codec)
        vector_dim = code_vector_dim(cfg.codec, codec, melody_cfg) if cfg.coarse.code_vectors else 0
        lm = cls(cfg.coarse, size, coarse, melody_cfg.mulan.rvq_levels, melody_cfg.mulan.codebook_size,
                 melody_cfg.tokenizer.codebook_size, vector_dim)
        if codec is not None:
            lm.set_code_vectors(codec_vectors(codec))
        return lm

    def condition(self, mulan_tokens: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """[MuLan tokens `(b, M)` | semantic tokens `(b, S)`] → `(b, M + S, dim)`."""
        if mulan_tokens.shape[1] != self.mulan_levels or ((mulan_tokens < 0) | (mulan_tokens >= self.mulan_codebook_size)).any():
            raise ValueError(f"MuLan tokens must be (b, {self.mulan_levels}) in [0, {self.mulan_codebook_size})")
        if ((semantic < 0) | (semantic >= self.semantic_vocab)).any():
            raise ValueError(f"semantic tokens must lie in [0, {self.semantic_vocab})")
        return torch.cat((self.mulan_embedding(mulan_tokens + self.mulan_offsets), self.semantic_embedding(semantic)), dim=1)


class FineLM(AcousticLM):
    """Fine acoustic tokens (codec levels 5–12) given the coarse tokens of the same frames (AudioLM).

    With `config.context_frames` c (and `code_vectors`), fine token (f, l) also gets W_c [r(f − c) … r(f + c)] added
    to its input, r(g) the sum of frame g's coarse code vectors (0 outside the window): the prefix holds the same
    codes, but a fine token finds its own frame's there only at an offset that grows with f, which the tiny LM
    never learned; frame-aligned, its neighbours' coarse vectors are where a fixed map reads them.
    """

    def __init__(self, config: AcousticLMConfig, codebook_size: int, coarse_levels: int, fine_levels: int,
                 vector_dim: int = 0) -> None:
        if config.context_frames < 0 or (config.context_frames and not config.code_vectors):
            raise MelodyError(f"fine.context_frames {config.context_frames}: needs ≥ 0, and fine.code_vectors=true when "
                              "> 0 (the context is the coarse codes' vectors)")
        super().__init__(config, codebook_size, coarse_levels, fine_levels, coarse_levels + fine_levels, vector_dim)
        self.coarse_levels = coarse_levels
        self.context_frames = config.context_frames
        if self.context_frames:
            self.context_in = nn.Linear((2 * self.context_frames + 1) * vector_dim, config.dim, bias=False)

    @classmethod
    def from_config(cls, cfg: MusicLMConfig, codec: LatentCodec | HFCodec | None = None,
                    melody_cfg: MelodyConfig | None = None) -> FineLM:
        """Sized for `codec`'s codebook, levels and code vectors (without one: the latent codec of `cfg.codec` for
        `melody_cfg`'s VAE), with `codec`'s vectors set when given."""
        vector_dim = code_vector_dim(cfg.codec, codec, melody_cfg) if cfg.fine.code_vectors else 0
        lm = cls(cfg.fine, *codec_shape(cfg.codec, codec), vector_dim)
        if codec is not None:
            lm.set_code_vectors(codec_vectors(codec))
        return lm

    def condition(self, coarse: torch.Tensor) -> torch.Tensor:
        """Coarse codes `(b, n, coarse_levels)` → `(b, n · coarse_levels, dim)`, with the coarse levels' rows."""
        if coarse.dim() != 3 or coarse.shape[-1] != self.coarse_levels:
            raise ValueError(f"coarse codes must be (b, frames, {self.coarse_levels})")
        return self.embed_codes(flatten_codes(coarse), 0, self.coarse_levels)

    def frame_context(self, coarse: torch.Tensor) -> torch.Tensor | None:
        """W_c [r(f − c) … r(f + c)] per frame f of the window `(b, n, dim)` (None without `context_frames`)."""
        if not self.context_frames:
            return None
        c, n = self.context_frames, coarse.shape[1]
        vectors = self.code_vectors.view(-1, self.codebook_size, self.vector_dim)
        r = sum(vectors[level][coarse[..., level]] for level in range(self.coarse_levels))  # (b, n, D)
        r = F.pad(r.to(self.context_in.weight.dtype), (0, 0, c, c))
        return self.context_in(torch.cat([r[:, i:i + n] for i in range(2 * c + 1)], dim=-1))


def parameter_count(cfg: MusicLMConfig, melody_cfg: MelodyConfig,
                    codec: LatentCodec | HFCodec | None = None) -> dict[str, int]:
    """Parameters of the coarse and fine LMs at these sizes (for `codec`, by default the latent codec of
    `cfg.codec`), counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return {"coarse": CoarseLM.from_config(cfg, melody_cfg, codec).num_parameters(),
                "fine": FineLM.from_config(cfg, codec, melody_cfg).num_parameters()}


# --- sampling --------------------------------------------------------------------------------------


@dataclass
class AcousticResult:
    """What `sample_acoustic` returns; the counts are per call, the same for every row."""

    codes: torch.Tensor  # (b, frames, levels) long
    forward_passes: int  # network calls: == frames · levels
    windows: int  # windows encoded from a fresh cache (the first one included)
    positions: int  # stream positions processed per row: condition + BOS + kept frames per window, 1 per step


@torch.no_grad()
def sample_acoustic(lm: AcousticLM, condition: Callable[[int, int], tuple[torch.Tensor, ...]], frames: int, window: int,
                    stride: int, *,
                    temperature: float = 1.0, top_k: int = 0,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None) -> AcousticResult:
    """Ancestral sampling of `frames` frames × `lm.levels` tokens with a KV cache and sliding windows.

    `condition(first_frame, n_frames)` → the arguments of `lm.condition` for the window covering those frames
    (e.g. `lambda f, n: (mulan, semantic[:, f // 2:ceil((f + n) / 2)])` for the coarse LM). The caller puts
    `lm` in eval mode.
    """
    if frames < 0:
        raise MelodyError(f"cannot generate {frames} frames; ask for 0 or more")
    if window < 1 or not 1 <= stride <= window:
        raise MelodyError(f"window {window} and stride {stride} frames: need 1 ≤ stride ≤ window")
    levels = lm.levels
    n = frames * levels
    cond = condition(0, min(window, frames))
    b, device = cond[0].shape[0], cond[0].device
    tokens = torch.zeros(b, n, dtype=torch.long, device=device)
    if n == 0:
        return AcousticResult(unflatten_codes(tokens, levels), 0, 0, 0)
    # the first window: [condition | BOS] from a fresh cache, in one pass
    cache, first = lm.new_cache(), 0  # first: the window's first frame
    logits = lm(tokens[:, :0], *cond, cache=cache).next_logits
    passes, windows, positions = 1, 1, cache.length
    for i in range(n):
        token = sample_token(logits, temperature, top_k, 1.0, generator)  # a ~ p(· | condition, window so far)
        tokens[:, i] = token
        if i == n - 1:
            break
        if i + 1 == (first + window) * levels:
            # the window is full: the next starts `stride` frames later, its kept frames re-encoded
            first += stride
            cond = condition(first, min(window, frames - first))
            cache = lm.new_cache()
            logits = lm(tokens[:, first * levels:i + 1], *cond, cache=cache).next_logits
            windows += 1
            positions += cache.length
        else:
            logits = lm(token[:, None], cache=cache).next_logits  # feed the token: the next one's scores
            positions += 1
        passes += 1
    return AcousticResult(unflatten_codes(tokens, levels), passes, windows, positions)


def semantic_span(first_frame: int, n_frames: int, ratio: Fraction, total: int) -> tuple[int, int]:
    """The semantic tokens [a, b) whose frames overlap codec frames first_frame … first_frame + n_frames − 1,
    `ratio` = token rate / codec rate (25 / 50), clipped to the `total` tokens there are."""
    return math.floor(first_frame * ratio), min(total, math.ceil((first_frame + n_frames) * ratio))


# --- end to end ------------------------------------------------------------------------------------


@dataclass
class MusicLMOutput:
    """What `MusicLMStyle.generate` returns (melody's `GenerateOutput`, with acoustic tokens for latents)."""

    audio: torch.Tensor  # (b, channels, round(seconds · sample_rate)) float32 in [-1, 1]
    sample_rate: int
    semantic_tokens: torch.Tensor  # (b, ⌈25 · seconds⌉) long: melody's own for the same prompt and seed
    acoustic_tokens: torch.Tensor  # (b, ⌈frame_rate · seconds⌉, levels) long, coarse levels then fine: ⌈50·T⌉ × 12
    forward_passes: dict[str, int] = field(default_factory=dict)  # per stage, network calls
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, wall time


class MusicLMStyle:
    """The baseline: melody's MuLan and semantic LM, then `CoarseLM`, `FineLM` and the codec (`LatentCodec` + melody's
    VAE, or a pretrained `HFCodec`)."""

    def __init__(self, melody: MeLoDy, codec: LatentCodec | HFCodec, coarse: CoarseLM, fine: FineLM,
                 config: MusicLMConfig) -> None:
        self.melody, self.codec, self.coarse, self.fine, self.config = melody, codec, coarse, fine, config
        m = melody.cfg
        if (coarse.mulan_levels, coarse.mulan_codebook_size, coarse.semantic_vocab) != (
                m.mulan.rvq_levels, m.mulan.codebook_size, m.tokenizer.codebook_size):
            raise MelodyError("this MusicLM-style model was built for another MuLan or tokenizer than the bundle's; "
                              "pass the bundle it was trained with")
        if isinstance(codec, HFCodec):
            if codec.sample_rate != melody.vae.cfg.sample_rate:
                rate = melody.vae.cfg.sample_rate
                raise MelodyError(f"the codec adapter takes {codec.sample_rate} Hz audio, the bundle makes {rate} Hz; "
                                  f"load the codec with sample_rate={rate}")
        elif (codec.latent_dim, codec.latent_rate) != (melody.vae.cfg.latent_dim, melody.vae.latent_rate):
            raise MelodyError(f"the codec reads {codec.latent_rate:g} Hz × {codec.latent_dim} latents, the bundle's VAE "
                              f"makes {melody.vae.latent_rate:g} Hz × {melody.vae.cfg.latent_dim}; pass the bundle it was "
                              "trained with")
        shape = (codec.codebook_size, codec.coarse_levels, codec.fine_levels)
        if (coarse.codebook_size, coarse.levels, fine.levels) != shape:
            raise MelodyError(f"the acoustic LMs model {coarse.levels} + {fine.levels} levels × {coarse.codebook_size} codes, "
                              f"the codec makes {codec.coarse_levels} + {codec.fine_levels} × {codec.codebook_size}; "
                              "build them for this codec")
        if coarse.vector_dim or fine.vector_dim:  # the LMs read their codec's vectors, never saved with them
            vectors = codec_vectors(codec)
            coarse.set_code_vectors(vectors)
            fine.set_code_vectors(vectors)
        device = next(melody.semantic_lm.parameters()).device
        for model in (codec, coarse, fine):
            model.to(device).eval()

    @staticmethod
    def build(config: MusicLMConfig, melody_cfg: MelodyConfig) -> tuple[LatentCodec | HFCodec, CoarseLM, FineLM]:
        """Untrained LMs of these sizes (PyTorch's initialisation) for the codec `config.codec` names: a latent codec
        with no codebooks yet, or the pretrained codec read from `config.codec.path`, whose levels and codebook
        size the LMs then model."""
        vae = melody_cfg.vae
        if config.codec.kind == "latent":
            codec = LatentCodec(config.codec, vae.latent_dim, vae.sample_rate / math.prod(vae.strides))
        else:
            codec = codec_from_config(config.codec, vae.sample_rate)
        return codec, CoarseLM.from_config(config, melody_cfg, codec), FineLM.from_config(config, codec, melody_cfg)

    @classmethod
    def random(cls, config: MusicLMConfig, melody: MeLoDy, seed: int = 0) -> MusicLMStyle:
        """Random weights and random codebooks (seeded): for forward-pass counts and speed, e.g. at `paper` shapes."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            codec, coarse, fine = cls.build(config, melody.cfg)
        if isinstance(codec, LatentCodec):  # a pretrained codec keeps its own codebooks
            codec.randomize(torch.Generator().manual_seed(seed))
        return cls(melody, codec, coarse, fine, config)

    @classmethod
    def from_pretrained(cls, folder: str | Path, melody: MeLoDy, codec_path: str | Path | None = None) -> MusicLMStyle:
        """Load `folder/musiclm.safetensors` + `folder/musiclm.json` beside `melody`, the bundle it was trained against;
        a pretrained codec is read from the folder its config records, or from `codec_path` (the same codec, moved)."""
        folder = Path(folder)
        if not (folder / "musiclm.json").is_file():
            raise MelodyError(f"{folder}: holds no musiclm.json; give the folder `melody train musiclm` exported "
                              "(its run folder, once finished)")
        meta = read_json(folder / "musiclm.json", "MusicLM-style config")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise MelodyError(f"{folder / 'musiclm.json'}: not a MusicLM-style model config (no '{FORMAT}' format); "
                              "export it with melody")
        if meta.get("format_version") != FORMAT_VERSION:
            raise MelodyError(f"{folder / 'musiclm.json'}: format version {meta.get('format_version')} is not supported "
                              f"(expected {FORMAT_VERSION}); re-export it with this version of melody")
        config = from_dict(meta.get("config"), MusicLMConfig, "config")
        if codec_path is not None:
            config.codec.path = str(codec_path)
        tensors, info = read_tensors(folder / "musiclm.safetensors", "MusicLM-style weights")
        if info.get("stage") != "musiclm":
            raise MelodyError(f"{folder / 'musiclm.safetensors'}: holds '{info.get('stage')}' weights, not 'musiclm'")
        trained_against = meta.get("trained_against") or {}
        for name in FROZEN:
            recorded = trained_against.get(name)
            if recorded is not None and recorded != fingerprint(getattr(melody, name)):
                raise MelodyError(f"{folder}: was trained against another {name} than this bundle's (fingerprint {recorded}); "
                                  "pass the bundle it was trained with")
        codec, coarse, fine = cls.build(config, melody.cfg)
        recorded = trained_against.get("codec")
        if isinstance(codec, HFCodec) and recorded is not None and recorded != fingerprint(codec.model):
            raise MelodyError(f"{folder}: learned the codes of another codec than the one in {config.codec.path} (fingerprint "
                              f"{recorded}); pass the codec folder it was trained with (codec_path)")
        for name, module in (("codec", codec), ("coarse", coarse), ("fine", fine)):
            load_weights(module, unprefixed(tensors, name), f"{folder / 'musiclm.safetensors'} [{name}]")
        return cls(melody, codec, coarse, fine, config)

    def save_pretrained(self, folder: str | Path, trained_against: dict[str, str] | None = None) -> Path:
        """Write `folder/musiclm.safetensors` (the latent codec's codebooks and both LMs; a pretrained codec stays in
        its own folder) and `folder/musiclm.json` (format, version, config, and the fingerprints of the models it
        learned from: `trained_against`, by default this bundle's and a pretrained codec's)."""
        folder = Path(folder)
        if trained_against is None:
            trained_against = {name: fingerprint(getattr(self.melody, name)) for name in FROZEN}
            if isinstance(self.codec, HFCodec):
                trained_against["codec"] = fingerprint(self.codec.model)
        state = {**prefixed(self.codec.state_dict(), "codec"), **prefixed(self.coarse.state_dict(), "coarse"),
                 **prefixed(self.fine.state_dict(), "fine")}
        path = write_tensors(folder / "musiclm.safetensors", state, {"stage": "musiclm"})
        write_json_atomic(folder / "musiclm.json", {"format": FORMAT, "format_version": FORMAT_VERSION,
                                                    "config": to_dict(self.config), "trained_against": trained_against})
        return path

    @property
    def frame_rate(self) -> int | Fraction:
        """The codec's frames per second: the acoustic LMs' frame rate (50; a pretrained codec's exact rate / hop)."""
        return self.codec.frame_rate

    @property
    def _device(self) -> torch.device:
        return next(self.coarse.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: list[str], seconds: float, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> MusicLMOutput:
        """Music for each prompt `(b, channels, round(seconds · rate))`: text → MuLan tokens → melody's semantic LM
        → coarse LM → fine LM → codec decoder. Prompt i uses seed + i in every stage (a batch gives each prompt
        what a run of it alone gives); the semantic stage draws what `MeLoDy.generate` draws."""
        from melody.pipeline import check_duration, check_prompts

        prompts, seconds = check_prompts(prompts), check_duration(seconds)
        melody, tell = self.melody, progress or (lambda stage: None)
        times, passes = {}, {}

        tell("mulan")
        clock = time.perf_counter()
        mulan_tokens = melody.mulan.tokens(melody.mulan.embed_text(prompts))  # (b, 12)
        times["mulan"], passes["mulan"] = time.perf_counter() - clock, 1

        tell("semantic_lm")
        clock = time.perf_counter()
        semantic = self.semantic_tokens(mulan_tokens, math.ceil(seconds * melody.token_rate), seed, prompts)
        times["semantic_lm"], passes["semantic_lm"] = time.perf_counter() - clock, semantic.forward_passes

        codes = self.acoustic_tokens(mulan_tokens, semantic.tokens, math.ceil(seconds * self.frame_rate), seed, times,
                                     passes, tell)

        tell("codec")
        clock = time.perf_counter()
        audio = self.codec.decode_audio(codes, round(seconds * melody.vae.cfg.sample_rate), melody.vae)
        times["codec"], passes["codec"] = time.perf_counter() - clock, 1
        return MusicLMOutput(audio, melody.vae.cfg.sample_rate, semantic.tokens, codes, passes, times)

    def semantic_tokens(self, mulan_tokens: torch.Tensor, n_tokens: int, seed: int, prompts: list[str] | None = None):
        """melody's semantic LM with the bundle's sampling settings and melody's seeds (prompt i: (seed + i, 1)),
        as `MeLoDy.generate` samples them → `melody.semantic.sampling.GenerateResult`."""
        melody = self.melody
        lm_cfg = melody.cfg.semantic_lm
        window, stride = window_and_stride(lm_cfg, melody.token_rate)
        device = next(melody.semantic_lm.parameters()).device
        generators = [torch.Generator(device=device).manual_seed(mix_seeds(seed + i, 1)) for i in range(mulan_tokens.shape[0])]
        return generate_semantic(melody.semantic_lm, mulan_tokens.to(device), n_tokens, None, temperature=lm_cfg.temperature,
                                 top_k=lm_cfg.top_k, top_p=lm_cfg.top_p, guidance=lm_cfg.guidance, generator=generators,
                                 window=window, stride=stride, tempo=melody.tempo_tokens(prompts),
                                 beats=melody.tempo_beats(prompts))

    def acoustic_tokens(self, mulan_tokens: torch.Tensor, semantic: torch.Tensor, frames: int, seed: int,
                        times: dict | None = None, passes: dict | None = None,
                        tell: Callable[[str], None] | None = None) -> torch.Tensor:
        """Coarse then fine codes `(b, frames, levels)` for MuLan tokens `(b, M)` and semantic tokens `(b, S)`;
        row i's draws come from (seed + i, 5) (coarse) and (seed + i, 6) (fine). Each stage's wall time and
        forward passes go into `times` and `passes`."""
        times, passes, tell = ({} if times is None else times), ({} if passes is None else passes), tell or (lambda s: None)
        device, b = self._device, semantic.shape[0]
        mulan_tokens, semantic = mulan_tokens.to(device), semantic.to(device)
        ratio = Fraction(self.melody.token_rate, self.frame_rate)

        def coarse_condition(first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            a, z = semantic_span(first, n, ratio, semantic.shape[1])
            return mulan_tokens, semantic[:, a:z]

        def seeded(stage: int) -> list[torch.Generator]:
            return [torch.Generator(device=device).manual_seed(mix_seeds(seed + i, stage)) for i in range(b)]

        tell("coarse")
        clock = time.perf_counter()
        c = self.config.coarse
        coarse = sample_acoustic(self.coarse, coarse_condition, frames, *window_frames(c, self.frame_rate),
                                 temperature=c.temperature, top_k=c.top_k, generator=seeded(5))
        times["coarse"], passes["coarse"] = time.perf_counter() - clock, coarse.forward_passes

        tell("fine")
        clock = time.perf_counter()
        f = self.config.fine
        fine = sample_acoustic(self.fine, lambda first, n: (coarse.codes[:, first:first + n],), frames,
                               *window_frames(f, self.frame_rate), temperature=f.temperature, top_k=f.top_k,
                               generator=seeded(6))
        times["fine"], passes["fine"] = time.perf_counter() - clock, fine.forward_passes
        return torch.cat((coarse.codes, fine.codes), dim=-1)

