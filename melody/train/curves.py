"""Training curves from a run's `metrics.jsonl`: one panel per loss, smoothed, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from melody.data.plots import save_figure


def read_metrics(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{key: (steps, values)}`; a step logged twice (a resumed run) keeps its last value."""
    by_step: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            by_step[int(row.pop("step"))] = row
    keys = sorted({k for row in by_step.values() for k in row})
    out = {}
    for key in keys:
        steps = np.array([s for s in sorted(by_step) if key in by_step[s]])
        out[key] = (steps, np.array([by_step[s][key] for s in steps], dtype=np.float64))
    return out


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """TensorBoard's exponential moving average with debiasing."""
    out, acc = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def plot_curves(metrics: str | Path, path: str | Path, title: str = "") -> Path:
    """Every `*/loss` and `*/total` key of a run as its own panel (raw faint, smoothed bold), then every
    held-out `valid/*` figure the stage logged (points: they come every `train.sample_every` steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = read_metrics(metrics)
    data = {k: v for k, v in everything.items() if k.endswith("/loss") or k.endswith("/total")}
    data |= {k: v for k, v in everything.items() if k.startswith("valid/")}
    cols = max(1, min(3, len(data)))
    rows = max(1, -(-len(data) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, data.items(), strict=False):
        if key.startswith("valid/"):
            ax.plot(steps, values, color="tab:orange", marker="o", markersize=3, linewidth=1.2)
        else:
            ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(values), color="tab:blue", linewidth=1.6)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if values.size and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)
