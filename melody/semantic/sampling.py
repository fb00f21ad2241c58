"""Sampling semantic tokens from the semantic LM (MeLoDy §3.1 and §4 "Continuation").

Pure functions over logits `(b, V)`: `apply_temperature`, `top_k_filter`, `top_p_filter`,
`cfg_logits`, `sample_token`; and `generate`, ancestral sampling with a KV cache, classifier-free
guidance and sliding windows. Randomness comes only from the `torch.Generator` passed in.

Choices where the papers are silent:
- The filters run in the order temperature → top-k → top-p (Hugging Face's order); a removed
  token gets −inf. Temperature 0 is greedy (argmax, first index on ties) and draws nothing.
- `top_k_filter` keeps exactly k tokens; where several tie with the k-th largest, `torch.topk`
  picks which survive. `top_p_filter` keeps the smallest set of most likely tokens whose mass is
  ≥ p (ties ranked by a stable sort, lower index first), and always the most likely one.
- Guidance is applied to raw logits: ℓ = ℓ_u + w (ℓ_c − ℓ_u). The same formula on log-probs gives
  the same distribution, since log_softmax only shifts each row by a constant and
  ℓ_u + k_u + w (ℓ_c + k_c − ℓ_u − k_u) differs from ℓ by the row constant (1 − w) k_u + w k_c.
  The unconditional branch is the LM's learned null condition; both branches run as one batch
  of 2b rows in one forward pass, and w = 1 (or no condition) runs the conditional branch alone.
- Sliding windows (the lineage's rule, `shared/reference/melody-paper.md`): a window holds at most
  `window` semantic tokens (250 = 10 s, the training length). When it is full and more are wanted,
  the next window starts from its last `window − stride` tokens (125), re-encoded after the
  condition and BOS from a fresh cache in one pass (rotary positions restart at 0, as in
  training; see `melody.modules.transformer`), and decoding goes on. A `prefix` is the first
  window's content; one of `window` tokens or more is full already, so the first window starts
  from its last `window − stride` tokens.
- Forward passes: every sampled token's logits come from exactly one forward call (the window's
  re-encoding pass or the step that fed the previous token), so `forward_passes == n_tokens` — the
  paper's 25 passes per second of audio — however many windows there are; `positions` counts the
  stream positions those passes processed, re-encoding included.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from melody.cuda_graphs import GraphedStep
from melody.errors import MelodyError
from melody.runtime import Compiled
from melody.semantic.lm import SemanticLM, SemanticLMCache


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """ℓ / τ, τ > 0: τ → 0 tends to argmax, τ = 1 leaves the distribution, τ → ∞ tends to uniform."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy: use sample_token), got {temperature}")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row `(..., V)`, −inf elsewhere; k ≤ 0 or k ≥ V keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kept = logits.topk(k, dim=-1).indices
    return torch.full_like(logits, -math.inf).scatter(-1, kept, logits.gather(-1, kept))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (Holtzman et al. 2020): keep the smallest set of most likely tokens with mass ≥ p, at least one."""
    if p >= 1.0:
        return logits
    ranked, order = logits.sort(dim=-1, descending=True, stable=True)
    probs = ranked.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    drop = mass_before >= p
    drop[..., 0] = False  # the most likely token always stays
    return logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ℓ_u + w (ℓ_c − ℓ_u) on logits (Ho & Salimans 2022; MusicGen's form),
    computed as w ℓ_c + (1 − w) ℓ_u so that w = 1 gives ℓ_c and w = 0 gives ℓ_u exactly."""
    return scale * cond + (1.0 - scale) * uncond


def two_scale_cfg_logits(cond: torch.Tensor, clocked: torch.Tensor, uncond: torch.Tensor, scale: float,
                         clock_scale: float) -> torch.Tensor:
    """Guidance of two conditions apart (InstructPix2Pix's form, Brooks et al. 2023): ℓ_u + w_β (ℓ_β − ℓ_u) +
    w (ℓ_c − ℓ_β), with ℓ_c the whole condition (caption, tempo token, beat clock), ℓ_β the null condition with only
    the clock, ℓ_u nothing; w_β strengthens the beat, w the caption on top of it. w_β = w is one scale over
    everything, `cfg_logits(ℓ_c, ℓ_u, w)`; w_β = 1 is guidance of the caption alone against the clocked null."""
    return uncond + clock_scale * (clocked - uncond) + scale * (cond - clocked)


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """One token per row of `logits` `(b, V)` → `(b,)` long: greedy at temperature 0, else a draw from
    softmax(top_p(top_k(ℓ / τ))) with `generator` — or with one generator per row (a sequence of b),
    so that a row's tokens do not depend on the other rows of the batch."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = top_p_filter(top_k_filter(apply_temperature(logits.float(), temperature), top_k), top_p).softmax(dim=-1)
    if isinstance(generator, (list, tuple)):
        if len(generator) != probs.shape[0]:
            raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
        return torch.cat([draw(probs[i:i + 1], g) for i, g in enumerate(generator)])
    return draw(probs, generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` `(b, V)` with P(i) = probs[i]: argmax(probs / E) with E ~ Exp(1) i.i.d. (the
    exponential race: the smallest E_i / p_i wins with probability p_i).

    The draw `torch.multinomial(probs, 1)` makes, with the same generator and the same numbers, minus its input check,
    which reads a value back to the host: on a GPU that stalled the sampler at every token, so the host could not queue
    the next decode step while the GPU ran this one.
    """
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


@dataclass
class DecodeGraph:
    """A static KV cache and the decode step recorded over it (made at the first token fed), kept on the LM."""

    cache: SemanticLMCache
    step: GraphedStep | None = None
    compiled: bool = False  # the step goes through `torch.compile` first
    graphs: bool = True  # the step is recorded as a CUDA graph (on a CUDA device)

    def record(self, inputs: tuple[torch.Tensor, ...], lm: SemanticLM) -> GraphedStep:
        """The step `token (b, 1)[, clock (b, 1, 8)] → scores (b, V)` over this cache, recorded with the inputs' shapes
        where `graphs` (the cache's write position is put back after the recording's warm-up calls)."""
        filled = self.cache.length

        def rewind() -> None:
            for layer in self.cache.layers:
                layer.position.fill_(filled)
                layer.filled = filled

        def step(t: torch.Tensor, *clock: torch.Tensor) -> torch.Tensor:
            return lm.step_scores(t, self.cache.layers, *clock)[:, -1]

        if self.compiled:
            # inductor fuses each layer's norms, rotary and residual adds into a few kernels: what a recorded step is
            # bound by at `paper` shapes is its count of small kernels, not arithmetic (README, "On a GPU")
            step = Compiled(step)
        self.step = GraphedStep(step, inputs, rewind, record=self.graphs)
        return self.step


DECODE_GRAPHS_KEPT = 4


class _DecodeGraphs(OrderedDict):
    """An LM's kept `DecodeGraph`s. A copy of the LM starts with none: a recorded graph replays on the buffers and
    weights of the LM it was recorded on, never a copy's."""

    def __deepcopy__(self, memo: dict) -> _DecodeGraphs:
        return _DecodeGraphs()


def decode_graph(lm: SemanticLM, batch: int, window: int, compiled: bool = False, graphs: bool = True,
                 clocked: bool = False) -> DecodeGraph:
    """The `DecodeGraph` for `batch` rows and windows of `window` tokens, kept on `lm` between calls (at most
    `DECODE_GRAPHS_KEPT`, least recently used dropped): recording costs a few steps' time, which a call of 250 tokens
    at `paper` shapes noticed, and the cache's buffers are reset, not reallocated, for each window. Keyed by the LM's
    dtype and device too, since a graph replays the kernels and addresses it recorded, and by whether its step is
    `torch.compile`d (`compiled`) and recorded (`graphs`), and by whether it takes a beat clock (`clocked`)."""
    kept = lm.__dict__.setdefault("_decode_graphs", _DecodeGraphs())
    key = (batch, window, lm.bos.dtype, lm.bos.device, compiled, graphs, clocked)
    if key not in kept:
        while len(kept) >= DECODE_GRAPHS_KEPT:
            kept.popitem(last=False)
        kept[key] = DecodeGraph(lm.new_static_cache(batch, window), compiled=compiled, graphs=graphs)
    kept.move_to_end(key)
    return kept[key]


@dataclass
class GenerateResult:
    """What `generate` returns; the counts are per call, the same for every row."""

    tokens: torch.Tensor  # (b, n_tokens) long: the new tokens, without the prefix
    forward_passes: int  # network calls, cond + uncond counted once (a batch): == n_tokens
    windows: int  # windows encoded from a fresh cache (the first one included)
    positions: int  # stream positions processed per row: condition + BOS + context per window, 1 per step


@torch.no_grad()
def generate(lm: SemanticLM, mulan_tokens: torch.Tensor | None, n_tokens: int, prefix: torch.Tensor | None = None, *,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, guidance: float = 1.0,
             generator: torch.Generator | Sequence[torch.Generator] | None = None, window: int = 250, stride: int = 125,
             callback: Callable[[dict], None] | None = None, tempo: torch.Tensor | None = None,
             beats: torch.Tensor | None = None, graphs: bool = False, compiled: bool = False,
             tempo_guidance: float = 0.0) -> GenerateResult:
    """Ancestral sampling of `n_tokens` semantic tokens with a KV cache, guidance and sliding windows.

    mulan_tokens `(b, L)` long (None: unconditional, one row unless `prefix` gives b); prefix `(b, P)`
    long, tokens to continue; tempo `(b,)` long, the LM's tempo tokens (`tempo_bucket`; None or 0: no
    tempo given), part of the condition that guidance strengthens; beats `(b, 2)`, the beat grid (`beat_grid`) of the
    prefix's first token (of the first new token without a prefix), for an LM with a beat clock: every window is
    clocked on it, wherever it starts. `tempo_guidance` > 0 (an LM whose null condition keeps the clock,
    `clock_guided=False`, given `beats`): three branches, `two_scale_cfg_logits` with that scale for the clock and
    `guidance` for the caption. `callback` gets {"i", "token" (b,), "window"} after every token. The
    caller puts `lm` in eval mode. `graphs`: decode from a `StaticKVCache` through a `GraphedStep`, one CUDA graph
    replayed per token on a CUDA device (`melody.cuda_graphs`); elsewhere the same static path runs eagerly.
    `compiled`: that static step through `torch.compile` first (on any device; the first token pays the compilation),
    recorded only with `graphs`.
    """
    if n_tokens < 0:
        raise MelodyError(f"cannot generate {n_tokens} tokens; ask for 0 or more")
    if window < 1 or not 1 <= stride <= window:
        raise MelodyError(f"window {window} and stride {stride} tokens: need 1 ≤ stride ≤ window")
    device = lm.bos.device
    b = mulan_tokens.shape[0] if mulan_tokens is not None else (prefix.shape[0] if prefix is not None else 1)
    content = prefix.to(device) if prefix is not None else torch.zeros(b, 0, dtype=torch.long, device=device)
    if content.shape[0] != b:
        raise ValueError(f"prefix has {content.shape[0]} rows, mulan_tokens {b}")
    keep = window - stride
    origin = 0  # the frame of content[:, 0], counted from the prefix's first token
    if content.shape[1] >= window:  # a full window: the first one starts from its last `keep` tokens
        origin = content.shape[1] - keep
        content = content[:, origin:]
    tokens = torch.zeros(b, n_tokens, dtype=torch.long, device=device)
    if n_tokens == 0:
        return GenerateResult(tokens, 0, 0, 0)

    if not tempo_guidance >= 0:
        raise MelodyError(f"tempo guidance must be ≥ 0 (0: one guidance scale), got {tempo_guidance}; "
                          "set semantic_lm.tempo_guidance")
    clocked = beats is not None and lm.clock_projection is not None
    two_scales = clocked and mulan_tokens is not None and tempo_guidance > 0
    if two_scales and lm.config.clock_guided:
        raise MelodyError("tempo guidance needs an LM whose null condition keeps the beat clock (trained with "
                          "semantic_lm.clock_guided=false); set semantic_lm.tempo_guidance=0 for this one")
    guided = mulan_tokens is not None and (guidance != 1.0 or two_scales)
    # [conditional rows | unconditional rows] in one batch; with two scales [… | null with the clock | null without]
    rows = 3 if two_scales else 2 if guided else 1
    branch_mulan = None if mulan_tokens is None else mulan_tokens.to(device).repeat(rows, 1)
    drop = torch.arange(rows * b, device=device) >= b if guided else None
    branch_tempo = None if tempo is None else tempo.to(device).repeat(rows)

    def window_beats() -> torch.Tensor | None:  # the grid moved to the window's first frame, per branch row
        if beats is None:
            return None
        moved = beats.double().cpu().clone()
        moved[:, 0] += origin * moved[:, 1]
        moved = moved.repeat(rows, 1)
        if two_scales:
            moved[2 * b:, 1] = math.nan  # the last branch hears no clock
        return moved

    def guide(logits: torch.Tensor) -> torch.Tensor:  # (rows·b, V) → (b, V), in fp32 whatever the LM's dtype
        logits = logits.float()
        if two_scales:
            return two_scale_cfg_logits(*logits.chunk(3), guidance, tempo_guidance)
        return cfg_logits(*logits.chunk(2), guidance) if guided else logits

    slot = decode_graph(lm, rows * b, window, compiled, graphs, clocked) if graphs or compiled else None
    static = None if slot is None else slot.cache

    def fresh_cache():
        if static is None:
            return lm.new_cache()
        for layer in static.layers:
            layer.reset()
        return static

    def feed(token: torch.Tensor) -> torch.Tensor:  # (rows·b, 1) → the next token's scores (rows·b, V)
        if static is None:
            return lm(None, token, cache=cache).next_logits
        inputs = (token,) if not clocked else (token, lm.step_clock(cache, 1))
        step = slot.step or slot.record(inputs, lm)
        return step(*inputs)

    # a window: [condition | BOS | content] from a fresh cache, in one pass
    cache = fresh_cache()
    logits = lm(branch_mulan, content.repeat(rows, 1), drop, cache=cache, tempo=branch_tempo, beats=window_beats()).next_logits
    passes, windows, positions = 1, 1, lm.condition_length + 1 + content.shape[1]
    for i in range(n_tokens):
        # sample s ~ p(· | condition, window content), guided
        token = sample_token(guide(logits), temperature, top_k, top_p, generator)
        tokens[:, i] = token
        content = torch.cat((content, token[:, None]), dim=1)
        if callback is not None:
            callback({"i": i, "token": token, "window": windows - 1})
        if i == n_tokens - 1:
            break
        if content.shape[1] == window:
            # the window is full: the next one starts from its last `keep` tokens, re-encoded
            content = content[:, stride:]
            origin += stride
            cache = fresh_cache()
            logits = lm(branch_mulan, content.repeat(rows, 1), drop, cache=cache, tempo=branch_tempo,
                        beats=window_beats()).next_logits
            windows += 1
            positions += lm.condition_length + 1 + keep
        else:
            # feed the token to the cache: the next token's scores
            logits = feed(token.repeat(rows)[:, None])
            positions += 1
        passes += 1
    return GenerateResult(tokens, passes, windows, positions)
