"""`melody data check DIR`: does the corpus sound like what its captions say? Asked of a judge nobody here trained.

Not part of the MeLoDy paper. MeLoDy's quality rests on text/audio pairs whose captions are true;
our corpus is synthesised, so we check it with the pretrained musicnn tagger (`melody.ears.musicnn`,
MagnaTagATune's 50 tags): per group of clips (a style of a source; real recordings as one group),
the mean tag probabilities and their top tags, and how often a tag that names the caption's style or
one of its instruments is among the clip's top-k tags (a *hit*).

The MTT tag set has no jazz, funk, folk, blues, hip hop or bossa nova tag, so those styles expect no
style tag (their clips are scored on their instruments only); "country" is the nearest MTT tag to
folk but names a different genre, so it is not used. The score styles (medieval ... romantic) expect
"classical"/"classic", MTT's tags for Western art music. A style missing from `STYLE_TAGS` expects
no style tag. A clip whose style and instruments map to no MTT tag is not scored (its
`hit` is None) and does not count in the hit rates. The mappings are `STYLE_TAGS` and
`instrument_tags` below; both are deliberately narrow (a tag must *name* the style or instrument).

Groups are named by style, as "<source>: <style>" when a style occurs in several sources (e.g. the
procedural and the score "folk"), and by source when there is no style (real recordings). Since a
top-5 out of 50 tags hits a 3-6-tag expected set fairly often by chance, the report also gives a
control: each clip's top-k matched against the captions of random clips of *other* groups (seeded).
A hit rate well above its control means the tagger hears the style/instruments the caption names.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from melody.errors import MelodyError

CORPUS_SAMPLE_RATE = 24000

# Style (caption attribute "style") -> the MTT tags that name it. Empty: MTT has no tag for it.
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

# Instrument-name words -> MTT tags, first matching rule wins (order matters: "synth bass" is a synth,
# "bass drum" a drum, "soprano sax" a sax, "nylon-string guitar" a guitar, "harpsichord" not a harp).
# Bass, organ, brass, reeds, mallets: no MTT tag names them.
_INSTRUMENT_RULES: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
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


def instrument_tags(name: str) -> tuple[str, ...]:
    """The MTT tags that name instrument `name` (e.g. "distortion guitar" -> ("guitar",)); () if none."""
    words = set(re.findall(r"[a-z]+", name.lower()))
    for keys, tags in _INSTRUMENT_RULES:
        if words & keys:
            return tags
    return ()


def expected_tags(meta: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tags naming the caption's style, tags naming its instruments) for a clip's metadata."""
    attrs = meta.get("attributes") or {}
    style_tags = STYLE_TAGS.get(str(attrs.get("style") or "").lower(), ())
    inst: list[str] = []
    for name in attrs.get("instruments") or ():
        inst += [t for t in instrument_tags(str(name)) if t not in inst]
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

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.scored if self.scored else None

    @property
    def style_hit_rate(self) -> float | None:
        return self.style_hits / self.style_scored if self.style_scored else None

    @property
    def instrument_hit_rate(self) -> float | None:
        return self.instrument_hits / self.instrument_scored if self.instrument_scored else None


@dataclass
class CheckReport:
    k: int
    tags: tuple[str, ...]
    groups: list[GroupSummary]
    clips: list[ClipResult] = field(repr=False)

    @property
    def hit_rate(self) -> float | None:
        scored = sum(g.scored for g in self.groups)
        return sum(g.hits for g in self.groups) / scored if scored else None

    @property
    def mismatched_hit_rate(self) -> float | None:
        values = [c.mismatched_hit for c in self.clips if c.mismatched_hit is not None]
        return float(np.mean(values)) if values else None

    def to_json(self) -> dict:
        groups = []
        for g in self.groups:
            d = asdict(g)
            d.update(
                hit_rate=g.hit_rate, style_hit_rate=g.style_hit_rate, instrument_hit_rate=g.instrument_hit_rate
            )
            groups.append(d)
        return {
            "k": self.k,
            "tags": list(self.tags),
            "hit_rate": self.hit_rate,
            "mismatched_hit_rate": self.mismatched_hit_rate,
            "groups": groups,
            "clips": [asdict(c) for c in self.clips],
        }


def check_clips(
    clips: Iterable[tuple[np.ndarray, dict]],
    tagger: Tagger,
    k: int = 5,
    sample_rate: int = CORPUS_SAMPLE_RATE,
    control_draws: int = 20,
    seed: int = 0,
) -> CheckReport:
    """Tag every (audio, meta) clip and summarise per group: mean top tags and hit rates at top-`k`.

    As a control, each scored clip's top-k is also matched against the expected tags of up to
    `control_draws` random clips of *other* groups (seeded): a tagger that heard nothing of the style
    would score about as well there as against the clip's own caption.
    """
    labels = tuple(tagger.labels)
    rows: list[tuple[str, str | None, np.ndarray, ClipResult]] = []
    for audio, meta in clips:
        source = str(meta.get("source") or "unknown")
        style = (meta.get("attributes") or {}).get("style")
        probs = np.asarray(tagger.tags(audio, sample_rate), dtype=np.float64)
        order = np.argsort(-probs, kind="stable")[:k]
        top = [(labels[i], float(probs[i])) for i in order]
        top_set = {t for t, _ in top}
        style_tags, inst_tags = expected_tags(meta)
        style_hit = bool(top_set & set(style_tags)) if style_tags else None
        inst_hit = bool(top_set & set(inst_tags)) if inst_tags else None
        hit = bool(top_set & (set(style_tags) | set(inst_tags))) if style_tags or inst_tags else None
        clip = ClipResult("", str(meta.get("caption", "")), top, style_tags, inst_tags, style_hit, inst_hit, hit)
        rows.append((source, style, probs, clip))
    if not rows:
        raise MelodyError("no clips to check: the corpus is empty")

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
    _set_mismatched_hits([r[3] for r in rows], control_draws, np.random.default_rng(seed))

    groups = []
    for name in sorted(by_group, key=lambda n: (by_group[n][0][1] is None, n)):
        members = by_group[name]
        mean = np.mean([r[2] for r in members], axis=0)
        order = np.argsort(-mean, kind="stable")[:k]
        results = [r[3] for r in members]
        inst_counts = Counter(t for c in results for t in c.instrument_tags)
        style_tags = list(results[0].style_tags)
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
                scored=sum(c.hit is not None for c in results),
                hits=sum(bool(c.hit) for c in results),
                style_scored=sum(c.style_hit is not None for c in results),
                style_hits=sum(bool(c.style_hit) for c in results),
                instrument_scored=sum(c.instrument_hit is not None for c in results),
                instrument_hits=sum(bool(c.instrument_hit) for c in results),
                mismatched_hit_rate=_mean_or_none([c.mismatched_hit for c in results]),
            )
        )
    return CheckReport(k=k, tags=labels, groups=groups, clips=[r[3] for r in rows])


def _set_mismatched_hits(clips: list[ClipResult], draws: int, rng: np.random.Generator) -> None:
    """Set `mismatched_hit` of each scored clip: its top-k against other groups' clips' expected tags."""
    scored = [c for c in clips if c.hit is not None]
    expected = [set(c.style_tags) | set(c.instrument_tags) for c in scored]
    if draws <= 0 or len({c.group for c in scored}) < 2:
        return
    for c in scored:
        top = {t for t, _ in c.top_tags}
        picks = [j for j in rng.integers(len(scored), size=4 * draws) if scored[j].group != c.group][:draws]
        if picks:
            c.mismatched_hit = float(np.mean([bool(top & expected[j]) for j in picks]))


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def check_corpus(
    root: Path, tagger: Tagger | None = None, k: int = 5, split: str | None = None, limit: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """`check_clips` over the corpus shards under `root` (at most `limit` clips)."""
    from itertools import islice

    from melody.data.shards import iter_samples, read_manifest

    manifest = read_manifest(root)
    if tagger is None:
        from melody.ears.musicnn import MusicnnTagger

        tagger = MusicnnTagger.load()
    clips = ((s["audio"].mean(axis=0), s["meta"]) for s in iter_samples(root, split=split))
    clips = islice(clips, limit) if limit else clips
    if progress:
        from tqdm import tqdm

        total = limit or sum(v["clips"] for name, v in manifest["splits"].items() if split in (None, name))
        clips = tqdm(clips, total=total, unit="clip", desc="tagging")
    return check_clips(clips, tagger, k=k, sample_rate=int(manifest["sample_rate"]))


def write_report(report: CheckReport, out_dir: Path) -> dict[str, Path]:
    """Write `check.json`, `check.md` (a table) and `check.png` (groups x tags heat map) to `out_dir`."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / "check.json", "md": out_dir / "check.md", "png": out_dir / "check.png"}
        paths["json"].write_text(json.dumps(report.to_json(), indent=1) + "\n")
        paths["md"].write_text(report_markdown(report))
        _heat_map(report, paths["png"])
    except OSError as err:
        raise MelodyError(f"cannot write the check report to {out_dir}: {err.strerror}") from None
    return paths


def report_markdown(report: CheckReport) -> str:
    def rate(hits: int, scored: int) -> str:
        return f"{hits / scored:.0%} ({hits}/{scored})" if scored else "n/a"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    k = report.k
    lines = [
        "# Corpus check: musicnn (MTT) tags",
        "",
        f"Hit = a tag naming the caption's style or one of its instruments is among the clip's top-{k} tags. "
        f"Overall hit rate: {rate(sum(g.hits for g in report.groups), sum(g.scored for g in report.groups))}; "
        f"control (the same top-{k} against captions of other groups' clips): {pct(report.mismatched_hit_rate)}.",
        "",
        f"| style | clips | mean top-{k} tags | expected tags | hit rate | style-tag hits | instrument-tag hits | control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in report.groups:
        top = ", ".join(f"{t} {p:.2f}" for t, p in g.mean_top_tags)
        expected = ", ".join(g.expected_tags) or "(none)"
        lines.append(
            f"| {g.group} | {g.clips} | {top} | {expected} | {rate(g.hits, g.scored)} "
            f"| {rate(g.style_hits, g.style_scored)} | {rate(g.instrument_hits, g.instrument_scored)} "
            f"| {pct(g.mismatched_hit_rate)} |"
        )
    lines += ["", "Style and instrument to tag mappings: `melody/data/check.py` (`STYLE_TAGS`, `instrument_tags`).", ""]
    return "\n".join(lines)


def _heat_map(report: CheckReport, path: Path) -> None:
    from matplotlib.figure import Figure

    probs = np.array([g.mean_probs for g in report.groups])  # groups tags
    fig = Figure(figsize=(14, 1.6 + 0.4 * len(report.groups)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(probs, aspect="auto", cmap="magma", vmin=0.0, vmax=max(float(probs.max()), 1e-6))
    ax.set_xticks(range(len(report.tags)), report.tags, rotation=90, fontsize=8)
    ax.set_yticks(range(len(report.groups)), [f"{g.group} ({g.clips})" for g in report.groups], fontsize=9)
    ax.set_title("musicnn (MTT) mean tag probability per group")
    fig.colorbar(image, ax=ax, fraction=0.02)
    fig.savefig(path, dpi=100)
