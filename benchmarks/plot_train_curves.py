"""The per-stage loss curves of `melody train all` (`melody.train.curves.plot_stages`) from run folders
trained one by one, e.g. the runs that made the bundled `tiny` model (docs/img/train_all_curves.png):

    .venv/bin/python benchmarks/plot_train_curves.py --vae ../runs/vae-tiny --mulan runs/mulan-tiny \\
        --tokenizer runs/tokenizer-tiny --semantic runs/semantic-tiny --dpd training/dpd-tiny \\
        --out docs/img/train_all_curves.png

A stage left out gets no column; a run without metrics yet an empty one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melody.train.curves import plot_stages  # noqa: E402
from melody.train.recipes import STAGES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for plan in STAGES:
        parser.add_argument(f"--{plan.name}", type=Path, help=f"the {plan.name} run folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args()
    runs = {plan.model: getattr(args, plan.name) / "metrics.jsonl" for plan in STAGES if getattr(args, plan.name)}
    print(plot_stages(runs, args.out, args.title))


if __name__ == "__main__":
    main()
