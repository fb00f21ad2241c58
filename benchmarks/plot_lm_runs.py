"""Semantic LM runs side by side: training loss, held-out perplexity with the caption's tokens, and the tempo-stretch
check (held-out clips played at 0.8× and 1.25×, their tempo token moved with them, `told`, or left as it was,
`stale`): docs/img/semantic_lm_tempo_stretch.png from the runs in training/semantic-lm-gpu/.
With `--first-second` the third panel is instead the held-out clips' first second, where only the condition informs
the LM: perplexity with the caption's MuLan tokens and with the null condition (docs/img/semantic_lm_condition.png).

    .venv/bin/python benchmarks/plot_lm_runs.py training/semantic-lm-gpu/w0 training/semantic-lm-gpu/w0s \\
        training/semantic-lm-gpu/w025s --out docs/img/semantic_lm_tempo_stretch.png
    .venv/bin/python benchmarks/plot_lm_runs.py training/semantic-lm-condition/table \\
        training/semantic-lm-condition/codebook --first-second --out docs/img/semantic_lm_condition.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melody.train.curves import read_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (each with metrics.jsonl); the folder name labels it")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--first-second", action="store_true",
                        help="third panel: held-out first second, caption's condition against the null one")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, run in enumerate(args.runs):
        metrics, colour = read_metrics(run / "metrics.jsonl"), f"C{i}"
        steps, loss = metrics["semantic_lm/total"]
        axes[0].plot(steps, loss, color=colour, alpha=0.8, label=run.name)
        axes[1].plot(*metrics["valid/ppl_text"], "o-", color=colour, label=run.name)
        if args.first_second:
            axes[2].plot(*metrics["valid/ppl_first_second_text"], "o-", color=colour, label=f"{run.name}: caption")
            axes[2].plot(*metrics["valid/ppl_first_second_null"], "x--", color=colour, label=f"{run.name}: null condition")
        elif "valid/ppl_stretched_told" in metrics:
            axes[2].plot(*metrics["valid/ppl_stretched_told"], "o-", color=colour, label=f"{run.name}: tempo moved")
            axes[2].plot(*metrics["valid/ppl_stretched_stale"], "x--", color=colour, label=f"{run.name}: tempo stale")
    titles = ("training loss (nats per token)", "held-out perplexity, caption's MuLan tokens",
              "held-out clips' first second: perplexity" if args.first_second
              else "held-out clips at 0.8× and 1.25×: perplexity")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
