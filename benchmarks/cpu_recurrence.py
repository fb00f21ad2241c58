"""The fine path of one `paper` DPD block on a CPU at bf16 (as `melody generate --precision bf16` samples it: bf16
linear weights under autocast; batch 2 for guidance, 10 s of latents: 160 segments of 64 frames, hidden 768; a pass
runs 8 of these), the bidirectional 2-layer SRU two ways, alternated in one process since this machine's speed drifts
between runs:

- `concatenated` (the recurrence before 2026-11-27): each direction's W x casts the float32 input again, the first
  layer's float32 input sends both its directions down the float32 vectorised path, and the two directions' outputs
  are concatenated for the merge;
- `in place` (`BiRecurrence` now): the input cast once, both directions down the half-width frame loop, each writing
  its half of the merge's input.

Writes benchmarks/results/cpu-dpd/recurrence.json.

    .venv/bin/python benchmarks/cpu_recurrence.py --rounds 10 --threads 2
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
from melody.config import DPDConfig  # noqa: E402
from melody.dpd import BiRecurrence  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import at_precision, linears_in  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-dpd" / "recurrence.json"


def concatenated(self: BiRecurrence, x: torch.Tensor) -> torch.Tensor:
    """The former `BiRecurrence.forward` of the SRU."""
    for fwd, bwd, merge in zip(self.forward_layers, self.backward_layers, self.merge, strict=True):
        x = merge(torch.cat((fwd(x), bwd(x, reverse=True)), dim=-1))
    return x


def main() -> None:
    args, load_start = alternated_run(__doc__, 10, RESULTS)
    torch.manual_seed(0)
    paper = DPDConfig()
    recurrence = BiRecurrence(paper.hidden, paper.sru_layers, "sru")
    with torch.no_grad():
        for unit in (*recurrence.forward_layers, *recurrence.backward_layers):
            unit.v.normal_(0, 0.5)
            unit.b.normal_(0, 0.5)
    network = at_precision(linears_in(recurrence, torch.bfloat16).eval(), "bf16", torch.device("cpu"))
    x = torch.randn(160, paper.segment_size, paper.hidden)  # float32, as the block's norm hands it over
    ways = {"concatenated": concatenated, "in place": BiRecurrence.forward}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    outputs = {}
    with torch.no_grad():
        network(x[:8])  # warm-up
        for _ in range(args.rounds):
            for name, forward in ways.items():
                BiRecurrence.forward = forward
                start = time.perf_counter()
                outputs[name] = network(x)
                seconds[name].append(time.perf_counter() - start)
    BiRecurrence.forward = ways["in place"]
    a, b = outputs["concatenated"], outputs["in place"]
    data = {"call": "paper DPD block's fine path: 2 bidirectional SRU layers on 160 x 64 x 768, bf16 weights under autocast",
            "seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
            "median_s": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
            "output_max_abs_diff": float((a - b).abs().max()), "output_rms": float(a.pow(2).mean().sqrt()),
            **machine("cpu", args.threads, load_start)}
    write_json_atomic(args.out, data)
    medians = ", ".join(f"{name} {value:.2f} s" for name, value in data["median_s"].items())
    print(f"one block's recurrence: {medians} (medians of {args.rounds}); outputs differ by at most "
          f"{data['output_max_abs_diff']:.3g} (rms {data['output_rms']:.3g}); wrote {args.out}")


if __name__ == "__main__":
    main()
