"""The semantic LM's token loop on a CPU, four ways: the past concatenated afresh at every token (`torch.cat` per
layer, the cache before 2026-11-27), the buffered cache (`KVCache`: each step written in place into room to spare),
the fixed-size `StaticKVCache` that CUDA graphs use (run eagerly), and the buffered cache on the LM's bf16 copy
(`semantic_lm.precision=bf16`). The bundled LM writes 10 s of tokens (250, guidance 3) each way, alternated in one
process, since this machine's speed drifts between runs; the fp32 ways must give the same tokens.
Writes benchmarks/results/cpu-kv-cache/kv_cache.json.

    .venv/bin/python benchmarks/cpu_kv_cache.py --rounds 4 --threads 2
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
from melody.io import write_json_atomic  # noqa: E402
from melody.modules import transformer  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402
from melody.semantic.sampling import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-kv-cache" / "kv_cache.json"


def concatenating_extend(cache: transformer.KVCache, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None):
    """The former `KVCache.extend`: the whole past copied into a new tensor at every call (no key padding here)."""
    t_new = keys.shape[2]
    if cache.keys is not None:
        keys = torch.cat((cache.keys, keys), dim=2)
        values = torch.cat((cache.values, values), dim=2)
    cache.keys, cache.values = keys, values
    cache.offset += t_new
    return keys, values, keep


def main() -> None:
    args, load_start = alternated_run(__doc__, 4, RESULTS)
    model = MeLoDy.from_pretrained(Path(__file__).resolve().parents[1] / "melody" / "bundled")
    lm = model.semantic_lm.eval()
    model.set_precision("bf16")
    lm_bf16 = model.lm_at_precision().eval()
    condition, tempo = torch.randint(0, lm.mulan_codebook_size, (1, lm.mulan_levels)), torch.tensor([10])
    buffered = transformer.KVCache.extend
    # name: (the cache's extend, the LM, the static cache)
    ways = {"concatenated": (concatenating_extend, lm, False), "buffered": (buffered, lm, False),
            "static": (buffered, lm, True), "buffered, bf16 weights": (buffered, lm_bf16, False)}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    tokens = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, (extend, net, static) in ways.items():
                transformer.KVCache.extend = extend
                start = time.perf_counter()
                out = generate(net, condition, 250, guidance=3.0, generator=torch.Generator().manual_seed(0), tempo=tempo,
                               graphs=static)
                seconds[name].append(time.perf_counter() - start)
                tokens[name] = out.tokens
    transformer.KVCache.extend = buffered
    same = all(torch.equal(tokens["buffered"], tokens[name]) for name in ("concatenated", "static"))
    data = {"tokens": 250, "same_tokens": same, "seconds": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
            "median_s": {k: round(statistics.median(v), 4) for k, v in seconds.items()},
            **machine("cpu", args.threads, load_start)}
    write_json_atomic(args.out, data)
    medians = ", ".join(f"{name} {value:.3f} s" for name, value in data["median_s"].items())
    print(f"250 tokens: {medians} (medians of {args.rounds}); fp32 ways give the same tokens: {same}; wrote {args.out}")


if __name__ == "__main__":
    main()
