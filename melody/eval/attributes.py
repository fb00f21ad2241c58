"""Attribute classifiers: does generated music have the style, lead instrument, tempo and mode its prompt asked for?

Issue 7, item 1.ii; not in the MeLoDy paper, whose Table 2 scores text adherence by MuLan cycle consistency alone.
Per attribute, a linear classifier learns to hear the attribute from real clips of the corpus' train split; its
accuracy on real held-out clips says how well the attribute can be heard at all, its accuracy on the generated
clips, against the attributes of the real clip whose caption was the prompt, how well the model renders what was
asked. The control scores the generated clips against another clip's attributes (what a model that ignores its
prompt would get).

Labels, from a clip's `meta["attributes"]` (the built-in corpus' schema, `melody data synth`; `None`: no label):
- **style**: `style` as is (the procedural styles and the score periods). Real recordings state none.
- **instrument family**: the family of the *lead* instrument, the first of `gm_programs` (the arrangements and
  scores list the melody's instrument first, and the captions name it first); one label per clip, since the
  accompaniment families repeat across styles (drums, bass) and would mostly measure the style again. The
  families are those of General MIDI 1 (program // 8), which is how the corpus states its instruments and how
  they were rendered, with four changes (`LEAD_FAMILIES`): GM's three synth families are one "synth"; its
  ensemble family is split into string ensembles (to "strings") and voices; the fiddle (GM 110, filed under
  "ethnic") is rendered with a violin patch, so it is "strings"; the drum kit (program −1) joins GM's percussive
  programs as "percussion". Clips without instruments (real recordings) have no family.
- **tempo class**: slow ≤ `quality.SLOW_BPM` < medium < `quality.FAST_BPM` ≤ fast, the thresholds at which
  `quality.prompt_tags` reads a stated tempo as asking for the "slow" or "fast" tag.
- **mode**: major or minor by the scale's third: ionian, lydian and mixolydian are major; aeolian, dorian,
  phrygian and locrian minor (the corpus has dorian, mixolydian and lydian clips). Other modes have no label.
The tempo and mode of real recordings were measured from their audio (`synth.recordings.measure_attributes`,
null when doubtful); they are labels all the same, since they are what those clips' captions state.

Features: the musicnn tagger's 200-d penultimate embedding averaged over 3-s patches, the very vectors of the
musicnn FAD (`quality.musicnn_outputs`), so the eval computes nothing twice for the test and generated clips. The
50 tag scores are not added: per patch they are sigmoid(W e + b) of that same embedding, so a linear classifier
already sees them (up to the squashing), and 50 more columns would only add weights to fit from a few hundred clips.

Classifier, per attribute: standardisation, then multinomial logistic regression with balanced class weights
(scikit-learn, L2, C = 1), fit during the eval run (nothing is saved, nothing is unpickled) on up to N clips of
the train split spread evenly over it in corpus order (`spread_indices`: the corpus is written source by source,
so its first N clips would all be procedural), the first `seconds` of each, as the eval reads its test clips.
Classes with fewer than `MIN_CLASS_CLIPS` train clips are dropped and reported; an attribute left with fewer
than 2 classes is not measured.

The embedding was trained for tags (instruments, genres, moods) and carries little of the mode: on the default
3 h corpus the mode classifier scores about its majority rate on real held-out clips. The report says so where it
happens (real accuracy no better than chance: the attribute is not heard, and its generated number means nothing).

Accuracy counts the evaluated clips whose label is one of the classifier's classes; clips without a label, or
with a class it never learned (dropped, or absent from the train clips), are left out and the rest counted.
Chance is given two ways: 1 / classes, and the share of the commonest label among the counted clips (what
always answering that label would score; the balanced weights keep the classifier from doing just that).

`spread_clips` reads the corpus and `train_classifiers` runs the tagger; the rest are pure functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from melody.audio import resample, to_channels
from melody.data.loader import clip_bpm
from melody.data.shards import iter_samples, read_manifest
from melody.ears.musicnn import MusicnnTagger
from melody.errors import MelodyError
from melody.eval.quality import FAST_BPM, SLOW_BPM, musicnn_outputs
from melody.eval.stats import wilson_interval

ATTRIBUTES = ("style", "instrument family", "tempo class", "mode")
MIN_CLASS_CLIPS = 5  # a class needs this many train clips to be learnt
TRAIN_SPLIT = "train"
FEATURES = "musicnn MTT tagger, penultimate layer (200-d, mean over 3-s patches)"

LEAD_FAMILIES: tuple[tuple[str, tuple[int, ...]], ...] = (  # family, its General MIDI programs (0-based; −1: drum kit)
    ("piano", tuple(range(0, 8))),  # acoustic, bright, electric pianos, harpsichord, clavinet
    ("mallets", tuple(range(8, 16))),  # GM chromatic percussion: celesta, glockenspiel, music box, vibraphone...
    ("organ", tuple(range(16, 24))),  # with the accordion and harmonica, which GM files here
    ("guitar", tuple(range(24, 32))),
    ("bass", tuple(range(32, 40))),
    ("strings", (*range(40, 52), 110)),  # solo strings, string ensembles (48-51), the fiddle (GM 110: a violin patch)
    ("voice", tuple(range(52, 56))),  # choir, voice, synth voice, orchestra hit
    ("brass", tuple(range(56, 64))),
    ("reed", tuple(range(64, 72))),  # saxophones, oboe, bassoon, clarinet
    ("pipe", tuple(range(72, 80))),  # fife, flute, recorder, pan flute, whistles
    ("synth", tuple(range(80, 104))),  # GM synth lead, synth pad, synth effects
    ("ethnic", (*range(104, 110), 111)),  # sitar, banjo, shamisen, koto, kalimba, bagpipe, shanai
    ("percussion", (-1, *range(112, 128))),  # the drum kit, GM percussive and sound effects
)
FAMILY_OF_PROGRAM: Mapping[int, str] = {p: family for family, programs in LEAD_FAMILIES for p in programs}
MODE_QUALITY: Mapping[str, str] = {  # the third of the scale
    "major": "major", "ionian": "major", "lydian": "major", "mixolydian": "major",
    "minor": "minor", "aeolian": "minor", "dorian": "minor", "phrygian": "minor", "locrian": "minor",
}  # fmt: skip


# --- labels ------------------------------------------------------------------------------------


def clip_labels(meta: Mapping) -> dict[str, str | None]:
    """A clip's label for each of `ATTRIBUTES`, from its metadata; None where the metadata states none."""
    attributes = meta.get("attributes") or {}
    style = attributes.get("style")
    programs = attributes.get("gm_programs") or [None]
    lead = programs[0]  # the melody's instrument: listed first
    mode = attributes.get("mode")
    return {
        "style": style if isinstance(style, str) and style else None,
        "instrument family": FAMILY_OF_PROGRAM.get(lead) if isinstance(lead, int) and not isinstance(lead, bool) else None,
        "tempo class": tempo_class(clip_bpm(meta)),
        "mode": MODE_QUALITY.get(mode.lower()) if isinstance(mode, str) else None,
    }


def tempo_class(bpm: float) -> str | None:
    """'slow' (≤ `SLOW_BPM`), 'medium' or 'fast' (≥ `FAST_BPM`); None for a missing (NaN) or non-positive tempo."""
    if not bpm > 0:
        return None
    return "slow" if bpm <= SLOW_BPM else "fast" if bpm >= FAST_BPM else "medium"


# --- classifiers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeClassifier:
    """One attribute's classifier, fit on train clips; `model` is None when fewer than 2 classes are left."""

    attribute: str
    classes: tuple[str, ...]  # the classes it learnt, sorted
    dropped: dict[str, int]  # class → its train clips, fewer than MIN_CLASS_CLIPS
    train_clips: int  # train clips with a learnt class
    model: Pipeline | None = field(default=None, repr=False, compare=False)

    def predict(self, features: np.ndarray) -> list[str]:
        """The class of each row of `features` `(n, d)`."""
        if self.model is None:
            raise MelodyError(f"the {self.attribute} classifier has fewer than 2 classes and cannot predict")
        return [str(c) for c in self.model.predict(np.asarray(features, dtype=np.float64))]


def fit_classifier(attribute: str, features: np.ndarray, labels: Sequence[str | None],
                   min_clips: int = MIN_CLASS_CLIPS) -> AttributeClassifier:
    """Standardise, then balanced multinomial logistic regression on the rows of `features` `(n, d)` whose label is
    a class with at least `min_clips` rows; unlabelled rows (None) are ignored, rarer classes dropped."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != len(labels):
        raise MelodyError(f"{len(labels)} labels for features of shape {features.shape}; need one (clips, dims) row each")
    counts = Counter(y for y in labels if y is not None)
    kept = tuple(sorted(c for c, k in counts.items() if k >= min_clips))
    dropped = {c: k for c, k in sorted(counts.items()) if k < min_clips}
    rows = [i for i, y in enumerate(labels) if y in kept]
    if len(kept) < 2:
        return AttributeClassifier(attribute, kept, dropped, len(rows))
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))
    model.fit(features[rows], [labels[i] for i in rows])
    return AttributeClassifier(attribute, kept, dropped, len(rows), model)


def fit_attribute_classifiers(features: np.ndarray, metas: Sequence[Mapping],
                              min_clips: int = MIN_CLASS_CLIPS) -> dict[str, AttributeClassifier]:
    """A classifier per attribute of `ATTRIBUTES` from train clips' `features` `(n, d)` and their metadata."""
    if len(metas) == 0:
        raise MelodyError("no train clips to fit the attribute classifiers on")
    labels = [clip_labels(m) for m in metas]
    return {a: fit_classifier(a, features, [y[a] for y in labels], min_clips) for a in ATTRIBUTES}


def spread_indices(total: int, n: int) -> list[int]:
    """`min(n, total)` increasing indices spread evenly over `range(total)`, starting at 0."""
    return list(range(total)) if n >= total else [k * total // n for k in range(n)]


def spread_clips(data_root: str | Path, split: str, seconds: float, sample_rate: int,
                 limit: int) -> Iterator[tuple[np.ndarray, dict]]:
    """(the first `seconds` of a clip, mono `(samples,)` at `sample_rate`; its metadata) for `limit` clips spread
    over `split` in corpus order (`spread_indices`), read lazily; a missing or empty split is an error at once."""
    if limit < 1:
        raise MelodyError(f"--attribute-clips must be at least 1 to fit the attribute classifiers, got {limit}")
    manifest = read_manifest(data_root)
    if split not in manifest["splits"]:
        raise MelodyError(f"{data_root}: the corpus has no '{split}' split to fit the attribute classifiers on")
    total = int(manifest["splits"][split].get("clips", 0))
    if total == 0:
        raise MelodyError(f"{data_root}: the '{split}' split holds no clips to fit the attribute classifiers on")
    wanted, crop = set(spread_indices(total, limit)), int(round(seconds * sample_rate))

    def read() -> Iterator[tuple[np.ndarray, dict]]:  # a generator inside: the checks above run when called
        for i, sample in enumerate(iter_samples(data_root, split)):
            if i in wanted:
                yield resample(to_channels(sample["audio"], 1), sample["sample_rate"], sample_rate)[0, :crop], sample["meta"]

    return read()


def train_classifiers(clips: Iterable[tuple[np.ndarray, Mapping]], sample_rate: int,
                      tagger: MusicnnTagger | None = None) -> tuple[dict[str, AttributeClassifier], int]:
    """Classifiers fit on the musicnn embeddings of `(mono audio, metadata)` train clips at `sample_rate` (e.g. from
    `spread_clips`), and how many clips there were. The clips stream through the tagger one at a time."""
    tagger = tagger or MusicnnTagger.load()
    features, metas = [], []
    for clip, meta in clips:
        features.append(musicnn_outputs([clip], sample_rate, tagger).embeddings[0])  # (200,)
        metas.append(meta)
    if not metas:
        raise MelodyError("no train clips to fit the attribute classifiers on")
    return fit_attribute_classifiers(np.stack(features), metas), len(metas)


# --- accuracy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accuracy:
    accuracy: float | None  # share of the counted clips predicted right; None when none is counted
    clips: int  # clips counted: their label is one of the classifier's classes
    majority: float | None  # share of the commonest label among them: always answering it scores this
    interval: tuple[float, float] | None = None  # the accuracy's Wilson 95 % interval (`stats.wilson_interval`)


def accuracy(predicted: Sequence[str], labels: Sequence[str | None], classes: Collection[str]) -> Accuracy:
    """Accuracy of `predicted` against `labels` over the clips whose label is in `classes`."""
    if len(predicted) != len(labels):
        raise MelodyError(f"{len(predicted)} predictions for {len(labels)} labels")
    counted = [(p, y) for p, y in zip(predicted, labels) if y in classes]
    if not counted:
        return Accuracy(None, 0, None)
    top = Counter(y for _, y in counted).most_common(1)[0][1]
    right = sum(p == y for p, y in counted)
    return Accuracy(right / len(counted), len(counted), top / len(counted), wilson_interval(right, len(counted)))


@dataclass(frozen=True)
class AttributeScore:
    """One attribute's classifier on real held-out clips, on generated clips and on the control."""

    attribute: str
    classes: list[str]  # learnt from the train clips
    dropped: dict[str, int]  # class → train clips: too few to learn
    train_clips: int  # train clips with a learnt class
    chance: float | None  # 1 / classes
    real: Accuracy  # real clip i against its own attributes
    generated: Accuracy  # generated clip i against real clip i's attributes (its prompt was clip i's caption)
    mismatched: Accuracy  # generated clip i against another clip's attributes: the control
    note: str = ""  # why the attribute is not measured, if it is not
    # clip i's (asked label, real clip's prediction, generated clip's prediction): what `melody eval compare` pairs
    per_clip: tuple[tuple[str | None, str, str], ...] = ()


def score_attributes(classifiers: Mapping[str, AttributeClassifier], real_features: np.ndarray,
                     generated_features: np.ndarray, metas: Sequence[Mapping], other: Sequence[int]) -> dict[str, AttributeScore]:
    """Each classifier on real clips `(n, d)` and on the clips generated from their captions `(n, d)` (row i from
    clip i's caption); `metas` the real clips' metadata, `other[i]` the clip whose attributes are the control's."""
    if not len(real_features) == len(generated_features) == len(metas) == len(other):
        raise MelodyError(f"{len(real_features)} real clips, {len(generated_features)} generated, {len(metas)} "
                          f"metadata and {len(other)} control pairs: need as many of each")
    labels = [clip_labels(m) for m in metas]
    scores = {}
    for name, clf in classifiers.items():
        asked = [y[name] for y in labels]
        control = [asked[j] for j in other]
        if clf.model is None:
            none = Accuracy(None, 0, None)
            scores[name] = AttributeScore(name, list(clf.classes), clf.dropped, clf.train_clips, None, none, none, none,
                                          "not measured: fewer than 2 classes with enough train clips")
            continue
        real, generated = clf.predict(real_features), clf.predict(generated_features)
        scores[name] = AttributeScore(name, list(clf.classes), clf.dropped, clf.train_clips, 1 / len(clf.classes),
                                      accuracy(real, asked, clf.classes), accuracy(generated, asked, clf.classes),
                                      accuracy(generated, control, clf.classes),
                                      per_clip=tuple(zip(asked, real, generated, strict=True)))
    return scores


@dataclass(frozen=True)
class AttributeReport:
    """The attribute classifiers of one eval run: how they were trained, and their scores per attribute."""

    train_split: str
    train_clips: int  # clips read from the train split (spread over it); 0 when not measured
    features: str  # what the classifiers hear
    scores: dict[str, AttributeScore]  # per attribute of ATTRIBUTES; empty when not measured
    note: str = ""  # why not measured, or a caveat

    @property
    def measured(self) -> bool:
        return bool(self.scores)

