"""Process-wide settings for running the networks on CPUs (the CLI and `melody bench` apply them; API users may).

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on
free, so each large activation pays one page fault per 4 KiB page it first touches, at every pass. At `paper` shapes
the DPD's activations are 30–100 MB each: one bf16 pass took 8.45 s with glibc's defaults and 5.22 s with freed
blocks kept in the heap for the next pass (medians of 4, alternated in one process on 2 cores:
`benchmarks/cpu_allocator.py`, `benchmarks/results/cpu-allocator/`).
jemalloc or tcmalloc through `LD_PRELOAD` (what `torch.backends.xeon.run_cpu` sets up) do the same and are left
alone when present; this needs no package.
"""

from __future__ import annotations

import ctypes
import os
import platform

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
