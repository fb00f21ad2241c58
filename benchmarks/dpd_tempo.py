"""Does the DPD keep a clip's rhythm? Issue 6's diagnosis as a script.

For held-out clips whose captions state a tempo, the DPD makes latents from each clip's *own* semantic tokens (what a
perfect semantic LM would write) and the VAE decodes them; librosa's beat tracker (`melody.eval.quality.measure_tempo`)
measures the tempo. Beside it: the real clip, and the VAE's reconstruction of it (the decoder's own ceiling, from the
posterior mean). Per DPD setting (steps:guidance), and for the reconstruction and the real clips:
- error against the real clip's measured tempo, at the nearest octave (×½, ×1, ×2): its mean and the share
  within 5 BPM;
- the Spearman rank correlation of the measured tempo with the caption's stated one (the real clips' is the
  reference: the beat tracker is not perfect either).

    python benchmarks/dpd_tempo.py --data /tmp/corpus --limit 24 --settings 5:2.5,10:2.5,5:5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, load_average, machine  # noqa: E402
from melody.data.synth.captions import prompt_bpm  # noqa: E402
from melody.eval.music import read_clips  # noqa: E402
from melody.eval.quality import measure_tempo, nearest_octave  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dpd_tempo.json"


def octave_error(measured: float, reference: float) -> float:
    """|measured − k · reference| for the octave k that `melody.eval.quality` forgives (the beat tracker's ambiguity)."""
    if not reference > 0:  # no beat in the real clip: nothing to be near
        return measured
    return abs(measured - nearest_octave(measured, reference) * reference)


def summary(measured: list[float], real: list[float], stated: list[float]) -> dict:
    from scipy.stats import spearmanr

    errors = [octave_error(m, r) for m, r in zip(measured, real, strict=True)]
    return {"mean_abs_error_vs_real_bpm": round(float(np.mean(errors)), 2),
            "within_5_bpm_of_real": round(float(np.mean([e <= 5.0 for e in errors])), 3),
            "spearman_vs_stated": round(float(spearmanr(measured, stated).statistic), 3),
            "measured_bpm": [round(m, 1) for m in measured]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=24, help="clips spread over the split (those stating a tempo kept)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settings", default="5:2.5,10:2.5,5:5", help="DPD steps:guidance pairs, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    model = MeLoDy.from_pretrained(args.bundle).to(args.device)
    rate = model.vae.cfg.sample_rate
    clips = read_clips(args.data, args.split, args.seconds, rate, args.limit)
    kept = [i for i, c in enumerate(clips.captions) if prompt_bpm(c) is not None]
    stated = [prompt_bpm(clips.captions[i]) for i in kept]
    audio = [torch.from_numpy(clips.audio[i]).float() for i in kept]
    real = [measure_tempo(a.numpy(), rate) for a in audio]
    rows = {"real": summary(real, real, stated)}
    tokens, reconstructions = [], []
    with torch.no_grad():
        for a in audio:
            x = a[None].to(args.device)
            tokens.append(model.tokenizer.tokens(x, torch.tensor([x.shape[-1]], device=args.device)))
            posterior = model.vae.encode(x[:, None])
            reconstructions.append(model.vae.decode(posterior.mean, x.shape[-1])[0].mean(0).cpu())
    rows["vae_reconstruction"] = summary([measure_tempo(r.numpy(), rate) for r in reconstructions], real, stated)
    for setting in args.settings.split(","):
        steps, guidance = int(setting.split(":")[0]), float(setting.split(":")[1])
        clock, measured = time.perf_counter(), []
        with torch.no_grad():
            for i, (a, t) in enumerate(zip(audio, tokens, strict=True)):
                latents = model.latents(model.dpd_for_sampling(), t, args.seconds, steps, guidance, seed=i)
                made = model.vae.decode_latents(latents, a.shape[-1])[0].mean(0).cpu()
                measured.append(measure_tempo(made.numpy(), rate))
        rows[f"dpd {steps} steps, guidance {guidance:g}"] = summary(measured, real, stated) | {
            "seconds": round(time.perf_counter() - clock, 1)}
        print(f"{setting}: {rows[f'dpd {steps} steps, guidance {guidance:g}']}", flush=True)
    report = {"clips": len(kept), "split": args.split, "seconds": args.seconds, "bundle": str(args.bundle),
              "stated_bpm": stated, "rows": rows, "machine": machine(args.device, args.threads, load_start),
              "command": " ".join(sys.argv)}
    write_json_atomic(args.out, report)
    width = max(len(k) for k in rows)
    print(f"{len(kept)} clips stating a tempo; error vs the real clip's measured tempo (nearest octave)")
    for name, r in rows.items():
        print(f"{name:<{width}}  mean |err| {r['mean_abs_error_vs_real_bpm']:6.2f} BPM  within 5 BPM "
              f"{r['within_5_bpm_of_real']:.2f}  Spearman vs stated {r['spearman_vs_stated']:+.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
