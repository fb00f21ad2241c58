"""Speed of the dual-path diffusion network (DPD) and of its sampler, for `tiny` and `paper` shapes.

Random weights (speed does not depend on training). For each preset: `DPD.from_config(cfg)` in eval
mode, batch 1, `--seconds` of music (default 10): L = round(seconds × latent rate) frames of
`vae.latent_dim` channels (latent rate = sample rate / prod(vae.strides): 125 Hz tiny, 250 Hz
paper) and round(seconds × 25) random semantic tokens. Measured:
- `forward`: one conditional pass `model(x, delta = π/4, tokens)` under `torch.inference_mode()`,
  median of `--repeats` (tiny) or `--paper-repeats` (paper, default 1) after one warm-up.
- `sampling`: the whole `melody.diffusion.sample` with MeLoDy's step schedule (`melody_steps`) and
  the preset's guidance (2.5: the conditional and the unconditional branch in one call over a batch
  of 2 per step, `guided_in_one_call`, as the pipeline runs it), for each step count of `--steps`
  (default 5, 10, 20: the paper's Table 2), one timed call each (the forward timing is its
  warm-up). The model is wrapped in a call counter, so `forward_passes` is measured (T). Reported: wall seconds, passes per second of music, × real time, and samples/s
  (= 24 000 × seconds / wall, the unit of the paper's Table 2, which gives 1472 / 893 / 498 Hz on a
  CPU for 5 / 10 / 20 steps; those are stored as `paper_table2_cpu_hz`, but they time the paper's
  *whole pipeline* (semantic LM, DPD sampling, VAE decoder) on an unnamed CPU, so the paper's DPD
  alone was at least that fast: a lower bound on its speed, not a like-for-like figure).
The paper shape (314 M parameters over 2500 frames, with the SRU's Python loop) takes ~17 s per
pass on one thread here (the 5-step row alone is ~3 min), so only the step counts of
`--paper-steps` (default 5) are measured for it; the others are *estimated* as T × the per-pass
time of the largest measured run (`estimated: true`, hollow markers in the chart). Give
`--paper-steps 5,10,20` to measure them all. The load average is recorded before and after: these
figures are only as good as the machine was idle.
Writes `benchmarks/results/dpd.json` (rows of the same device and thread count are replaced) and a
chart of the device's rows, `benchmarks/results/dpd.png`: wall seconds per 10 s of music vs steps.

    .venv/bin/python benchmarks/bench_dpd.py --threads 1
    .venv/bin/python benchmarks/bench_dpd.py --threads 1 --paper-steps 5,10,20
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (add_device_args, chart_title, clock, load_average, machine, merge_results, pyplot,  # noqa: E402
                    save_chart, timed)
from melody.config import preset  # noqa: E402
from melody.diffusion import angles_from_steps, guided_in_one_call, melody_steps, sample  # noqa: E402
from melody.dpd import DPD  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dpd.json"
CHART = RESULTS.with_suffix(".png")
TOKEN_RATE = 25  # semantic tokens per second (the tokenizer's frame rate)
SAMPLE_RATE = 24_000  # the unit of the paper's Table 2: generated audio samples per wall second
PAPER_TABLE2_CPU_HZ = {"5": 1472, "10": 893, "20": 498}
PAPER_TABLE2_NOTE = ("MeLoDy paper, Table 2, CPU sampling speed in audio samples per second for 5 / 10 / 20 DPD "
                     "steps: the whole pipeline (semantic LM, DPD sampling, VAE decoder) on an unnamed CPU, not "
                     "the DPD alone: the paper's DPD was at least this fast (a lower bound on its speed), so "
                     "`samples_per_s` of the sampling rows compares with it only loosely")


class Counted:
    """The model behind a call counter: `sample` sees the same `model(x, delta, cond)`."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls = model, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def build(name: str, device: str, seconds: float):
    cfg = preset(name)
    torch.manual_seed(0)
    model = DPD.from_config(cfg).to(device).eval()
    rate = cfg.vae.sample_rate / math.prod(cfg.vae.strides)
    frames = round(seconds * rate)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, frames, cfg.vae.latent_dim, generator=gen).to(device)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (1, round(seconds * TOKEN_RATE)), generator=gen).to(device)
    return cfg, model, rate, x, tokens


@torch.inference_mode()
def bench(name: str, device: str, seconds: float, repeats: int, steps: list[int], measured: list[int]):
    """(forward row, sampling rows) of one preset; step counts not in `measured` are estimated."""
    cfg, model, rate, x, tokens = build(name, device, seconds)
    params = model.num_parameters()
    common = {"preset": name, "device": device, "params": params, "batch": 1, "music_seconds": seconds,
              "latent_rate_hz": rate, "latent_frames": x.shape[1], "latent_dim": x.shape[2],
              "semantic_tokens": tokens.shape[1], "recurrence": cfg.dpd.recurrence}
    delta = torch.full(x.shape[:2], math.pi / 4, device=device)
    per_pass = timed(lambda: model(x, delta, tokens), repeats, device)
    forward = {**common, "repeats": repeats, "forward_s": round(per_pass, 4),
               "frames_per_s": round(x.shape[1] / per_pass, 1)}

    guidance = cfg.dpd.guidance
    rows = {}
    for t in sorted(s for s in steps if s in measured):
        counted = Counted(model)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
        deltas = angles_from_steps(melody_steps(t))
        _, wall = clock(lambda: sample(guided_in_one_call(counted, guidance), noise, deltas, tokens), device)
        expected = t
        if counted.calls != expected:
            raise RuntimeError(f"{name}, {t} steps: {counted.calls} forward passes, expected {expected}")
        rows[t] = {"estimated": False, "forward_passes": counted.calls, "wall_s": wall}
    if len(rows) < len(steps):
        if not rows:
            raise SystemExit(f"{name}: measure at least one step count to estimate the others from")
        basis = max(rows)
        per_call = rows[basis]["wall_s"] / rows[basis]["forward_passes"]
        for t in steps:
            if t not in rows:
                passes = t
                rows[t] = {"estimated": True, "estimated_from": f"{basis}-step run: {per_call:.3f} s per pass × {passes}",
                           "forward_passes": passes, "wall_s": per_call * passes}
    sampling = []
    for t in steps:
        r = rows[t]
        wall = r.pop("wall_s")
        sampling.append({**common, "steps": t, "schedule": "melody", "guidance": guidance, **r,
                         "wall_s": round(wall, 3),
                         "passes_per_music_second": round(r["forward_passes"] / seconds, 2),
                         "x_realtime": round(seconds / wall, 3),
                         "samples_per_s": round(SAMPLE_RATE * seconds / wall, 1),
                         "seconds_per_10s_music": round(wall * 10.0 / seconds, 3)})
    return forward, sampling


def chart(runs: list[dict], device: str) -> None:
    """Wall seconds per 10 s of music vs steps for every run of `device` in the JSON: one line per (preset, threads)."""
    plt = pyplot()
    rows = [r for r in runs if r["device"] == device]
    series = list(dict.fromkeys((r["preset"], r["threads"]) for r in rows))
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for (p, threads) in series:
        line = sorted((r for r in rows if r["preset"] == p and r["threads"] == threads), key=lambda r: r["steps"])
        label = (f"{p} ({line[0]['params'] / 1e6:.1f} M, {line[0]['recurrence'].upper()}), "
                 f"{threads} thread{'s' if threads > 1 else ''}")
        (drawn,) = ax.plot([r["steps"] for r in line], [r["seconds_per_10s_music"] for r in line], "-", label=label)
        for r in line:
            ax.plot(r["steps"], r["seconds_per_10s_music"], "o", color=drawn.get_color(),
                    markerfacecolor="white" if r["estimated"] else drawn.get_color())
            ax.annotate(f"{r['seconds_per_10s_music']:.3g}", (r["steps"], r["seconds_per_10s_music"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    steps = sorted(int(s) for s in PAPER_TABLE2_CPU_HZ)
    ax.plot(steps, [SAMPLE_RATE * 10 / PAPER_TABLE2_CPU_HZ[str(s)] for s in steps], "k--", linewidth=0.8,
            label="paper Table 2, CPU, whole pipeline")
    ax.plot([], [], "o", color="gray", label="measured")
    ax.plot([], [], "o", color="gray", markerfacecolor="white", label="estimated (T × per-pass time)")
    ax.set_yscale("log")
    all_steps = sorted({r["steps"] for r in rows} | set(steps))
    ax.set_xticks(all_steps)
    ax.set_xlabel("sampling steps T (T batched network calls with guidance)")
    ax.set_ylabel("wall seconds per 10 s of music (log)")
    ax.set_title(chart_title(f"DPD sampling, batch 1, guidance {rows[0]['guidance']:g}, random weights", rows), fontsize=8)
    save_chart(fig, ax, CHART)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", default="5,10,20", help="sampling step counts (comma-separated)")
    parser.add_argument("--paper-steps", default="5", help="step counts measured for the paper shape; others estimated")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes of tiny (median)")
    parser.add_argument("--paper-repeats", type=int, default=1, help="timed forward passes of paper (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    measured = {"tiny": steps, "paper": [int(s) for s in args.paper_steps.split(",")]}
    repeats = {"tiny": args.repeats, "paper": args.paper_repeats}
    load_start = load_average()
    forward, rows = [], []
    for name in ("tiny", "paper"):
        f, s = bench(name, args.device, args.seconds, repeats[name], steps, measured[name])
        forward.append(f)
        rows += s
    host = machine(args.device, args.threads, load_start)
    for row in forward:
        print(f"{row['preset']:>5} on {row['device']}: {row['params'] / 1e6:.1f} M parameters, one pass over "
              f"{row['latent_frames']} frames ({row['music_seconds']:g} s) {row['forward_s']} s")
    for row in rows:
        paper = PAPER_TABLE2_CPU_HZ.get(str(row["steps"]))
        print(f"{row['preset']:>5} on {row['device']}, {row['steps']:>2} steps{' (estimated)' if row['estimated'] else ''}: "
              f"wall {row['wall_s']} s, {row['forward_passes']} passes ({row['passes_per_music_second']}/s of music), "
              f"{row['x_realtime']}× real time, {row['samples_per_s']} samples/s"
              + (f" (paper Table 2, whole pipeline: {paper})" if paper else ""))
    print(f"load average {host['load_avg_start']} at start, {host['load_avg_end']} at end")
    data = merge_results(RESULTS, {"forward": forward, "sampling": rows}, host,
                         {"device": args.device, "threads": args.threads},
                         {"paper_table2_cpu_hz": PAPER_TABLE2_CPU_HZ, "paper_table2_note": PAPER_TABLE2_NOTE})
    chart(data["sampling"], args.device)
    print(f"wrote {RESULTS} and {CHART}")


if __name__ == "__main__":
    main()
