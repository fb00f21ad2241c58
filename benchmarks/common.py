"""Helpers shared by the speed benchmarks (`bench_dpd.py`, `bench_semantic_lm.py`, `bench_vae.py`).

- `add_device_args`: the `--device` (default cpu) and `--threads` (default all cores) options.
- `sync`, `clock`, `timed`: wall time of a call, CUDA-synchronised on a GPU; `timed` is the median of
  `repeats` calls after one warm-up.
- `load_average`, `machine`: the machine block merged into every result row (processor, threads,
  torch version, GPU name; optionally core count and the load averages at start and end).
- `alternated_run`: the CPU A/B scripts' start (`cpu_*.py`, ways alternated in one process): --rounds, --threads and
  --out parsed, glibc's freed blocks kept (as the CLI does), the threads set; (args, load average at the start).
- `merge_results`: read `benchmarks/results/<name>.json`, replace the earlier rows of this device
  (and thread count), append the new ones with the machine block, write it atomically.
- `pyplot`, `chart_title`, `save_chart`: the chart boilerplate and the title line naming the
  machine and the 1-min load average at the start of each thread count's run.

The scripts import it as `common`, with the repository root (for `melody`) and the benchmarks
folder on `sys.path`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from melody.io import write_json_atomic


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())


def sync(device: str) -> None:
    """Wait for the GPU's queued work (a no-op on a CPU), so wall times cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    """(result, wall seconds) of one call of `fn`, synchronised on `device`."""
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def timed(fn: Callable[[], Any], repeats: int, device: str) -> float:
    """Median wall seconds of `repeats` calls of `fn` after one untimed warm-up call."""
    fn()
    sync(device)
    return statistics.median(clock(fn, device)[1] for _ in range(repeats))


def alternated_run(doc: str, rounds: int, out: Path,
                   extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, list[float]]:
    """Parse an A/B script's options (`extra` adds its own), apply the CLI's allocator setting and the thread count."""
    from melody.runtime import reuse_freed_memory

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=out)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    reuse_freed_memory()
    torch.set_num_threads(args.threads)
    return args, load_average()


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(device: str, threads: int, load_start: list[float] | None = None) -> dict:
    """What ran the benchmark: merged into each row. With `load_start` (the `load_average()` taken
    before the run) also the core count and the load averages at start and now (end)."""
    out: dict = {"cpu": platform.processor() or platform.machine()}
    if load_start is not None:
        out["cpu_count"] = os.cpu_count()
    out.update({"threads": threads, "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None})
    if load_start is not None:
        out.update({"load_avg_start": load_start, "load_avg_end": load_average()})
    return out


def merge_results(path: Path, sections: dict[str, list[dict]], machine: dict, match: dict,
                  extra: dict | None = None) -> dict:
    """Read the results JSON at `path` (a fresh one has an empty list per section), set the `extra`
    keys, and in each section replace the rows whose `match` fields equal `match`'s values by the
    new rows, each merged with `machine`; write it atomically and return it."""
    data = json.loads(path.read_text()) if path.exists() else {name: [] for name in sections}
    data.update(extra or {})

    def same(r: dict) -> bool:
        return all(r[k] == v for k, v in match.items())

    for name, rows in sections.items():
        data[name] = [r for r in data.get(name, []) if not same(r)] + [{**r, **machine} for r in rows]
    write_json_atomic(path, data)
    return data


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_title(what: str, rows: list[dict]) -> str:
    """'<what> — <GPU, or CPU and cores>, torch <version>' and a second line with each thread
    count's 1-min load average at start (the rows carry the `machine` block with load averages)."""
    first = rows[0]
    where = first["gpu"] or f"{first['cpu']} CPU ({first['cpu_count']} cores)"
    loads = ", ".join(f"{t} thr. {next(r['load_avg_start'][0] for r in rows if r['threads'] == t):.1f}"
                      for t in sorted({r["threads"] for r in rows}))
    return f"{what} — {where}, torch {first['torch']}\n1-min load average at start ({loads}): the machine was shared"


def save_chart(fig, ax, path: Path) -> None:
    """Legend, tight layout, PNG at 120 dpi, figure closed."""
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
