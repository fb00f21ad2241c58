"""Does `--bpm` change the tempo of the music? The bundle generates each prompt at each asked tempo
(`generate(..., bpm=)`, which says the tempo in the prompt as the training captions do) with a few
seeds, twice: with the LM's tempo token alone (`fit_tempo=False`) and with the tempo fit
(`fit_tempo=True`: librosa's beat tracker measures the music and the semantic tokens are stretched onto
the asked tempo, `MeLoDy._fit_tempo`). Two ears measure every clip:
- librosa's beat tracker (`melody.eval.quality.measure_tempo`), the one the fit itself listens with, so
  its figures for the fit are partly by construction;
- essentia's RhythmExtractor2013 (multifeature: Zapata et al. 2014), which the fit never hears; an
  optional, AGPL-licensed evaluation tool that melody does not depend on (`pip install essentia`; without
  it that ear is left out).
Reported per ear and asked tempo: the measured tempos, their median, the mean error at the asked octave,
the share of octave errors, and the share within 8 % of the asked tempo at any octave (×½, ×1, ×2; a
tracker's pulse is often another metrical level than the one asked); and the rank correlation between
asked and measured tempo over all clips (0: the control is ignored). Per variant, what the fit may cost
the prompt: MuLan's cosine between each clip's audio embedding and its prompt's text embedding. And, with no tracker,
how the onsets keep to the asked grid itself (`beat_locking`: vector strength R of the onset envelope on the grid of
the asked beats, and of its half beats, from a downbeat at 0 s, where the LM's beat clock starts; and how well the
clips agree on where in the beat their onsets fall, |mean e^{2πiθ}|, about 1/√n for clips that ignore the grid's
phase). With `--reference CORPUS`, the same ears on the real clips of that corpus's split whose stated tempo lies
within ±15 % of each asked one: what the measure gives on music that has the asked tempo, the reference for the
bundle's rows, and R on each real clip's own grid (from its first beat, `clip_beat_phase`) against a grid 6 % off
(the floor) (`--reference-only`: that alone). Writes `benchmarks/results/bpm_control.json`.

    .venv/bin/python benchmarks/bpm_control.py --threads 2 --reference /tmp/corpus
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, load_average, machine  # noqa: E402
from melody.data.loader import clip_beat_phase, clip_bpm  # noqa: E402
from melody.data.shards import iter_samples  # noqa: E402
from melody.eval.quality import TempoError, beat_locking, measure_tempo, onset_envelope, tempo_error_of  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bpm_control.json"
BAND = 0.15  # a real clip counts for an asked tempo when its stated tempo is within ±15 % of it
NEAR = 0.08  # "within 8 %": about one tempo-token bin (7.8 %) and the trackers' own spread on real clips
PROMPTS = ("a funk groove with slap bass and drums", "a rock song with electric guitar and drums",
           "an electronic dance track with synth bass")
VARIANTS = {"tempo token only": False, "tempo token + tempo fit": True}  # name → generate(fit_tempo=)
Ear = Callable[[np.ndarray, int], float]  # mono audio, sample rate → BPM (0: no beat)
ENVELOPE_RATE = 100.0  # onset envelope frames per second for `beat_locking`
DETUNE = 1.06  # the floor's grid: 6 % off the stated tempo, a quarter beat adrift after 4 beats


def essentia_tempo(audio: np.ndarray, rate: int) -> float:
    """essentia's RhythmExtractor2013 (multifeature) BPM of mono `audio`, resampled to the 44.1 kHz it assumes."""
    import essentia.standard as es
    import soxr

    x = soxr.resample(np.asarray(audio, dtype=np.float32), rate, 44_100).astype(np.float32)
    return float(es.RhythmExtractor2013(method="multifeature")(x)[0])


def ears() -> dict[str, Ear]:
    """The trackers this machine has: librosa's always, essentia's where it is installed."""
    found: dict[str, Ear] = {"librosa": measure_tempo}
    try:
        import essentia.standard  # noqa: F401
    except ImportError:
        print("essentia is not installed: the second ear is left out (pip install essentia)", flush=True)
    else:
        found["essentia"] = essentia_tempo
    return found


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
    parser.add_argument("--picture", type=Path, default=None,
                        help="a PNG: the first prompt's first seed at each tempo, each variant, with the asked beat grid")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    trackers = ears()
    if args.reference_only:
        if args.reference is None:
            parser.error("--reference-only needs --reference CORPUS")
        data = {"reference": reference(args.reference, args.split, args.bpm, trackers)}
        write_json_atomic(args.out, {**data, **machine(args.device, args.threads, load_start)})
        print(f"{data['reference']}\nwrote {args.out}")
        return
    prompts = args.prompt or list(PROMPTS)
    model = MeLoDy.from_pretrained(args.bundle)
    rate = model.vae.cfg.sample_rate
    heard = {v: {e: [] for e in trackers} for v in VARIANTS}  # variant → ear → BPM per clip, in `asked` order
    asked, fits, seconds = [], [], {v: 0.0 for v in VARIANTS}
    cosines = {v: [] for v in VARIANTS}  # MuLan: audio embedding · the prompt's text embedding, per clip
    locking = {v: [] for v in VARIANTS}  # (R, θ) on the asked beat grid, R on its half beats, per clip
    shown = []  # (asked BPM, variant, mono audio, {ear: BPM}) for --picture
    for bpm in args.bpm:
        for seed in range(args.seeds):
            asked += [bpm] * len(prompts)
            for variant, fit in VARIANTS.items():
                out = model.generate(prompts, args.seconds, bpm=bpm, seed=100 * seed, lm_guidance=args.lm_guidance,
                                     fit_tempo=fit)
                seconds[variant] += sum(out.seconds.values())
                fits += out.tempo_fit or []
                with torch.no_grad():
                    text = model.mulan.embed_text(out.prompts)
                    cosines[variant] += (model.mulan.embed_audio(out.audio.mean(1)) * text).sum(-1).tolist()
                for ear, listen in trackers.items():
                    heard[variant][ear] += [listen(a.mean(0).numpy(), rate) for a in out.audio]
                locking[variant] += [grid_locking(onset_envelope(a.mean(0).numpy(), rate, ENVELOPE_RATE), bpm)
                                     for a in out.audio]
                if seed == 0:
                    shown.append((bpm, variant, out.audio[0].mean(0).numpy(),
                                  {ear: heard[variant][ear][-len(prompts)] for ear in trackers}))
            print(bpm, seed, {v: [round(x) for x in heard[v]["librosa"][-len(prompts):]] for v in VARIANTS}, flush=True)
    data = {"prompts": prompts, "seconds": args.seconds, "seeds": args.seeds, "asked_bpm": args.bpm,
            "lm_guidance": args.lm_guidance if args.lm_guidance is not None else model.cfg.semantic_lm.guidance,
            "variants": {v: {"generation_seconds_total": round(seconds[v], 1),
                             "mulan_cosine_to_prompt": round(float(np.mean(cosines[v])), 4),
                             "beat_locking": locking_summary(asked, locking[v], args.bpm),
                             **{ear: ear_summary(asked, heard[v][ear], args.bpm) for ear in trackers}}
                         for v in VARIANTS},
            "stretched_clips": round(float(np.mean([f["rate"] != 1.0 for f in fits])), 3),
            "fit_rates": [f["rate"] for f in fits]}
    for v in VARIANTS:
        print(v, {ear: {k: data["variants"][v][ear][k] for k in ("spearman_asked_vs_measured", "within_8pct_any_octave")}
                  for ear in trackers}, {k: x for k, x in data["variants"][v]["beat_locking"].items() if k != "rows"},
              flush=True)
    if args.reference is not None:
        data["reference"] = reference(args.reference, args.split, args.bpm, trackers)
        print(data["reference"], flush=True)
    write_json_atomic(args.out, {**data, **machine(args.device, args.threads, load_start)})
    print(f"wrote {args.out}")
    if args.picture is not None:
        print(f"wrote {beat_grid_picture(shown, rate, prompts[0], args.picture)}")


def beat_grid_picture(shown: list[tuple[float, str, np.ndarray, dict]], rate: int, prompt: str, path: Path) -> Path:
    """One row per asked tempo, one column per variant: the clip's log-mel with the asked tempo's beats drawn over it
    (at the phase where the onset envelope is strongest), titled with what each ear heard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from melody.audio import log_mel
    from melody.data.plots import save_figure
    from melody.eval.quality import onset_envelope

    tempos, variants = sorted({s[0] for s in shown}), list(VARIANTS)
    fig, axes = plt.subplots(len(tempos), len(variants), figsize=(6.0 * len(variants), 2.0 * len(tempos)),
                             squeeze=False)
    frame_rate = 100.0
    for bpm, variant, audio, ears_heard in shown:
        ax = axes[tempos.index(bpm)][variants.index(variant)]
        mel = log_mel(audio.astype(np.float32), rate, n_mels=80).numpy()
        seconds = len(audio) / rate
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=mel.max() - 11.0, vmax=mel.max(),
                  extent=(0.0, seconds, 0, mel.shape[0]))
        env, period = onset_envelope(audio, rate, frame_rate), 60.0 / bpm
        phases = np.arange(0.0, period, 0.01)
        phase = max(phases, key=lambda p: env[(np.arange(p, seconds, period) * frame_rate).astype(int)
                                                .clip(max=len(env) - 1)].sum())
        for beat in np.arange(phase, seconds, period):
            ax.axvline(beat, color="cyan", lw=0.6, alpha=0.8)
        ax.set_yticks([])
        heard_text = ", ".join(f"{ear} {x:.0f}" for ear, x in ears_heard.items())
        ax.set_title(f"{variant}: asked {bpm:g} BPM; heard {heard_text}", fontsize=8)
    axes[-1][0].set_xlabel("seconds (cyan: the asked tempo's beats)")
    fig.suptitle(f"“{prompt}”, seed 0", fontsize=9)
    return save_figure(fig, path, dpi=90)


def grid_locking(envelope: np.ndarray, bpm: float, phase: float = 0.0) -> tuple[float, float, float]:
    """(R, θ) of `envelope` on the beat grid of `bpm` from beat `phase` at its first frame, and R on its half beats."""
    r, theta = beat_locking(envelope, ENVELOPE_RATE, bpm, phase)
    return r, theta, beat_locking(envelope, ENVELOPE_RATE, 2 * bpm, 2 * phase)[0]


def locking_figures(locks: list[tuple[float, float, float]]) -> dict:
    """Mean R on the beats and on the half beats, and the clips' agreement on where in the beat they lock."""
    if not locks:
        return {"clips": 0}
    r, theta, half = (np.array(x) for x in zip(*locks))
    return {"clips": len(locks), "r_beat": round(float(r.mean()), 3), "r_half_beat": round(float(half.mean()), 3),
            "phase_agreement": round(float(abs(np.exp(2j * np.pi * theta).mean())), 3),
            "median_phase_beats": round(float(np.median(theta)), 3)}


def locking_summary(asked: list[float], locks: list[tuple[float, float, float]], tempos: list[float]) -> dict:
    """`locking_figures` over all clips and per asked tempo."""
    return {**locking_figures(locks),
            "rows": [{"asked_bpm": bpm, **locking_figures([x for a, x in zip(asked, locks, strict=True) if a == bpm])}
                     for bpm in tempos]}


def near_any_octave(e: TempoError) -> bool:
    """Within `NEAR` of the asked tempo at the octave (×½, ×1, ×2) the tracker heard."""
    return e.measured_bpm > 0 and abs(math.log(e.measured_bpm / (e.octave * e.asked_bpm))) <= math.log1p(NEAR)


def tempo_row(bpm: float, errors: list[TempoError]) -> dict:
    """One asked tempo's clips: what the tracker heard, its median, the error at the asked octave, the octave errors,
    the share near the asked tempo at any octave."""
    measured = [e.measured_bpm for e in errors]
    same = [abs(e.error_bpm) for e in errors if not e.is_octave_error]
    share = (lambda xs: round(float(np.mean(xs)), 3) if errors else None)
    return {"asked_bpm": bpm, "clips": len(errors), "measured_bpm": [round(m, 1) for m in measured],
            "median_bpm": round(float(np.median(measured)), 1) if measured else None,
            "mean_abs_error_bpm": round(float(np.mean(same)), 1) if same else None,
            "octave_error_rate": share([e.is_octave_error for e in errors]),
            "within_8pct_any_octave": share([near_any_octave(e) for e in errors])}


def ear_summary(asked: list[float], measured: list[float], tempos: list[float]) -> dict:
    """One ear's rows per asked tempo, its rank correlation with the asked tempo, its share near it at any octave."""
    errors = [tempo_error_of(m, a) for m, a in zip(measured, asked, strict=True)]
    return {"rows": [tempo_row(bpm, [e for e in errors if e.asked_bpm == bpm]) for bpm in tempos],
            "spearman_asked_vs_measured": round(float(spearmanr(asked, measured).statistic), 3),
            "within_8pct_any_octave": round(float(np.mean([near_any_octave(e) for e in errors])), 3)}


def reference(corpus: Path, split: str, asked: list[float], trackers: dict[str, Ear]) -> dict:
    """The trackers on the real clips of `split` that state a tempo: per asked tempo, the clips within ±BAND of it
    (measured against their own stated tempo), and the rank correlation of stated and measured over all of them."""
    stated, heard, own, detuned = [], {ear: [] for ear in trackers}, {}, {}
    for clip in iter_samples(corpus, split):
        bpm = clip_bpm(clip["meta"])
        if bpm == bpm:  # not NaN
            stated.append(bpm)
            for ear, listen in trackers.items():
                heard[ear].append(listen(clip["audio"].mean(0), clip["sample_rate"]))
            envelope = onset_envelope(clip["audio"].mean(0), clip["sample_rate"], ENVELOPE_RATE)
            phase, source = clip_beat_phase(clip["meta"]), clip["meta"].get("source", "unknown")
            own.setdefault(source, []).append(grid_locking(envelope, bpm, phase))
            detuned.setdefault(source, []).append(grid_locking(envelope, DETUNE * bpm, phase))
    data = {"corpus": str(corpus), "split": split, "band": BAND, "clips": len(stated),
            "beat_locking_by_source": {source: {"own_grid": locking_figures(own[source]),
                                                f"grid_x{DETUNE}": locking_figures(detuned[source])} for source in own}}
    for ear, measured in heard.items():
        errors = [tempo_error_of(m, s) for m, s in zip(measured, stated, strict=True)]
        rho = float(spearmanr(stated, measured).statistic) if len(errors) > 1 else None
        data[ear] = {"rows": [tempo_row(bpm, [e for s, e in zip(stated, errors) if abs(s - bpm) <= BAND * bpm])
                              for bpm in asked],
                     "spearman_stated_vs_measured": None if rho is None else round(rho, 3),
                     "within_8pct_any_octave": round(float(np.mean([near_any_octave(e) for e in errors])), 3)
                     if errors else None}
    return data


if __name__ == "__main__":
    main()
