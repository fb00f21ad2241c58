"""Does the semantic LM read its condition as music, or as the name of a training clip?

Teacher-forced perplexity of the LM's tokens for clips of the training split and of the held-out test split, with
each clip's own condition (the MuLan tokens of its audio, of its caption), with the null condition, and with another
clip's audio condition (the conditions shuffled among the clips). Over the whole window and over its first second,
where the LM has only the condition to go on (`lm_nll`, from `melody data encode`'s cached features: no audio is
read).

An LM that learnt what the condition says about music lowers the held-out first second's perplexity below the null
condition's, as it does for training clips. One that learnt each training clip's 12 codes as a name lowers it for
training clips only: held out, its own condition is worth no more than the null one (the bundled `table` LM, 4.09
and 4.09, where training clips give 1.38 and 2.02).

    .venv/bin/python benchmarks/condition_probe.py --data data/corpus --lm melody/bundled/semantic_lm --lm runs/semantic

Each `--lm` is a run folder or an exported model folder; `--bundle` gives the MuLan and tokenizer whose features are
read (the LMs must have been trained with them). Writes `benchmarks/results/ladder/condition_probe.{json,md}`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine  # noqa: E402
from melody.checkpoint import load_model_and_config  # noqa: E402
from melody.data.features import find_features  # noqa: E402
from melody.eval.semantic import leading_frames, lm_nll, tokenized_features  # noqa: E402
from melody.io import write_json_atomic, write_text_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402
from melody.semantic.lm import SemanticLM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ladder"
CONDITIONS = ("audio", "caption", "null", "another clip's audio")
SPLITS = ("train", "test")


def perplexities(lm: SemanticLM, split, first_frames: int, seed: int) -> dict[str, dict[str, float]]:
    """{condition: {"window": ppl, "first second": ppl}} over the clips of `split` (a `TokenizedSplit`)."""
    shuffle = torch.randperm(split.audio_mulan.shape[0], generator=torch.Generator().manual_seed(seed))
    conditions = dict(zip(CONDITIONS, (split.audio_mulan, split.text_mulan, None, split.audio_mulan[shuffle])))
    first = leading_frames(split.keep, first_frames)
    return {name: {"window": math.exp(lm_nll(lm, cond, split.semantic, split.keep)),
                   "first second": math.exp(lm_nll(lm, cond, split.semantic, first))}
            for name, cond in conditions.items()}


def table(results: dict) -> str:
    lines = ["| LM | condition | " + " | ".join(f"{s} window | {s} first second" for s in SPLITS) + " |",
             "|---|---|" + "---|" * (2 * len(SPLITS))]
    for name, by_split in results.items():
        for cond in CONDITIONS:
            cells = [f"{by_split[s][cond][part]:.3f}" for s in SPLITS for part in ("window", "first second")]
            lines.append(f"| {name} | {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--lm", type=Path, action="append", default=None,
                        help="An LM run or model folder (repeatable; default: the bundle's semantic_lm).")
    parser.add_argument("--train-clips", type=int, default=200, help="Training clips measured (the first ones).")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the shuffle of the conditions.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "condition_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = load_average()
    bundle = MeLoDy.from_pretrained(args.bundle)
    features = find_features(args.data, {"mulan": bundle.mulan, "tokenizer": bundle.tokenizer})
    window = bundle.cfg.semantic_lm.window_seconds
    splits = {"train": tokenized_features(features, "train", window, limit=args.train_clips),
              "test": tokenized_features(features, "test", window)}
    results = {}
    for folder in args.lm or [args.bundle / "semantic_lm"]:
        lm, cfg = load_model_and_config(folder, "semantic_lm", "semantic_lm", SemanticLM.from_config)
        lm = lm.float().eval()
        with torch.no_grad():
            results[str(folder)] = {s: perplexities(lm, split, cfg.tokenizer.frame_rate, args.seed)
                                    for s, split in splits.items()}
        firsts = {s: {c: round(v["first second"], 3) for c, v in r.items()} for s, r in results[str(folder)].items()}
        print(folder, firsts, flush=True)
    write_json_atomic(args.out, {"data": str(args.data), "features": str(features), "seed": args.seed,
                                 "clips": {s: int(split.semantic.shape[0]) for s, split in splits.items()},
                                 "perplexity": results, **machine("cpu", args.threads, load)})
    write_text_atomic(args.out.with_suffix(".md"), table(results))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
