"""Where is a clip's tempo lost on its way through melody? Issue 6's diagnosis as a script.

For held-out clips whose captions state a tempo, the DPD makes latents from each clip's *own* semantic tokens (what a
perfect semantic LM would write) and the VAE decodes them; librosa's beat tracker (`melody.eval.quality.measure_tempo`)
measures the tempo. Beside it: the real clip, and the VAE's reconstruction of it (the decoder's own ceiling, from the
posterior mean). Per DPD setting (steps:guidance), and for the reconstruction and the real clips:
- error against the real clip's measured tempo, at the nearest octave (×½, ×1, ×2): its mean and the share
  within 5 BPM;
- the Spearman rank correlation of the measured tempo with the caption's stated one (the real clips' is the
  reference: the beat tracker is not perfect either);
- pulse clarity (`melody.eval.quality.pulse_clarity`) of the onset envelope at the token rate: how periodic the
  onsets are, whatever their tempo.

Two more rows ask whether the tokens themselves carry the rhythm, whatever the DPD does with them:
- "tokens": the best a decoder that sees only (previous token, token) can say about onsets. On `--train-clips`
  training clips, the mean onset strength of each such pair; on the held-out clips, the onset envelope that table
  predicts: its correlation with the real envelope, and its pulse clarity.
- "follows a token shift": the clips' tokens moved by 7 frames (0.28 s) through the DPD with the same noise; the
  share of clips whose output's onsets move by that much (±1 frame), i.e. whether the DPD keeps its tokens' timing.

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
from melody.eval.quality import measure_tempo, nearest_octave, onset_envelope, pulse_clarity  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dpd_tempo.json"


def octave_error(measured: float, reference: float) -> float:
    """|measured − k · reference| for the octave k that `melody.eval.quality` forgives (the beat tracker's ambiguity)."""
    if not reference > 0:  # no beat in the real clip: nothing to be near
        return measured
    return abs(measured - nearest_octave(measured, reference) * reference)


SHIFT = 7  # token frames (0.28 s at 25 Hz): more than an onset's width, less than a beat at 60–200 BPM


def summary(measured: list[float], real: list[float], stated: list[float], envelopes: list[np.ndarray],
            frame_rate: float) -> dict:
    from scipy.stats import spearmanr

    errors = [octave_error(m, r) for m, r in zip(measured, real, strict=True)]
    return {"mean_abs_error_vs_real_bpm": round(float(np.mean(errors)), 2),
            "within_5_bpm_of_real": round(float(np.mean([e <= 5.0 for e in errors])), 3),
            "spearman_vs_stated": round(float(spearmanr(measured, stated).statistic), 3),
            "pulse_clarity": round(float(np.mean([pulse_clarity(e, frame_rate) for e in envelopes])), 3),
            "measured_bpm": [round(m, 1) for m in measured]}


def previous_tokens(tokens: np.ndarray) -> np.ndarray:
    """Each frame's previous token (the first frame's own)."""
    return np.r_[tokens[:1], tokens[:-1]]


def pair_onset_table(tokens: list[np.ndarray], envelopes: list[np.ndarray], vocab: int) -> np.ndarray:
    """Mean onset strength `(vocab, vocab)` of each (previous, current) token pair over the frames given; unseen
    pairs get the overall mean."""
    total, count = np.zeros((vocab, vocab)), np.zeros((vocab, vocab))
    for t, e in zip(tokens, envelopes, strict=True):
        n = min(len(t), len(e))
        pairs = (previous_tokens(t[:n]), t[:n])
        np.add.at(total, pairs, e[:n])
        np.add.at(count, pairs, 1)
    overall = total.sum() / max(count.sum(), 1)
    return np.where(count > 0, total / np.maximum(count, 1), overall)


def decoded_envelope(table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return table[previous_tokens(tokens), tokens]


def lag_of(a: np.ndarray, b: np.ndarray, most: int) -> int:
    """The lag (frames, −most … most) at which `b` best matches `a` moved later."""
    a, b = a - a.mean(), b - b.mean()
    n = min(len(a), len(b))
    scores = [float(a[max(0, -k):n - max(0, k)] @ b[max(0, k):n - max(0, -k)]) for k in range(-most, most + 1)]
    return int(np.argmax(scores)) - most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=24, help="clips spread over the split (those stating a tempo kept)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settings", default="5:2.5,10:2.5,5:5", help="DPD steps:guidance pairs, comma-separated")
    parser.add_argument("--train-clips", type=int, default=200, help="training clips the token row's pair table is fitted on")
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
    fps = model.tokenizer.config.frame_rate
    real_env = [onset_envelope(a.numpy(), rate, fps) for a in audio]
    rows = {"real": summary(real, real, stated, real_env, fps)}
    tokens, reconstructions = [], []
    with torch.no_grad():
        for a in audio:
            x = a[None].to(args.device)
            tokens.append(model.tokenizer.tokens(x, torch.tensor([x.shape[-1]], device=args.device)))
            posterior = model.vae.encode(x[:, None])
            reconstructions.append(model.vae.decode(posterior.mean, x.shape[-1])[0].mean(0).cpu().numpy())
    rows["vae_reconstruction"] = summary([measure_tempo(r, rate) for r in reconstructions], real, stated,
                                         [onset_envelope(r, rate, fps) for r in reconstructions], fps)
    train = read_clips(args.data, "train", args.seconds, rate, args.train_clips)
    with torch.no_grad():
        train_tokens = [model.tokenizer.tokens(torch.from_numpy(c).float()[None].to(args.device))[0].cpu().numpy()
                        for c in train.audio]
    table = pair_onset_table(train_tokens, [onset_envelope(c, rate, fps) for c in train.audio],
                             model.tokenizer.quantizer.codebook_size)
    decoded = [decoded_envelope(table, t[0].cpu().numpy()) for t in tokens]
    n = [min(len(d), len(e)) for d, e in zip(decoded, real_env, strict=True)]
    rows["tokens (pair-table decoder)"] = {
        "onset_correlation_with_real": round(float(np.nanmean([np.corrcoef(d[:k], e[:k])[0, 1]
                                                               for d, e, k in zip(decoded, real_env, n, strict=True)])), 3),
        "pulse_clarity": round(float(np.mean([pulse_clarity(d, fps) for d in decoded])), 3),
        "train_clips": len(train.audio)}
    settings = [(int(steps), float(guidance)) for steps, guidance in (s.split(":") for s in args.settings.split(","))]
    for steps, guidance in settings:
        clock, measured, envelopes = time.perf_counter(), [], []
        with torch.no_grad():
            for i, (a, t) in enumerate(zip(audio, tokens, strict=True)):
                latents = model.latents(model.dpd_for_sampling(), t, args.seconds, steps, guidance, seed=i)
                made = model.vae.decode_latents(latents, a.shape[-1])[0].mean(0).cpu().numpy()
                measured.append(measure_tempo(made, rate))
                envelopes.append(onset_envelope(made, rate, fps))
        name = f"dpd {steps} steps, guidance {guidance:g}"
        rows[name] = summary(measured, real, stated, envelopes, fps) | {"seconds": round(time.perf_counter() - clock, 1)}
        print(f"{steps}:{guidance:g}: {rows[name]}", flush=True)
    steps, guidance = settings[0]
    lags = []
    with torch.no_grad():
        for i, (a, t) in enumerate(zip(audio, tokens, strict=True)):
            made = []
            for moved in (t, torch.roll(t, SHIFT, dims=1)):
                latents = model.latents(model.dpd_for_sampling(), moved, args.seconds, steps, guidance, seed=i)
                made.append(onset_envelope(model.vae.decode_latents(latents, a.shape[-1])[0].mean(0).cpu().numpy(), rate, fps))
            lags.append(lag_of(made[0], made[1], 2 * SHIFT))
    rows["follows a token shift"] = {"shift_frames": SHIFT, "share_moved_by_the_shift": round(float(np.mean(
        [abs(lag - SHIFT) <= 1 for lag in lags])), 3), "lags": lags, "setting": f"{steps}:{guidance:g}"}
    report = {"clips": len(kept), "split": args.split, "seconds": args.seconds, "bundle": str(args.bundle),
              "stated_bpm": stated, "rows": rows, "machine": machine(args.device, args.threads, load_start),
              "command": " ".join(sys.argv)}
    write_json_atomic(args.out, report)
    width = max(len(k) for k in rows)
    print(f"{len(kept)} clips stating a tempo; error vs the real clip's measured tempo (nearest octave)")
    for name, r in rows.items():
        if "mean_abs_error_vs_real_bpm" in r:
            print(f"{name:<{width}}  mean |err| {r['mean_abs_error_vs_real_bpm']:6.2f} BPM  within 5 BPM "
                  f"{r['within_5_bpm_of_real']:.2f}  Spearman vs stated {r['spearman_vs_stated']:+.2f}  "
                  f"pulse clarity {r['pulse_clarity']:.2f}")
        else:
            print(f"{name:<{width}}  " + "  ".join(f"{k} {v}" for k, v in r.items() if k != "lags"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
