"""The SRU's recurrence as one GPU kernel (Triton), for sampling: the whole unit of `melody.dpd.SRU` after its matmul.

Why: the SRU's cell state is carried frame by frame (f_t reads c_{t−1}), so in PyTorch it is a loop of K steps of
three elementwise kernels each. On a GPU each of those kernels does microseconds of work, and a `paper` DPD pass ran
about 6 000 of them (8 blocks × 2 layers × 2 directions × 64 frames × 3). Every lane (one row, one hidden unit) is
independent of the others, so one kernel can give each lane a thread that runs all K steps in registers
(how Lei et al. 2018 run the SRU in their own CUDA kernel): 32 launches a pass instead of about 6 000.

`sru_unit(u, x, v, b, reverse)` computes, for u = W x split into (x̃, f', r') along the last dimension,
    f_t = σ(f'_t + b_f + v_f ⊙ c_{t−1}),  c_t = f_t ⊙ c_{t−1} + (1 − f_t) ⊙ x̃_t,
    r_t = σ(r'_t + b_r + v_r ⊙ c_{t−1}),  h_t = r_t ⊙ c_t + (1 − r_t) ⊙ x_t,
in float32 whatever the inputs' dtype, as the loop does. Forward only: training keeps the loop, whose autograd
PyTorch provides. `usable(x)` says when the DPD takes this path: a CUDA tensor, no gradient wanted, Triton importable
(and `enabled`).
Tests run the same kernel on the CPU through Triton's interpreter (`TRITON_INTERPRET=1`).
"""

from __future__ import annotations

import functools
import os

import torch

BLOCK = 128  # hidden units per program: one warp-aligned slice of a row
# False sends the DPD back to the step loop everywhere (benchmarks/gpu_profile.py compares the two); the environment
# variable MELODY_FUSED_SRU=0 sets it at import, for a GPU where the kernel misbehaves
enabled = os.environ.get("MELODY_FUSED_SRU", "1") != "0"


@functools.cache
def _triton():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl


@functools.cache
def _kernel():
    triton, tl = _triton()

    @triton.jit
    def sru_kernel(u_ptr, x_ptr, v_ptr, b_ptr, out_ptr, hidden,
                   LENGTH: tl.constexpr, REVERSE: tl.constexpr, BLOCK_H: tl.constexpr):
        # LENGTH: K, the segment size (one compilation per model); REVERSE is 0 or 1: frame i forwards, K − 1 − i backwards
        row = tl.program_id(0)
        lanes = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        live = lanes < hidden
        v_f = tl.load(v_ptr + lanes, mask=live, other=0.0).to(tl.float32)
        v_r = tl.load(v_ptr + hidden + lanes, mask=live, other=0.0).to(tl.float32)
        b_f = tl.load(b_ptr + lanes, mask=live, other=0.0).to(tl.float32)
        b_r = tl.load(b_ptr + hidden + lanes, mask=live, other=0.0).to(tl.float32)
        c = v_f * 0.0  # c_{−1} = 0 (tl.zeros is a helper the interpreter cannot call once compiled)
        for i in range(LENGTH):
            t = i + REVERSE * (LENGTH - 1 - 2 * i)
            u_at = u_ptr + (row * LENGTH + t) * 3 * hidden + lanes
            x_tilde = tl.load(u_at, mask=live, other=0.0).to(tl.float32)
            f_in = tl.load(u_at + hidden, mask=live, other=0.0).to(tl.float32)
            r_in = tl.load(u_at + 2 * hidden, mask=live, other=0.0).to(tl.float32)
            x_t = tl.load(x_ptr + (row * LENGTH + t) * hidden + lanes, mask=live, other=0.0).to(tl.float32)
            f = 1.0 / (1.0 + tl.exp(-(f_in + b_f + v_f * c)))  # σ written out: the interpreter runs no tl.* helper
            r = 1.0 / (1.0 + tl.exp(-(r_in + b_r + v_r * c)))
            c = f * c + (1.0 - f) * x_tilde
            tl.store(out_ptr + (row * LENGTH + t) * hidden + lanes, r * c + (1.0 - r) * x_t, mask=live)

    return sru_kernel


def usable(x: torch.Tensor) -> bool:
    """Whether the DPD's SRU runs through this kernel: CUDA input, no gradient wanted, Triton importable, and offsets
    that fit the kernel's 32-bit arithmetic (u holds 3 × x's elements)."""
    return enabled and x.is_cuda and not torch.is_grad_enabled() and 3 * x.numel() < 2**31 and _triton() is not None


# a compiled DPD (`dpd.compile`) calls the kernel as it is, between its compiled parts: dynamo would otherwise trace
# into the cached kernel factory
@torch.compiler.disable
def sru_unit(u: torch.Tensor, x: torch.Tensor, v: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """One SRU direction after its matmul: u `(n, K, 3h)` = W x, x `(n, K, h)`, v and b `(2, h)` ([f; r]) →
    h `(n, K, h)` float32. The module docstring gives the equations."""
    if _triton() is None:
        raise RuntimeError("the fused SRU needs Triton (pip install triton)")
    n, length, hidden = x.shape
    if u.shape != (n, length, 3 * hidden) or v.shape != (2, hidden) or b.shape != (2, hidden):
        raise ValueError(f"SRU shapes: u {tuple(u.shape)}, x {tuple(x.shape)}, v {tuple(v.shape)}, b {tuple(b.shape)}")
    out = torch.empty(n, length, hidden, dtype=torch.float32, device=x.device)
    grid = (n, -(-hidden // BLOCK))
    _kernel()[grid](u.contiguous(), x.contiguous(), v.contiguous(), b.contiguous(), out, hidden,
                    LENGTH=length, REVERSE=int(reverse), BLOCK_H=BLOCK)
    return out
