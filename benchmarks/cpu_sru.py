"""The SRU's two CPU paths at sampling (no gradients), one direction with its W x, alternated in one process:
the vectorised unit (`sru_unit`, the training path) and the frame-at-a-time unit (`sru_unit_steps`), in fp32 and
under bf16 autocast, at the `paper` DPD's shape (2 × 80 segments of 64 frames, hidden 768) and smaller ones.
Writes `benchmarks/results/cpu-sru/paths.json` and `paths.md`.

    .venv/bin/python benchmarks/cpu_sru.py --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine  # noqa: E402
from melody.dpd import SRU, sru_unit, sru_unit_steps  # noqa: E402
from melody.io import write_json_atomic, write_text_atomic  # noqa: E402
from melody.runtime import reuse_freed_memory  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "cpu-sru"
SHAPES = ((160, 64, 768), (160, 64, 256), (320, 16, 128))  # (rows n = batch × segments, frames K, hidden h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = reuse_freed_memory()
    load_start = load_average()
    rows = []
    for n, k, h in SHAPES:
        torch.manual_seed(0)
        sru = SRU(h).eval()
        for precision in ("fp32", "bf16"):
            x = torch.randn(n, k, h)
            x = x.bfloat16() if precision == "bf16" else x
            paths = {
                "vectorised": lambda: sru_unit(sru.w(x), x, sru.v, sru.b),
                "frame at a time": lambda: sru_unit_steps(sru.w(x), x, sru.v, sru.b),
            }
            times: dict[str, list[float]] = {name: [] for name in paths}
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                for r in range(args.rounds + 1):
                    for name, run in paths.items():
                        start = time.perf_counter()
                        run()
                        if r:  # round 0 warms up
                            times[name].append((time.perf_counter() - start) * 1e3)
            medians = {name: statistics.median(t) for name, t in times.items()}
            rows.append({"n": n, "k": k, "h": h, "precision": precision, "ms": times, "median_ms": medians})
            print(f"(n {n}, K {k}, h {h}) {precision}: " + ", ".join(f"{p} {m:.1f} ms" for p, m in medians.items()),
                  flush=True)
    report = {"machine": {**machine("cpu", args.threads, load_start), "allocator": allocator}, "rounds": args.rounds,
              "rows": rows, "command": "benchmarks/cpu_sru.py " + " ".join(sys.argv[1:])}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / "paths.json", report)
    lines = ["# One SRU direction (W x included) at sampling on the CPU, by path", "",
             f"{args.threads} threads, torch {torch.__version__}, allocator: {allocator}; medians of {args.rounds} "
             "alternated rounds, without gradients.", "",
             "| n × K × h | precision | vectorised ms | frame at a time ms |", "|---|---|---|---|"]
    lines += [f"| {r['n']} × {r['k']} × {r['h']} | {r['precision']} | {r['median_ms']['vectorised']:.1f} | "
              f"{r['median_ms']['frame at a time']:.1f} |" for r in rows]
    lines += ["", f"Command: `{report['command']}`."]
    write_text_atomic(OUT / "paths.md", "\n".join(lines) + "\n")
    print(f"wrote {OUT / 'paths.json'} and paths.md")


if __name__ == "__main__":
    main()
