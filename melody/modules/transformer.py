"""The one transformer of melody: pre-norm LLaMA blocks with rotary attention and optional cross-attention.

Every transformer in MeLoDy is built from this file:
- the semantic LM, "LLaMA-style decoder-only" (MeLoDy §3.1; Touvron et al. 2023): causal, rotary,
  RMSNorm, SwiGLU, decoded token by token with a `KVCache`;
- the MuLan audio tower and the HuBERT-style SSL encoder: bidirectional, with a key padding mask;
- the DPD's RoFormer layers (MeLoDy §3.2, Fig. 2; Su et al. 2021): self-attention with rotary
  positions + cross-attention to the semantic-token embeddings E_ST (`cross_dim`).

A block (LLaMA's pre-norm layout):  x ← x + Attn(RMSNorm(x));  [x ← x + CrossAttn(RMSNorm(x), memory)];
x ← x + SwiGLU(RMSNorm(x)); the stack ends with a final RMSNorm.

Choices where the papers leave room:
- rotary pairs are *adjacent* dimensions (2i, 2i+1), exactly RoFormer Eq. (34); LLaMA's code pairs
  dimension i with i + d/2, which is the same map up to a fixed permutation of the q/k projection
  rows (so no weights are interchangeable with HF LLaMA checkpoints — we load none);
- the memory of cross-attention has no rotary positions: E_ST is a condition, attended as a set
  (positions, if wanted, belong in the memory's own encoder);
- a query that may see no key (a fully masked memory row, an all-padding sequence) gets an
  output of exactly zero, set explicitly (SDPA gives NaN for such rows on some kernels): a fully masked memory removes the condition's effect
  entirely (x + 0 = x, the linear layers have no biases), which is how a stage drops its
  condition per example (classifier-free guidance), and `memory=None` means the same;
- all linear layers are bias-free (LLaMA); PyTorch's default initialisation; dropout (config
  `dropout`, 0 by default) is applied to each sublayer's output before the residual add;
- the KV cache grows by concatenation (simple, fine for windows of a few hundred tokens); it
  stores keys already rotated at their absolute positions plus the padding mask of cached keys.
  Cross-attention keys/values are recomputed at every call (the memory is short).
- `StaticKVCache` is the same cache in buffers of fixed capacity whose write position is a tensor
  on the device: a one-token decode step then has the same shapes, addresses and kernels every
  time, so a CUDA graph can capture it once and replay it (`melody.cuda_graphs`). It attends over
  the whole buffer with a mask (the slots not written yet are never allowed), and holds no key
  padding (the semantic LM's sampler has none).

Sliding-window continuation (MeLoDy §4, "Continuation"): rotary scores depend only on m − n, so a
new window re-encodes its kept prefix from a fresh cache (`Transformer.new_cache()`), in one
parallel pass, and decodes on from there; positions restart at 0, so the model never sees a
position beyond its training length. Trimming an old cache instead is *not* equivalent beyond
the first layer (the kept keys were computed attending to tokens that would be dropped).
`new_cache(offset=k)` starts positions at k when absolute offsets are wanted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


@dataclass(frozen=True)
class TransformerConfig:
    """A stack of `depth` blocks of width `dim`. `cross_dim`: width of the cross-attention memory
    (None: no cross-attention sublayer). SwiGLU hidden width: `swiglu_hidden_dim(dim, ff_mult, ff_multiple_of)`."""

    dim: int
    depth: int
    heads: int
    causal: bool
    rotary: bool = True
    cross_dim: int | None = None
    ff_mult: float = 4.0
    ff_multiple_of: int = 64
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.rotary and (self.dim // self.heads) % 2:
            raise ValueError(f"rotary needs an even head dimension, got {self.dim // self.heads}")


class RMSNorm(nn.RMSNorm):
    """RMSNorm (Zhang & Sennrich 2019, Eq. 4): x / sqrt(mean(x²) + eps) · g over the last dimension.

    `torch.nn.RMSNorm` computes exactly this; the subclass only fixes LLaMA's eps (1e-6) and a
    learnable g initialised to 1, so every stage writes `RMSNorm(dim)`.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused kernel (float32 arithmetic inside) needs g in x's dtype; bf16 activations under autocast
        # against the float32 g otherwise take a decomposition of five kernels over the activations
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


# --- rotary position embedding (RoFormer, Su et al. 2021, §3.4) ---------------------------------

def rotary_phases(head_dim: int, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """e^{i m θ_j} `(t, head_dim / 2)` complex64 for integer `positions` m `(t,)` (RoFormer Eq. 15 and 34).

    θ_j = base^(−2j/d), j = 0 … d/2 − 1: position m turns the pair (2j, 2j+1) by m·θ_j. Positions may start
    anywhere (a KV cache's offset, a window start). Computed in float32 on `positions.device`.
    """
    theta = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * theta[None, :]  # (t, d/2)
    if torch.compiler.is_compiling():
        # inductor generates no code for complex numbers (it would call eager kernels); the real form of the same
        # phases, (cos mθ_j, sin mθ_j) `(t, d/2, 2)`, fuses with the rotation into one kernel
        return torch.stack((angles.cos(), angles.sin()), dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """R_Θ,m x (RoFormer Eq. 34): each adjacent pair (x_2j, x_2j+1), read as the complex number x_2j + i x_2j+1, times
    e^{i m θ_j}, i.e. (x_2j cos mθ_j − x_2j+1 sin mθ_j, x_2j sin mθ_j + x_2j+1 cos mθ_j). x `(..., t, d)`, phases
    `(t, d/2)` (`rotary_phases`); computed in float32 and returned in x's dtype. One complex product, where the
    real-valued form of Eq. 34 takes five kernels: a decode step runs this in every layer. Under `torch.compile`
    the phases come as real (cos, sin) pairs `(t, d/2, 2)` and Eq. 34 is written out, which inductor fuses."""
    pairs = x.float().unflatten(-1, (-1, 2))
    if not phases.is_complex():
        re, im = pairs.unbind(-1)
        cos, sin = phases.unbind(-1)
        return torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2).to(x.dtype)
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(step % 2 for step in pairs.stride()[:-1]):
        pairs = pairs.contiguous()  # complex views need whole pairs in memory
    pairs = torch.view_as_complex(pairs)
    return torch.view_as_real(pairs * phases).flatten(-2).to(x.dtype)


# --- attention ---------------------------------------------------------------------------------

def allowed_keys(q_len: int, k_len: int, causal: bool, keep: torch.Tensor | None,
                 device: torch.device) -> torch.Tensor | None:
    """Which keys each query may see: `(b or 1, 1, q_len, k_len)` bool, True = attend; None = all.

    The queries are the last `q_len` of the `k_len` positions (a KV cache holds the first
    k_len − q_len), so causal means key j ≤ query i + (k_len − q_len). `keep` `(b, k_len)`: key padding.
    """
    allowed = None
    if causal and q_len > 1:
        i = torch.arange(q_len, device=device) + (k_len - q_len)
        j = torch.arange(k_len, device=device)
        allowed = rearrange(j[None, :] <= i[:, None], "q k -> 1 1 q k")
    if keep is not None:
        padding = rearrange(keep.to(torch.bool), "b k -> b 1 1 k")
        allowed = padding if allowed is None else allowed & padding
    return allowed


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ / √d) v over the allowed keys (Vaswani et al. 2017, Eq. 1), via SDPA.

    q `(b, h, tq, d)`, k and v `(b, h, tk, d)`. A query with no allowed key gets exactly zero, on
    every backend: SDPA's answer for such a row differs by kernel and version (NaN on some, 0 on
    torch 2.13's CPU path), and a NaN value poisons later layers even where its weight is 0.
    """
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v)
    visible = allowed.any(dim=-1, keepdim=True)  # (b, 1, tq, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~visible)
    return out.masked_fill(~visible, 0.0)


@dataclass
class KVCache:
    """One self-attention layer's past, for incremental decoding; grows in place.

    keys, values: `(b, heads, t_past, head_dim)`, keys already rotated; None before the first call. They are views
    of buffers with room to spare (doubled when full), so a token's step writes its keys in place instead of copying
    the whole past (`torch.cat` per token and layer: a copy that grows with the window).
    keep: `(b, t_past)` bool key padding of the cached tokens; None while all are kept.
    offset: the rotary position of the next token (the start position + t_past).
    """

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    offset: int = 0
    buffers: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def extend(self, keys: torch.Tensor, values: torch.Tensor,
               keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append the new tokens' keys/values `(b, h, t_new, d)` and padding `(b, t_new)`; return the
        whole cache's (keys, values, keep) and advance `offset` by t_new."""
        t_past, t_new = self.length, keys.shape[2]
        if self.buffers is None or self.buffers[0].shape[2] < t_past + t_new or self.buffers[0].dtype != keys.dtype:
            room = max(2 * (t_past + t_new), 64)
            grown = tuple(x.new_empty(x.shape[0], x.shape[1], room, x.shape[3]) for x in (keys, values))
            if t_past:
                grown[0][:, :, :t_past] = self.keys
                grown[1][:, :, :t_past] = self.values
            self.buffers = grown
        self.buffers[0][:, :, t_past:t_past + t_new] = keys
        self.buffers[1][:, :, t_past:t_past + t_new] = values
        keys, values = (x[:, :, :t_past + t_new] for x in self.buffers)
        if keep is not None or self.keep is not None:
            b = keys.shape[0]
            past = self.keep if self.keep is not None else keys.new_ones(b, t_past, dtype=torch.bool)
            new = keep.to(torch.bool) if keep is not None else keys.new_ones(b, t_new, dtype=torch.bool)
            keep = torch.cat((past, new), dim=1)
        self.keys, self.values, self.keep = keys, values, keep
        self.offset += t_new
        return keys, values, keep


class StaticKVCache:
    """One self-attention layer's past in fixed buffers, for decoding under a CUDA graph.

    keys, values: `(b, heads, capacity, head_dim)`, keys already rotated; `position`: `()` long tensor, the
    slots written so far (the next token's slot, and its rotary position: windows start at 0), advanced on the
    device, so a captured step moves it on at each replay. `filled` mirrors `position` for calls made eagerly
    (a replay or a `torch.compile`d call does not update it); `reset()` empties the cache for a new window.
    """

    def __init__(self, batch: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.keys = torch.zeros(batch, heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.slots = torch.arange(capacity, device=device)
        self.capacity, self.filled = capacity, 0

    @property
    def length(self) -> int:
        return self.filled

    def reset(self) -> None:
        self.position.zero_()
        self.filled = 0

    def positions(self, t_new: int) -> torch.Tensor:
        """The slots `(t_new,)` of the next t_new tokens, which are their rotary positions too, from the device-side
        write position."""
        # checked for eager calls; a replayed or compiled step is sized by its caller (a compiled step reading `filled`
        # would be recompiled for each value of it)
        if not torch.compiler.is_compiling() and self.filled + t_new > self.capacity:
            raise ValueError(f"the static KV cache holds {self.capacity} tokens; {self.filled} + {t_new} do not fit")
        return self.position + self.slots[:t_new]

    def write(self, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None,
              causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys/values `(b, h, t_new, d)` at the write position and advance it; return the
        whole buffers and which of their slots each new query may see `(1, 1, t_new, capacity)`."""
        if keep is not None:
            raise ValueError("a StaticKVCache holds no key padding; use KVCache for padded inputs")
        t_new = keys.shape[2]
        slots = self.positions(t_new)
        self.keys.index_copy_(2, slots, keys.to(self.keys.dtype))
        self.values.index_copy_(2, slots, values.to(self.values.dtype))
        j = self.slots
        # a query sees the slots written before it (and itself when causal); every written slot otherwise
        allowed = j[None, :] <= slots[:, None] if causal else (j < self.position + t_new).expand(t_new, -1)
        self.position += t_new
        if not torch.compiler.is_compiling():  # as a replay, a compiled step leaves the host's mirror alone
            self.filled += t_new
        return self.keys, self.values, rearrange(allowed, "q k -> 1 1 q k")


class Attention(nn.Module):
    """Multi-head self-attention, causal or bidirectional, with rotary q/k (RoFormer) if `rotary`.

    forward: x `(b, t, dim)`, mask `(b, t)` True = keep (key padding of x's tokens), cache: the
    layer's `KVCache` (read and extended in place) → `(b, t, dim)`.
    """

    def __init__(self, dim: int, heads: int, causal: bool, rotary: bool = True, rope_base: float = 10000.0) -> None:
        super().__init__()
        assert dim % heads == 0, (dim, heads)
        self.heads, self.causal, self.rotary, self.rope_base = heads, causal, rotary, rope_base
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None,
                mask: torch.Tensor | None = None, phases: torch.Tensor | None = None) -> torch.Tensor:
        """`phases`: the rotary phases of x's positions (`positions_of` + `rotary_phases`), computed here if None."""
        qkv = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        t_new = x.shape[1]
        static = isinstance(cache, StaticKVCache)
        if self.rotary:
            if phases is None:
                phases = rotary_phases(qkv.shape[-1], positions_of(cache, t_new, x.device), self.rope_base)
            q, k = apply_rotary(qkv[:2], phases).unbind(0)  # q and k in one product
        else:
            q, k = qkv[0], qkv[1]
        v = qkv[2]
        if static:
            # every query sees its own slot at least, so SDPA gets the mask as it is (no empty rows to zero)
            k, v, allowed = cache.write(k, v, mask, self.causal)
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=allowed)
            return self.out(rearrange(out, "b h t d -> b t (h d)"))
        keep = mask
        if cache is not None:
            k, v, keep = cache.extend(k, v, mask)
        if self.causal and keep is None and k.shape[2] == t_new:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # the fused causal kernels
        else:
            out = masked_attention(q, k, v, allowed_keys(t_new, k.shape[2], self.causal, keep, x.device))
        return self.out(rearrange(out, "b h t d -> b t (h d)"))


def positions_of(cache: KVCache | StaticKVCache | None, t_new: int, device: torch.device) -> torch.Tensor:
    """The rotary positions `(t_new,)` of the next t_new tokens: from 0 without a cache, from the cache's offset with
    a `KVCache`, from the device-side write position with a `StaticKVCache`."""
    if isinstance(cache, StaticKVCache):
        return cache.positions(t_new)
    offset = 0 if cache is None else cache.offset
    return torch.arange(offset, offset + t_new, device=device)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from x `(b, t, dim)`, keys/values from memory `(b, s, memory_dim)`.

    No rotary on either side (the memory is a condition, attended as a set). memory_mask `(b, s)`,
    True = keep; a row whose memory is all masked gets exactly zero output.
    """

    def __init__(self, dim: int, heads: int, memory_dim: int) -> None:
        super().__init__()
        assert dim % heads == 0, (dim, heads)
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(memory_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                memory_repeat: int = 1) -> torch.Tensor:
        """`memory_repeat` r: x holds r consecutive rows per memory row (`(b·r, t, dim)` against `(b, s, ·)`),
        so keys and values are projected once per memory row, not once per query row."""
        q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads)
        k, v = rearrange(self.kv(memory), "b s (two h d) -> two b h s d", two=2, h=self.heads)
        if memory_repeat > 1:
            k, v = (repeat(t, "b h s d -> (b r) h s d", r=memory_repeat) for t in (k, v))
            memory_mask = None if memory_mask is None else repeat(memory_mask, "b s -> (b r) s", r=memory_repeat)
        allowed = allowed_keys(x.shape[1], memory.shape[1], causal=False, keep=memory_mask, device=x.device)
        return self.out(rearrange(masked_attention(q, k, v, allowed), "b h t d -> b t (h d)"))


# --- feed-forward ------------------------------------------------------------------------------

def swiglu_hidden_dim(dim: int, mult: float = 4.0, multiple_of: int = 64) -> int:
    """LLaMA's SwiGLU width: ⅔ · mult · dim (three matrices cost what two of mult · dim would),
    rounded up to a multiple of `multiple_of` (64: whole tensor-core tiles). dim 768 → 2048."""
    hidden = int(2 * mult * dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class SwiGLU(nn.Module):
    """FFN_SwiGLU(x) = W2 (silu(W1 x) ⊙ W3 x) (Shazeer 2020, Eq. 6; bias-free as in LLaMA)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w13: nn.Linear | None = None  # [W1; W3] in one layer, in a sampling copy (`stack_gate_and_value`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, value = self.w13(x).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * value)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def stack_gate_and_value(self) -> None:
        """W1 and W3 as one layer `w13` = [W1; W3], in place: one matrix product where two ran, the same sums. For a
        sampling copy only (its state dict names `w13`, which no checkpoint holds): a GPU's decode step is bound by
        its count of small kernels, and q, k and v are one product already."""
        if self.w13 is None:
            self.w13 = nn.Linear(self.w1.in_features, 2 * self.w1.out_features, bias=False,
                                 device=self.w1.weight.device, dtype=self.w1.weight.dtype)
            self.w13.weight = nn.Parameter(torch.cat((self.w1.weight, self.w3.weight)).detach(),
                                           requires_grad=self.w1.weight.requires_grad)
            del self.w1, self.w3


# --- blocks and the stack ----------------------------------------------------------------------

class TransformerBlock(nn.Module):
    """Pre-norm block (LLaMA): x + Attn(norm x); x + CrossAttn(norm x, memory) if `config.cross_dim`; x + FFN(norm x)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.attn_norm = RMSNorm(c.dim, c.norm_eps)
        self.attn = Attention(c.dim, c.heads, c.causal, c.rotary, c.rope_base)
        self.cross_norm = RMSNorm(c.dim, c.norm_eps) if c.cross_dim is not None else None
        self.cross = CrossAttention(c.dim, c.heads, c.cross_dim) if c.cross_dim is not None else None
        self.ff_norm = RMSNorm(c.dim, c.norm_eps)
        self.ff = SwiGLU(c.dim, swiglu_hidden_dim(c.dim, c.ff_mult, c.ff_multiple_of))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, cache: KVCache | StaticKVCache | None = None, memory_repeat: int = 1,
                phases: torch.Tensor | None = None) -> torch.Tensor:
        """x `(b, t, dim)` → `(b, t, dim)`. memory=None on a cross block: no condition (as if all masked). `phases`:
        x's rotary phases, shared by the stack's blocks (computed by the attention if None)."""
        x = x + self.drop(self.attn(self.attn_norm(x), cache=cache, mask=mask, phases=phases))
        if memory is not None:
            if self.cross is None:
                raise ValueError("memory given to a block built without cross-attention (cross_dim=None)")
            x = x + self.drop(self.cross(self.cross_norm(x), memory, memory_mask, memory_repeat))
        return x + self.drop(self.ff(self.ff_norm(x)))


class Transformer(nn.Module):
    """`config.depth` `TransformerBlock`s then RMSNorm: `(b, t, dim)` → `(b, t, dim)`.

    Embeddings and output heads belong to the stage models. mask `(b, t)` True = keep (for the
    tokens in x; with a cache, earlier tokens' padding is in the cache); memory `(b, s, cross_dim)`
    with memory_mask `(b, s)` (or `(b / r, s)` shared by r consecutive rows of x with `memory_repeat` r);
    cache: one `KVCache` per block (from `new_cache`) or one `StaticKVCache` per block (from `new_static_cache`),
    extended in place.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.dim, config.norm_eps)

    def new_cache(self, offset: int = 0) -> list[KVCache]:
        """An empty cache per block; the first token decoded gets rotary position `offset`. Tensors
        are created on the first call, with that input's batch size, device and dtype."""
        return [KVCache(offset=offset) for _ in self.blocks]

    def new_static_cache(self, batch: int, capacity: int, dtype: torch.dtype, device: torch.device | str) -> list[StaticKVCache]:
        """A `StaticKVCache` of `capacity` tokens per block (for decoding under a CUDA graph), positions from 0."""
        c = self.config
        return [StaticKVCache(batch, c.heads, capacity, c.dim // c.heads, dtype, device) for _ in self.blocks]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, cache: list[KVCache] | list[StaticKVCache] | None = None,
                memory_repeat: int = 1) -> torch.Tensor:
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache has {len(cache)} layers, the transformer {len(self.blocks)}")
        phases = None
        if self.config.rotary:  # every block's tokens sit at the same positions: one table for the stack
            c = self.config
            phases = rotary_phases(c.dim // c.heads, positions_of(None if cache is None else cache[0], x.shape[1], x.device),
                                   c.rope_base)
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, memory=memory, memory_mask=memory_mask, cache=None if cache is None else cache[i],
                      memory_repeat=memory_repeat, phases=phases)
        return self.norm(x)
