"""Encode and decode speed of the audio VAE-GAN, in × real time, for `tiny` and `paper` shapes.

Random weights (speed does not depend on training). For each preset and device: 10 s of mono
24 kHz audio in a batch of 1, `--repeats` timed runs after one warm-up, median wall time;
× real time = audio seconds / wall seconds. Also the parameter counts. Writes
`benchmarks/results/vae.json` (CPU here; add `--device cuda` on a GPU machine, which appends).

    .venv/bin/python benchmarks/bench_vae.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, machine, merge_results, timed  # noqa: E402

from melody.config import preset  # noqa: E402
from melody.discriminators import Discriminators  # noqa: E402
from melody.vae import VAE, count_parameters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "vae.json"


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
    add_device_args(parser)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(name, args.device, args.seconds, args.repeats) for name in ("tiny", "paper")]
    for row in rows:
        print(f"{row['preset']:>5} on {row['device']}: encode {row['encode_x_realtime']}× real time, "
              f"decode {row['decode_x_realtime']}× real time")
    merge_results(RESULTS, {"runs": rows}, machine(args.device, args.threads), {"device": args.device})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
