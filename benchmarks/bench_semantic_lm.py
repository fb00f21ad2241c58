"""Generation speed of the semantic LM, in tokens/s and × real time, for `tiny` and `paper` shapes.

Random weights (speed does not depend on training). For each preset: `melody.semantic.sampling.
generate` with a KV cache and the preset's sliding window (250 tokens, slide 125 at 25 Hz), batch 1,
temperature 1, the preset's top-k, random MuLan tokens, seeded; once without guidance (w = 1, the
conditional branch alone) and once with classifier-free guidance w = 3.0 (the paper gives no scale
for the LM; 3.0 is the lineage's `semantic_lm.guidance`, MusicGen's value), which runs the
conditional and unconditional branches as one batch of 2. One warm-up call of a few tokens per
preset, then one timed call per row (wall time of the whole call, sampling included).
Default lengths: tiny 500 tokens (20 s of music, so two window slides with their re-encoding
passes are included), paper 60 tokens (2.4 s of music: the 318 M-parameter shape is slow on a
few CPU cores). `est_seconds_per_10s_music` = 250 tokens / tokens/s is *extrapolated* from that
rate; for the paper rows it ignores the first window's prefill share and the slightly dearer
attention deeper into a window. Also `prefill`: one forward pass over a full window (condition,
BOS and 250 tokens) without a cache, batch 1, median of `--repeats` after one warm-up. The load
average is recorded before and after: these figures are only as good as the machine was idle.
Writes `benchmarks/results/semantic_lm.json` (rows of the same device and thread count are
replaced) and a bar chart of the device's rows there, `benchmarks/results/semantic_lm.png`.
On a CPU shared with other jobs, more threads can be far slower than one (OpenMP threads waiting
on each other for busy cores), so run `--threads 1` as well and compare.

    .venv/bin/python benchmarks/bench_semantic_lm.py --threads 2
    .venv/bin/python benchmarks/bench_semantic_lm.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (add_device_args, chart_title, clock, load_average, machine, merge_results, pyplot,  # noqa: E402
                    save_chart, sync, timed)

from melody.config import preset  # noqa: E402
from melody.semantic.lm import SemanticLM, window_and_stride  # noqa: E402
from melody.semantic.sampling import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "semantic_lm.json"
CHART = RESULTS.with_suffix(".png")
GUIDANCE = 3.0  # the CFG scale of the guided rows (see the docstring)
WARMUP_TOKENS = 4


def build(name: str, device: str):
    cfg = preset(name)
    lm = SemanticLM.from_config(cfg).to(device).eval()
    mulan = torch.randint(0, cfg.mulan.codebook_size, (1, cfg.mulan.rvq_levels),
                          generator=torch.Generator().manual_seed(0)).to(device)
    return cfg, lm, mulan


@torch.inference_mode()
def bench_generate(name: str, device: str, n_tokens: int) -> list[dict]:
    cfg, lm, mulan = build(name, device)
    window, stride = window_and_stride(cfg.semantic_lm, cfg.tokenizer.frame_rate)
    rate = cfg.tokenizer.frame_rate

    def run(n: int, guidance: float):
        return generate(lm, mulan, n, temperature=1.0, top_k=cfg.semantic_lm.top_k, guidance=guidance,
                        generator=torch.Generator(device=device).manual_seed(0), window=window, stride=stride)

    run(WARMUP_TOKENS, GUIDANCE)
    sync(device)
    rows = []
    for guidance in (1.0, GUIDANCE):
        result, wall = clock(lambda: run(n_tokens, guidance), device)
        music = n_tokens / rate
        tokens_per_s = n_tokens / wall
        rows.append({
            "preset": name, "device": device, "params": lm.num_parameters(), "batch": 1, "guidance": guidance,
            "top_k": cfg.semantic_lm.top_k, "window": window, "stride": stride, "frame_rate_hz": rate,
            "n_tokens": n_tokens, "music_seconds": music, "generated_shape": list(result.tokens.shape),
            "wall_s": round(wall, 3), "tokens_per_s": round(tokens_per_s, 2),
            "forward_passes": result.forward_passes, "windows": result.windows, "positions": result.positions,
            "passes_per_music_second": round(result.forward_passes / music, 2),
            "x_realtime": round(music / wall, 3),
            "est_seconds_per_10s_music": round(10.0 * rate / tokens_per_s, 2),
        })
    return rows


@torch.inference_mode()
def bench_prefill(name: str, device: str, repeats: int) -> dict:
    cfg, lm, mulan = build(name, device)
    window, _ = window_and_stride(cfg.semantic_lm, cfg.tokenizer.frame_rate)
    semantic = torch.randint(0, cfg.tokenizer.codebook_size, (1, window),
                             generator=torch.Generator().manual_seed(0)).to(device)
    median = timed(lambda: lm(mulan, semantic), repeats, device)
    return {"preset": name, "device": device, "params": lm.num_parameters(), "batch": 1, "window_tokens": window,
            "stream_positions": lm.mulan_levels + 1 + window, "repeats": repeats, "prefill_s": round(median, 4),
            "prefill_positions_per_s": round((lm.mulan_levels + 1 + window) / median, 1)}


def chart(runs: list[dict], device: str) -> None:
    """Tokens/s of every run of `device` in the JSON: presets on x, one bar per (guidance, threads)."""
    plt = pyplot()
    rows = [r for r in runs if r["device"] == device]
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    series = sorted({(r["guidance"], r["threads"]) for r in rows}, key=lambda s: (s[1], s[0]))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for j, (g, threads) in enumerate(series):
        xs, ys = [], []
        for i, p in enumerate(presets):
            row = next((r for r in rows if r["preset"] == p and r["guidance"] == g and r["threads"] == threads), None)
            if row is not None:
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                ys.append(row["tokens_per_s"])
        what = "no CFG" if g == 1.0 else f"CFG w = {g:g} (batch 2)"
        bars = ax.bar(xs, ys, width, label=f"{what}, {threads} thread{'s' if threads > 1 else ''}")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    rate = rows[0]["frame_rate_hz"]
    ax.axhline(rate, color="k", linestyle="--", linewidth=0.8, label=f"real time ({rate} tokens/s)")
    ax.set_yscale("log")
    ax.set_xticks(range(len(presets)), [f"{p}\n{next(r['params'] for r in rows if r['preset'] == p) / 1e6:.1f} M"
                                        for p in presets])
    ax.set_ylabel("semantic tokens / s (log)")
    ax.set_title(chart_title("Semantic LM generation, batch 1, random weights", rows), fontsize=8)
    save_chart(fig, ax, CHART)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--tokens-tiny", type=int, default=500)
    parser.add_argument("--tokens-paper", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="timed prefill passes (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    tokens = {"tiny": args.tokens_tiny, "paper": args.tokens_paper}
    rows = [row for name in ("tiny", "paper") for row in bench_generate(name, args.device, tokens[name])]
    prefill = [bench_prefill(name, args.device, args.repeats) for name in ("tiny", "paper")]
    host = machine(args.device, args.threads, load_start)
    for row in rows:
        print(f"{row['preset']:>5} on {row['device']}, guidance {row['guidance']:g}: {row['tokens_per_s']} tokens/s, "
              f"{row['x_realtime']}× real time, {row['forward_passes']} passes for {row['n_tokens']} tokens "
              f"({row['passes_per_music_second']}/s of music, {row['windows']} windows), wall {row['wall_s']} s, "
              f"10 s of music ≈ {row['est_seconds_per_10s_music']} s")
    for row in prefill:
        print(f"{row['preset']:>5} on {row['device']}: prefill of a {row['window_tokens']}-token window "
              f"{row['prefill_s']} s")
    print(f"load average {host['load_avg_start']} at start, {host['load_avg_end']} at end")
    data = merge_results(RESULTS, {"runs": rows, "prefill": prefill}, host, {"device": args.device, "threads": args.threads})
    chart(data["runs"], args.device)
    print(f"wrote {RESULTS} and {CHART}")


if __name__ == "__main__":
    main()
