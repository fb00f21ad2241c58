"""Encode and decode speed of the audio VAE-GAN, in × real time, for `tiny` and `paper` shapes.

Random weights (speed does not depend on training). For each preset and device: 10 s of mono
24 kHz audio in a batch of 1, `--repeats` timed runs after one warm-up, median wall time;
× real time = audio seconds / wall seconds. Also the parameter counts. Writes
`benchmarks/results/vae.json` (CPU here; add `--device cuda` on a GPU machine, which appends).

    .venv/bin/python benchmarks/bench_vae.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melody.config import preset  # noqa: E402
from melody.discriminators import Discriminators  # noqa: E402
from melody.vae import VAE, count_parameters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vae.json"


def timed(fn, repeats: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def bench(name: str, device: str, seconds: float, repeats: int) -> dict:
    cfg = preset(name).vae
    vae = VAE(cfg).to(device).eval()
    audio = torch.randn(1, cfg.channels, int(seconds * cfg.sample_rate), device=device) * 0.1
    z = vae.encode(audio).mean
    enc = timed(lambda: vae.encode(audio), repeats, device)
    dec = timed(lambda: vae.decode(z), repeats, device)
    return {
        "preset": name, "device": device, "audio_seconds": seconds,
        "latent_rate_hz": vae.latent_rate, "latent_frames": z.shape[-1],
        "params_encoder": count_parameters(vae.encoder), "params_decoder": count_parameters(vae.decoder),
        "params_discriminators": count_parameters(Discriminators(cfg)),
        "encode_s": round(enc, 4), "decode_s": round(dec, 4),
        "encode_x_realtime": round(seconds / enc, 1), "decode_x_realtime": round(seconds / dec, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(name, args.device, args.seconds, args.repeats) for name in ("tiny", "paper")]
    for row in rows:
        print(f"{row['preset']:>5} on {row['device']}: encode {row['encode_x_realtime']}× real time, "
              f"decode {row['decode_x_realtime']}× real time")
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    old["runs"] = [r for r in old["runs"] if r["device"] != args.device] + [{**r, **machine} for r in rows]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(old, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
