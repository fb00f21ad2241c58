"""The semantic LM of MeLoDy (§3.1, Fig. 1): MuLan tokens → semantic tokens, LLaMA-style decoder-only.

The paper's LM (429.5 M) predicts the 25 Hz semantic tokens (k-means, 1024 codes) of 10 s windows
(250 tokens), conditioned on the 12 MuLan tokens (12 RVQ levels × 1024 codes) of the clip's
audio in training and of the text at inference. The decoder is `melody.modules.transformer`
(causal, rotary, RMSNorm, SwiGLU, KV cache); this file adds the embeddings, the head and the loss.

One sequence per example, the *stream*:

    [ c_1 … c_L | BOS | s_0 s_1 … s_{t−1} ]      L = mulan_levels (12), rotary positions 0 … L + t

The output at BOS predicts s_0 and the output at s_i predicts s_{i+1}, so `forward` returns
`logits[:, i]` = the distribution of s_i given the condition and s_<i (teacher forcing: the loss
compares `logits` with the same `semantic` tokens that went in), plus `next_logits`, the
distribution of s_t, which is what decoding samples.

Choices where the paper is silent:
- **Condition embedding** (`condition_embedding`):
  - `"table"`: one table of `mulan_levels × mulan_codebook_size` rows with level offsets (token k at
    level l is row l·K + k), the same thing as one table per level in one gather; so the same code at two
    levels has two unrelated vectors. No extra level embedding: rotary positions already tell the levels apart.
  - `"codebook"` (outside the paper): position l holds W S_l + b, S_l = Σ_{i≤l} q_i[c_i] the RVQ's running
    reconstruction (`running_reconstruction`) from a frozen copy of MuLan's codebooks (`mulan_codebooks`, set by
    `set_mulan_codebooks`, saved with the LM). Two embeddings close in MuLan's space give close conditions, where
    the table gives unrelated vectors to two codes however close their codewords. Why: the previously bundled
    table LM read a training clip's 12 codes as its name. Its first second's perplexity on training clips is 1.38
    with their condition against 2.02 with the null one, and on held-out clips 4.09 against 4.09
    (`benchmarks/condition_probe.py`). `condition_noise` adds N(0, σ²) to each S_l in training.
- **BOS**: a learned vector between the condition and the first semantic token (the separator; its
  output predicts s_0, so the first token is predicted from the condition alone).
- **Guidance** (lineage choice, `shared/reference/melody-paper.md`): a dropped condition is replaced by
  L learned *null* vectors (`null_condition`), per example (`drop_condition`); training drops it for
  `cond_dropout` = 10 % of the examples (`condition_dropout_mask`, seeded). `mulan_tokens=None` is
  the null condition for every row.
- **Tempo token** (`tempo_buckets` > 0; outside the paper): one more condition position after the
  MuLan tokens, [c_1 … c_L τ | BOS | s …], τ = the bucket of the clip's BPM (`tempo_bucket`, log-spaced,
  so a bucket is the same share of tempo at 60 and at 180 BPM) or row 0, "no tempo given". The
  bundled LM needed it: MuLan's text tokens do change with a stated tempo (70 vs 140 BPM: 10 of 12
  tokens differ), but the LM never learnt to turn them into a pace, since a clip's tempo is one of many
  things its MuLan tokens say. A dropped condition (guidance) drops τ too.
- **Beat clock** (`tempo_clock`, with the tempo token; outside the paper): the input that predicts frame i (BOS for
  frame 0, s_{i−1} after it) also holds W_β [sin 2π m β_i, cos 2π m β_i]_m (`beat_clock`), β_i the beat at frame i
  on the stated tempo's grid (`beat_grid`) and m ∈ {1/4, 1/2, 1, 2} cycles per beat. Why: the tempo token informs only
  a window's first frames, since after them the tokens already show the pace; with a stretched corpus the codebook
  LMs never learnt it (docs/semantic.md). The clock informs every frame: where on the asked grid the next token
  falls. It is 0 where no tempo is given, and where the condition is dropped if `clock_guided` (guidance then
  strengthens it with τ; else both branches are clocked and guidance strengthens the caption and τ only).
  In training β_0 is the window's place in its piece (`clip_beat_phase`); generation starts on a downbeat, β_0 = 0,
  and continuation windows carry on the grid of the first token given (`generate`'s `beats`).
- Width, depth and heads come from `SemanticLMConfig` (the paper gives none); at the `paper`
  defaults (1024 × 24 layers, 16 heads, SwiGLU 2752) the model has ≈ 318 M parameters
  (`parameter_count`), against the paper's 429.5 M.
- The head is bias-free and not tied to the input table (LLaMA). Embeddings, BOS and the null
  condition start at N(0, 1) (PyTorch's `nn.Embedding` default), so null and real conditions
  start at the same scale.
- The KV cache is the transformer's, wrapped in `SemanticLMCache` with the pending `next_logits`,
  so that a cached call returns the same `logits` as a full pass over the same tokens.
  Continuation windows restart from a fresh cache (positions from 0, as in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from melody.config import MelodyConfig, SemanticLMConfig
from melody.errors import MelodyError
from melody.modules.transformer import KVCache, StaticKVCache, Transformer, TransformerConfig


@dataclass
class LMOutput:
    """What `SemanticLM.forward` returns (audiocraft's `LMOutput`, without a mask: no padding here)."""

    logits: torch.Tensor  # (b, t, vocab): logits[:, i] scores semantic[:, i] given the condition and semantic[:, :i]
    next_logits: torch.Tensor  # (b, vocab): scores the token after semantic[:, -1], what decoding samples


@dataclass
class LMLoss:
    """Cross-entropy of `lm_loss`, unreduced per example and reduced over tokens."""

    per_example: torch.Tensor  # (b,) mean over each example's counted tokens (0 where none count)
    loss: torch.Tensor  # () mean over all counted tokens of the batch (what the optimiser sees)
    tokens: torch.Tensor  # () long: how many tokens were counted (to average across batches or ranks)


@dataclass
class SemanticLMCache:
    """The decoder's per-layer `KVCache`s plus the scores of the next token from the last call."""

    layers: list[KVCache] | list[StaticKVCache]
    next_logits: torch.Tensor | None = None  # (b, vocab), None before the first call
    beats: torch.Tensor | None = None  # (b, 2) float64 on the CPU: the window's beat grid (`beat_grid`), for a clock

    @property
    def length(self) -> int:
        """Stream positions held: the condition (`condition_length`) + BOS + the semantic tokens fed so far (0 when fresh)."""
        return self.layers[0].length if self.layers else 0


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> LMLoss:
    """Next-token cross-entropy −log p(s_i | c, s_<i): logits `(b, t, V)`, targets `(b, t)` long,
    mask `(b, t)` bool, True = counted (None: all)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (b, t)
    weight = torch.ones_like(ce) if mask is None else mask.to(ce.dtype)
    counted = weight.sum(dim=1)  # (b,)
    per_example = (ce * weight).sum(dim=1) / counted.clamp(min=1)
    total = counted.sum()
    return LMLoss(per_example, (ce * weight).sum() / total.clamp(min=1), total.long())


def condition_dropout_mask(batch: int, p: float, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """Which examples lose their condition (classifier-free guidance training): `(batch,)` bool, each
    True with probability p, drawn from `generator` (on the generator's device unless `device` is given)."""
    if not 0.0 <= p <= 1.0:
        raise MelodyError(f"condition dropout must be in [0, 1], got {p}; set semantic_lm.cond_dropout")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.rand(batch, generator=generator, device=device) < p


def tempo_bucket(bpm: torch.Tensor, buckets: int, tempo_range: tuple[float, ...]) -> torch.Tensor:
    """BPM `(b,)` float → tempo token `(b,)` long: 1 … `buckets` over log-spaced bins of [low, high]
    (tempos outside go to the end bins), 0 where the BPM is NaN or ≤ 0 (no tempo given)."""
    low, high = _tempo_range(tempo_range)
    known = torch.isfinite(bpm) & (bpm > 0)
    share = torch.log(bpm.clamp(min=1e-6) / low) / math.log(high / low)  # 0 at low, 1 at high
    token = (share * buckets).floor().clamp(0, buckets - 1).long() + 1
    return torch.where(known, token, torch.zeros_like(token))


def stretch_rates(batch: int, spread: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Playback rates `(batch,)` float64, log-uniform in [1 / (1 + spread), 1 + spread] (`semantic_lm.tempo_stretch`)."""
    if spread < 0:
        raise MelodyError(f"semantic_lm.tempo_stretch must be ≥ 0, got {spread}")
    device = generator.device if generator is not None else "cpu"
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    return torch.exp((2 * u - 1) * math.log1p(spread)).cpu()


def stretch_tokens(tokens: torch.Tensor, keep: torch.Tensor, rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic tokens `(b, t)` played `rate` `(b,)` times as fast, by nearest-frame resampling: frame i of the result
    is frame ⌊i · rate⌋ of the input, kept where that frame is kept and inside the window (so a 10 s window at rate
    1.25 holds 8 s of tokens). The music's tempo becomes rate × its tempo; rate 1 gives the input back."""
    t = tokens.shape[1]
    source = (torch.arange(t, dtype=torch.float64)[None, :] * rate.double().cpu()[:, None]).floor().long().to(tokens.device)
    inside = source < t
    source = source.clamp(max=t - 1)
    return tokens.gather(1, source), keep.gather(1, source) & inside


CLOCK_MULTIPLES = (0.25, 0.5, 1.0, 2.0)  # cycles per beat: a bar of four, half a bar, the beat, the half beat


def beat_grid(bpm: torch.Tensor, frame_rate: float, phase: torch.Tensor | None = None) -> torch.Tensor:
    """The beats of `bpm` `(b,)` on frames at `frame_rate` Hz: `(b, 2)` float64, [β_0, beats per frame = bpm / (60 ·
    frame_rate)], β_0 the beat at frame 0 (`phase` `(b,)` in beats, e.g. 2.5 = half way from the third beat to the
    fourth; None: 0, a downbeat). A row whose BPM is NaN or ≤ 0 gets a NaN rate: no clock."""
    bpm = bpm.double().cpu()
    rate = torch.where(torch.isfinite(bpm) & (bpm > 0), bpm / (60.0 * frame_rate), torch.full_like(bpm, math.nan))
    phase = torch.zeros_like(rate) if phase is None else phase.double().cpu().nan_to_num(0.0)
    return torch.stack((phase, rate), dim=1)


def continued_grid(previous: torch.Tensor | None, grid: torch.Tensor, frame: int) -> torch.Tensor:
    """`grid` `(b, 2)` (`beat_grid`, frames counted from the same first frame as `previous`'s) moved so that from
    `frame` on it goes on from where `previous` is there: a tempo change keeps the beat's phase instead of jumping to
    where the new tempo's grid from frame 0 would be. β'_0 = β_0 + frame · (r − r'), reduced modulo a bar of four
    (the clock's slowest cycle); a row that had no clock before starts on a downbeat at `frame`; a row without a clock
    now keeps none. With the same tempo, `previous` itself."""
    grid = grid.double().cpu().clone()
    rate = grid[:, 1]
    if previous is None:
        before, old_rate = torch.zeros_like(rate), torch.full_like(rate, math.nan)
    else:
        before, old_rate = previous[:, 0].double().cpu(), previous[:, 1].double().cpu()
    went_on = torch.where(torch.isfinite(old_rate), before + frame * old_rate, torch.zeros_like(rate))
    grid[:, 0] = torch.where(torch.isfinite(rate), torch.remainder(went_on - frame * rate, 4.0), grid[:, 0])
    return grid


def beat_clock(beats: torch.Tensor, first: int, length: int) -> torch.Tensor:
    """The clock of frames first … first + length − 1: beats `(b, 2)` (`beat_grid`) → `(b, length, 8)` float32,
    [sin 2π m β_i | cos 2π m β_i] for m in `CLOCK_MULTIPLES`, β_i = β_0 + i · rate; all 0 in a row without a clock."""
    frames = torch.arange(first, first + length, dtype=torch.float64, device=beats.device)
    # mod one bar of four: the slowest cycle's period, so a long stream's β keeps its fractional digits
    at = torch.remainder(beats[:, :1].double() + frames[None, :] * beats[:, 1:].double(), 4.0)  # (b, length)
    angle = 2 * math.pi * at[..., None] * torch.tensor(CLOCK_MULTIPLES, dtype=torch.float64, device=beats.device)
    clock = torch.cat((angle.sin(), angle.cos()), dim=-1)
    known = torch.isfinite(beats[:, 1])[:, None, None]
    return torch.where(known, clock, torch.zeros_like(clock)).float()


def bucket_tempo(token: torch.Tensor, buckets: int, tempo_range: tuple[float, ...]) -> torch.Tensor:
    """The BPM a tempo token stands for `(b,)` float: its bin's geometric centre, NaN for token 0."""
    low, high = _tempo_range(tempo_range)
    centre = low * (high / low) ** ((token.double() - 0.5) / buckets)
    return torch.where(token > 0, centre, torch.full_like(centre, math.nan))


def _tempo_range(tempo_range: tuple[float, ...]) -> tuple[float, float]:
    if len(tempo_range) != 2 or not 0 < tempo_range[0] < tempo_range[1]:
        raise MelodyError(f"tempo range {tempo_range}: give two BPMs, 0 < low < high, in semantic_lm.tempo_range")
    return float(tempo_range[0]), float(tempo_range[1])


def window_and_stride(config: SemanticLMConfig, frame_rate: int) -> tuple[int, int]:
    """Tokens per window and per slide: 10 s and 5 s at 25 Hz → (250, 125)."""
    window, stride = round(config.window_seconds * frame_rate), round(config.stride_seconds * frame_rate)
    if window < 1 or not 1 <= stride <= window:
        raise MelodyError(f"semantic_lm window {window} and stride {stride} tokens: need 1 ≤ stride ≤ window; "
                          "check semantic_lm.window_seconds and stride_seconds")
    return window, stride


class SemanticLM(nn.Module):
    """p(s_0 … s_{t−1} | MuLan tokens): embeddings → causal `Transformer` → logits over semantic tokens.

    forward(mulan_tokens `(b, L)` long or None, semantic `(b, t)` long, drop_condition `(b,)` bool or
    None, cache, tempo `(b,)` long tokens (`tempo_bucket`) or None) → `LMOutput`. With a fresh cache (`new_cache()`) the call encodes the whole stream
    and fills the cache; with a filled one, `mulan_tokens` and `drop_condition` must be None and
    `semantic` continues the stream (one token at a time when decoding).
    """

    def __init__(self, config: SemanticLMConfig, vocab_size: int, mulan_levels: int, mulan_codebook_size: int,
                 mulan_dim: int = 0) -> None:
        super().__init__()
        self.config = config
        if config.tempo_clock and config.tempo_buckets < 1:
            raise MelodyError("semantic_lm.tempo_clock sets a beat clock beside the tempo token: set semantic_lm.tempo_buckets "
                              "(e.g. 24) too, or tempo_clock=false")
        self.vocab_size, self.mulan_levels, self.mulan_codebook_size = vocab_size, mulan_levels, mulan_codebook_size
        d = config.dim
        if config.condition_embedding == "table":
            if config.condition_noise:
                raise MelodyError(f"semantic_lm.condition_noise ({config.condition_noise}) perturbs the codewords of a "
                                  "codebook condition; set semantic_lm.condition_embedding=codebook, or condition_noise=0")
            self.mulan_embedding = nn.Embedding(mulan_levels * mulan_codebook_size, d)  # row l·K + k: code k at level l
            self.register_buffer("level_offsets", torch.arange(mulan_levels) * mulan_codebook_size, persistent=False)
        elif config.condition_embedding == "codebook":
            if mulan_dim < 1 or config.condition_noise < 0:
                raise MelodyError(f"a codebook condition needs MuLan's embedding width (got {mulan_dim}) and "
                                  f"semantic_lm.condition_noise ≥ 0 (got {config.condition_noise})")
            self.register_buffer("mulan_codebooks", torch.zeros(mulan_levels, mulan_codebook_size, mulan_dim))
            self.condition_projection = nn.Linear(mulan_dim, d)
            nn.init.normal_(self.condition_projection.weight)  # S_l has norm ≈ 1: conditions start at N(0, 1), as the table's
            nn.init.zeros_(self.condition_projection.bias)
        else:
            raise MelodyError(f"semantic_lm.condition_embedding must be 'table' or 'codebook', not "
                              f"{config.condition_embedding!r}")
        self.null_condition = nn.Parameter(torch.randn(mulan_levels, d))  # (L, d) the dropped condition
        # row 0: no tempo given (and the dropped condition's); rows 1 … buckets: `tempo_bucket`
        self.tempo_embedding = nn.Embedding(config.tempo_buckets + 1, d) if config.tempo_buckets > 0 else None
        self.clock_projection = nn.Linear(2 * len(CLOCK_MULTIPLES), d, bias=False) if config.tempo_clock else None  # W_β
        self.bos = nn.Parameter(torch.randn(d))  # (d,) separator; its output predicts s_0
        self.token_embedding = nn.Embedding(vocab_size, d)
        self.transformer = Transformer(TransformerConfig(d, config.depth, config.heads, causal=True, dropout=config.dropout))
        self.head = nn.Linear(d, vocab_size, bias=False)

    @classmethod
    def from_config(cls, cfg: MelodyConfig) -> SemanticLM:
        """Sizes from the config tree: vocabulary = the tokenizer's k-means codes, condition = MuLan's RVQ."""
        return cls(cfg.semantic_lm, cfg.tokenizer.codebook_size, cfg.mulan.rvq_levels, cfg.mulan.codebook_size,
                   cfg.mulan.embed_dim)

    @torch.no_grad()
    def set_mulan_codebooks(self, codebooks: torch.Tensor) -> None:
        """Copy MuLan's RVQ codebooks `(L, K, D)` into a `"codebook"` LM (what training does once, before step 0)."""
        if not hasattr(self, "mulan_codebooks"):
            raise MelodyError("this semantic LM embeds MuLan tokens by a table (semantic_lm.condition_embedding = 'table'); "
                              "it holds no codebooks")
        copy_codebooks(self.mulan_codebooks, codebooks, "LM")

    def has_codebooks(self, codebooks: torch.Tensor) -> bool:
        """Whether this LM reads MuLan tokens through `codebooks` (always, for a `"table"` LM, which reads none)."""
        return reads_codebooks(getattr(self, "mulan_codebooks", None), codebooks)

    def new_cache(self) -> SemanticLMCache:
        return SemanticLMCache(self.transformer.new_cache())

    def new_static_cache(self, batch: int, window: int) -> SemanticLMCache:
        """A cache in fixed buffers for `batch` rows and windows of up to `window` tokens (condition and BOS
        included), in the LM's dtype and on its device: what a CUDA-graph decode step needs."""
        capacity = self.condition_length + 1 + window
        return SemanticLMCache(self.transformer.new_static_cache(batch, capacity, self.bos.dtype, self.bos.device))

    def step_scores(self, semantic: torch.Tensor, layers: list[KVCache] | list[StaticKVCache],
                    clock: torch.Tensor | None = None) -> torch.Tensor:
        """The scores `(b, t, V)` after each token of `semantic` `(b, t)`, fed on after the stream the cache `layers`
        holds: the network of one decode step (no bookkeeping, so a CUDA graph can capture it). `clock` `(b, t, 8)`:
        the beat clock of the frames these tokens predict (`step_clock`), where the LM has one."""
        x = self.token_embedding(semantic)
        if clock is not None:
            x = x + self.clock_projection(clock.to(x.dtype))
        return self.head(self.transformer(x, cache=layers))

    def step_clock(self, cache: SemanticLMCache, t: int = 1) -> torch.Tensor | None:
        """The beat clock `(b, t, 8)` of the next `t` tokens fed to `cache` (None where the LM or the window has none):
        after n semantic tokens, the token fed predicts frame n + 1."""
        if self.clock_projection is None or cache.beats is None:
            return None
        fed = cache.length - self.condition_length - 1
        return beat_clock(cache.beats, fed + 1, t).to(self.bos.device)

    def window_beats(self, beats: torch.Tensor | None, drop_condition: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """The beat grid `(b, 2)` a window is clocked by, or None (no clock): rows whose condition is dropped lose it,
        as they lose the tempo token, where `clock_guided`. Kept in float64 on the CPU (not every device has float64:
        MPS has none); only the clock's float32 features go to the LM's device."""
        if self.clock_projection is None:
            if beats is not None and bool(torch.isfinite(beats[:, 1]).any()):
                raise ValueError("this LM was trained without a beat clock (semantic_lm.tempo_clock = false)")
            return None
        if beats is None:
            return None
        if beats.shape != (batch, 2):
            raise ValueError(f"beats must be (b={batch}, 2): the beat at the first frame and beats per frame (`beat_grid`)")
        beats = beats.detach().to("cpu", torch.float64)
        if drop_condition is not None and self.config.clock_guided:
            beats = beats.clone()
            beats[drop_condition.to("cpu", torch.bool).view(batch), 1] = math.nan
        return beats

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def condition_length(self) -> int:
        """Stream positions before BOS: the L MuLan tokens, and the tempo token where the LM has one."""
        return self.mulan_levels + (self.tempo_embedding is not None)

    def condition(self, mulan_tokens: torch.Tensor | None, drop_condition: torch.Tensor | None, batch: int,
                  tempo: torch.Tensor | None = None) -> torch.Tensor:
        """The condition prefix `(b, condition_length, d)`: embedded MuLan tokens (and tempo token), or the
        null condition (and "no tempo") where dropped."""
        drop = None if drop_condition is None else drop_condition.to(torch.bool).view(batch)
        null = self.null_condition.expand(batch, -1, -1)
        if mulan_tokens is None:
            cond = null
        else:
            if mulan_tokens.shape != (batch, self.mulan_levels):
                raise ValueError(f"mulan_tokens must be (b={batch}, {self.mulan_levels}), got {tuple(mulan_tokens.shape)}")
            if ((mulan_tokens < 0) | (mulan_tokens >= self.mulan_codebook_size)).any():
                raise ValueError(f"MuLan tokens must lie in [0, {self.mulan_codebook_size})")  # else they land on another level
            cond = self.embed_mulan_tokens(mulan_tokens)  # (b, L, d)
            if drop is not None:
                cond = torch.where(drop.view(batch, 1, 1), null, cond)
        if self.tempo_embedding is None:
            if tempo is not None and bool((tempo != 0).any()):
                raise ValueError("this LM was trained without a tempo token (semantic_lm.tempo_buckets = 0)")
            return cond
        tempo = torch.zeros(batch, dtype=torch.long, device=cond.device) if tempo is None else tempo.to(cond.device)
        if tempo.shape != (batch,) or ((tempo < 0) | (tempo >= self.tempo_embedding.num_embeddings)).any():
            raise ValueError(f"tempo must be (b={batch},) tokens in [0, {self.tempo_embedding.num_embeddings})")
        if drop is not None:
            tempo = tempo.masked_fill(drop, 0)
        return torch.cat((cond, self.tempo_embedding(tempo)[:, None]), dim=1)

    def embed_mulan_tokens(self, mulan_tokens: torch.Tensor) -> torch.Tensor:
        """MuLan tokens `(b, L)` → the condition's vectors `(b, L, d)` (`condition_embedding`)."""
        if self.config.condition_embedding == "table":
            return self.mulan_embedding(mulan_tokens + self.level_offsets)
        sums = running_reconstruction(mulan_tokens, self.mulan_codebooks)
        if self.training and self.config.condition_noise > 0:
            sums = sums + self.config.condition_noise * torch.randn_like(sums)
        return self.condition_projection(sums.to(self.condition_projection.weight.dtype))

    def forward(self, mulan_tokens: torch.Tensor | None, semantic: torch.Tensor,
                drop_condition: torch.Tensor | None = None, cache: SemanticLMCache | None = None,
                tempo: torch.Tensor | None = None, beats: torch.Tensor | None = None) -> LMOutput:
        """`beats` `(b, 2)`: the beat grid of `semantic`'s first frame (`beat_grid`), for an LM with a beat clock."""
        b, t = semantic.shape
        if cache is None or cache.length == 0:
            # stream [c_1 … c_L (τ) | BOS | s_0 … s_{t−1}]; outputs at BOS … s_{t−1} predict s_0 … s_t
            beats = self.window_beats(beats, drop_condition, b)
            inputs = torch.cat((self.bos.expand(b, 1, -1), self.token_embedding(semantic)), dim=1)
            if beats is not None:  # the input that predicts frame i holds frame i's clock
                inputs = inputs + self.clock_projection(beat_clock(beats, 0, t + 1).to(inputs.device, inputs.dtype))
            x = torch.cat((self.condition(mulan_tokens, drop_condition, b, tempo), inputs), dim=1)
            h = self.transformer(x, cache=None if cache is None else cache.layers)
            scores = self.head(h[:, -(t + 1):])  # (b, t + 1, V)
            logits, next_logits = scores[:, :t], scores[:, t]
            if cache is not None:
                cache.beats = beats
        else:
            if mulan_tokens is not None or drop_condition is not None or tempo is not None or beats is not None:
                raise ValueError("the condition is already in the cache; "
                                 "pass mulan_tokens, drop_condition, tempo and beats as None")
            if t == 0:
                return LMOutput(cache.next_logits.new_empty(b, 0, self.vocab_size), cache.next_logits)
            # the stream goes on: the output at s_j predicts s_{j+1}; s_0 of this call was scored by the last one
            scores = self.step_scores(semantic, cache.layers, self.step_clock(cache, t))  # (b, t, V)
            logits = torch.cat((cache.next_logits[:, None], scores[:, :-1]), dim=1)
            next_logits = scores[:, -1]
        if cache is not None:
            cache.next_logits = next_logits
        return LMOutput(logits, next_logits)


def running_reconstruction(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """S_l = Σ_{i≤l} q_i[c_i] for l = 1 … L: RVQ codes `(b, L)` with codebooks `(L, K, D)` → `(b, L, D)`, the embedding
    as each level refines it (SoundStream Alg. 1's output after l levels; S_L is `dequantize`'s)."""
    levels = torch.arange(codes.shape[1], device=codes.device)
    return codebooks[levels[None, :], codes].cumsum(dim=1)


def copy_codebooks(mine: torch.Tensor, codebooks: torch.Tensor, model: str) -> None:
    """MuLan's RVQ codebooks `(L, K, D)` copied into a model's frozen copy `mine` (the `model` named in the error)."""
    if codebooks.shape != mine.shape:
        raise MelodyError(f"MuLan codebooks {tuple(codebooks.shape)} do not fit this {model}'s {tuple(mine.shape)}; "
                          f"train the {model} with this MuLan")
    mine.copy_(codebooks)


def reads_codebooks(mine: torch.Tensor | None, codebooks: torch.Tensor) -> bool:
    """Whether a model holding the MuLan codebooks `mine` (None: it reads MuLan tokens through none) reads them through
    `codebooks`. Compared in float16: either model may have been exported with `--half`."""
    return mine is None or (mine.shape == codebooks.shape and torch.equal(mine.half(), codebooks.half()))


def parameter_count(config: SemanticLMConfig, vocab_size: int, mulan_levels: int, mulan_codebook_size: int,
                    mulan_dim: int = 0) -> int:
    """Parameters of a `SemanticLM` of these sizes, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return SemanticLM(config, vocab_size, mulan_levels, mulan_codebook_size, mulan_dim).num_parameters()
