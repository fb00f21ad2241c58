"""`torch.compile` for the samplers on a CPU (`semantic_lm.compile`, `dpd.compile`): the bundled model generating 10 s,
plain and compiled, alternated in one process since this machine's speed drifts between runs. The first compiled
round pays the compilation (timed on its own); the rounds after it are what a process generating many clips sees.
Writes benchmarks/results/cpu-compile/compile.json.

    .venv/bin/python benchmarks/cpu_compile.py --rounds 5 --threads 2
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternated_run, machine  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-compile" / "compile.json"
PROMPT = "an upbeat funk groove with slap bass"


def main() -> None:
    args, load_start = alternated_run(__doc__, 5, RESULTS, lambda p: p.add_argument("--seconds", type=float, default=10.0))
    model = MeLoDy.from_pretrained(Path(__file__).resolve().parents[1] / "melody" / "bundled")

    def run(compiled: bool):
        model.cfg.semantic_lm.compile = model.cfg.dpd.compile = compiled
        clock = time.perf_counter()
        out = model.generate([PROMPT], args.seconds, seed=0)
        return out, time.perf_counter() - clock

    run(False)  # the plain path's warm-up
    first, compile_s = run(True)
    walls: dict[str, list[float]] = {"plain": [], "compiled": []}
    stages: dict[str, list[dict]] = {"plain": [], "compiled": []}
    outs = {}
    for _ in range(args.rounds):
        for way in walls:
            outs[way], wall = run(way == "compiled")
            walls[way].append(round(wall, 3))
            stages[way].append({k: round(v, 3) for k, v in outs[way].seconds.items()})
        print({w: v[-1] for w, v in walls.items()}, flush=True)
    median = {w: statistics.median(v) for w, v in walls.items()}
    stage_median = {w: {k: statistics.median(s[k] for s in stages[w]) for k in stages[w][0]} for w in stages}
    data = {"seconds_of_music": args.seconds, "rounds": args.rounds, "prompt": PROMPT,
            "first_compiled_call_s": round(compile_s, 2), "wall_s": walls, "median_wall_s": median,
            "median_stage_s": stage_median, "speedup": median["plain"] / median["compiled"],
            "same_tokens": bool(torch.equal(outs["plain"].semantic_tokens, outs["compiled"].semantic_tokens)),
            "audio_max_abs_diff": float((outs["plain"].audio - outs["compiled"].audio).abs().max()),
            "first_compiled_equals_later": bool(torch.equal(first.audio, outs["compiled"].audio))}
    print({k: data[k] for k in ("first_compiled_call_s", "median_wall_s", "speedup", "same_tokens", "audio_max_abs_diff")})
    write_json_atomic(args.out, {**data, **machine("cpu", args.threads, load_start)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
