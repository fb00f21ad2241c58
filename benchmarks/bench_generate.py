"""End-to-end speed of `melody generate` with a bundle (default: the bundled `tiny` model), on this machine.

Issue 6's targets, on 2 CPU cores: 10 s of music in ≤ 2 s wall (real-time factor ≤ 0.2), peak memory
≤ 1 GB, streaming ahead of playback from the first chunk. Each measurement runs in a fresh child
process, so its peak resident memory (`ru_maxrss`: model loading, Python and torch included, which is
what a user's process holds) is that run's alone. In the child:

- `generate`: load the bundle (timed apart), one untimed 1 s warm-up call, then one timed
  `MeLoDy.generate` of each `--durations` (default 10 and 30 s) at each `--steps` count; reported per
  stage: wall seconds and network forward passes (the pipeline counts them), the total wall, the
  real-time factor (wall / seconds of music) and the peak memory. With `--bpm`, each again in another child
  with that tempo stated: the LM's tempo token and beat clock get it, and for an LM without a clock the tempo fit
  listens (`tempo_fit` in the stage seconds, plus a second render where it stretches; that child's first row is
  then the process's first fit, which also loads the beat tracker).
- `stream`: `MeLoDy.stream` over `--chunks` chunks of `--chunk-seconds`, the prompt changing half way
  (story mode). Reported: time to first audio (from the call, after loading), each chunk's ready time,
  and whether generation keeps ahead of playback: playback starts when chunk 0 is ready, so chunk k
  must be ready by ready₀ + k · chunk_seconds (the smallest margin over k ≥ 1 is reported). Join quality: the
  spectral flux (mean |Δ log mel| between 256-sample frames) at the frames that cross a chunk
  boundary against the flux of all the other frames (`melody.eval.metrics.boundary_flux`): a seam
  would show as a boundary flux above the inside one.

Writes `benchmarks/results/generate.json` (rows of the same bundle, device and thread count are
replaced) and `benchmarks/results/generate.png` (wall seconds per stage, and streaming ready times
against the playback deadline).

    .venv/bin/python benchmarks/bench_generate.py --threads 2
    .venv/bin/python benchmarks/bench_generate.py --threads 2 --steps 5,10 --durations 10,30
    .venv/bin/python benchmarks/bench_generate.py --threads 2 --bpm 100   # also with a stated tempo (the tempo fit)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, chart_title, load_average, machine, merge_results, pyplot, save_chart  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
CHART = RESULTS.with_suffix(".png")
PROMPTS = ("an upbeat funk groove with slap bass and drums", "a calm ambient piece with soft pads")
TARGET_RTF = 0.2  # issue 6: 10 s of music in ≤ 2 s
TARGET_MEMORY_MB = 1024


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child_generate(args) -> list[dict]:
    import torch

    from melody.pipeline import MeLoDy

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = MeLoDy.from_pretrained(args.bundle)
    load_s = time.perf_counter() - start
    model.generate([PROMPTS[0]], 1.0, seed=1)  # warm-up: one-off allocations and kernel choices
    rows = []
    for steps in args.steps:
        for seconds in args.durations:
            out = model.generate([PROMPTS[0]], seconds, steps=steps, seed=0, bpm=args.bpm)
            wall = sum(out.seconds.values())
            rows.append({"seconds_of_music": seconds, "steps": steps, "bpm": args.bpm, "wall_s": round(wall, 3),
                         "rtf": round(wall / seconds, 4),
                         "stage_seconds": {k: round(v, 3) for k, v in out.seconds.items()},
                         "forward_passes": out.forward_passes, "load_s": round(load_s, 3),
                         # the process's first tempo fit also pays for importing the tracker (librosa)
                         "first_tempo_fit_in_process": args.bpm is not None and model.fits_tempo and not rows,
                         "tempo_fit": (out.tempo_fit or [None])[0]})
    for row in rows:
        row["peak_memory_mb"] = round(peak_memory_mb(), 1)  # the process's peak over all of its runs
    return rows


def child_stream(args) -> list[dict]:
    import torch

    from melody.eval.metrics import boundary_flux
    from melody.pipeline import MeLoDy

    torch.set_num_threads(args.threads)
    model = MeLoDy.from_pretrained(args.bundle)
    model.generate([PROMPTS[0]], 1.0, seed=1)
    rows = []
    for steps in args.steps:
        prompts = [PROMPTS[0] if k < args.chunks // 2 else PROMPTS[1] for k in range(args.chunks)]
        ready, chunks = [], []
        start = time.perf_counter()
        for chunk in model.stream(prompts, args.chunk_seconds, steps=steps, seed=0):
            ready.append(time.perf_counter() - start)
            chunks.append(chunk)
        margins = [ready[0] + k * args.chunk_seconds - ready[k] for k in range(1, len(ready))] or [float("inf")]
        audio = torch.cat(chunks, dim=-1).mean(0)
        rate = model.vae.cfg.sample_rate
        edges = [sum(c.shape[-1] for c in chunks[:k]) for k in range(1, len(chunks))]
        at_joins, inside = boundary_flux(audio, rate, edges)
        rows.append({"steps": steps, "chunk_seconds": args.chunk_seconds, "chunks": args.chunks,
                     "first_audio_s": round(ready[0], 3), "ready_s": [round(r, 3) for r in ready],
                     "keeps_ahead": min(margins) >= 0, "min_margin_s": round(min(margins), 3),
                     "flux_at_joins": round(at_joins, 4), "flux_inside": round(inside, 4),
                     "peak_memory_mb": round(peak_memory_mb(), 1)})
    return rows


def run_child(mode: str, args, bpm: float | None = None) -> list[dict]:
    command = [sys.executable, __file__, "--child", mode, "--bundle", str(args.bundle), "--threads", str(args.threads),
               "--steps", ",".join(map(str, args.steps)), "--durations", ",".join(map(str, args.durations)),
               "--chunks", str(args.chunks), "--chunk-seconds", str(args.chunk_seconds)]
    if bpm is not None:
        command += ["--bpm", str(bpm)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"the {mode} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def chart(device_rows: dict) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = device_rows["generate"]
    stages = list(dict.fromkeys(s for r in rows for s in r["stage_seconds"]))  # the tempo fit's rows add a stage
    labels = [f"{r['seconds_of_music']:g} s, {r['steps']} steps" + (f"\n{r['bpm']:g} BPM (tempo fit)" if r.get("bpm") else "")
              for r in rows]
    bottom = [0.0] * len(rows)
    for stage in stages:
        values = [r["stage_seconds"].get(stage, 0.0) for r in rows]
        left.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, r in enumerate(rows):
        left.plot([i - 0.4, i + 0.4], [TARGET_RTF * r["seconds_of_music"]] * 2, "k--", lw=1,
                  label="target (RTF 0.2)" if i == 0 else None)
    left.set_ylabel("wall seconds")
    left.set_title("generate: wall time per stage", fontsize=9)
    left.tick_params(axis="x", labelsize=7)
    for r in device_rows["stream"]:
        k = range(len(r["ready_s"]))
        right.plot(k, r["ready_s"], "o-", label=f"chunk ready, {r['steps']} steps")
        right.plot(k, [r["ready_s"][0] + i * r["chunk_seconds"] for i in k], "--", lw=1,
                   label=f"playback deadline ({r['steps']} steps)")
    right.set_xlabel("chunk")
    right.set_ylabel("seconds since the call")
    right.set_title(f"stream: {device_rows['stream'][0]['chunk_seconds']:g} s chunks", fontsize=9)
    left.legend(fontsize=7)
    fig.suptitle(chart_title("melody generate", rows), fontsize=8)
    save_chart(fig, right, CHART)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="DPD step counts (default: the bundle's own)")
    parser.add_argument("--durations", type=lambda s: [float(x) for x in s.split(",")], default=[10.0, 30.0])
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-seconds", type=float, default=2.0)
    parser.add_argument("--bpm", type=float, default=None,
                        help="also time each duration with this tempo stated (`--bpm`: for an LM without a beat clock "
                             "the tempo fit listens, and stretches where the music is off it; the first such call pays "
                             "for loading the tracker)")
    parser.add_argument("--child", choices=("generate", "stream"), default=None)
    args = parser.parse_args()
    if args.steps is None:
        from melody.config import load_config

        args.steps = [load_config(args.bundle / "dpd" / "config.json").dpd.steps]
    if args.child is not None:
        rows = child_generate(args) if args.child == "generate" else child_stream(args)
        print(json.dumps(rows))
        return
    if args.device != "cpu":
        sys.exit("bench_generate measures the CPU product path; GPU figures come from bench_dpd / bench_semantic_lm")
    load_start = load_average()
    # a stated tempo in a process of its own: each process's peak memory is then its configuration's alone
    generate = run_child("generate", args) + (run_child("generate", args, args.bpm) if args.bpm is not None else [])
    sections = {"generate": generate, "stream": run_child("stream", args)}
    for rows in sections.values():
        for r in rows:
            r["bundle"] = str(args.bundle)
    info = machine(args.device, args.threads, load_start)
    data = merge_results(RESULTS, sections, info, {"bundle": str(args.bundle), "threads": args.threads},
                         {"targets": {"rtf": TARGET_RTF, "peak_memory_mb": TARGET_MEMORY_MB}})
    mine = {name: [r for r in data[name] if r["bundle"] == str(args.bundle) and r["threads"] == args.threads]
            for name in sections}
    chart(mine)
    for r in sections["generate"]:
        fit = r["tempo_fit"]
        asked = "" if r["bpm"] is None else f" at {r['bpm']:g} BPM" + ("" if fit is None else (
            f" (tempo fit: heard {fit['heard_bpm']:g}, rate {fit['rate']:g}"
            + (", the process's first" if r["first_tempo_fit_in_process"] else "") + ")"))
        print(f"{r['seconds_of_music']:g} s at {r['steps']} steps{asked}: {r['wall_s']:.2f} s wall (RTF {r['rtf']:.3f}), "
              f"peak {r['peak_memory_mb']:.0f} MB; " + ", ".join(f"{k} {v:.2f} s/{r['forward_passes'].get(k, 0)} passes"
                                                           for k, v in r["stage_seconds"].items()))
    for r in sections["stream"]:
        print(f"stream {r['chunks']} × {r['chunk_seconds']:g} s at {r['steps']} steps: first audio {r['first_audio_s']:.2f} s, "
              f"{'keeps ahead' if r['keeps_ahead'] else 'falls behind'} (min margin {r['min_margin_s']:+.2f} s); "
              f"flux at joins {r['flux_at_joins']:.3f} vs inside {r['flux_inside']:.3f}")
    print(f"wrote {RESULTS} and {CHART}")


if __name__ == "__main__":
    main()
