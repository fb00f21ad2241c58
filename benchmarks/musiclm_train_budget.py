"""The MusicLM-style baseline's training budget: steps that cost what melody's tiny DPD training cost, on this machine.

melody's tiny DPD (the stage the baseline's coarse + fine LMs replace) was trained 11 330 steps at batch 8 × 2.56 s
on 2 CPU cores (docs/training.md). The baseline gets the same *wall-clock* budget on the same machine: its
step (MuLan + tokenizer + VAE + codec on the crops, then a coarse and a fine LM update) costs several DPD
steps, since its LMs see 12 tokens per 20 ms frame. This script trains both stages, back to back in one
process on the same corpus with the bundled frozen models (the engine's own loop: data, forward, backward,
AdamW, EMA), in `--rounds` interleaved rounds of `--steps` steps per stage, so that a change of the machine's
load (it is shared) falls on both; each round's cost ratio is the ratio of the two median step times (the
first step of each round, which starts the data loader, left out), and the budget is 11 330 × the median
round's (DPD s/step) / (baseline s/step), written to `benchmarks/results/musiclm_train_budget.json`.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/musiclm_train_budget.py --data /tmp/corpus
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, machine  # noqa: E402

from melody.baselines.musiclm import preset  # noqa: E402
from melody.bundled import BUNDLE  # noqa: E402
from melody.config import preset as melody_preset  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402
from melody.train.dpd import DPDStage  # noqa: E402
from melody.train.engine import Engine  # noqa: E402
from melody.train.musiclm import MusicLMStage  # noqa: E402
from melody.train.recipes import stage_overrides  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "musiclm_train_budget.json"
DPD_STEPS = 11_330  # the bundled tiny DPD's training (docs/training.md)


def step_times(engine: Engine, run_dir: Path, until: int) -> list[float]:
    """Train on to step `until`; the wall time of each step but the first of this call (which includes the
    loader's start), from the rates the engine logs when `train.log_every` is 1."""
    first = engine.step + 1
    engine.fit(stop_at=until)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [1.0 / r["train/steps_per_s"] for r in rows if first < r["step"] <= until and "train/steps_per_s" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6, help="steps per stage and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    melody = MeLoDy.from_pretrained(BUNDLE)
    quiet = ["train.sample_every=0", "train.checkpoint_every=100000", "train.log_every=1"]
    dpd_cfg = melody_preset("tiny", [*stage_overrides("tiny", "dpd"), *quiet])
    musiclm_cfg = preset("tiny", quiet + ["codec.fit_clips=40"])  # the fit is outside the timed steps; fewer clips: quicker
    with tempfile.TemporaryDirectory() as runs:
        frozen = {"vae": (melody.vae, melody.cfg), "tokenizer": (melody.tokenizer, melody.cfg)}
        stages = {"dpd": DPDStage(dpd_cfg, args.data, Path(runs) / "dpd", **frozen),
                  "musiclm": MusicLMStage(musiclm_cfg, args.data, Path(runs) / "musiclm", melody)}
        engines = {name: Engine(stage, Path(runs) / name, progress=False) for name, stage in stages.items()}
        rounds = []
        for r in range(1, args.rounds + 1):  # interleaved, so that both stages see the same load
            times = {name: statistics.median(step_times(engine, Path(runs) / name, r * args.steps))
                     for name, engine in engines.items()}
            rounds.append({"dpd_s_per_step": round(times["dpd"], 3), "musiclm_s_per_step": round(times["musiclm"], 3),
                           "cost_ratio": round(times["musiclm"] / times["dpd"], 2), "load_avg": load_average()})
    ratio = statistics.median(r["cost_ratio"] for r in rounds)
    result = {"cost_ratio": ratio, "dpd_steps": DPD_STEPS, "equal_wall_clock_steps": int(round(DPD_STEPS / ratio, -2)),
              "batch": musiclm_cfg.train.batch_size, "crop_seconds": musiclm_cfg.coarse.window_seconds,
              "steps_per_round": args.steps, "rounds": rounds, "machine": machine("cpu", args.threads, load_start)}
    write_json_atomic(RESULTS, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
