"""How long a DPD sampling window should be at inference: quality and wall time per window length and step count.

The DPD has rotary positions and recurrent paths, so it samples windows of any length, also longer
than the crops it trained on (`dpd.crop_seconds`, 2.56 s for `tiny`). The pipeline covers a clip
window by window, each next window continuing the previous one with half a window of clean context
(`MeLoDy.latents`), so short windows redo much work: 10 s in 2.56 s windows is 7 windows, 2 240
frames, against 1 250 in one window. This script measures, on the first `--clips` held-out clips of a
corpus (their first `--seconds`), what each `--windows` length and `--steps` count gives when the
bundle's DPD turns the clip's own semantic tokens back into audio (the `melody eval dpd` task,
through the pipeline's own windowing): mel distance to the original, to another clip (chance) and
the VAE's floor, DPD wall seconds per clip and forward passes.

Writes `benchmarks/results/dpd_windows.json` and `.png`.

    .venv/bin/python benchmarks/dpd_windows.py --data data/corpus --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, load_average, machine, pyplot, save_chart  # noqa: E402
from melody.data.loader import ShardDataset, make_loader  # noqa: E402
from melody.eval.metrics import mel_distance  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy, _Counted  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dpd_windows.json"


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--windows", type=floats, default=[2.56, 5.12, 10.0])
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    model = MeLoDy.from_pretrained(args.bundle)
    rate = model.vae.cfg.sample_rate
    n = round(args.seconds * rate)
    real, tokens, recon = [], [], []
    for batch in make_loader(ShardDataset.whole_clips(args.data, "test", rate), 1, 0, drop_last=False):
        audio = batch["audio"][..., :n]
        if audio.shape[-1] < n:
            continue
        real.append(audio[0].mean(0))
        tokens.append(model.tokenizer.tokens(audio.mean(1)))
        z = model.vae.encode_latents(audio, torch.Generator().manual_seed(0))
        recon.append(model.vae.decode_latents(z, n)[0].mean(0))
        if len(real) == args.clips:
            break
    k = len(real)

    def distance(a, b):
        return float(mel_distance(a[None], b[None], rate)[0])

    rows = []
    for window in args.windows:
        model.cfg.dpd.window_seconds = window
        for steps in args.steps:
            own, other, seconds, passes = [], [], [], 0
            for i in range(k):
                counted = _Counted(model.dpd_for_sampling())
                start = time.perf_counter()
                latents = model.latents(counted, tokens[i], args.seconds, steps, model.cfg.dpd.guidance, seed=i)
                seconds.append(time.perf_counter() - start)
                made = model.vae.decode_latents(latents, n)[0].mean(0)
                own.append(distance(made, real[i]))
                other.append(distance(made, real[(i + k // 2) % k]))
                passes = counted.calls
            rows.append({"window_seconds": window, "steps": steps, "mel_distance": round(sum(own) / k, 4),
                         "mel_distance_other_clip": round(sum(other) / k, 4),
                         "dpd_seconds_per_clip": round(sum(seconds) / k, 3), "forward_passes": passes})
            print(rows[-1], flush=True)
    floor = sum(distance(recon[i], real[i]) for i in range(k)) / k
    data = {"clips": k, "seconds": args.seconds, "bundle": str(args.bundle), "mel_distance_vae": round(floor, 4),
            "crop_seconds": model.cfg.dpd.crop_seconds, "rows": rows, **machine(args.device, args.threads, load_start)}
    write_json_atomic(RESULTS, data)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for steps in args.steps:
        mine = [r for r in rows if r["steps"] == steps]
        ax.plot([r["dpd_seconds_per_clip"] for r in mine], [r["mel_distance"] for r in mine], "o-", label=f"{steps} steps")
        for r in mine:
            ax.annotate(f"{r['window_seconds']:g} s", (r["dpd_seconds_per_clip"], r["mel_distance"]), fontsize=7)
    ax.axhline(floor, color="gray", ls="--", lw=1, label="VAE floor")
    ax.axhline(sum(r["mel_distance_other_clip"] for r in rows) / len(rows), color="red", ls=":", lw=1, label="another clip")
    ax.set_xlabel(f"DPD wall seconds per {args.seconds:g} s clip ({args.threads} threads)")
    ax.set_ylabel("mel distance to the original")
    ax.set_title(f"DPD window length at sampling ({k} held-out clips)", fontsize=9)
    save_chart(fig, ax, RESULTS.with_suffix(".png"))
    print(f"VAE floor {floor:.3f}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
