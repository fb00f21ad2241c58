"""Training throughput of the DPD at a preset, through the real training path (`melody train dpd`'s stage on
the shared engine, with its data loader, autocast and optimiser): steps/s and samples/s after warm-up, the loss
at the start and at the end, and the accelerator's peak memory. Issue 8's GPU check is the `paper` DPD in bf16
for a few hundred steps:

    python benchmarks/train_throughput.py --data CORPUS --preset paper --steps 300 --batch 8 --precision bf16

The frozen conditioners are the preset's shapes with random weights (no `paper` VAE or tokenizer is trained
here), or the trained ones that --vae / --tokenizer name. Without cached features their encoders run on
every batch, as in `melody train dpd`, so the rate counts them too (`conditioner_share` says how much).
Writes `<out>/<name>.json` and `.png` (default benchmarks/results/train_throughput.*); `--max-seconds` time-boxes
the run (the report then covers the steps done).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from common import timed  # noqa: E402

from melody.config import preset  # noqa: E402
from melody.dpd import parameter_count  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402

# The first logged rates include start-up (workers, cuDNN/cuBLAS autotuning, allocator growth). The rate is the
# median over logs, so with --log-every 1 the steps that wait for a new epoch's loader do not count either.
WARMUP_LOGS = 2


def random_conditioners(cfg, seed: int = 0):
    """The VAE and the semantic tokenizer at `cfg`'s shapes with random weights (`melody bench`'s tokenizer)."""
    from melody.eval.bench import random_tokenizer
    from melody.vae import VAE

    torch.manual_seed(seed)
    vae = VAE(cfg.vae)
    return (vae.eval(), cfg), (random_tokenizer(cfg).eval(), cfg)


def conditioner_seconds(vae, tokenizer, cfg, batch: int, device: torch.device, repeats: int = 5) -> float:
    """Seconds per batch of the frozen encoders alone (what cached features would save)."""
    audio = torch.randn(batch, cfg.vae.channels, int(cfg.dpd.crop_seconds * cfg.vae.sample_rate), device=device)
    lengths = torch.full((batch,), audio.shape[-1], device=device)
    vae.to(device), tokenizer.to(device)

    def encode():
        with torch.no_grad():
            vae.encode_latents(audio)
            tokenizer.tokens(audio.mean(1), lengths)

    return timed(encode, repeats, device.type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a melody-shards corpus")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8, help="global batch (clips of dpd.crop_seconds)")
    parser.add_argument("--precision", default="bf16", help="train.mixed_precision: bf16, fp16 or no")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--vae", type=Path, help="a trained VAE run or model folder (default: random, preset shapes)")
    parser.add_argument("--tokenizer", type=Path, help="a trained tokenizer run or model folder (default: random)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more key=value overrides")
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop the run (SIGTERM: the engine finishes its step and saves) after this long; 0: no limit")
    parser.add_argument("--name", default="train_throughput", help="the report's file name, without extension")
    parser.add_argument("--run", type=Path, default=Path("/tmp/train_throughput_run"), help="the run folder (replaced)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from melody.train.curves import plot_curves
    from melody.train.engine import TrainingStopped
    from melody.train.recipes import load_stage, train_stage

    cfg = preset(args.preset, args.overrides)
    vae, tokenizer = random_conditioners(cfg)
    if args.vae:
        vae = load_stage(args.vae, "vae")
    if args.tokenizer:
        tokenizer = load_stage(args.tokenizer, "tokenizer")
    overrides = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", f"train.mixed_precision={args.precision}",
                 f"train.log_every={args.log_every}", f"train.checkpoint_every={args.steps}", "train.sample_every=0",
                 f"train.warmup_steps={max(1, args.steps // 5)}", f"train.num_workers={args.workers}", *args.overrides]
    shutil.rmtree(args.run, ignore_errors=True)
    started = time.perf_counter()
    if args.max_seconds > 0:  # a time box that still leaves a report: the engine stops cleanly on SIGTERM
        threading.Timer(args.max_seconds, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        reached = train_stage("dpd", args.data, args.run, args.preset, overrides, resume=False, progress=True,
                              frozen={"vae": vae, "tokenizer": tokenizer}).step
    except TrainingStopped as stop:
        reached = stop.step
    wall = time.perf_counter() - started
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    records = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "train/steps_per_s" in r]
    steady = records[WARMUP_LOGS:] or records
    steps_per_s = statistics.median(r["train/steps_per_s"] for r in steady)
    encode = conditioner_seconds(vae[0], tokenizer[0], cfg, max(1, args.batch), device)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": args.preset, "precision": args.precision, "global_batch": args.batch, "steps": reached, "steps_asked": args.steps,
        "crop_seconds": cfg.dpd.crop_seconds,
        "latent_frames": int(cfg.dpd.crop_seconds * cfg.vae.sample_rate) // math.prod(cfg.vae.strides), "dpd_parameters": parameter_count(cfg),
        "conditioners": {"vae": str(args.vae or "random"), "tokenizer": str(args.tokenizer or "random")},
        "steps_per_s": steps_per_s, "samples_per_s": steps_per_s * args.batch,
        # with the loader's restarts at each epoch (a small corpus has many) and the warm-up: the floor
        "steps_per_s_overall": len(records) * args.log_every / sum(args.log_every / r["train/steps_per_s"] for r in records),
        "audio_seconds_per_s": steps_per_s * args.batch * cfg.dpd.crop_seconds,
        "conditioner_seconds_per_step": encode, "conditioner_share": encode * steps_per_s,
        "loss_first": records[0]["dpd/total"], "loss_last": records[-1]["dpd/total"],
        "loss_first_mean": statistics.mean(r["dpd/total"] for r in records[:3]),
        "loss_last_mean": statistics.mean(r["dpd/total"] for r in records[-3:]),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "wall_s": wall, "command": " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{args.name}.json", report)
    plot_curves(args.run / "metrics.jsonl", args.out / f"{args.name}.png",
                f"dpd @ {args.preset}, {args.precision}, batch {args.batch}: {report['samples_per_s']:.1f} samples/s "
                f"on {report['device']}")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
