"""`torch.compile` for the samplers on a CPU (`semantic_lm.compile`, `dpd.compile`): the bundled model generating 10 s,
plain and compiled, alternated in one process since this machine's speed drifts between runs. The first compiled
round pays the compilation (timed on its own); the rounds after it are what a process generating many clips sees.
Then `stream` (5 s chunks), plain and compiled on two copies of the bundle, chunk by chunk alternated: each chunk's
wall time (the compiled stream's first chunks wait for its compilations). Writes
benchmarks/results/cpu-compile/compile.json.

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
    def options(parser) -> None:
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--chunks", type=int, default=8, help="stream chunks of 5 s (0: no stream)")

    args, load_start = alternated_run(__doc__, 5, RESULTS, options)
    bundle = Path(__file__).resolve().parents[1] / "melody" / "bundled"
    model = MeLoDy.from_pretrained(bundle)

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
    if args.chunks:
        data["stream"] = stream_chunks(bundle, args.chunks)
        print(data["stream"])
    write_json_atomic(args.out, {**data, **machine("cpu", args.threads, load_start)})
    print(f"wrote {args.out}")


def stream_chunks(bundle: Path, chunks: int) -> dict:
    """Per-chunk wall seconds of `stream`, plain and compiled, alternated; medians from the third chunk on."""
    streams, walls, last = {}, {"plain": [], "compiled": []}, {}
    for way in walls:
        copy = MeLoDy.from_pretrained(bundle)
        copy.cfg.semantic_lm.compile = copy.cfg.dpd.compile = way == "compiled"
        streams[way] = copy.stream([PROMPT] * chunks, 5.0, seed=0)
    for _ in range(chunks):
        for way, stream in streams.items():
            clock = time.perf_counter()
            last[way] = next(stream)
            walls[way].append(round(time.perf_counter() - clock, 3))
    return {"chunk_seconds": 5.0, "chunk_wall_s": walls,
            "median_from_third_chunk_s": {w: statistics.median(v[2:]) for w, v in walls.items()},
            "last_chunk_max_abs_diff": float((last["plain"] - last["compiled"]).abs().max())}


if __name__ == "__main__":
    main()
