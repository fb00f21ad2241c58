"""`melody data check DIR`: does the corpus sound like what its captions say? Asked of judges nobody here trained.

Not part of the MeLoDy paper. MeLoDy's quality rests on text/audio pairs whose captions are true;
our corpus is synthesised, so we check it with the two pretrained musicnn taggers the `musicnn`
package ships (`melody.ears.musicnn`): MTT_musicnn (MagnaTagATune's 50 tags: instruments, moods,
a few genres) and MSD_musicnn (the Million Song Dataset's 50 last.fm tags: mostly genres). Each
clip is decoded once and tagged by every judge. Per judge and per group of clips (a style of a
source; real recordings as one group): the mean tag probabilities and their top tags, and how often
a tag that names the caption's style or one of its instruments is among the clip's top-k (a *hit*).

What a tag "names" is a judge's `Vocabulary` (data: a style map and instrument rules), chosen from
the tagger's label set (`vocabulary_for`) so a new judge is a new `Vocabulary`, not new branches.

- MTT has no jazz, funk, folk, blues, hip hop or bossa nova tag, so under MTT those styles expect no
  style tag (their clips are scored on their instruments only); "country" is the nearest MTT tag to
  folk but names a different genre, so it is not used. The score styles (medieval ... romantic)
  expect "classical"/"classic", MTT's tags for Western art music.
- MSD names most of our popular styles (jazz, blues, funk/soul, folk/acoustic/country, Hip-Hop/rnb,
  rock, electronic..., ambient/chillout). Bossa nova expects "jazz" (where last.fm files it) and the
  lounge tags "easy listening", "chill", "chillout". Folk takes "country" here, looser than under
  MTT, because last.fm uses folk/country/acoustic together for roots music; the control below
  charges for that looseness. MSD has **no** tag for Western art music: classical strings, piano
  ballad and the score styles expect the descriptors "instrumental", "beautiful", "Mellow", "easy
  listening" (renaissance and medieval, sung polyphony here, drop "instrumental"). Those styles are
  `descriptive` in the MSD vocabulary and marked * in the report: a hit says the judge hears quiet,
  pretty, instrumental music, not the period. The descriptors fire on most clips of any style, so
  these styles' audio-swap control (below) is high and they rarely "clearly" beat it.
  MSD's only instrument tags are "guitar" and "acoustic": acoustic/nylon guitars expect both,
  electric ones "guitar" only.

A style missing from a judge's style map expects no style tag. A clip whose style and instruments
map to no tag of a judge is not scored by that judge (its `hit` is None) and does not count in its
hit rates. Both maps are deliberately narrow (a tag must *name* the style or instrument, save the
MSD descriptors above).

Groups are named by style, as "<source>: <style>" when a style occurs in several sources (e.g. the
procedural and the score "folk"), and by source when there is no style (real recordings). Since a
top-5 out of 50 tags hits a 3-6-tag expected set fairly often by chance, each report also gives
controls. The control of the hit rate swaps captions: each clip's top-k against the
expected tags of random clips of *other* groups (seeded). The style-tag hit rate has two controls:
the same caption swap against other groups' style tags only (high when a style's clips are tagged
with other styles' genres), and an audio swap, the share of other styles' clips (real recordings
left out: their style is unknown) with one of this style's tags in their top-k (high when the tag
fires on everything, as MSD's "instrumental" and "jazz" do). The style control is the larger of
the two. A style is *heard* by a judge when its style-tag hit rate beats that control by at least
`HEARD_MARGIN` and the rate's 95% Wilson lower bound is above the control (so 2 hits of 2 clips do
not beat a control of 50%); the combined verdict says which judges hear it. Instrument hits do not
enter the verdict. Styles a vocabulary maps to the same tags (MTT's "classical" for every period)
count against each other in both controls: the judge cannot tell them apart.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from melody.ears.musicnn import MSD_TAGS, TAGS
from melody.errors import MelodyError

CORPUS_SAMPLE_RATE = 24000
JUDGES = ("MTT_musicnn", "MSD_musicnn")
HEARD_MARGIN = 0.2  # a style is heard when its style-tag hit rate beats its control by this much (and then some)
_Z95 = 1.959964  # two-sided 95% normal quantile, for the Wilson bound

InstrumentRules = tuple[tuple[frozenset[str], tuple[str, ...]], ...]


@dataclass(frozen=True)
class Vocabulary:
    """How one judge's tag set names our styles and instruments: the judge's half of a hit."""

    judge: str  # the musicnn checkpoint, e.g. "MTT_musicnn"
    short: str  # "mtt": the --judge name and the heat map's file suffix
    labels: tuple[str, ...]  # the tagger's output tags, in order
    style_tags: Mapping[str, tuple[str, ...]]  # caption style -> the tags that name it; () or absent: none does
    instrument_rules: InstrumentRules  # instrument-name words -> tags, first matching rule wins
    descriptive: frozenset[str] = frozenset()  # styles whose tags describe their sound but name no genre

    @property
    def title(self) -> str:
        return f"musicnn ({self.short.upper()})"


# MTT: style (caption attribute "style") -> the MTT tags that name it. Empty: MTT has no tag for it.
STYLE_TAGS: dict[str, tuple[str, ...]] = {
    "rock": ("rock", "guitar", "metal"),
    "metal": ("metal", "rock", "guitar"),
    "electronic": ("electronic", "techno", "beat", "synth", "dance"),
    "ambient": ("ambient", "new age", "quiet", "synth", "slow"),
    "classical strings": ("classical", "strings", "violin", "cello"),
    "piano ballad": ("piano", "soft", "slow"),
    # score styles: periods of Western art music, which MTT files under "classical"
    "classical": ("classical", "classic"),
    "baroque": ("classical", "classic"),
    "romantic": ("classical", "classic"),
    "renaissance": ("classical", "classic"),
    "medieval": ("classical", "classic"),
    "choral": ("choir", "choral", "vocal", "voice"),
    "jazz": (),  # no MTT tag names jazz
    "funk": (),  # nor funk ("dance"/"beat" describe a groove, not the style)
    "folk": (),  # nor folk ("country" is another genre)
    "blues": (),
    "hip hop": (),  # "beat"/"beats" describe the drums, which the instruments already expect
    "bossa nova": (),
}

# MTT: instrument-name words -> MTT tags, first matching rule wins (order matters: "synth bass" is a
# synth, "bass drum" a drum, "soprano sax" a sax, "nylon-string guitar" a guitar, "harpsichord" not a
# harp). Bass, organ, brass, reeds, mallets: no MTT tag names them.
_INSTRUMENT_RULES: InstrumentRules = (
    (
        frozenset({"drum", "drums", "kit", "percussion", "snare", "hihat", "cymbal", "cymbals"}),
        ("drums", "beat", "beats"),
    ),
    (frozenset({"synth", "synthesizer", "polysynth", "pad", "lead"}), ("synth", "electronic")),
    (
        frozenset({"sax", "saxophone", "trumpet", "trombone", "horn", "tuba", "brass", "clarinet", "oboe", "bassoon"})
        | frozenset({"organ", "accordion", "harmonica", "vibraphone", "celesta", "glockenspiel", "kalimba", "banjo"}),
        (),
    ),
    (frozenset({"bass", "contrabass"}), ()),
    (frozenset({"harpsichord"}), ("harpsichord",)),
    (frozenset({"harp"}), ("harp",)),
    (frozenset({"piano", "pianos", "rhodes"}), ("piano",)),
    (frozenset({"guitar", "guitars"}), ("guitar",)),
    (frozenset({"violin", "violins", "violino", "fiddle"}), ("violin", "strings")),
    (frozenset({"cello", "cellos", "violoncello"}), ("cello", "strings")),
    (frozenset({"viola", "violas", "string", "strings"}), ("strings", "violin", "cello")),
    (frozenset({"flute", "flutes", "piccolo", "recorder", "whistle"}), ("flute",)),
    (frozenset({"sitar"}), ("sitar",)),
    (
        frozenset({"choir", "choral", "voice", "voices", "vocal", "vocals", "aahs", "oohs"})
        | frozenset({"soprano", "alto", "tenor", "baritone"}),
        ("choir", "choral", "vocal", "voice", "vocals", "singing"),
    ),
)  # fmt: skip

# MSD: style -> the last.fm tags of MSD_musicnn that name it (genres), or for the art-music styles,
# which no MSD tag names, the descriptors their sound earns (see the module docstring).
_ART = ("instrumental", "beautiful", "Mellow", "easy listening")
_SUNG_ART = ("beautiful", "Mellow", "easy listening")  # renaissance/medieval here are mostly sung
_MSD_DESCRIBED = ("classical strings", "piano ballad", "classical", "baroque", "romantic", "renaissance", "medieval", "choral")
MSD_STYLE_TAGS: dict[str, tuple[str, ...]] = {
    "rock": ("rock", "classic rock", "hard rock", "alternative"),
    "metal": ("metal", "heavy metal", "hard rock", "rock"),
    "electronic": ("electronic", "electronica", "electro", "dance", "House"),
    "ambient": ("ambient", "chillout", "chill", "electronic"),
    "jazz": ("jazz",),
    "blues": ("blues",),
    "funk": ("funk", "soul"),
    "folk": ("folk", "acoustic", "country"),
    "hip hop": ("Hip-Hop", "rnb"),
    "bossa nova": ("jazz", "easy listening", "chill", "chillout"),
    "classical strings": _ART,
    "piano ballad": _ART,
    "classical": _ART,
    "baroque": _ART,
    "romantic": _ART,
    "renaissance": _SUNG_ART,
    "medieval": _SUNG_ART,
    "choral": ("beautiful", "Mellow"),
}

# MSD: guitars are its only instruments. The first rule stops "acoustic bass" and "acoustic grand
# piano" (General MIDI names) from reading as acoustic guitars.
_MSD_INSTRUMENT_RULES: InstrumentRules = (
    (frozenset({"bass", "contrabass", "piano", "pianos", "drum", "drums", "kit"}), ()),
    (frozenset({"acoustic", "nylon", "steel"}), ("guitar", "acoustic")),
    (frozenset({"guitar", "guitars"}), ("guitar",)),
)

MTT = Vocabulary("MTT_musicnn", "mtt", TAGS, STYLE_TAGS, _INSTRUMENT_RULES)
MSD = Vocabulary("MSD_musicnn", "msd", MSD_TAGS, MSD_STYLE_TAGS, _MSD_INSTRUMENT_RULES, frozenset(_MSD_DESCRIBED))
VOCABULARIES: dict[str, Vocabulary] = {v.judge: v for v in (MTT, MSD)}


def vocabulary_for(labels: Sequence[str]) -> Vocabulary:
    """The vocabulary of a tagger with output tags `labels` (MTT's or MSD's 50 tags)."""
    for vocabulary in VOCABULARIES.values():
        if tuple(labels) == vocabulary.labels:
            return vocabulary
    raise MelodyError(f"no tag vocabulary for a tagger with {len(labels)} unknown labels; pass one")


def judges_for(choice: str) -> tuple[str, ...]:
    """The judges (checkpoint names) that `--judge` `choice` names: a vocabulary's short name or "both"."""
    judges = tuple(v.judge for v in VOCABULARIES.values() if choice.lower() in (v.short, "both"))
    if not judges:
        raise MelodyError(f"unknown judge {choice!r}; use {', '.join(v.short for v in VOCABULARIES.values())} or both")
    return judges


def instrument_tags(name: str, vocabulary: Vocabulary = MTT) -> tuple[str, ...]:
    """The tags that name instrument `name` (MTT: "distortion guitar" -> ("guitar",)); () if none."""
    words = set(re.findall(r"[a-z]+", name.lower()))
    for keys, tags in vocabulary.instrument_rules:
        if words & keys:
            return tags
    return ()


def expected_tags(meta: dict, vocabulary: Vocabulary = MTT) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tags naming the caption's style, tags naming its instruments) for a clip's metadata."""
    attrs = meta.get("attributes") or {}
    style_tags = vocabulary.style_tags.get(str(attrs.get("style") or "").lower(), ())
    inst: list[str] = []
    for name in attrs.get("instruments") or ():
        inst += [t for t in instrument_tags(str(name), vocabulary) if t not in inst]
    return style_tags, tuple(inst)


class Tagger(Protocol):
    labels: tuple[str, ...]

    def tags(self, wav: np.ndarray, sample_rate: int) -> np.ndarray: ...


@dataclass
class ClipResult:
    group: str
    caption: str
    top_tags: list[tuple[str, float]]  # the clip's top-k (tag, mean probability over patches)
    style_tags: tuple[str, ...]
    instrument_tags: tuple[str, ...]
    style_hit: bool | None  # a style tag among the top-k; None when the style names no tag
    instrument_hit: bool | None
    hit: bool | None  # a style or instrument tag among the top-k; None when neither exists
    mismatched_hit: float | None = None  # control: hit rate against other groups' clips' expected tags
    style_mismatched_hit: float | None = None  # control: style-hit rate against other groups' clips' style tags


@dataclass
class GroupSummary:
    group: str  # the style, "<source>: <style>" when a style occurs in several sources, or the source
    source: str
    style: str | None
    clips: int
    mean_probs: list[float]  # per tag, mean over the group's clips
    mean_top_tags: list[tuple[str, float]]  # top-k of mean_probs
    expected_tags: list[str]  # style tags, then instrument tags by how many clips expect them
    scored: int  # clips with at least one expected tag
    hits: int
    style_scored: int
    style_hits: int
    instrument_scored: int
    instrument_hits: int
    mismatched_hit_rate: float | None  # the same top-k against captions of other groups' clips (control)
    style_mismatched_hit_rate: float | None = None  # caption swap: the same top-k against other groups' style tags
    style_false_alarm_rate: float | None = None  # audio swap: other styles' clips with one of these style tags in top-k

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.scored if self.scored else None

    @property
    def style_hit_rate(self) -> float | None:
        return self.style_hits / self.style_scored if self.style_scored else None

    @property
    def instrument_hit_rate(self) -> float | None:
        return self.instrument_hits / self.instrument_scored if self.instrument_scored else None

    @property
    def style_control(self) -> float | None:
        """The stricter of the two style controls (caption swap, audio swap)."""
        present = [r for r in (self.style_mismatched_hit_rate, self.style_false_alarm_rate) if r is not None]
        return max(present) if present else None

    @property
    def style_heard(self) -> bool:
        """The style-tag hit rate clearly beats its control (`is_heard`)."""
        return is_heard(self.style_hits, self.style_scored, self.style_control)


@dataclass
class CheckReport:
    """One judge's verdict on a corpus."""

    vocabulary: Vocabulary = field(repr=False)
    k: int
    tags: tuple[str, ...]
    groups: list[GroupSummary]
    clips: list[ClipResult] = field(repr=False)

    @property
    def judge(self) -> str:
        return self.vocabulary.judge

    @property
    def hit_rate(self) -> float | None:
        scored = sum(g.scored for g in self.groups)
        return sum(g.hits for g in self.groups) / scored if scored else None

    @property
    def mismatched_hit_rate(self) -> float | None:
        return _mean_or_none([c.mismatched_hit for c in self.clips])

    def to_json(self) -> dict:
        groups = []
        for g in self.groups:
            d = asdict(g)
            d.update(
                hit_rate=g.hit_rate, style_hit_rate=g.style_hit_rate, instrument_hit_rate=g.instrument_hit_rate,
                style_control=g.style_control, style_heard=g.style_heard if g.style_scored else None,
            )  # fmt: skip
            groups.append(d)
        return {
            "judge": self.judge,
            "k": self.k,
            "tags": list(self.tags),
            "style_tags": dict(self.vocabulary.style_tags),
            "descriptive_styles": sorted(self.vocabulary.descriptive),
            "hit_rate": self.hit_rate,
            "mismatched_hit_rate": self.mismatched_hit_rate,
            "groups": groups,
            "clips": [asdict(c) for c in self.clips],
        }


@dataclass
class Hearing:
    """One judge on one style: its style-tag hit rate against its style control."""

    judge: str  # the checkpoint, e.g. "MSD_musicnn"
    short: str  # its short name, e.g. "msd"
    style_scored: int  # 0: the judge has no tag for the style
    style_hits: int
    control: float | None  # `GroupSummary.style_control`
    heard: bool
    descriptive: bool  # the judge's tags for the style describe its sound, they do not name it

    @property
    def hit_rate(self) -> float | None:
        return self.style_hits / self.style_scored if self.style_scored else None


@dataclass
class StyleVerdict:
    """Is a style heard by any judge? One row of the combined table."""

    group: str
    clips: int
    hearings: list[Hearing]  # one per judge, in the judges' order

    @property
    def heard_by(self) -> list[str]:
        return [h.judge for h in self.hearings if h.heard]

    @property
    def verdict(self) -> str:
        if not any(h.style_scored for h in self.hearings):
            return "untested (no style tag)"
        names = [h.short.upper() for h in self.hearings if h.heard]
        return f"heard by {', '.join(names)}" if names else "not heard"


@dataclass
class CorpusCheck:
    """Every judge's report on the same clips, and the combined per-style verdicts."""

    reports: list[CheckReport]
    styles: list[StyleVerdict]

    def to_json(self) -> dict:
        return {
            "judges": [r.judge for r in self.reports],
            "heard_margin": HEARD_MARGIN,
            "styles": [
                {"group": s.group, "clips": s.clips, "verdict": s.verdict, "heard_by": s.heard_by,
                 "hearings": [{**asdict(h), "hit_rate": h.hit_rate} for h in s.hearings]}
                for s in self.styles
            ],
            "reports": {r.judge: r.to_json() for r in self.reports},
        }  # fmt: skip


def wilson_lower(hits: int, n: int, z: float = _Z95) -> float:
    """Lower end of the Wilson score interval of a proportion `hits / n` (0 when n is 0)."""
    if n <= 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def is_heard(hits: int, scored: int, control: float | None, margin: float = HEARD_MARGIN) -> bool:
    """`hits / scored` clearly beats `control`: by `margin` or more, and its 95% Wilson lower bound is above it."""
    if not scored or control is None:
        return False
    return hits / scored - control >= margin and wilson_lower(hits, scored) > control


def check_judges(
    clips: Iterable[tuple[np.ndarray, dict]],
    taggers: Sequence[Tagger],
    k: int = 5,
    sample_rate: int = CORPUS_SAMPLE_RATE,
    control_draws: int = 20,
    seed: int = 0,
    vocabularies: Sequence[Vocabulary] | None = None,
) -> CorpusCheck:
    """Tag every (audio, meta) clip with every tagger (one pass over the clips) and judge each style.

    `vocabularies` (one per tagger) default to `vocabulary_for(tagger.labels)`. Each report is
    `check_clips`'s; the verdicts combine them per style group (groups without a style are left out).
    """
    if not taggers:
        raise MelodyError("no judges to check the corpus with")
    vocabularies = list(vocabularies) if vocabularies is not None else [vocabulary_for(t.labels) for t in taggers]
    if len(vocabularies) != len(taggers):
        raise MelodyError(f"{len(vocabularies)} vocabularies for {len(taggers)} judges")
    metas: list[dict] = []
    probs: list[list[np.ndarray]] = [[] for _ in taggers]  # judge, clip -> (n_tags,)
    for audio, meta in clips:
        metas.append(meta)
        for j, tagger in enumerate(taggers):
            probs[j].append(np.asarray(tagger.tags(audio, sample_rate), dtype=np.float64))
    if not metas:
        raise MelodyError("no clips to check: the corpus is empty")
    reports = [
        _summarise(metas, p, tuple(t.labels), v, k, control_draws, seed)
        for t, v, p in zip(taggers, vocabularies, probs)
    ]
    return CorpusCheck(reports, combine(reports))


def check_clips(
    clips: Iterable[tuple[np.ndarray, dict]],
    tagger: Tagger,
    k: int = 5,
    sample_rate: int = CORPUS_SAMPLE_RATE,
    control_draws: int = 20,
    seed: int = 0,
    vocabulary: Vocabulary | None = None,
) -> CheckReport:
    """One judge's report: tag every (audio, meta) clip and summarise per group at top-`k`.

    As controls, each scored clip's top-k is also matched against the expected tags (and, for the
    style control, the style tags) of up to `control_draws` random clips of *other* groups (seeded):
    a tagger that heard nothing of the style would score about as well there as against the clip's
    own caption.
    """
    vocabularies = None if vocabulary is None else (vocabulary,)
    return check_judges(clips, (tagger,), k, sample_rate, control_draws, seed, vocabularies).reports[0]


def combine(reports: Sequence[CheckReport]) -> list[StyleVerdict]:
    """Per style group (in the first report's order), each judge's style-tag hit rate against its control."""
    verdicts = []
    for i, group in enumerate(reports[0].groups):
        if group.style is None:
            continue
        hearings = []
        for report in reports:
            g = report.groups[i]
            assert g.group == group.group, "judges' reports on the same clips have the same groups"
            v = report.vocabulary
            hearings.append(
                Hearing(v.judge, v.short, g.style_scored, g.style_hits, g.style_control, g.style_heard,
                        g.style in v.descriptive)
            )  # fmt: skip
        verdicts.append(StyleVerdict(group.group, group.clips, hearings))
    return verdicts


def _summarise(
    metas: list[dict],
    probs: list[np.ndarray],
    labels: tuple[str, ...],
    vocabulary: Vocabulary,
    k: int,
    control_draws: int,
    seed: int,
) -> CheckReport:
    """One judge's `CheckReport` from its tag probabilities `probs` (clip -> (n_tags,)) of clips `metas`."""
    rows: list[tuple[str, str | None, np.ndarray, ClipResult]] = []
    for meta, p in zip(metas, probs):
        source = str(meta.get("source") or "unknown")
        style = (meta.get("attributes") or {}).get("style")
        order = np.argsort(-p, kind="stable")[:k]
        top = [(labels[i], float(p[i])) for i in order]
        top_set = {t for t, _ in top}
        style_tags, inst_tags = expected_tags(meta, vocabulary)
        style_hit = bool(top_set & set(style_tags)) if style_tags else None
        inst_hit = bool(top_set & set(inst_tags)) if inst_tags else None
        hit = bool(top_set & (set(style_tags) | set(inst_tags))) if style_tags or inst_tags else None
        clip = ClipResult("", str(meta.get("caption", "")), top, style_tags, inst_tags, style_hit, inst_hit, hit)
        rows.append((source, style, p, clip))

    sources_of_style: dict[str, set[str]] = {}
    for source, style, _, _ in rows:
        if style:
            sources_of_style.setdefault(style, set()).add(source)

    def group_name(source: str, style: str | None) -> str:
        if not style:
            return source
        return style if len(sources_of_style[style]) == 1 else f"{source}: {style}"

    by_group: dict[str, list[tuple[str, str | None, np.ndarray, ClipResult]]] = {}
    for row in rows:
        row[3].group = group_name(row[0], row[1])
        by_group.setdefault(row[3].group, []).append(row)
    results = [r[3] for r in rows]
    styled = [r[3] for r in rows if r[1]]  # clips whose caption names a style (real recordings' may be anything)
    _set_mismatched_hits(results, control_draws, np.random.default_rng(seed))
    _set_style_mismatched_hits(results, control_draws, np.random.default_rng([seed, 1]))

    groups = []
    for name in sorted(by_group, key=lambda n: (by_group[n][0][1] is None, n)):
        members = by_group[name]
        mean = np.mean([r[2] for r in members], axis=0)
        order = np.argsort(-mean, kind="stable")[:k]
        clips = [r[3] for r in members]
        inst_counts = Counter(t for c in clips for t in c.instrument_tags)
        style_tags = list(clips[0].style_tags)
        expected = style_tags + [t for t, _ in inst_counts.most_common() if t not in style_tags]
        groups.append(
            GroupSummary(
                group=name,
                source=members[0][0],
                style=members[0][1],
                clips=len(members),
                mean_probs=[float(p) for p in mean],
                mean_top_tags=[(labels[i], float(mean[i])) for i in order],
                expected_tags=expected,
                scored=sum(c.hit is not None for c in clips),
                hits=sum(bool(c.hit) for c in clips),
                style_scored=sum(c.style_hit is not None for c in clips),
                style_hits=sum(bool(c.style_hit) for c in clips),
                instrument_scored=sum(c.instrument_hit is not None for c in clips),
                instrument_hits=sum(bool(c.instrument_hit) for c in clips),
                mismatched_hit_rate=_mean_or_none([c.mismatched_hit for c in clips]),
                style_mismatched_hit_rate=_mean_or_none([c.style_mismatched_hit for c in clips]),
                style_false_alarm_rate=_false_alarm_rate(styled, name, set(clips[0].style_tags)),
            )
        )
    return CheckReport(vocabulary=vocabulary, k=k, tags=labels, groups=groups, clips=results)


def _set_mismatched_hits(clips: list[ClipResult], draws: int, rng: np.random.Generator) -> None:
    """Set `mismatched_hit` of each scored clip: its top-k against other groups' clips' expected tags."""
    scored = [c for c in clips if c.hit is not None]
    expected = [set(c.style_tags) | set(c.instrument_tags) for c in scored]
    for c, rate in zip(scored, _control_rates(scored, expected, draws, rng)):
        c.mismatched_hit = rate


def _set_style_mismatched_hits(clips: list[ClipResult], draws: int, rng: np.random.Generator) -> None:
    """Set `style_mismatched_hit` of each style-scored clip: its top-k against other groups' clips' style tags."""
    scored = [c for c in clips if c.style_hit is not None]
    for c, rate in zip(scored, _control_rates(scored, [set(c.style_tags) for c in scored], draws, rng)):
        c.style_mismatched_hit = rate


def _false_alarm_rate(styled: list[ClipResult], group: str, style_tags: set[str]) -> float | None:
    """Share of the `styled` clips of other groups with one of `style_tags` among their top-k (None: no tags or clips)."""
    others = [c for c in styled if c.group != group]
    if not style_tags or not others:
        return None
    return sum(bool(style_tags & {t for t, _ in c.top_tags}) for c in others) / len(others)


def _control_rates(
    scored: list[ClipResult], expected: list[set[str]], draws: int, rng: np.random.Generator
) -> list[float | None]:
    """Per clip of `scored`: how often its top-k meets `expected[j]` for random clips j of other groups."""
    if draws <= 0 or len({c.group for c in scored}) < 2:
        return [None] * len(scored)
    rates: list[float | None] = []
    for c in scored:
        top = {t for t, _ in c.top_tags}
        picks = [j for j in rng.integers(len(scored), size=4 * draws) if scored[j].group != c.group][:draws]
        rates.append(float(np.mean([bool(top & expected[j]) for j in picks])) if picks else None)
    return rates


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def check_corpus(
    root: Path,
    judges: Sequence[str | Tagger] = JUDGES,
    k: int = 5,
    split: str | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> CorpusCheck:
    """`check_judges` over the corpus shards under `root` (at most `limit` clips), each clip decoded once.

    A judge is a musicnn checkpoint name ("MTT_musicnn", "MSD_musicnn") or a tagger object.
    """
    from itertools import islice

    from melody.data.shards import iter_samples, read_manifest

    manifest = read_manifest(root)
    taggers = [_load_judge(j) if isinstance(j, str) else j for j in judges]
    clips = ((s["audio"].mean(axis=0), s["meta"]) for s in iter_samples(root, split=split))
    clips = islice(clips, limit) if limit else clips
    if progress:
        from tqdm import tqdm

        total = sum(v["clips"] for name, v in manifest["splits"].items() if split in (None, name))
        clips = tqdm(clips, total=min(total, limit) if limit else total, unit="clip", desc="tagging")
    return check_judges(clips, taggers, k=k, sample_rate=int(manifest["sample_rate"]))


def _load_judge(name: str) -> Tagger:
    from melody.ears.musicnn import MusicnnTagger

    return MusicnnTagger.load(name)


def write_report(check: CorpusCheck, out_dir: Path) -> dict[str, Path]:
    """Write `check.json`, `check.md` (the combined table, then one table per judge) and one heat map
    (groups x tags) per judge, `check_<judge>.png`, to `out_dir`. Returns the paths by kind
    ("json", "md", "png_<judge>")."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "check.json", "md": out_dir / "check.md"}
    paths |= {f"png_{r.vocabulary.short}": out_dir / f"check_{r.vocabulary.short}.png" for r in check.reports}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths["json"].write_text(json.dumps(check.to_json(), indent=1) + "\n")
        paths["md"].write_text(report_markdown(check))
        for report in check.reports:
            _heat_map(report, paths[f"png_{report.vocabulary.short}"])
    except OSError as err:
        raise MelodyError(f"cannot write the check report to {out_dir}: {err.strerror}") from None
    return paths


def _rate(hits: int, scored: int) -> str:
    return f"{hits / scored:.0%} ({hits}/{scored})" if scored else "n/a"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def report_markdown(check: CorpusCheck) -> str:
    """The combined per-style table, then one section per judge."""
    names = [r.vocabulary.short.upper() for r in check.reports]
    lines = [
        f"# Corpus check: musicnn judges ({', '.join(names)})",
        "",
        f"A style is *heard* by a judge when its style-tag hit rate (a tag naming the style among a clip's "
        f"top-{check.reports[0].k}) beats its control by at least {HEARD_MARGIN:.0%} and the rate's 95% Wilson lower "
        "bound is above the control. The control is the larger of two: the same top tags against the style tags of "
        "other groups' clips (other captions), and how often other styles' clips have one of this style's tags "
        "(other clips). Cells: style-tag hit rate / control; n/a: the judge has no tag for the style.",
        "",
        "| style | clips | " + " | ".join(f"{n} hit/control" for n in names) + " | verdict |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    marked = False
    for s in check.styles:
        cells = []
        for h in s.hearings:
            if not h.style_scored:
                cells.append("n/a")
                continue
            mark = "*" if h.descriptive else ""
            marked |= h.descriptive
            cells.append(f"{_pct(h.hit_rate)}{mark} / {_pct(h.control)}")
        lines.append(f"| {s.group} | {s.clips} | " + " | ".join(cells) + f" | {s.verdict} |")
    if marked:
        lines += ["", "\\* descriptors, not a genre: the judge has no tag naming this style (see `melody/data/check.py`)."]
    for report in check.reports:
        lines += ["", *_judge_section(report)]
    lines += ["", "Style and instrument to tag mappings: `melody/data/check.py` (`MTT`, `MSD` vocabularies).", ""]
    return "\n".join(lines)


def _judge_section(report: CheckReport) -> list[str]:
    k = report.k
    lines = [
        f"## {report.vocabulary.title} tags",
        "",
        f"Hit = a tag naming the caption's style or one of its instruments is among the clip's top-{k} tags. "
        f"Overall hit rate: {_rate(sum(g.hits for g in report.groups), sum(g.scored for g in report.groups))}; "
        f"control (the same top-{k} against captions of other groups' clips): {_pct(report.mismatched_hit_rate)}. "
        "Style controls: *other captions*, the same top tags against other groups' style tags; *other clips*, "
        f"other styles' clips with one of this style's tags in their top-{k}.",
        "",
        f"| style | clips | mean top-{k} tags | expected tags | hit rate | style-tag hits | instrument-tag hits "
        "| control | style control: other captions | style control: other clips |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in report.groups:
        top = ", ".join(f"{t} {p:.2f}" for t, p in g.mean_top_tags)
        expected = ", ".join(g.expected_tags) or "(none)"
        lines.append(
            f"| {g.group} | {g.clips} | {top} | {expected} | {_rate(g.hits, g.scored)} "
            f"| {_rate(g.style_hits, g.style_scored)} | {_rate(g.instrument_hits, g.instrument_scored)} "
            f"| {_pct(g.mismatched_hit_rate)} | {_pct(g.style_mismatched_hit_rate)} | {_pct(g.style_false_alarm_rate)} |"
        )
    return lines


def _heat_map(report: CheckReport, path: Path) -> None:
    from matplotlib.figure import Figure

    from melody.data.plots import save_figure

    probs = np.array([g.mean_probs for g in report.groups])  # groups tags
    fig = Figure(figsize=(14, 1.6 + 0.4 * len(report.groups)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(probs, aspect="auto", cmap="magma", vmin=0.0, vmax=max(float(probs.max()), 1e-6))
    ax.set_xticks(range(len(report.tags)), report.tags, rotation=90, fontsize=8)
    ax.set_yticks(range(len(report.groups)), [f"{g.group} ({g.clips})" for g in report.groups], fontsize=9)
    ax.set_title(f"{report.vocabulary.title} mean tag probability per group")
    fig.colorbar(image, ax=ax, fraction=0.02)
    save_figure(fig, path, dpi=100)
