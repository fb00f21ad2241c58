"""Process-wide settings for running the networks on CPUs (the CLI and `melody bench` apply them; API users may).

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on
free, so each large activation pays one page fault per 4 KiB page it first touches, at every pass. At `paper` shapes
the DPD's activations are 30–100 MB each: one bf16 pass took 8.45 s with glibc's defaults and 5.22 s with freed
blocks kept in the heap for the next pass (medians of 4, alternated in one process on 2 cores:
`benchmarks/cpu_allocator.py`, `benchmarks/results/cpu-allocator/`).
jemalloc or tcmalloc through `LD_PRELOAD` (what `torch.backends.xeon.run_cpu` sets up) do the same and are left
alone when present; this needs no package.

`few_row_linears`: a decoding LM's linear layers see one token per row, 2 rows with guidance. For such bf16 inputs
torch's CPU `linear` (x Wᵀ) reads the weights more slowly than the same product written as (W xᵀ)ᵀ: the semantic LM's
bf16 copy at `paper` shapes decoded a token in 76.8 ms that way against 80.8 ms (the same tokens; medians of 8,
alternated in one process on 2 cores: `benchmarks/cpu_lm_decode.py`, `benchmarks/results/cpu-lm-decode/`).
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

# mallopt(3) parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
# free memory kept at the heap's top before it goes back to the OS (mallopt takes an int)
KEPT_BYTES = 2**31 - 1
OFF = ("0", "off", "system")


def reuse_freed_memory() -> str:
    """Have glibc's malloc keep freed blocks for reuse instead of unmapping them; return what was done, in words.

    Large tensors then come from the heap (`M_MMAP_MAX` 0), and freed memory stays in the process for the next
    pass (`M_TRIM_THRESHOLD` 2 GiB): the peak resident memory is unchanged, but the process no longer shrinks back
    after a pass. `MELODY_MALLOC=system` keeps glibc's defaults; so does an allocator in `LD_PRELOAD`, or a
    `MALLOC_*_` tunable already in the environment (the user's choice wins).
    """
    if os.environ.get("MELODY_MALLOC", "").lower() in OFF:
        return "glibc defaults (MELODY_MALLOC=system)"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"the preloaded allocator ({preload})"
    if any(key.startswith("MALLOC_") and key.endswith("_") for key in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return "glibc, tuned by the environment"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the system allocator (not glibc)"
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, KEPT_BYTES)):
        return "glibc defaults (mallopt refused)"
    return "glibc, freed blocks kept for reuse"


FEW_ROWS = 8  # the most rows (tokens × batch) a linear layer computes as (W xᵀ)ᵀ


class FewRowLinear(nn.Linear):
    """`nn.Linear` whose bf16 / fp16 CPU product for at most `FEW_ROWS` rows is computed as (W xᵀ)ᵀ (module docstring);
    the same weights and state dict, the same numbers up to the order of the sums."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(1, x.shape[-1])
        if rows > FEW_ROWS or x.is_cuda or x.dtype not in (torch.bfloat16, torch.float16):
            return F.linear(x, self.weight, self.bias)
        out = (self.weight @ x.reshape(rows, x.shape[-1]).T).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class Compiled:
    """`torch.compile(fn)` (inductor, one compilation per input shape) whose failure to compile, a missing C++
    compiler on a CPU say, is one line naming the way out instead of inductor's traceback. On a GPU it is called only
    while a CUDA graph records it: the replays go through no Python, this wrapper's included."""

    def __init__(self, fn) -> None:
        self.fn = torch.compile(fn, dynamic=False)

    def __call__(self, *args, **kwargs):
        from melody.errors import MelodyError

        try:
            return self.fn(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MelodyError(f"torch.compile failed ({first}); run without --compile (in Python: "
                              "cfg.semantic_lm.compile = cfg.dpd.compile = False)") from None


def stacked_gates(model: nn.Module) -> nn.Module:
    """`model` with each SwiGLU's W1 and W3 stacked into one layer, in place (for a GPU sampling copy of a decoding LM:
    `SwiGLU.stack_gate_and_value`). On a CPU a token's pass is bound by the weight bytes it streams, which this does
    not change, so the CPU's copy keeps them apart (and its sampled tokens as they were)."""
    from melody.modules.transformer import SwiGLU

    for module in model.modules():
        if isinstance(module, SwiGLU):
            module.stack_gate_and_value()
    return model


def few_row_linears(model: nn.Module) -> nn.Module:
    """`model` with every plain `nn.Linear` made a `FewRowLinear`, in place (for a sampling copy of a decoding LM)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowLinear
    return model
