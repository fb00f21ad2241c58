"""Does `--bpm` change the tempo of the music? The bundle generates each prompt at each asked tempo
(`generate(..., bpm=)`, which says the tempo in the prompt as the training captions do) with a few
seeds; librosa's beat tracker (`melody.eval.quality.tempo_error`) measures each clip. Reported per
asked tempo: the measured tempos, their median, the mean error at the asked octave and the share of
octave errors; and the rank correlation between asked and measured tempo over all clips (0: the
control is ignored). With `--reference CORPUS`, the same tracker on the real clips of that corpus's
split whose stated tempo lies within ±15 % of each asked one: what the measure gives on music that
has the asked tempo (a tracker hears slow music at double speed often), the reference for the bundle's
row (`--reference-only`: that alone). Writes `benchmarks/results/bpm_control.json`.

    .venv/bin/python benchmarks/bpm_control.py --threads 2 --reference /tmp/corpus
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, load_average, machine  # noqa: E402
from melody.data.loader import clip_bpm  # noqa: E402
from melody.data.shards import iter_samples  # noqa: E402
from melody.eval.quality import TempoError, tempo_error  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bpm_control.json"
BAND = 0.15  # a real clip counts for an asked tempo when its stated tempo is within ±15 % of it
PROMPTS = ("a funk groove with slap bass and drums", "a rock song with electric guitar and drums",
           "an electronic dance track with synth bass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--bpm", type=lambda s: [float(x) for x in s.split(",")], default=[70.0, 100.0, 140.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompt", action="append", default=None,
                        help="a prompt to generate at each tempo (repeatable; default: funk, rock and electronic)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lm-guidance", type=float, default=None,
                        help="the semantic LM's guidance scale (default: the bundle's); it strengthens the tempo token too")
    parser.add_argument("--reference", type=Path, default=None, help="a corpus folder: its real clips as the reference")
    parser.add_argument("--split", default="test", help="the reference corpus's split")
    parser.add_argument("--reference-only", action="store_true", help="measure the reference clips, generate nothing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    if args.reference_only:
        if args.reference is None:
            parser.error("--reference-only needs --reference CORPUS")
        data = {"reference": reference(args.reference, args.split, args.bpm)}
        write_json_atomic(args.out, {**data, **machine(args.device, args.threads, load_start)})
        print(f"{data['reference']}\nwrote {args.out}")
        return
    prompts = args.prompt or list(PROMPTS)
    model = MeLoDy.from_pretrained(args.bundle)
    rate = model.vae.cfg.sample_rate
    rows, asked_all, measured_all = [], [], []
    for bpm in args.bpm:
        errors = []
        for seed in range(args.seeds):
            out = model.generate(prompts, args.seconds, bpm=bpm, seed=100 * seed, lm_guidance=args.lm_guidance)
            errors += [tempo_error(a.mean(0).numpy(), rate, bpm) for a in out.audio]
        asked_all += [bpm] * len(errors)
        measured_all += [e.measured_bpm for e in errors]
        rows.append(tempo_row(bpm, errors))
        print(rows[-1], flush=True)
    rho = float(spearmanr(asked_all, measured_all).statistic)
    data = {"prompts": prompts, "seconds": args.seconds, "seeds": args.seeds, "rows": rows,
            "lm_guidance": args.lm_guidance if args.lm_guidance is not None else model.cfg.semantic_lm.guidance,
            "spearman_asked_vs_measured": round(rho, 3)}
    if args.reference is not None:
        data["reference"] = reference(args.reference, args.split, args.bpm)
        print(data["reference"], flush=True)
    write_json_atomic(args.out, {**data, **machine(args.device, args.threads, load_start)})
    print(f"Spearman rank correlation asked vs measured tempo: {rho:.3f}; wrote {args.out}")


def tempo_row(bpm: float, errors: list[TempoError]) -> dict:
    """One asked tempo's clips: what the tracker heard, its median, the error at the asked octave, the octave errors."""
    measured = [e.measured_bpm for e in errors]
    same = [abs(e.error_bpm) for e in errors if not e.is_octave_error]
    return {"asked_bpm": bpm, "clips": len(errors), "measured_bpm": [round(m, 1) for m in measured],
            "median_bpm": round(float(np.median(measured)), 1) if measured else None,
            "mean_abs_error_bpm": round(float(np.mean(same)), 1) if same else None,
            "octave_error_rate": round(float(np.mean([e.is_octave_error for e in errors])), 3) if errors else None}


def reference(corpus: Path, split: str, asked: list[float]) -> dict:
    """The tracker on the real clips of `split` that state a tempo: per asked tempo, the clips within ±BAND of it
    (measured against their own stated tempo), and the rank correlation of stated and measured over all of them."""
    stated, errors = [], []
    for clip in iter_samples(corpus, split):
        bpm = clip_bpm(clip["meta"])
        if bpm == bpm:  # not NaN
            stated.append(bpm)
            errors.append(tempo_error(clip["audio"].mean(0), clip["sample_rate"], bpm))
    rows = [tempo_row(bpm, [e for s, e in zip(stated, errors) if abs(s - bpm) <= BAND * bpm]) for bpm in asked]
    rho = float(spearmanr(stated, [e.measured_bpm for e in errors]).statistic) if len(errors) > 1 else None
    return {"corpus": str(corpus), "split": split, "band": BAND, "clips": len(errors), "rows": rows,
            "spearman_stated_vs_measured": None if rho is None else round(rho, 3)}


if __name__ == "__main__":
    main()
