"""`melody eval music`: is the music MeLoDy generates like real music, and like what its caption asked for?

Issue 7, item 1, end to end; the MeLoDy paper's evaluation (Table 2: FAD and MuLan cycle consistency,
real audio as the reference) on our own held-out split. For each captioned clip of the split (its
first `seconds`), the whole pipeline (`MeLoDy.generate`) makes `seconds` of music from the clip's
caption (clip i with seed + i, a few prompts per call); then, with the measures of
`melody.eval.quality` (all the math is there, this module only orchestrates):

- FAD of generated vs real clips on two embeddings, each named: the pretrained musicnn tagger's 200-d
  layer (a judge nobody here trained) and the bundle's own MuLan audio tower; beside each, the floor
  that two disjoint sets of real clips reach;
- MCC: the mean cosine of a caption's MuLan text embedding and its clip's MuLan audio embedding, for
  the generated clips and, as the reference, for the real clips of the same captions;
- tag adherence: the musicnn tags the caption asks for (`quality.prompt_tags`), their mean score ÷
  the clip's mean tag score, on generated vs real clips of the same captions;
- tempo: librosa's beat tracker against the BPM the caption states, octave errors (×2, ×½) apart;
- attribute classifiers (`melody.eval.attributes`): style, lead instrument family, tempo class and mode, each
  learnt from musicnn embeddings of train-split clips during the run; their accuracy on the real clips and, against
  the attributes of the clip whose caption was the prompt, on the generated ones;
- forward passes per stage and seconds per generated clip, from `GenerateOutput`.

Choices where the issue is silent:
- FAD set sizes. FAD grows as sets shrink, so a floor only compares with the generated number when the
  two are measured the same way (see `quality.py`): the real clips are split into disjoint halves A
  and B (`disjoint_halves`); A is the reference; the floor is FAD(B, A) and the generated number
  FAD(G_B, A), G_B the music generated from B's captions, as many clips as B and asking for the same
  music. MCC, tags and tempo use every clip. With few clips (fewer than the embedding's dimensions)
  both numbers are large and mostly the sample-size bias: read them against each other.
- MuLan embeddings are computed once and shared by FAD and MCC: MCC is the mean of the per-clip
  `quality.pair_cosines` of the text and audio embeddings, exactly what `quality.mulan_cycle_consistency` computes.
- Forward passes are those of one `generate` call: the prompts of a batch go through the same network
  calls, so they are what one clip alone needs (the paper's count). Seconds per clip: each call's wall
  time ÷ its prompts, so batching makes them lower than a clip alone.
- Clips without a caption are skipped (and counted); real clips shorter than `seconds` are measured as
  they are (MuLan with their valid length), the generated ones are always `seconds` long.
- Attribute classifiers need the corpus' train split: a corpus without one (or `attribute_clips` 0) gets the
  rest of the report and a note saying the attributes were not measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from melody.data.loader import ShardDataset, make_loader
from melody.data.plots import spectrogram_grid
from melody.data.shards import read_manifest, shard_paths
from melody.ears.musicnn import MusicnnTagger
from melody.errors import MelodyError
from melody.eval.attributes import (FEATURES, TRAIN_SPLIT, Accuracy, AttributeReport, score_attributes, spread_clips,
                                    spread_indices, train_classifiers)
from melody.eval.quality import (FADReport, cycle_consistency, disjoint_halves, fad_report, mulan_embeddings,
                                 musicnn_outputs, pair_cosines, prompt_bpm, tag_adherence, tempo_error, tempo_summary)
from melody.io import write_json_atomic, write_text_atomic
from melody.pipeline import MAX_BEST_OF, MeLoDy

MIN_CLIPS = 4  # two real halves of at least 2 clips each: a covariance needs 2
BATCH_SIZE = 4  # prompts per `generate` call
PICTURE_CLIPS = 4  # real vs generated spectrograms in the picture
TEXT_BATCH = 16  # captions per MuLan text-tower call, as `quality.mulan_cycle_consistency`
ATTRIBUTE_CLIPS = 400  # train clips the attribute classifiers learn from
# What the judged music is made from: the whole pipeline from the clip's caption, or the real clip made again by the
# pipeline's second half (`MeLoDy.resynthesize`): the DPD from the clip's own semantic tokens (the LM left out), or
# the VAE alone. Judged alike, the three split the gap between the pipeline and real music among its stages.
SOURCES = {"caption": None, "tokens": "dpd", "vae": "vae"}
SOURCE_WORDS = {"caption": "music from each clip's caption",
                "tokens": "music the DPD made from each real clip's own semantic tokens (the semantic LM left out)",
                "vae": "each real clip encoded and decoded by the VAE"}


@dataclass
class Compared:
    """One measure of the generated clips beside the same measure of the real clips of the same captions, and
    of the generated clips against another clip's caption (clip i against caption i + n/2: the chance level)."""

    generated: float | None
    real: float | None
    mismatched: float | None = None


@dataclass
class NamedFAD:
    embedding: str  # what the clips were embedded with
    dims: int
    fad: FADReport  # generated_vs_real, and real_vs_real: the floor


@dataclass
class TempoReport:
    clips: int  # clips whose caption states a tempo
    generated: dict[str, float]  # quality.tempo_summary of the generated clips
    real: dict[str, float]  # ... of the real clips
    mismatched: dict[str, float] | None = None  # ... of the generated clips against another caption's tempo


@dataclass
class ClipResult:
    key: str
    caption: str
    seed: int
    mcc_generated: float  # cos(MuLan text, MuLan audio)
    mcc_real: float
    tag_adherence_generated: float | None  # None: the caption asks for no tag
    tag_adherence_real: float | None
    asked_bpm: float | None  # None: the caption states no tempo
    bpm_generated: float | None
    bpm_real: float | None


@dataclass
class MusicReport:
    bundle: str
    split: str
    clips: int
    skipped_uncaptioned: int
    seconds: float  # of music per clip
    sample_rate: int
    steps: int  # DPD sampling steps
    guidance: float  # DPD classifier-free guidance
    seed: int  # clip i: seed + i
    batch_size: int
    fad: dict[str, NamedFAD]  # "musicnn", "mulan"
    mcc: Compared
    tag_adherence: Compared  # mean over the clips whose caption asks for tags
    tag_clips: int
    tempo: TempoReport
    attributes: AttributeReport  # classifiers of style, lead instrument family, tempo class, mode
    forward_passes: dict[str, int]  # per stage, one generate call (= one clip alone)
    seconds_per_clip: dict[str, float]  # per stage, wall time ÷ clips
    speed_x_real_time: float  # seconds of music per second of generation
    per_clip: list[ClipResult]
    # the corpus's shard digest from its manifest (`shards_digest`): reports on the same corpus share it; None for a
    # corpus built before manifests carried one, or read from URLs
    corpus_digest: str | None = None
    fit_tempo: bool = False  # the pipeline's tempo fit was on (`MeLoDy.generate(fit_tempo=)`)
    source: str = "caption"  # what the judged music was made from (`SOURCES`)
    best_of: int = 1  # candidates per caption, the one MuLan finds closest kept (`MeLoDy.generate(best_of=)`)


@dataclass
class RealClips:
    keys: list[str]
    captions: list[str]
    audio: list[np.ndarray]  # mono (n_i,) float32, n_i ≤ seconds · rate
    metas: list[dict]  # the clips' metadata (their attributes label them for the attribute classifiers)
    skipped_uncaptioned: int


def read_clips(data_root: str | Path, split: str, seconds: float, sample_rate: int,
               limit: int | None = None) -> RealClips:
    """The first `seconds` of the split's captioned clips (mono, at `sample_rate`), in corpus order; with a `limit`,
    that many clips spread evenly over the split (`spread_indices`: a corpus is written source by source, so its
    first clips would all come from one source)."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise MelodyError(f"--seconds must be a positive number of seconds, got {seconds}")
    paths = shard_paths(data_root, split)  # one-line errors: no corpus folder, no such split
    if not paths:
        raise MelodyError(f"{data_root}: the '{split}' split holds no clips")
    dataset = ShardDataset(paths, crop_seconds=seconds, sample_rate=sample_rate, channels=1, shuffle=0,
                           random_offset=False)
    wanted = None
    if limit is not None:
        total = int(read_manifest(data_root)["splits"][split].get("clips", 0))
        wanted = set(spread_indices(total, limit)) if total else None
    clips = RealClips([], [], [], [], 0)
    for i, batch in enumerate(make_loader(dataset, 1, 0, drop_last=False)):
        if limit is not None and len(clips.keys) >= limit:
            break
        if wanted is not None and i not in wanted:
            continue
        caption = batch["caption"][0].strip()
        if not caption:
            clips.skipped_uncaptioned += 1
            continue
        clips.keys.append(batch["key"][0])
        clips.captions.append(caption)
        clips.audio.append(batch["audio"][0, 0, : int(batch["length"][0])].numpy())
        clips.metas.append(batch["meta"][0])
    if len(clips.keys) < MIN_CLIPS:
        raise MelodyError(f"{data_root}: {len(clips.keys)} captioned clip(s) of the '{split}' split to evaluate; the "
                          f"report needs at least {MIN_CLIPS} (two real halves for the FAD floor)")
    return clips


@torch.no_grad()
def evaluate_music(model: MeLoDy, data_root: str | Path, split: str = "test", seconds: float = 10.0,
                   limit: int | None = None, steps: int | None = None, guidance: float | None = None, seed: int = 0,
                   batch_size: int = BATCH_SIZE, tagger: MusicnnTagger | None = None, bundle: str = "",
                   progress: Callable[[int], None] | None = None, attribute_clips: int = ATTRIBUTE_CLIPS,
                   baseline=None, fit_tempo: bool = False, source: str = "caption",
                   best_of: int = 1) -> tuple[MusicReport, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The report and (caption, real, generated) mono audio of the first clips, for the picture.

    `progress(k)` is told after each `generate` call how many clips it made. The attribute classifiers learn from
    `attribute_clips` clips spread over the train split (0: none). With a `baseline` (a `MusicLMStyle` built on
    `model`), the baseline makes the music and `model` only judges it (its MuLan), with the same clips, captions
    and seeds as `model`'s own evaluation: the two reports compare line by line. `fit_tempo`: the pipeline's tempo
    fit on (`MeLoDy.generate`); off by default, since it listens with the beat tracker the tempo rows score with, and
    the baseline has none. `source` (`SOURCES`): "tokens" or "vae" judge the real clips made again by the DPD from
    their own semantic tokens, or by the VAE, instead of music from the captions (the captions still score them).
    `best_of` N: each caption's music is the best of N candidates by MuLan (`MeLoDy.generate`); MuLan then chose what
    the MCC and FAD-MuLan rows score, so those rows measure the choice too, while the tagger's and the attribute
    classifiers' rows stay independent judges."""
    if source not in SOURCES:
        raise MelodyError(f"--source {source}: choose one of {', '.join(SOURCES)}")
    if baseline is not None and fit_tempo:
        raise MelodyError("--fit-tempo is the pipeline's; the MusicLM-style baseline has no tempo fit")
    if source != "caption" and (baseline is not None or fit_tempo or best_of != 1):
        raise MelodyError(f"--source {source} makes the real clips again with the bundle's own stages; "
                          f"--baseline, --fit-tempo and --best-of go with --source caption")
    if baseline is not None and best_of != 1:
        raise MelodyError("--best-of is the pipeline's; the MusicLM-style baseline draws one candidate")
    if batch_size < 1:
        raise MelodyError(f"--batch-size must be at least 1, got {batch_size}")
    if not isinstance(best_of, int) or not 1 <= best_of <= MAX_BEST_OF:
        raise MelodyError(f"--best-of {best_of}: draw between 1 and {MAX_BEST_OF} candidates")
    if attribute_clips < 0:
        raise MelodyError(f"--attribute-clips must be 0 (no attribute classifiers) or more, got {attribute_clips}")
    if steps is not None and steps < 1:
        raise MelodyError(f"--steps must be at least 1, got {steps}")
    rate = model.vae.cfg.sample_rate
    real = read_clips(data_root, split, seconds, rate, limit)
    manifest = read_manifest(data_root)
    train = None  # the attribute classifiers' train clips, read lazily; a missing train split: no classifiers
    if attribute_clips > 0 and TRAIN_SPLIT in manifest["splits"]:
        train = spread_clips(data_root, TRAIN_SPLIT, seconds, rate, attribute_clips)  # an empty split fails here, early
    n, captions = len(real.keys), real.captions
    steps = model.cfg.dpd.steps if steps is None else steps
    guidance = model.cfg.dpd.guidance if guidance is None else guidance
    if baseline is not None or source == "vae":
        steps, guidance = 0, 0.0  # no diffusion: the report says so (its steps and guidance are the DPD's)

    def make(first: int, last: int) -> list:
        if baseline is not None:
            return [baseline.generate(captions[first:last], seconds, seed=seed + first)]
        if source == "caption":
            return [model.generate(captions[first:last], seconds, steps, guidance, seed=seed + first, fit_tempo=fit_tempo,
                                   best_of=best_of)]
        # the real clips of the batch, in runs of equal length (a split's last clips may be shorter)
        runs, i = [], first
        while i < last:
            j = i + 1
            while j < last and len(real.audio[j]) == len(real.audio[i]):
                j += 1
            clips = torch.from_numpy(np.stack(real.audio[i:j]))[:, None]
            runs.append(model.resynthesize(clips, SOURCES[source], steps or None, guidance, seed=seed + i))
            i = j
        return runs

    # 1. the music to judge; clip i with seed + i (a batch starting at clip s is seeded s)
    generated, passes, wall = [], None, {}
    for start in range(0, n, batch_size):
        for out in make(start, min(start + batch_size, n)):
            generated.extend(out.audio.mean(1).cpu())  # (samples,) each
            passes = passes or dict(out.forward_passes)  # the same for every call: they depend on duration and steps
            for stage, s in out.seconds.items():
                wall[stage] = wall.get(stage, 0.0) + s
            if progress is not None:
                progress(out.audio.shape[0])
    generated_np = [g.numpy() for g in generated]

    # 2. embeddings: musicnn (embedding + tag scores) and MuLan (audio of both sets, text of the captions)
    tagger = tagger or MusicnnTagger.load()
    judged = {"generated": musicnn_outputs(generated_np, rate, tagger), "real": musicnn_outputs(real.audio, rate, tagger)}
    mulan = {"generated": mulan_embeddings(model.mulan, *_padded(generated_np)),
             "real": mulan_embeddings(model.mulan, *_padded(real.audio))}
    text = torch.cat([model.mulan.embed_text(captions[i:i + TEXT_BATCH]).float().cpu() for i in range(0, n, TEXT_BATCH)])

    # 3. FAD: reference half A; the floor is real half B against A, the generated number G_B (B's captions) against A
    a, b = disjoint_halves(n, seed)
    fad = {
        "musicnn": NamedFAD("musicnn MTT tagger, penultimate layer (mean over 3-s patches)", judged["real"].embeddings.shape[1],
                            fad_report(judged["generated"].embeddings[b], judged["real"].embeddings[a],
                                       judged["real"].embeddings[b])),
        "mulan": NamedFAD("this bundle's MuLan audio tower", int(text.shape[1]),
                          fad_report(mulan["generated"][b], mulan["real"][a], mulan["real"][b])),
    }

    # 4. MCC, tags, tempo: every clip, generated vs real of the same caption
    cosine = {k: pair_cosines(text, v) for k, v in mulan.items()}  # (n,) per clip; their mean is the MCC
    adherence = {k: tag_adherence(captions, v.tag_scores) for k, v in judged.items()}
    other = [(i + n // 2) % n for i in range(n)]  # another clip's caption: what chance agreement looks like
    adherence["mismatched"] = tag_adherence([captions[j] for j in other], judged["generated"].tag_scores)
    asked = [prompt_bpm(c) for c in captions]
    tempo = {"generated": {}, "real": {}, "mismatched": {}}
    for i, bpm in enumerate(asked):
        if bpm is not None and bpm > 0:
            tempo["generated"][i] = tempo_error(generated_np[i], rate, bpm)
            tempo["real"][i] = tempo_error(real.audio[i], rate, bpm)
        if asked[other[i]] is not None and asked[other[i]] > 0:
            tempo["mismatched"][i] = tempo_error(generated_np[i], rate, asked[other[i]])
    # 5. attribute classifiers, learnt from train clips; the test and generated clips' embeddings are the FAD's
    if train is None:
        why = "--attribute-clips 0" if attribute_clips == 0 else f"the corpus has no '{TRAIN_SPLIT}' split"
        attributes = AttributeReport(TRAIN_SPLIT, 0, FEATURES, {}, f"not measured: {why}")
    else:
        classifiers, read = train_classifiers(train, rate, tagger)
        caveat = f"the '{split}' split is the classifiers' own: real accuracy is partly training accuracy"
        attributes = AttributeReport(TRAIN_SPLIT, read, FEATURES,
                                     score_attributes(classifiers, judged["real"].embeddings,
                                                      judged["generated"].embeddings, real.metas, other),
                                     caveat if split == TRAIN_SPLIT else "")
    tagged = ~np.isnan(adherence["real"])
    mismatched_tagged = ~np.isnan(adherence["mismatched"])

    def measured(kind: str, i: int) -> float | None:
        return tempo[kind][i].measured_bpm if i in tempo[kind] else None

    per_clip = [ClipResult(real.keys[i], captions[i], seed + i, float(cosine["generated"][i]), float(cosine["real"][i]),
                           _number(adherence["generated"][i]), _number(adherence["real"][i]), asked[i],
                           measured("generated", i), measured("real", i)) for i in range(n)]
    per_clip_seconds = {stage: s / n for stage, s in wall.items()}
    total = sum(per_clip_seconds.values())
    report = MusicReport(
        bundle=bundle, split=split, clips=n, skipped_uncaptioned=real.skipped_uncaptioned, seconds=seconds,
        sample_rate=rate, steps=steps, guidance=guidance, seed=seed, batch_size=batch_size, fad=fad, fit_tempo=fit_tempo,
        mcc=Compared(float(cosine["generated"].mean()), float(cosine["real"].mean()),
                     cycle_consistency(text[other], mulan["generated"])),
        tag_adherence=Compared(*(float(adherence[k][tagged].mean()) if tagged.any() else None for k in ("generated", "real")),
                               float(adherence["mismatched"][mismatched_tagged].mean()) if mismatched_tagged.any() else None),
        tag_clips=int(tagged.sum()),
        tempo=TempoReport(len(tempo["real"]), tempo_summary(list(tempo["generated"].values())),
                          tempo_summary(list(tempo["real"].values())), tempo_summary(list(tempo["mismatched"].values()))),
        attributes=attributes, forward_passes=passes, seconds_per_clip=per_clip_seconds,
        speed_x_real_time=seconds / total if total > 0 else math.inf,
        per_clip=per_clip, corpus_digest=manifest.get("digest"), source=source, best_of=best_of,
    )
    examples = [(captions[i], real.audio[i], generated_np[i]) for i in range(min(PICTURE_CLIPS, n))]
    return report, examples


def write_music_report(report: MusicReport, examples, out: str | Path) -> tuple[Path, Path, Path]:
    """`out/music_eval.json`, `out/music_eval.md` (the table) and `out/music_eval.png` (real vs generated log-mels)."""
    out = Path(out)
    json_path = write_json_atomic(out / "music_eval.json", _json_safe(asdict(report)))
    md_path = write_text_atomic(out / "music_eval.md", markdown(report))
    rows = {"real": [(caption, r) for caption, r, _ in examples],
            "generated": [(caption, g) for caption, _, g in examples]}
    return json_path, md_path, spectrogram_grid(rows, report.sample_rate, out / "music_eval.png")


def markdown(report: MusicReport) -> str:
    """The report as a Markdown table: metric | generated | real (reference) | note."""
    t, g, r = report.tempo, report.tempo.generated, report.tempo.real
    m = report.tempo.mismatched or {}
    fad_rows = [(f"FAD, {name} ({f.dims}-d) ↓", _fmt(f.fad.generated_vs_real), _fmt(f.fad.real_vs_real) + " (floor)", "—",
                 f"{f.embedding}; generated: the music of real half B's captions ({f.fad.n_generated} clips), real: "
                 f"half B itself ({f.fad.n_real_split}), each against real half A ({f.fad.n_real})")
                for name, f in report.fad.items()]
    passes = ", ".join(f"{k} {v}" for k, v in report.forward_passes.items())
    seconds = ", ".join(f"{k} {v:.3f}" for k, v in report.seconds_per_clip.items())
    rows = [
        *fad_rows,
        ("MCC (MuLan cycle consistency) ↑", _fmt(report.mcc.generated), _fmt(report.mcc.real), _fmt(report.mcc.mismatched),
         f"mean cos(MuLan text of the caption, MuLan audio of the clip) over {report.clips} clips"),
        ("tag adherence ↑", _fmt(report.tag_adherence.generated), _fmt(report.tag_adherence.real),
         _fmt(report.tag_adherence.mismatched),
         f"asked musicnn tags' mean score ÷ all 50 tags' mean (1: no preference); {report.tag_clips} of "
         f"{report.clips} captions ask for tags"),
        ("tempo error at the asked octave (BPM) ↓", _fmt(g["mean_abs_error_bpm"], 1), _fmt(r["mean_abs_error_bpm"], 1),
         _fmt(m.get("mean_abs_error_bpm"), 1),
         f"mean abs(measured − asked) over clips heard at the asked tempo; {t.clips} captions state a tempo"),
        ("tempo octave errors", _pct(g["octave_error_rate"]), _pct(r["octave_error_rate"]), _pct(m.get("octave_error_rate")),
         "share of clips heard at ×2 or ×½ the asked tempo"),
        ("tempo error against the nearest octave (BPM) ↓", _fmt(g["mean_abs_octave_error_bpm"], 1),
         _fmt(r["mean_abs_octave_error_bpm"], 1), _fmt(m.get("mean_abs_octave_error_bpm"), 1),
         "mean abs(measured − nearest of ½, 1, 2 × asked) over every clip that states a tempo"),
        *_attribute_rows(report.attributes),
        ("forward passes per clip", f"{passes} (total {sum(report.forward_passes.values())})", "—", "—",
         "one generate call; the prompts of a batch share its passes"),
        ("seconds per generated clip", f"{seconds} (total {sum(report.seconds_per_clip.values()):.3f}, "
         f"{report.speed_x_real_time:.1f}× real time)", "—", "—", f"batches of {report.batch_size} on this machine"),
    ]
    head = (f"# Generated vs real music: `{report.bundle}`, '{report.split}' split\n\n"
            f"{report.clips} clips of {report.seconds:g} s, {SOURCE_WORDS[report.source]} ("
            + (f"DPD {report.steps} steps, guidance {report.guidance:g}, " if report.steps else
               "the MusicLM-style baseline, " if report.source == "caption" else "")
            + f"clip i seeded {report.seed} + i"
            + ("; the tempo fit on: the tempo rows partly measure the tracker it listens with" if report.fit_tempo else "")
            + (f"; each the best of {report.best_of} candidates by MuLan, which the MCC and FAD-MuLan rows therefore "
               "partly measure" if report.best_of > 1 else "")
            + f").{_attribute_sentence(report.attributes)} Corpus: "
            + (f"shards' SHA-256 `{report.corpus_digest[:16]}…`" if report.corpus_digest else "no digest in its manifest")
            + ".\n\n"
            "| metric | generated | real (reference) | generated vs another clip's caption (chance) | note |\n"
            "|---|---|---|---|---|\n")
    return head + "".join(f"| {' | '.join(row)} |\n" for row in rows)


def summary(report: MusicReport) -> str:
    fad = ", ".join(f"FAD {name} {_fmt(f.fad.generated_vs_real)} (floor {_fmt(f.fad.real_vs_real)})"
                    for name, f in report.fad.items())
    g, r = report.tempo.generated, report.tempo.real
    return (f"{report.clips} {report.split} clips of {report.seconds:g} s: {fad}; MCC {_fmt(report.mcc.generated)} "
            f"(real {_fmt(report.mcc.real)}, another caption {_fmt(report.mcc.mismatched)}); tag adherence "
            f"{_fmt(report.tag_adherence.generated)} (real {_fmt(report.tag_adherence.real)}, another caption "
            f"{_fmt(report.tag_adherence.mismatched)}); tempo error {_fmt(g['mean_abs_error_bpm'], 1)} BPM "
            f"(real {_fmt(r['mean_abs_error_bpm'], 1)}), octave errors {_pct(g['octave_error_rate'])} "
            f"(real {_pct(r['octave_error_rate'])}); attribute accuracy generated / real (chance) "
            f"{_attribute_summary(report.attributes)}; {sum(report.seconds_per_clip.values()):.2f} s per clip "
            f"({report.speed_x_real_time:.1f}× real time)")


def _attribute_rows(attributes: AttributeReport) -> list[tuple[str, ...]]:
    """One table row per attribute classifier (or one saying why there are none)."""
    if not attributes.measured:
        return [("attribute classifiers", "n/a", "n/a", "n/a", attributes.note)]
    rows = []
    for name, s in attributes.scores.items():
        dropped = ", ".join(f"{c} ({k})" for c, k in s.dropped.items())
        note = s.note or (f"{len(s.classes)} classes: chance 1/{len(s.classes)} = {_fmt(s.chance, 2)}, always the commonest "
                          f"{_fmt(s.real.majority, 2)}; {s.real.clips} clips of a learnt class")
        note += f"; learnt from {s.train_clips} of {attributes.train_clips} '{attributes.train_split}' clips"
        if s.real.accuracy is not None and s.real.accuracy <= max(s.chance, s.real.majority):
            note = "**not heard**: real clips score no better than chance, so the generated number means nothing; " + note
        rows.append((f"{name} accuracy ↑", _with_interval(s.generated), _with_interval(s.real),
                     _with_interval(s.mismatched), note + (f"; too few to learn: {dropped}" if dropped else "")))
    return rows


def _with_interval(score: Accuracy) -> str:
    """An accuracy and its Wilson 95 % interval: "0.500 (0.36–0.64)"."""
    if score.interval is None:
        return _fmt(score.accuracy)
    return f"{_fmt(score.accuracy)} ({score.interval[0]:.2f}–{score.interval[1]:.2f})"


def _attribute_sentence(attributes: AttributeReport) -> str:
    if not attributes.measured:
        return ""
    return (f" Attribute classifiers: balanced logistic regression on the {attributes.features}, learnt from "
            f"{attributes.train_clips} clips spread over the '{attributes.train_split}' split; generated clip i is "
            f"scored against the attributes of real clip i, whose caption was its prompt; in brackets, each accuracy's "
            f"Wilson 95 % interval (`melody eval compare` tells two reports on the same clips apart)."
            + (f" Note: {attributes.note}." if attributes.note else ""))


def _attribute_summary(attributes: AttributeReport) -> str:
    if not attributes.measured:
        return attributes.note
    return ", ".join(f"{name} {_fmt(s.generated.accuracy, 2)} / {_fmt(s.real.accuracy, 2)} ({_fmt(s.chance, 2)})"
                     for name, s in attributes.scores.items())


def _padded(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono clips of any lengths as one zero-padded batch `(n, longest)` and their lengths `(n,)`."""
    lengths = torch.tensor([len(a) for a in clips])
    padded = torch.zeros(len(clips), int(lengths.max()))
    for i, a in enumerate(clips):
        padded[i, : len(a)] = torch.from_numpy(a)
    return padded, lengths


def _number(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _json_safe(x):
    """`x` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"
