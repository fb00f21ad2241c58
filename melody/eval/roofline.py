"""What this machine could do at best: its matmul throughput and memory bandwidth, and the time bound they put on a pass.

A roofline (Williams, Waterman & Patterson 2009): a network pass cannot take less than its FLOPs ÷ the
peak arithmetic throughput, nor less than the bytes it must read ÷ the memory bandwidth. Here:

- `matmul_flops`: the best of a few timed square matmuls (n × n by n × n, 2 n³ FLOPs), fp32 and bf16:
  the throughput a dense layer can reach on this machine with these threads;
- `copy_bandwidth`: the best of a few copies of a large tensor (256 MiB, far beyond the caches),
  counting the bytes read and written (2 × size): it stands in for the rate weights stream from memory
  (a read-only stream can be somewhat faster, so a weights bound may sit a little above the true floor);
- `flops_of_call`: FLOPs of one real call, counted by `torch.utils.flop_counter.FlopCounterMode`
  (matmuls, convolutions, attention; elementwise ops and recurrent cells such as `nn.GRU` are not
  counted, so the bound stays a lower bound);
- `streamed_bytes`: the bytes of a module's weights that every pass reads. Embedding tables are left
  out (a pass reads only the rows of its tokens), a tied table is counted once through the layer
  that shares it;
- `bound_seconds`: max(FLOPs × passes ÷ throughput, bytes × passes ÷ bandwidth), either term omitted
  when not given: the DPD's bound is its counted FLOPs, an autoregressive LM's (batch ≤ 2, one
  position per step) its weights streamed once per token.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

MATMUL_SIZE = 2048
COPY_BYTES = 256 * 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `fn` after one untimed warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", n: int = MATMUL_SIZE,
                 repeats: int = 3) -> float:
    """FLOP/s of the best of `repeats` n × n matmuls in `dtype` on `device` (2 n³ FLOPs each)."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    return 2 * n**3 / _best_seconds(lambda: a @ b, device, repeats)


def copy_bandwidth(device: str | torch.device = "cpu", size_bytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes/s of the best of `repeats` copies of a `size_bytes` float32 tensor, read and write counted (2 × size)."""
    device = torch.device(device)
    source = torch.ones(size_bytes // 4, device=device)
    target = torch.empty_like(source)
    return 2 * size_bytes / _best_seconds(lambda: target.copy_(source), device, repeats)


@torch.no_grad()
def flops_of_call(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> int:
    """FLOPs of `module(*args, **kwargs)`, run once under `FlopCounterMode` (what it counts: module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        module(*args, **kwargs)
    return int(counter.get_total_flops())


def streamed_bytes(module: nn.Module) -> int:
    """Bytes of the parameters one pass of `module` reads in full: all but embedding tables (a shared one counts once)."""
    read = {id(p): p for m in module.modules() if not isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    return sum(p.numel() * p.element_size() for p in read.values())


def bound_seconds(passes: int, flops_per_pass: float | None, bytes_per_pass: float | None, flops_per_s: float,
                  bytes_per_s: float) -> dict[str, float | None]:
    """The roofline time of `passes` passes: {"compute_s", "memory_s", "bound_s" = the larger}; None terms are left out."""
    compute = None if flops_per_pass is None else passes * flops_per_pass / flops_per_s
    memory = None if bytes_per_pass is None else passes * bytes_per_pass / bytes_per_s
    terms = [t for t in (compute, memory) if t is not None]
    return {"compute_s": compute, "memory_s": memory, "bound_s": max(terms) if terms else None}
