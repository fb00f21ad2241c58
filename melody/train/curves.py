"""Training curves from a run's `metrics.jsonl`: one panel per loss, smoothed, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from melody.data.plots import save_figure


def read_metrics(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{key: (steps, values)}`. A step logged again (a resumed run) keeps the last row, whole; the held-out
    figures a stage logs at a training step (a row with other keys) join that step's training scalars."""
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
            step = int(row.pop("step"))
            before = by_step.get(step)
            by_step[step] = {**before, **row} if before is not None and not before.keys() & row.keys() else row
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
        _draw(ax, key, steps, values)
        ax.set_title(key, fontsize=9)
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)


# Per stage (the engine's stage name): its training loss, the figure that says it learns, and the
# floor or reference that figure is read against (dashed; None where the stage logs none).
WATCH: dict[str, tuple[str, str, str | None]] = {
    "vae": ("vae/total", "mel/loss", None),
    "mulan": ("mulan/total", "valid/t2a_R@10", None),
    "tokenizer": ("tokenizer/total", "valid/masked_acc", "valid/majority_acc"),
    "semantic_lm": ("semantic_lm/total", "valid/ppl", None),
    "dpd": ("dpd/total", "valid/mel_distance", "valid/mel_distance_vae"),
}


def plot_stages(metrics: dict[str, str | Path], path: str | Path, title: str = "") -> Path:
    """One column per stage (`metrics[stage]`: its run's `metrics.jsonl`, in `WATCH`'s order): the training
    loss on top, the figure to watch below it, each with its last (smoothed) value. A stage without metrics
    yet gets an empty column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in WATCH if s in metrics]
    fig, axes = plt.subplots(2, len(stages), figsize=(3.6 * len(stages), 5.4), squeeze=False)
    for col, stage in enumerate(stages):
        found = read_metrics(metrics[stage]) if Path(metrics[stage]).is_file() else {}
        for row, key in enumerate(WATCH[stage][:2]):
            ax = axes[row][col]
            ax.set_title(f"{stage}: {key}" if row else f"{stage}: training loss ({key})", fontsize=9)
            if key not in found:
                ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            steps, values = found[key]
            last = _draw(ax, key, steps, values)
            floor = WATCH[stage][2]
            text = f"step · last {last:.3g}"
            if row and floor in found:
                ax.plot(*found[floor], color="0.4", linestyle="--", linewidth=1.0)
                text += f" · dashed: {floor.split('/')[-1]} {found[floor][1][-1]:.3g}"
            ax.set_xlabel(text, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)


def _draw(ax, key: str, steps: np.ndarray, values: np.ndarray) -> float:
    """One logged key on `ax`: held-out figures as points, training scalars raw (faint) and smoothed; its last
    (smoothed) value."""
    if key.startswith("valid/"):
        ax.plot(steps, values, color="tab:orange", marker="o", markersize=3, linewidth=1.2)
        last = values[-1] if values.size else float("nan")
    else:
        smoothed = smooth(values)
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(steps, smoothed, color="tab:blue", linewidth=1.6)
        last = smoothed[-1] if values.size else float("nan")
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, not 10⁻¹
        ax.yaxis.set_minor_formatter(NullFormatter())
    return float(last)
