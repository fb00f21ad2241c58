"""Corpus render throughput: seconds of audio made per wall second, per source and in total.

    .venv/bin/python benchmarks/bench_synth.py --minutes 6 --out benchmarks/results/synth.json

Builds a small corpus with each source alone on one worker (per-source throughput), then the
mixed corpus on `--workers` processes (what `melody data synth` achieves), and writes the figures
as JSON. Wall time includes arranging, score parsing, rendering, analysis, FLAC encoding and
shard writing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from melody.config import preset
from melody.data.synth.build import build_corpus
from melody.io import write_json_atomic


def run(minutes: float, shares: dict[str, float], workers: int, seed: int) -> dict:
    cfg = preset("tiny").data
    cfg.hours = minutes / 60.0
    cfg.seed = seed
    cfg.procedural_share, cfg.score_share, cfg.recording_share = shares["procedural"], shares["score"], shares["recording"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = build_corpus(Path(tmp) / "corpus", cfg, workers=workers, progress=False)
        wall = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.tar"))
    audio = report.total_seconds
    return {"workers": workers, "audio_seconds": round(audio, 1), "wall_seconds": round(wall, 2),
            "audio_seconds_per_wall_second": round(audio / wall, 1), "clips": sum(report.clips.values()),
            "shard_megabytes": round(size / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="audio per measured build")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synth.json"))
    args = parser.parse_args()
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
               "per_source_1_worker": {}, "mixed": None}
    for source in ("procedural", "score", "recording"):
        shares = {k: float(k == source) for k in ("procedural", "score", "recording")}
        results["per_source_1_worker"][source] = run(args.minutes, shares, 1, args.seed)
        print(source, results["per_source_1_worker"][source], flush=True)
    cfg = preset("tiny").data
    mixed = {"procedural": cfg.procedural_share, "score": cfg.score_share, "recording": cfg.recording_share}
    results["mixed"] = run(args.minutes, mixed, args.workers, args.seed)
    print("mixed", results["mixed"], flush=True)
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
