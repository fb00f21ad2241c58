"""`melody eval dpd`: does the DPD turn a clip's semantic tokens back into that clip's music?

For each held-out clip (its first `seconds`): the trained tokenizer's semantic tokens → the DPD
from noise (the paper's sampler, T steps, guidance w, seeded) → the VAE decoder → audio. The
report compares the generated audio with the original clip and, as the chance level, with
another clip of the split (half the split away: another piece):

- mel distance (80-bin log-mel L1, `melody.eval.metrics.mel_distance`) generated ↔ original,
  generated ↔ another clip, and the VAE's own reconstruction ↔ original (the floor the DPD cannot
  beat, since it generates VAE latents);
- with the pretrained musicnn tagger: the share of the original's top-5 tags among the
  generated audio's, beside the same overlap between two different originals.

Several step counts may be given (`steps`): the report then has one row per count, the
steps-vs-quality curve of the paper's Table 2 on our data. The picture shows log-mels of a few
clips: original, VAE reconstruction, DPD from the tokens at the largest step count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from melody.data.loader import ShardDataset, make_loader
from melody.data.plots import spectrogram_grid
from melody.diffusion import SCHEDULES, angles_from_steps, guided_in_one_call, sample
from melody.dpd import DPD
from melody.errors import MelodyError
from melody.eval.metrics import mel_distance, top_k_overlap
from melody.io import write_json_atomic
from melody.semantic.tokenizer import SemanticTokenizer
from melody.vae import VAE


@dataclass
class DPDRow:
    steps: int
    mel_distance: float  # generated ↔ original
    mel_distance_other_clip: float  # generated ↔ another clip (chance)
    tag_top5_overlap: float | None  # original's top-5 tags among the generated audio's
    forward_passes_per_clip: int


@dataclass
class DPDReport:
    clips: int
    split: str
    seconds: float
    guidance: float
    schedule: str
    mel_distance_vae: float  # the VAE's reconstruction ↔ original: the floor
    tag_top5_overlap_vae: float | None
    tag_top5_overlap_between_different_clips: float | None
    rows: list[DPDRow]


@torch.no_grad()
def evaluate_dpd(dpd: DPD, vae: VAE, tokenizer: SemanticTokenizer, data_root: str | Path, split: str = "test",
                 seconds: float = 10.0, steps: tuple[int, ...] = (10,), guidance: float = 2.5, schedule: str = "melody",
                 limit: int | None = None, tagger=None, seed: int = 0, progress=None, mulan=None):
    """The report and (key, original, reconstruction, generated) of the first clips, for the picture. `mulan`: the
    MuLan whose tokens of each clip a DPD with `dpd.mulan_condition` hears (its own sound)."""
    if dpd.mulan_levels and mulan is None:
        raise MelodyError("this DPD hears MuLan tokens too (dpd.mulan_condition); give the MuLan it was trained with")
    rate = vae.cfg.sample_rate
    dataset = ShardDataset.from_corpus(data_root, split, crop_seconds=seconds, sample_rate=rate, channels=vae.cfg.channels,
                                       shuffle=0, random_offset=False)
    device = next(dpd.parameters()).device
    real, recon, made = [], [], {t: [] for t in steps}
    keys = []
    for batch in make_loader(dataset, 1, 0, drop_last=False):
        n = int(batch["length"][0])
        audio = batch["audio"][..., :n].to(device)
        tokens = tokenizer.tokens(audio.mean(1))
        tokens = dpd.condition_of(tokens, mulan.tokens_from_audio(audio.mean(1)) if dpd.mulan_levels else None)
        z = vae.encode_latents(audio, torch.Generator(device=device).manual_seed(seed))
        real.append(audio[0].mean(0).cpu())
        recon.append(vae.decode_latents(z, n)[0].mean(0).cpu())
        for t in steps:
            noise = torch.randn(z.shape, generator=torch.Generator(device=device).manual_seed(seed), device=device)
            latents = sample(guided_in_one_call(dpd, guidance), noise, angles_from_steps(SCHEDULES[schedule](t)), tokens)
            made[t].append(vae.decode_latents(latents, n)[0].mean(0).cpu())
        keys.append(batch["key"][0])
        if progress is not None:
            progress()
        if limit is not None and len(keys) >= limit:
            break
    if len(keys) < 2:
        raise MelodyError(f"{data_root}: the '{split}' split has {len(keys)} clip(s); the report needs at least 2")
    k = len(keys)
    other = [(i + k // 2) % k for i in range(k)]

    def distance(a, b):
        return float(mel_distance(a[None, None], b[None, None], rate)[0])

    tags = {"real": None, "recon": None}
    if tagger is not None:
        tags = {"real": [tagger.tags(x.numpy(), rate) for x in real], "recon": [tagger.tags(x.numpy(), rate) for x in recon]}

    def overlap(generated):
        if tagger is None:
            return None
        return float(np.mean([top_k_overlap(tags["real"][i], tagger.tags(generated[i].numpy(), rate), 5) for i in range(k)]))

    rows = [DPDRow(steps=t,
                   mel_distance=float(np.mean([distance(made[t][i], real[i]) for i in range(k)])),
                   mel_distance_other_clip=float(np.mean([distance(made[t][i], real[other[i]]) for i in range(k)])),
                   tag_top5_overlap=overlap(made[t]),
                   forward_passes_per_clip=t)  # guidance batched into the same pass
            for t in steps]
    report = DPDReport(
        clips=k, split=split, seconds=seconds, guidance=guidance, schedule=schedule,
        mel_distance_vae=float(np.mean([distance(recon[i], real[i]) for i in range(k)])),
        tag_top5_overlap_vae=None if tagger is None else float(np.mean(
            [top_k_overlap(tags["real"][i], tags["recon"][i], 5) for i in range(k)])),
        tag_top5_overlap_between_different_clips=None if tagger is None else float(np.mean(
            [top_k_overlap(tags["real"][i], tags["real"][other[i]], 5) for i in range(k)])),
        rows=rows,
    )
    last = max(steps)
    examples = [(keys[i], real[i].numpy(), recon[i].numpy(), made[last][i].numpy()) for i in range(min(4, k))]
    return report, examples


def write_dpd_report(report: DPDReport, examples, sample_rate: int, out: str | Path) -> tuple[Path, Path]:
    """`out/dpd_eval.json` and `out/dpd_eval.png` (original / VAE reconstruction / DPD log-mels)."""
    out = Path(out)
    json_path = write_json_atomic(out / "dpd_eval.json", asdict(report))
    last = max(r.steps for r in report.rows)
    rows = {"original": [(k, r) for k, r, _, _ in examples],
            "VAE reconstruction": [(k, c) for k, _, c, _ in examples],
            f"DPD from the tokens ({last} steps)": [(k, g) for k, _, _, g in examples]}
    return json_path, spectrogram_grid(rows, sample_rate, out / "dpd_eval.png")


def summary(report: DPDReport) -> str:
    parts = [f"{r.steps} steps: mel distance {r.mel_distance:.3f} (another clip {r.mel_distance_other_clip:.3f})"
             + (f", tag overlap {r.tag_top5_overlap:.2f}" if r.tag_top5_overlap is not None else "") for r in report.rows]
    tail = (f"; VAE floor {report.mel_distance_vae:.3f}"
            + (f", tag overlap VAE {report.tag_top5_overlap_vae:.2f} / different clips "
               f"{report.tag_top5_overlap_between_different_clips:.2f}" if report.tag_top5_overlap_vae is not None else ""))
    return f"{report.clips} {report.split} clips: " + "; ".join(parts) + tail
