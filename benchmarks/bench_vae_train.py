"""Training-step cost of the two VAE architectures at `tiny` widths: why `tiny` is frame-rate.

For `vae.architecture=conv` (the paper's layout at tiny widths: encoder 64, decoder 128) and
`stft` (the `tiny` preset): seconds per reconstruction step (15 × multi-scale mel + 0.004 × KL,
AdamW lr 1e-3, β (0.8, 0.99), grad clip 1, batch 8 × 0.5 s), median over the steps after the
first 5. With `--data CORPUS` the batches are training crops of that corpus and the mean mel loss
of the last 50 steps is reported too (same seed, same crops for both); without it, noise.
Writes `benchmarks/results/vae_train.json`.

    .venv/bin/python benchmarks/bench_vae_train.py --data /tmp/corpus --steps 200 --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melody.config import preset  # noqa: E402
from melody.data.loader import ShardDataset, make_loader  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.losses import mel_loss_per_example  # noqa: E402
from melody.vae import VAE, count_parameters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vae_train.json"
ARCHITECTURES = {
    "conv": ["vae.architecture=conv", "vae.encoder_channels=64", "vae.decoder_channels=128"],
    "stft": [],  # the tiny preset as it is
}


def batches(data: str | None, seed: int):
    if data is None:
        g = torch.Generator().manual_seed(seed)
        while True:
            yield 0.1 * torch.randn(8, 1, 12_000, generator=g)
    dataset = ShardDataset.from_corpus(data, "train", crop_seconds=0.5, seed=seed)
    for epoch in itertools.count():
        dataset.set_epoch(epoch)
        for batch in make_loader(dataset, 8, 1):
            yield batch["audio"]


def run(name: str, overrides: list[str], data: str | None, steps: int, seed: int) -> dict:
    cfg = preset("tiny", overrides).vae
    torch.manual_seed(seed)
    vae = VAE(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, betas=(0.8, 0.99))
    times, losses = [], []
    for _, audio in zip(range(steps), batches(data, seed), strict=False):
        start = time.perf_counter()
        out = vae(audio)
        mel = mel_loss_per_example(out.audio, audio, cfg.sample_rate, cfg.mel_windows, cfg.mel_bins).mean()
        loss = 15 * mel + 0.004 * out.posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
        losses.append(mel.item())
    row = {"architecture": name, "params": count_parameters(vae), "steps": steps,
           "seconds_per_step": round(statistics.median(times[5:]), 4)}
    if data is not None:
        row["mel_loss_last_50"] = round(statistics.mean(losses[-50:]), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(name, over, args.data, args.steps, args.seed) for name, over in ARCHITECTURES.items()]
    for row in rows:
        print(row)
    write_json_atomic(RESULTS, {"threads": args.threads, "data": args.data, "torch": torch.__version__, "runs": rows})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
