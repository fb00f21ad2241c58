"""The semantic LM's bf16 copy decoding on a CPU (`semantic_lm.precision=bf16`), its linear layers two ways, alternated
in one process since this machine's speed drifts between runs: torch's `linear` (x Wᵀ) and `FewRowLinear`
((W xᵀ)ᵀ for a token step's few rows, `melody.runtime`). At `paper` shapes (random weights, 1024 × 24, guidance 3:
2 rows a step) and on the bundled LM. Writes benchmarks/results/cpu-lm-decode/decode.json.

    .venv/bin/python benchmarks/cpu_lm_decode.py --rounds 8 --tokens 40 --threads 2
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternated_run, machine  # noqa: E402
from melody.config import MelodyConfig  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402
from melody.runtime import few_row_linears  # noqa: E402
from melody.semantic.lm import SemanticLM  # noqa: E402
from melody.semantic.sampling import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-lm-decode" / "decode.json"


def main() -> None:
    args, load_start = alternated_run(__doc__, 8, RESULTS, lambda p: p.add_argument("--tokens", type=int, default=40))
    torch.manual_seed(0)
    bundled = MeLoDy.from_pretrained(Path(__file__).resolve().parents[1] / "melody" / "bundled").semantic_lm
    lms = {"paper": SemanticLM.from_config(MelodyConfig()), "bundled": bundled}
    data: dict = {"tokens": args.tokens, "rounds": args.rounds, "lms": {}}
    with torch.no_grad():
        for name, lm in lms.items():
            plain = copy.deepcopy(lm).to(torch.bfloat16).eval()
            ways = {"linear": plain, "few-row": few_row_linears(copy.deepcopy(plain))}
            assert not any(type(m) is nn.Linear for m in ways["few-row"].modules())
            condition = torch.randint(0, lm.mulan_codebook_size, (1, lm.mulan_levels))
            seconds: dict[str, list[float]] = {way: [] for way in ways}
            tokens = {}
            for _ in range(args.rounds + 1):  # the first round warms up, untimed
                for way, net in ways.items():
                    start = time.perf_counter()
                    tokens[way] = generate(net, condition, args.tokens, guidance=3.0,
                                           generator=torch.Generator().manual_seed(0)).tokens
                    seconds[way].append(time.perf_counter() - start)
            ms = {way: [round(1e3 * s / args.tokens, 2) for s in v[1:]] for way, v in seconds.items()}
            data["lms"][name] = {"ms_per_token": ms, "median_ms_per_token": {w: statistics.median(v) for w, v in ms.items()},
                                 "same_tokens": bool(torch.equal(tokens["linear"], tokens["few-row"])),
                                 "parameters": sum(p.numel() for p in lm.parameters())}
            print(name, data["lms"][name]["median_ms_per_token"], "same tokens:", data["lms"][name]["same_tokens"], flush=True)
    write_json_atomic(args.out, {**data, **machine("cpu", args.threads, load_start)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
