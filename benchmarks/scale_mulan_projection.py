"""A copy of a bundle whose DPD hears the MuLan condition k times louder: `mulan_projection` (weight and bias) × k.

The projection started at zero and its weights grew slowly in training (norm 1.32 at step 2 000, 1.62 at 7 000), so
one can ask whether the DPD under-uses the caption. Judge the copy with `melody eval music COPY --data ...` beside the
bundle (docs/dpd.md, "The MuLan condition").

    python benchmarks/scale_mulan_projection.py melody/bundled /tmp/bundle-x2 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from melody.checkpoint import read_tensors, write_tensors  # noqa: E402

PROJECTION = ("mulan_projection.weight", "mulan_projection.bias")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("scale", type=float)
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; give a new folder")
    weights = args.bundle / "dpd" / "dpd.safetensors"
    tensors, metadata = read_tensors(weights, "bundled DPD")
    if not all(name in tensors for name in PROJECTION):
        sys.exit(f"{weights} has no MuLan condition (dpd.mulan_condition is off); nothing to scale")
    shutil.copytree(args.bundle, args.out)
    for name in PROJECTION:
        tensors[name] = tensors[name] * args.scale
    write_tensors(args.out / "dpd" / "dpd.safetensors", tensors, metadata)
    print(f"wrote {args.out}: mulan_projection × {args.scale:g} "
          f"(weight norm {float(tensors[PROJECTION[0]].norm()):.3f})")


if __name__ == "__main__":
    main()
