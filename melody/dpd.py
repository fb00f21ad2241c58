"""The dual-path diffusion network of MeLoDy (§3.2, Fig. 2): noisy latents + angles + semantic tokens → velocity.

`DPD(x, delta, semantic)`: x `(b, L, d)` noisy VAE latents z_δ, delta `(b, L)` the angle of every
frame (multi-chunk training gives chunks different angles; continuation gives the known frames
δ = 0), semantic `(b, T)` long tokens at 25 Hz (or None: the unconditional branch) → v̂ `(b, L, d)`.
It knows nothing of schedules or samplers (`melody.diffusion`).

The trunk (Fig. 2): Linear(d → h) + E_δ → RMSNorm → **segmentation** into S segments of K frames
with hop K/2 (DPRNN, Luo et al. 2020) → `blocks` dual-path blocks → **overlap-add** → RMSNorm →
Linear(h → d).

- **Angle embedding** E_δ (per frame): two learned vectors e_start, e_end ∈ R^angle_dim mixed as a
  learnable slerp, cos δ · e_start + sin δ · e_end, then an MLP (Linear → RMSNorm → GELU → Linear).
- **Semantic embedding** E_ST: Embedding(vocab) → MLP, `(b, T, h)`. It is the cross-attention
  memory of every block, and its mean over time is added to E_δ to form the FiLM condition.
- **A dual-path block**: the *coarse* path runs across segments: the K within-segment positions
  are **merged** in groups of `merge_factors[i]` (averaged, leaving K / factor columns: few in the
  middle blocks, many at both ends, a U-Net shape over depth), each column is a sequence over the
  S segments through `roformer_layers` RoFormer layers (self-attention with rotary positions +
  cross-attention to E_ST; `melody.modules.transformer`), the columns are **repeated** back to K;
  x ← RMSNorm(x + that). The *fine* path runs within each segment: a bidirectional recurrence
  (`sru_layers` layers) along its K frames, **FiLM**-modulated by the condition at those frames;
  x ← RMSNorm(x + that).

Choices where the paper is silent (documented, tested):
- **Where the tokens are.** The cross-attention memory carries no positions (a condition set), so it
  cannot tell which token belongs to which frame; MeLoDy's semantic tokens are time-aligned with
  the latents, so we also add the time-aligned E_ST to the trunk's input (frame j gets the
  embedding of token ⌊j T / L⌋, the token covering it). The cross-attention stays as in Fig. 2.
- **Dropped condition** (guidance training, 10 %): the memory is masked out entirely (the
  cross-attention adds exactly zero, `melody.modules.transformer`) and the aligned embedding and
  the FiLM's mean E_ST are replaced by one learned null vector.
- **Recurrence** (`recurrence`): "sru" is a pure-PyTorch SRU (Lei et al. 2018, Eq. 3–7: elementwise
  forget and reset gates on the cell c, a highway connection), run in both directions, the two
  outputs concatenated and projected back to h; "gru" is `nn.GRU` (bidirectional, h/2 per
  direction), much faster on CPUs whose loop over K steps dominates. Sampling on a GPU runs each SRU direction
  as one Triton kernel (`melody.modules.fused_sru`, the same equations) instead of the loop's 3 kernels a frame.
  FiLM: y ⊙ (1 + γ) + β with
  (γ, β) = Linear(E_δ + mean E_ST), zero-initialised so a block starts as the identity modulation.
- **Segmentation padding**: K/2 frames of zeros on both sides plus what completes the last
  segment, so every frame lies in exactly two segments; overlap-add sums and halves them, an
  exact inverse of segmentation for any L (`segment`, `overlap_add`).
- The output Linear is zero-initialised (v̂ = 0 at the start, the mean of the target).

**MuLan condition** (`dpd.mulan_condition`, outside the paper, off by default): the paper's DPD hears only the
semantic tokens, and a tiny one renders the style they carry poorly (`melody eval music --source tokens`). With this
on, the condition is the prompt's MuLan tokens followed by the window's semantic tokens, `(b, levels + T)`
(`join_condition`, the semantic LM's prefix order), and the RVQ's reconstruction of the MuLan embedding,
Σ_l q_l[c_l] (`mulan_embedding`, from a frozen copy of MuLan's codebooks saved with the DPD), projected to h, is added
to the aligned input and to the FiLM's summary: one global vector, as stable-audio and audiocraft condition their
generators on a text embedding. The projection is zero-initialised, so a DPD trained without it and loaded into one
with it (`--init`) starts as it was. A dropped condition drops both (the null vector), so guidance strengthens both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from melody.config import DPDConfig, MelodyConfig
from melody.errors import MelodyError
from melody.modules import fused_sru
from melody.modules.transformer import RMSNorm, Transformer, TransformerConfig
from melody.semantic.lm import copy_codebooks, reads_codebooks, running_reconstruction

RECURRENCES = ("sru", "gru")


# --- segmentation (pure) -------------------------------------------------------------------------

def segment_padding(length: int, size: int) -> tuple[int, int]:
    """(left, right) zero frames so that segments of `size` with hop size/2 cover every frame exactly twice."""
    hop = size // 2
    right = hop + (-(length + hop) % hop)  # (left + L + right − size) is a multiple of hop
    return hop, right


def pad_for_segments(x: torch.Tensor, size: int) -> torch.Tensor:
    """`(b, L, h)` → `(b, left + L + right, h)`: the zero frames of `segment_padding` added."""
    if size < 2 or size % 2:
        raise ValueError(f"segment size must be even and ≥ 2, got {size}")
    left, right = segment_padding(x.shape[1], size)
    return F.pad(x, (0, 0, left, right))


def unfold_segments(padded: torch.Tensor, size: int) -> torch.Tensor:
    """Padded frames `(b, L', h)` → `(b, S, K, h)`, a view: the overlapping segments of K = `size` with hop K/2."""
    return padded.unfold(1, size, size // 2).transpose(2, 3)


def segment(x: torch.Tensor, size: int) -> torch.Tensor:
    """`(b, L, h)` → `(b, S, K, h)`: overlapping segments of K = `size` frames with hop K/2 (DPRNN)."""
    return unfold_segments(pad_for_segments(x, size), size)


def overlap_add(segments: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of `segment`: `(b, S, K, h)` → `(b, L, h)`, summing the two segments over each frame and halving."""
    b, s, size, h = segments.shape
    hop = size // 2
    left, right = segment_padding(length, size)
    total = left + length + right
    # fold = overlap-add: treat (K · h) as channels of a 1-d "image" of width total · h
    cols = rearrange(segments, "b s k h -> b (k h) s")
    out = F.fold(cols, output_size=(1, total * h), kernel_size=(1, size * h), stride=(1, hop * h))
    out = rearrange(out, "b h1 one (t h) -> b (h1 one t) h", h=h)
    return out[:, left:left + length] / 2.0


# --- blocks --------------------------------------------------------------------------------------

def frames_in_order(length: int, reverse: bool) -> range:
    """The frames 0 … K−1 in the order a recurrence visits them: backwards when `reverse`."""
    return range(length - 1, -1, -1) if reverse else range(length)


def sru_states(x_tilde: torch.Tensor, f_in: torch.Tensor, v_f: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """The SRU's cell states `(n, K, h)`: c_t = f_t ⊙ c_{t−1} + (1 − f_t) ⊙ x̃_t with f_t = σ(f'_t + v_f ⊙ c_{t−1})
    (b_f folded into f'), c_{−1} = 0, run backwards in time when `reverse`.

    The only sequential part of the training path, so it holds nothing else: three kernels a step (addcmul, sigmoid,
    lerp), where the whole unit a frame at a time (`sru_unit_steps`) takes eight; on a GPU the loop is launch-bound.
    """
    n, length, h = x_tilde.shape
    c = x_tilde.new_zeros(n, h)
    states = [c] * length
    for t in frames_in_order(length, reverse):
        f = torch.sigmoid(torch.addcmul(f_in[:, t], v_f, c))
        c = torch.lerp(x_tilde[:, t], c, f)
        states[t] = c
    return torch.stack(states, dim=1)


def reset_gates(r_in: torch.Tensor, v_r: torch.Tensor, c: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """r_t = σ(r'_t + v_r ⊙ c_{t−1}) for every t at once (c_{t+1} when `reverse`; zero before the first step), with
    r' `(n, K, h)` fresh (b_r folded in): it is overwritten, as these tensors are the largest of a CPU pass."""
    if reverse:
        r_in[:, :-1].addcmul_(v_r, c[:, 1:])
    else:
        r_in[:, 1:].addcmul_(v_r, c[:, :-1])
    return r_in.sigmoid_()


def sru_unit(u: torch.Tensor, x: torch.Tensor, v: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """The unit vectorised over frames where it can be (the training path, autograd through it): u = W x
    `(n, K, 3h)`, x `(n, K, h)` → h `(n, K, h)` in x's dtype. Only c loops (`sru_states`); r and h follow for all
    frames at once from c_{t−1} and c_t."""
    state = torch.promote_types(x.dtype, torch.float32)
    x_tilde, f_in, r_in = u.chunk(3, dim=-1)
    # adding the fp32 biases widens f' and r' in the same pass (one read of W x, no widened copy of it first)
    b_f, b_r = b.to(state)
    c = sru_states(x_tilde.to(state), f_in + b_f, v[0].to(state), reverse)
    r = reset_gates(r_in + b_r, v[1].to(state), c, reverse)
    return torch.lerp(x.to(state), c, r).to(x.dtype)


def sru_unit_steps(u: torch.Tensor, x: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
                   reverse: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """The whole unit a frame at a time, for sampling on a CPU: u = W x `(n, K, 3h)` and x `(n, K, h)` in their own
    dtype (bf16 under autocast) → h `(n, K, h)` in x's dtype; the same numbers as `sru_unit` (to float32 rounding,
    tested). Both gates come from one (n, 2, h) step, and each frame's projections are widened to float32 as it is
    read: no full-size float32 copy of W x, of the states or of the gates is ever made, which is where a CPU pass's
    time went (those are the largest tensors of the DPD). `out`: where h goes (a view of a wider buffer, say), else a
    new tensor. No autograd (in-place updates)."""
    n, length, h = x.shape
    state = torch.promote_types(x.dtype, torch.float32)
    v, b = v.to(state), b.to(state)
    out = torch.empty_like(x) if out is None else out
    c = x.new_zeros(n, h, dtype=state)
    gates = x.new_empty(n, 2, h, dtype=state)
    for t in frames_in_order(length, reverse):
        # (f_t, r_t) = σ((f'_t, r'_t) + b + v ⊙ c_{t−1})
        torch.add(u[:, t, h:].unflatten(-1, (2, h)), b, out=gates).addcmul_(v, c[:, None]).sigmoid_()
        c = torch.lerp(u[:, t, :h].to(state), c, gates[:, 0])
        out[:, t] = torch.lerp(x[:, t].to(state), c, gates[:, 1])
    return out


class SRU(nn.Module):
    """One direction of a Simple Recurrent Unit (Lei et al. 2018): `(n, K, h)` → `(n, K, h)`.

    x̃, f', r' = W x (one matmul for all steps); then, step by step,
    f_t = σ(f'_t + v_f ⊙ c_{t−1} + b_f),  r_t = σ(r'_t + v_r ⊙ c_{t−1} + b_r),
    c_t = f_t ⊙ c_{t−1} + (1 − f_t) ⊙ x̃_t,  h_t = r_t ⊙ c_t + (1 − r_t) ⊙ x_t (highway).
    Three paths, the same equations: training runs `sru_unit` (only c loops; r and h follow for all frames at once);
    sampling on a CPU at bf16 runs `sru_unit_steps` (a frame at a time: more, smaller operations, but no full-size
    float32 tensor); sampling on a GPU, one Triton kernel per direction (`melody.modules.fused_sru`). The recurrence
    runs in float32 at least (under bf16 autocast too), as a state carried over many steps should; the unit's output
    is in x's dtype (under autocast the next matmul would cast it so).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(dim, 3 * dim, bias=False)
        self.v = nn.Parameter(torch.zeros(2, dim))
        self.b = nn.Parameter(torch.zeros(2, dim))

    def forward(self, x: torch.Tensor, reverse: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        """`out`: a tensor like x to write h into (the CPU's half-width sampling path writes there as it goes)."""
        u = self.w(x)
        if fused_sru.usable(x):  # sampling on a GPU: the whole unit as one kernel
            h = fused_sru.sru_unit(u, x, self.v, self.b, reverse).to(x.dtype)
        elif half_width_cpu_sampling(x) == x.dtype:
            # sampling at half width on a CPU: no full-size float32 copies (in float32 there are none to save, and
            # the step loop's extra operations made it no faster: benchmarks/results/cpu-sru/)
            return sru_unit_steps(u, x, self.v, self.b, reverse, out=out)
        else:
            h = sru_unit(u, x, self.v, self.b, reverse)
        return h if out is None else out.copy_(h)


def half_width_cpu_sampling(x: torch.Tensor) -> torch.dtype | None:
    """The half-width dtype a CPU sampling pass (no gradients) computes x's recurrence in: x's own (bf16 / fp16), or
    the CPU autocast's when x is float32 under it; None otherwise (training, GPUs, float32 sampling)."""
    if x.is_cuda or torch.is_grad_enabled():
        return None
    half = (torch.bfloat16, torch.float16)
    if x.dtype in half:
        return x.dtype
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in half:
        return torch.get_autocast_dtype("cpu")
    return None


class BiRecurrence(nn.Module):
    """`layers` bidirectional recurrent layers along a sequence `(n, K, h)` → `(n, K, h)`."""

    def __init__(self, dim: int, layers: int, kind: str) -> None:
        super().__init__()
        if kind not in RECURRENCES:
            raise MelodyError(f"unknown dpd.recurrence '{kind}'; choose one of: {', '.join(RECURRENCES)}")
        self.kind = kind
        if kind == "gru":
            if dim % 2:
                raise MelodyError(f"dpd.hidden must be even for the bidirectional GRU, got {dim}")
            self.gru = nn.GRU(dim, dim // 2, num_layers=layers, batch_first=True, bidirectional=True)
        else:
            self.forward_layers = nn.ModuleList(SRU(dim) for _ in range(layers))
            self.backward_layers = nn.ModuleList(SRU(dim) for _ in range(layers))
            self.merge = nn.ModuleList(nn.Linear(2 * dim, dim, bias=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gru":
            return self.gru(x)[0]
        half = half_width_cpu_sampling(x)
        for fwd, bwd, merge in zip(self.forward_layers, self.backward_layers, self.merge, strict=True):
            if half is None:
                x = merge(torch.cat((fwd(x), bwd(x, reverse=True)), dim=-1))
                continue
            # sampling on a CPU at half width: x cast once for both directions (autocast would cast it for each
            # W x, and a float32 x would send the first layer down the float32 path), each direction written
            # straight into its half of the merge's input (no concatenation)
            x = x.to(half)
            both = x.new_empty(*x.shape[:-1], 2 * x.shape[-1])
            fwd(x, out=both[..., :x.shape[-1]])
            bwd(x, reverse=True, out=both[..., x.shape[-1]:])
            x = merge(both)
        return x


class DualPathBlock(nn.Module):
    """Coarse path across (merged) segments with RoFormer + cross-attention, then fine path within segments with FiLM."""

    def __init__(self, config: DPDConfig, merge: int) -> None:
        super().__init__()
        h = config.hidden
        if config.segment_size % merge:
            raise MelodyError(f"merge factor {merge} does not divide the segment size {config.segment_size}; "
                              "check dpd.merge_factors")
        self.merge = merge
        self.roformer = Transformer(TransformerConfig(h, config.roformer_layers, config.heads, causal=False, cross_dim=h))
        self.coarse_norm = RMSNorm(h)
        self.recurrence = BiRecurrence(h, config.sru_layers, config.recurrence)
        self.film = nn.Linear(h, 2 * h)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.fine_norm = RMSNorm(h)

    def forward(self, x: torch.Tensor, film: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """x `(b, S, K, h)`; film `(b, L', h)` the condition at every padded frame (`pad_for_segments`);
        memory `(b, T, h)`, memory_mask `(b, T)` bool → `(b, S, K, h)`."""
        b, s, k, h = x.shape
        # coarse: merge K positions into K / merge columns, attend across the S segments of each column
        columns = k // self.merge
        merged = x.reshape(b, s, columns, self.merge, h).mean(3)  # (b, S, K/f, h)
        seq = rearrange(merged, "b s c h -> (b c) s h")
        seq = self.roformer(seq, memory=memory, memory_mask=memory_mask, memory_repeat=columns)  # one memory per column
        coarse = rearrange(seq, "(b c) s h -> b s c h", b=b).repeat_interleave(self.merge, dim=2)  # (b, S, K, h)
        x = self.coarse_norm(x + coarse)
        # fine: a recurrence along each segment's K frames, FiLM-modulated by the condition there
        fine = self.recurrence(rearrange(x, "b s k h -> (b s) k h"))
        fine = rearrange(fine, "(b s) k h -> b s k h", b=b)
        # per frame, so projected before segmenting: half the rows (each frame is in two segments), and a 2-d matmul
        # where the segments' strided view made torch expand the weight per segment
        gamma, beta = unfold_segments(self.film(film), k).chunk(2, dim=-1)
        return self.fine_norm(x + torch.addcmul(beta, fine, 1 + gamma))


class AngleEmbedding(nn.Module):
    """E_δ = MLP(cos δ · e_start + sin δ · e_end): angles `(b, L)` → `(b, L, h)` (a learnable slerp)."""

    def __init__(self, angle_dim: int, hidden: int) -> None:
        super().__init__()
        self.ends = nn.Parameter(torch.randn(2, angle_dim))  # e_start, e_end
        self.mlp = nn.Sequential(nn.Linear(angle_dim, hidden), RMSNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        mix = torch.cos(delta)[..., None] * self.ends[0] + torch.sin(delta)[..., None] * self.ends[1]
        return self.mlp(mix.to(self.ends.dtype))


def join_condition(semantic: torch.Tensor, mulan: torch.Tensor) -> torch.Tensor:
    """A MuLan-conditioned DPD's condition: MuLan tokens `(b, levels)` then semantic tokens `(b, T)` → `(b, levels + T)`."""
    return torch.cat((mulan.to(semantic.device, semantic.dtype), semantic), dim=1)


def mulan_embedding(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """The RVQ's reconstruction Σ_l q_l[c_l] of the embedding that MuLan codes `(b, L)` quantise → `(b, D)`."""
    return running_reconstruction(codes, codebooks)[:, -1]


class DPD(nn.Module):
    """The dual-path network: `forward(x (b, L, d), delta (b, L), semantic (b, T) long | None, drop (b,) bool | None)`
    → v̂ `(b, L, d)`; with `mulan_condition`, `semantic` is `join_condition(tokens, mulan_tokens)` `(b, levels + T)`."""

    def __init__(self, config: DPDConfig, latent_dim: int, vocab_size: int, mulan_levels: int = 0,
                 mulan_codebook_size: int = 0, mulan_dim: int = 0) -> None:
        super().__init__()
        if len(config.merge_factors) != config.blocks:
            raise MelodyError(f"dpd.merge_factors has {len(config.merge_factors)} entries for {config.blocks} blocks; "
                              "give one per block")
        h = config.hidden
        self.config, self.latent_dim, self.vocab_size = config, latent_dim, vocab_size
        # the tokens of the condition that are MuLan's (0: the paper's DPD)
        self.mulan_levels = mulan_levels if config.mulan_condition else 0
        if config.mulan_condition:
            if min(mulan_levels, mulan_codebook_size, mulan_dim) < 1:
                raise MelodyError("dpd.mulan_condition needs MuLan's RVQ sizes (levels, codebook size, embedding width); "
                                  "build the DPD from a config with a mulan section")
            self.register_buffer("mulan_codebooks", torch.zeros(mulan_levels, mulan_codebook_size, mulan_dim))
            self.mulan_projection = nn.Linear(mulan_dim, h)
            nn.init.zeros_(self.mulan_projection.weight)  # starts as the DPD without it (fine-tuning one with --init)
            nn.init.zeros_(self.mulan_projection.bias)
        self.input = nn.Linear(latent_dim, h)
        self.angle = AngleEmbedding(config.angle_dim, h)
        self.token_embedding = nn.Embedding(vocab_size, h)
        self.token_mlp = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))
        self.null_condition = nn.Parameter(torch.randn(h) * 0.02)
        self.input_norm = RMSNorm(h)
        self.blocks = nn.ModuleList(DualPathBlock(config, f) for f in config.merge_factors)
        self.output_norm = RMSNorm(h)
        self.output = nn.Linear(h, latent_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @classmethod
    def from_config(cls, cfg: MelodyConfig) -> DPD:
        """Sizes from the config tree: latents from the VAE, vocabulary from the semantic tokenizer."""
        return cls(cfg.dpd, cfg.vae.latent_dim, cfg.tokenizer.codebook_size, cfg.mulan.rvq_levels,
                   cfg.mulan.codebook_size, cfg.mulan.embed_dim)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def set_mulan_codebooks(self, codebooks: torch.Tensor) -> None:
        """Copy MuLan's RVQ codebooks `(L, K, D)` into a MuLan-conditioned DPD (training does it once, before step 0)."""
        if not self.mulan_levels:
            raise MelodyError("this DPD has no MuLan condition (dpd.mulan_condition is off); it holds no codebooks")
        copy_codebooks(self.mulan_codebooks, codebooks, "DPD")

    def has_codebooks(self, codebooks: torch.Tensor) -> bool:
        """Whether this DPD reads MuLan tokens through `codebooks` (always, for one without a MuLan condition)."""
        return reads_codebooks(getattr(self, "mulan_codebooks", None), codebooks)

    def condition_of(self, semantic: torch.Tensor, mulan: torch.Tensor | None) -> torch.Tensor:
        """What `forward` takes as its condition for semantic tokens `(b, T)` and the prompt's MuLan tokens `(b, L)`:
        the tokens alone for the paper's DPD (the MuLan tokens unused), `join_condition` for a MuLan-conditioned one."""
        if not self.mulan_levels:
            return semantic
        if mulan is None or mulan.shape != (semantic.shape[0], self.mulan_levels):
            raise MelodyError(f"this DPD is conditioned on MuLan tokens too: give ({semantic.shape[0]}, "
                              f"{self.mulan_levels}) of them, got {None if mulan is None else tuple(mulan.shape)}")
        if ((mulan < 0) | (mulan >= self.mulan_codebooks.shape[1])).any():
            raise MelodyError(f"MuLan tokens must lie in [0, {self.mulan_codebooks.shape[1]}): these come from another MuLan")
        return join_condition(semantic, mulan)

    def condition(self, semantic: torch.Tensor | None, drop: torch.Tensor | None, batch: int, length: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(aligned `(b, L, h)`, summary `(b, h)`, memory `(b, T, h)`, memory_mask `(b, T)`) for the tokens,
        the null condition where dropped (or everywhere when `semantic` is None)."""
        h = self.config.hidden
        null = self.null_condition
        if semantic is None:
            return (null.expand(batch, length, h), null.expand(batch, h), null.new_zeros(batch, 1, h),
                    torch.zeros(batch, 1, dtype=torch.bool, device=device))
        prefix = self.mulan_levels
        if semantic.dim() != 2 or semantic.shape[0] != batch or semantic.shape[1] < prefix + 1:
            raise ValueError(f"the condition must be (b={batch}, {f'{prefix} MuLan + ' if prefix else ''}T ≥ 1 semantic "
                             f"tokens), got {tuple(semantic.shape)}")
        mulan, semantic = semantic[:, :prefix], semantic[:, prefix:]
        memory = self.token_mlp(self.token_embedding(semantic))  # (b, T, h): E_ST
        tokens = semantic.shape[1]
        at = torch.div(torch.arange(length, device=device) * tokens, length, rounding_mode="floor")  # token covering frame j
        aligned, summary = memory[:, at], memory.mean(1)
        if prefix:  # (codes are range-checked in `condition_of`: a check here would wait on the host in a CUDA graph)
            embedding = mulan_embedding(mulan, self.mulan_codebooks).to(self.mulan_projection.weight.dtype)
            style = self.mulan_projection(embedding)  # (b, h)
            aligned, summary = aligned + style[:, None], summary + style
        keep = torch.ones(batch, tokens, dtype=torch.bool, device=device)
        if drop is not None:
            drop = drop.to(device=device, dtype=torch.bool)
            aligned = torch.where(drop[:, None, None], null, aligned)
            summary = torch.where(drop[:, None], null, summary)
            keep = keep & ~drop[:, None]
        return aligned, summary, memory, keep

    def forward(self, x: torch.Tensor, delta: torch.Tensor, semantic: torch.Tensor | None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        b, length, d = x.shape
        if d != self.latent_dim or delta.shape != (b, length):
            raise ValueError(f"DPD wants x (b, L, {self.latent_dim}) and delta (b, L), got {tuple(x.shape)} and {tuple(delta.shape)}")
        size = self.config.segment_size
        angle = self.angle(delta)  # (b, L, h): E_δ per frame
        aligned, summary, memory, memory_mask = self.condition(semantic, drop, b, length, x.device)
        h = self.input_norm(self.input(x.to(self.input.weight.dtype)) + angle + aligned)
        film = pad_for_segments(angle + summary[:, None, :], size)  # (b, L', h): the FiLM condition at every frame
        h = segment(h, size)  # (b, S, K, h)
        for block in self.blocks:
            h = block(h, film, memory, memory_mask)
        return self.output(self.output_norm(overlap_add(h, length)))


def parameter_count(cfg: MelodyConfig) -> int:
    """Parameters of `DPD.from_config(cfg)`, counted on the meta device."""
    with torch.device("meta"):
        return DPD.from_config(cfg).num_parameters()
