"""What a wider DPD costs a pass: the bundled DPD's shape at other hidden widths (docs/dpd.md, "A wider DPD").

Random weights (speed does not depend on training). Each width builds `DPD` from the bundled `dpd/config.json` with
only `dpd.hidden` changed, in eval mode, and times one guided pass as the sampler runs it: batch 2 (conditional and
unconditional rows) over `--seconds` of latents at the bundle's latent rate, with its semantic tokens. Median of
`--repeats` passes after one warm-up. Writes `benchmarks/results/dpd_width.json`.

    .venv/bin/python benchmarks/dpd_width.py --threads 2
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from common import load_average, machine, timed  # noqa: E402

from melody.bundled import BUNDLE  # noqa: E402
from melody.config import load_config  # noqa: E402
from melody.dpd import DPD  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="128,160,192")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dpd_width.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = load_average()
    cfg = load_config(BUNDLE / "dpd" / "config.json")
    frames = round(args.seconds * cfg.vae.sample_rate / math.prod(cfg.vae.strides))
    tokens = round(args.seconds * cfg.tokenizer.frame_rate)
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        cfg.dpd.hidden = width
        model = DPD.from_config(cfg).eval()
        torch.manual_seed(0)
        x, delta = torch.randn(2, frames, cfg.vae.latent_dim), torch.rand(2, frames)
        condition = model.condition_of(torch.randint(0, cfg.tokenizer.codebook_size, (2, tokens)),
                                       torch.zeros(2, model.mulan_levels, dtype=torch.long))
        with torch.inference_mode():
            seconds = timed(lambda: model(x, delta, condition), args.repeats, "cpu")
        rows.append({"hidden": width, "parameters": model.num_parameters(), "pass_ms": round(1000 * seconds, 1)})
        print(rows[-1])
    write_json_atomic(args.out, {"seconds_of_music": args.seconds, "batch": 2, "rows": rows,
                                 **machine("cpu", args.threads, load)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
