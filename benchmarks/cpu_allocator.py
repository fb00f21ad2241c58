"""One `paper`-shape DPD pass on the CPU (bf16, guidance batch of 2, 10 s window) under glibc's default malloc and
under `melody.runtime.reuse_freed_memory`, alternated in one process so that a busy or slow spell of the machine
hits both alike. Writes `benchmarks/results/cpu-allocator/passes.json` and `passes.md`.

    .venv/bin/python benchmarks/cpu_allocator.py --rounds 4 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine  # noqa: E402
from melody.config import preset  # noqa: E402
from melody.dpd import DPD  # noqa: E402
from melody.io import write_json_atomic, write_text_atomic  # noqa: E402
from melody.pipeline import linears_in  # noqa: E402
from melody.runtime import KEPT_BYTES, M_MMAP_MAX, M_TRIM_THRESHOLD  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "cpu-allocator"
# glibc's own defaults (malloc(3)): up to 65 536 mapped blocks, 128 KiB of free heap top kept
DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}
REUSE = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: KEPT_BYTES}


def set_malloc(settings: dict[int, int]) -> None:
    libc = ctypes.CDLL(None)
    for param, value in settings.items():
        if not libc.mallopt(param, value):
            raise SystemExit(f"mallopt({param}, {value}) refused: this needs glibc")
    libc.malloc_trim(0)  # start each pass from a heap without the other setting's leftovers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    cfg = preset("paper")
    torch.manual_seed(0)
    dpd = linears_in(DPD.from_config(cfg), torch.bfloat16).eval()  # as `MeLoDy.dpd_at_precision` samples at bf16
    frames = round(args.seconds * cfg.vae.sample_rate / math.prod(cfg.vae.strides))
    x = torch.randn(2, frames, cfg.vae.latent_dim)
    delta = torch.full((2, frames), 0.7)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (2, round(args.seconds * cfg.tokenizer.frame_rate)))

    def one_pass() -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            dpd(x, delta, tokens)
        return time.perf_counter() - start

    seconds: dict[str, list[float]] = {"glibc defaults": [], "freed blocks kept": []}
    for r in range(args.rounds):
        for name, settings in (("glibc defaults", DEFAULTS), ("freed blocks kept", REUSE)):
            set_malloc(settings)
            if r == 0:
                one_pass()  # warm-up under each setting
            seconds[name].append(one_pass())
            print(f"round {r + 1}: {name} {seconds[name][-1]:.2f} s", flush=True)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    report = {"machine": machine("cpu", args.threads, load_start), "window_seconds": args.seconds, "frames": frames,
              "rounds": args.rounds, "seconds": seconds, "median": medians,
              "speedup": medians["glibc defaults"] / medians["freed blocks kept"],
              "command": "benchmarks/cpu_allocator.py " + " ".join(sys.argv[1:])}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / "passes.json", report)
    m = report["machine"]
    lines = ["# One `paper` DPD pass on the CPU, bf16, by malloc setting", "",
             f"{m.get('cpu')}, {args.threads} threads, torch {torch.__version__}; a {args.seconds:g} s window "
             f"({frames} latent frames, guidance batch 2); the settings alternate, {args.rounds} rounds.", "",
             "| malloc | seconds per pass (each round) | median |", "|---|---|---|"]
    lines += [f"| {name} | {', '.join(f'{s:.2f}' for s in times)} | {medians[name]:.2f} |" for name, times in seconds.items()]
    lines += ["", f"Speed-up of the median: {report['speedup']:.2f}×. Command: `{report['command']}`."]
    write_text_atomic(OUT / "passes.md", "\n".join(lines) + "\n")
    print(f"wrote {OUT / 'passes.json'} and passes.md: {report['speedup']:.2f}× faster with freed blocks kept")


if __name__ == "__main__":
    main()
