"""Real scores from music21's bundled corpus, given General MIDI instruments: the `score` source.

MeLoDy (Lam et al., 2023) trains on licensed recordings with captions; melody's built-in corpus
adds real, human-composed music to its procedural arrangements by performing scores from the
corpus that ships inside music21 (15 112 works, offline). The paper says nothing about this; the
choices made here are:

- **Collections and styles.** Each corpus folder maps to one style of a small set,
  `STYLES = folk, medieval, renaissance, baroque, classical, romantic` (`STYLE_OF_COLLECTION`).
  Folders that are analyses (`.rntxt`), test files, demos, lead sheets or lone 20th-century pieces
  are left out. Folk melodies are ~85 % of the corpus, so works are ordered by *stratified
  interleaving*: style shares `STYLE_SHARES`, collections within a style weighted by the square
  root of their size, so any prefix of `list_score_works(seed)` is balanced.
- **Segments.** Long works (quartet movements, masses) give several excerpts, one per
  `SEGMENT_QUARTERS` quarter notes, up to `MAX_SEGMENTS[style]`; that is what makes the ~50
  classical works weigh as much as hundreds of chorales. All excerpts of a work share its
  `piece_id`, so a split by `piece_id` never puts one work in two splits.
- **Instruments** (`_choose_instruments`): a chorale is played by a string quartet, an organ, a
  choir ("aahs", GM 52) or a brass quartet; Renaissance polyphony by a choir, a recorder consort or
  an organ; medieval pieces by a choir, recorders or a recorder-fiddle-harp consort; classical and
  romantic pieces by the instruments their parts name (violin, viola, cello, piano, voice, ...),
  else a string quartet (4 parts) or a piano; a folk tune by a lead that fits its origin (fiddle,
  tin whistle, flute, accordion, banjo, bagpipe, harp, pan flute, fife...), alone or over a drone
  (tonic + fifth) or a bar-by-bar chord accompaniment chosen to fit the melody in the tune's key
  and mode (`_chord_for_bar`). Those added accompaniments are real arrangement choices, recorded
  in the attributes ("accompaniment").
- **Tempo.** The score's metronome mark in force at the excerpt's start (a bare "playback only"
  120 is an editor's default and is ignored), else a random tempo for the style or folk dance
  form (`STYLE_TEMPO`, `FORM_TEMPO`, in beats of the time signature: a dotted quarter in 6/8, a
  half note in 2/2). One constant tempo per excerpt. `tempo_bpm` is the felt beat: the time
  signature's beat, folded into 40-200 BPM (a fast 3/4 scherzo is felt one-in-a-bar, a slow
  2/4 in eighths), which is what a listener or a beat tracker reports for a reel in 2/2 (~110,
  not 220) or a jig in 6/8. It equals quarter notes per minute, `arrange.py`'s unit, in 2/4, 3/4
  and 4/4; "tempo_qpm" is always quarter notes per minute (the MIDI tempo), and "tempo_source"
  says whether the score gave it ("score") or it was drawn ("chosen").
- **Key and mode** are music21's key analysis (`Stream.analyze('key')`) of the excerpt; when the
  score names a church mode (an abc `K:Ador`, say) on the same tonic, that mode is kept. The
  tonic is spelled as keys usually are (`arrange.key_name`: "Bb", "F#", "C#" minor).
- **Dynamics** are drawn per piece ("soft"/"medium"/"loud") and set the velocities; the melody
  part sits a little above the others and every note gets a small random velocity jitter.
- **Mood** is `arrange.mood` of tempo, mode and dynamics, the rule the procedural pieces use, so a
  mood word means the same thing in every source (a heuristic, not a listener's judgement).
- Folk tunes are played with their repeats expanded (AABB), as they are performed, and a tune
  shorter than the excerpt is played again, like the verses of a song ("verses"), up to the last
  bar line within `max_seconds`: many Essen songs last under 10 s, shorter than one corpus clip.

A work that fails to parse, is silent or is too short is skipped with a reason
(`try_score_piece` returns a `SkipReason`); nothing here raises for a bad work.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from melody.data.synth.arrange import key_name, mood

log = logging.getLogger(__name__)

STYLES = ("folk", "medieval", "renaissance", "baroque", "classical", "romantic")

STYLE_OF_COLLECTION = {
    "essenFolksong": "folk", "oneills1850": "folk", "ryansMammoth": "folk", "airdsAirs": "folk",
    "miscFolk": "folk", "nottingham-dataset": "folk",
    "trecento": "medieval", "ciconia": "medieval", "luca": "medieval",
    "palestrina": "renaissance", "monteverdi": "renaissance", "josquin": "renaissance", "lusitano": "renaissance",
    "bach": "baroque", "handel": "baroque", "corelli": "baroque",
    "beethoven": "classical", "mozart": "classical", "haydn": "classical", "cpebach": "classical",
    "schumann_robert": "romantic", "schumann_clara": "romantic", "schubert": "romantic",
    "chopin": "romantic", "verdi": "romantic", "weber": "romantic", "beach": "romantic",
}  # fmt: skip

# Share of each style in any prefix of `list_score_works` (while the style has works left).
STYLE_SHARES = {"folk": 0.35, "renaissance": 0.2, "baroque": 0.2, "classical": 0.12, "medieval": 0.08, "romantic": 0.05}
MAX_SEGMENTS = {"folk": 1, "medieval": 4, "renaissance": 4, "baroque": 4, "classical": 16, "romantic": 16}
SEGMENT_QUARTERS = 96.0  # one excerpt per 96 quarter notes (24 bars of 4/4) of a long work
MIN_SECONDS = 4.0  # shorter excerpts are skipped
MIN_NOTES = 8
MAX_NOTES = 20_000  # a guard against pathological scores, far above 40 s of any real piece

# Tempo ranges (beats per minute) when a score has no metronome mark.
STYLE_TEMPO = {
    "folk": (76.0, 116.0), "medieval": (60.0, 96.0), "renaissance": (54.0, 80.0),
    "baroque": (60.0, 96.0), "classical": (60.0, 132.0), "romantic": (56.0, 120.0),
}  # fmt: skip
FORM_TEMPO = {
    "reel": (96.0, 116.0), "jig": (104.0, 124.0), "slip jig": (108.0, 126.0), "hornpipe": (72.0, 92.0),
    "strathspey": (110.0, 132.0), "march": (96.0, 120.0), "air": (54.0, 76.0), "waltz": (120.0, 160.0),
    "polka": (100.0, 124.0), "lullaby": (56.0, 76.0), "chorale": (60.0, 84.0),
}  # fmt: skip

# General MIDI programs (0-based) under the names the attributes use.
GM_PROGRAMS = {
    "piano": 0, "harpsichord": 6, "church organ": 19, "reed organ": 20, "accordion": 21,
    "nylon-string guitar": 24, "acoustic guitar": 25, "violin": 40, "viola": 41, "cello": 42, "contrabass": 43,
    "harp": 46, "string ensemble": 48, "choir": 52, "voice": 53, "trumpet": 56, "trombone": 57, "tuba": 58,
    "french horn": 60, "oboe": 68, "bassoon": 70, "clarinet": 71, "fife": 72, "flute": 73, "recorder": 74,
    "pan flute": 75, "tin whistle": 78, "banjo": 105, "bagpipe": 109, "fiddle": 110,
}  # fmt: skip

# Ensembles, instruments from the top voice down; an N-part score spreads its parts over them.
ENSEMBLES = {
    "string quartet": ("violin", "violin", "viola", "cello"),
    "organ": ("church organ",),
    "choir": ("choir",),
    "brass quartet": ("trumpet", "french horn", "trombone", "tuba"),
    "recorder consort": ("recorder",),
    "medieval consort": ("recorder", "fiddle", "harp"),
    "harpsichord": ("harpsichord",),
    "piano": ("piano",),
}
# Which ensembles play which music, with weights.
CHORALE_ENSEMBLES = {"string quartet": 1.0, "organ": 1.0, "choir": 1.0, "brass quartet": 1.0}
KEYBOARD_ENSEMBLES = {"harpsichord": 1.0, "piano": 1.0}
RENAISSANCE_ENSEMBLES = {"choir": 0.5, "recorder consort": 0.3, "organ": 0.2}
MEDIEVAL_ENSEMBLES = {"choir": 0.35, "recorder consort": 0.3, "medieval consort": 0.35}

# Folk lead instruments by origin group, with weights.
FOLK_LEADS = {
    "irish": {"fiddle": 0.35, "tin whistle": 0.2, "flute": 0.2, "accordion": 0.15, "banjo": 0.1},
    "scottish": {"fiddle": 0.3, "flute": 0.2, "bagpipe": 0.15, "harp": 0.15, "accordion": 0.1, "tin whistle": 0.1},
    "fife": {"fife": 0.6, "fiddle": 0.2, "flute": 0.2},
    "northumbrian": {"bagpipe": 0.3, "fiddle": 0.3, "flute": 0.2, "accordion": 0.2},
    "chinese": {"flute": 0.4, "pan flute": 0.3, "fiddle": 0.3},
    "song": {"flute": 0.2, "violin": 0.2, "accordion": 0.2, "clarinet": 0.15, "recorder": 0.15, "oboe": 0.1},
}
FOLK_ACCOMPANIMENT = {"none": 0.35, "chords": 0.45, "drone": 0.2}
CHORD_INSTRUMENTS = {"acoustic guitar": 0.35, "piano": 0.2, "accordion": 0.2, "harp": 0.15, "nylon-string guitar": 0.1}
DRONE_INSTRUMENTS = {"cello": 0.4, "reed organ": 0.3, "string ensemble": 0.3}

DYNAMICS = {"soft": 0.3, "medium": 0.45, "loud": 0.25}
VELOCITY = {"soft": 52, "medium": 76, "loud": 100}

COMPOSERS = {
    "bach": "Johann Sebastian Bach", "handel": "George Frideric Handel", "corelli": "Arcangelo Corelli",
    "palestrina": "Giovanni Pierluigi da Palestrina", "monteverdi": "Claudio Monteverdi",
    "josquin": "Josquin des Prez", "lusitano": "Vicente Lusitano", "ciconia": "Johannes Ciconia",
    "beethoven": "Ludwig van Beethoven", "mozart": "Wolfgang Amadeus Mozart", "haydn": "Joseph Haydn",
    "cpebach": "Carl Philipp Emanuel Bach", "schumann_robert": "Robert Schumann",
    "schumann_clara": "Clara Schumann", "schubert": "Franz Schubert", "chopin": "Frédéric Chopin",
    "verdi": "Giuseppe Verdi", "weber": "Carl Maria von Weber", "beach": "Amy Beach",
}  # fmt: skip

# Forms named by path (checked in order, first prefix wins), by abc rhythm field or title word.
FORM_OF_PATH = (
    ("mozart/k545", "piano sonata"), ("beethoven/", "string quartet"), ("mozart/", "string quartet"),
    ("haydn/", "string quartet"), ("monteverdi/", "madrigal"), ("corelli/", "trio sonata"),
    ("handel/", "aria"), ("verdi/", "aria"), ("schubert/", "art song"), ("schumann_robert/opus48", "art song"),
    ("schumann_robert/dichterliebe", "art song"), ("schumann_robert/opus41", "string quartet"),
    ("essenFolksong/ballad", "ballad"), ("essenFolksong/kinder", "children's song"),
)  # fmt: skip
FORM_WORDS = (
    ("slip jig", "slip jig"), ("slipjig", "slip jig"), ("jig", "jig"), ("reel", "reel"), ("hornpipe", "hornpipe"),
    ("strathspey", "strathspey"), ("fling", "highland fling"), ("waltz", "waltz"), ("march", "march"),
    ("polka", "polka"), ("mazurka", "mazurka"), ("polonaise", "polonaise"), ("minuet", "minuet"),
    ("gavotte", "gavotte"), ("clog", "clog dance"), ("slide", "slide"), ("air", "air"),
    ("wiegenlied", "lullaby"), ("liebeslied", "love song"), ("tanzlied", "dance song"), ("ballade", "ballad"),
)  # fmt: skip
MASS_WORDS = ("kyrie", "gloria", "credo", "sanctus", "agnus", "benedictus", "osanna", "hosanna")

_LEFT_OUT_FILES = ("essenFolksong/test", "essenFolksong/variant0", "_old.")  # test files and superseded scans
_FORMAT_PREFERENCE = (".krn", ".mxl", ".musicxml", ".xml", ".abc")  # same work in two formats: keep the first
_MERGED_TUNES = ("josquin",)  # abc files whose numbered tunes are the voices of one piece
_GLOBAL_NUMBERS = ("oneills1850", "airdsAirs")  # tune numbers name the tune across files (some are in two files)


@dataclass(frozen=True)
class ScoreWork:
    """One excerpt-to-be of a corpus work: cheap to list (metadata only), parsed by `score_piece`."""

    work_id: str  # "oneills1850/1176-1275.abc#1266": the corpus path, and the tune number in an abc file
    collection: str
    source_path: str  # relative to music21's corpus
    number: int | None  # tune number inside an abc file; None for single-work files (or merged voices)
    style: str
    title: str | None
    composer: str | None
    parts: int
    quarter_length: float
    segment: int = 0  # excerpt index: starts near `segment * SEGMENT_QUARTERS` quarter notes

    @property
    def piece_id(self) -> str:
        return piece_id_of(self.work_id)


@dataclass(frozen=True)
class ScorePiece:
    """A performed excerpt: MIDI ready for `render_midi`, and what a caption may say about it."""

    piece_id: str  # the work's id, shared by all its segments
    midi: pretty_midi.PrettyMIDI
    attributes: dict
    segment: int = 0


@dataclass(frozen=True)
class SkipReason:
    piece_id: str
    reason: str


def piece_id_of(work_id: str) -> str:
    """A file- and key-safe id for a work: the corpus path without extension, and the tune number."""
    path, _, number = work_id.partition("#")
    stem = re.sub(r"\.(abc|krn|mxl|musicxml|xml)$", "", path)
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{stem}-{number}" if number else stem).strip("-")


# --- listing ----------------------------------------------------------------------------------


def list_score_works(seed: int, limit: int | None = None) -> list[ScoreWork]:
    """Every usable work (and segment), in a seeded stratified order: any prefix is balanced by style.

    Within a stratum (a collection) works are shuffled with `seed` and all first segments come
    before any second segment; strata interleave in proportion to their weights (see the module
    docstring), and a stratum that runs out simply stops contributing.
    """
    works = catalogue()
    strata: dict[str, list[ScoreWork]] = {}
    for work in works:
        segments = max(1, min(MAX_SEGMENTS[work.style], int(work.quarter_length // SEGMENT_QUARTERS)))
        for segment in range(segments):
            strata.setdefault(work.collection, []).append(_with_segment(work, segment))
    per_style: dict[str, float] = {}
    for name, items in strata.items():
        per_style[items[0].style] = per_style.get(items[0].style, 0.0) + math.sqrt(len(items))
    rng = np.random.default_rng(seed)
    keyed = []
    for name in sorted(strata):
        items = strata[name]
        style = items[0].style
        weight = STYLE_SHARES[style] * math.sqrt(len(items)) / per_style[style]
        order = rng.permutation(len({w.work_id for w in items}))
        rank_of_work = {wid: int(r) for wid, r in zip(sorted({w.work_id for w in items}), order)}
        n_works = len(rank_of_work)
        phase = rng.uniform(0.0, 1.0)  # strata of equal weight do not all land on the same keys
        for w in items:
            rank = w.segment * n_works + rank_of_work[w.work_id]
            keyed.append(((rank + phase) / weight, name, rank, w))
    keyed.sort(key=lambda k: k[:3])
    ordered = [k[3] for k in keyed]
    return ordered[:limit] if limit is not None else ordered


def _with_segment(work: ScoreWork, segment: int) -> ScoreWork:
    return work if segment == work.segment else ScoreWork(**{**vars(work), "segment": segment})


@functools.lru_cache(maxsize=1)
def catalogue() -> tuple[ScoreWork, ...]:
    """All usable works (first segments), from music21's bundled metadata, sorted by `work_id` (~2 s)."""
    from music21 import corpus

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    by_key: dict[tuple, tuple[int, ScoreWork]] = {}
    merged: dict[str, list] = {}
    analysis_titles: dict[str, str] = {}  # Monteverdi's scores are untitled, their analyses are not
    for entry in bundle[:]:  # a slice is one list; iterating the bundle indexes it (quadratic)
        md = entry.metadata
        path = str(entry.sourcePath)
        collection = path.split("/")[0]
        if md is not None and path.endswith(".rntxt") and clean_title(md.title):
            analysis_titles[str(Path(path).with_suffix(""))] = clean_title(md.title)
        if md is None or collection not in STYLE_OF_COLLECTION or path.endswith(".rntxt"):
            continue
        if collection in _MERGED_TUNES:
            merged.setdefault(path, []).append(entry)
            continue
        if any(bad in path for bad in _LEFT_OUT_FILES) or not md.noteCount or md.noteCount < MIN_NOTES:
            continue
        style = STYLE_OF_COLLECTION[collection]
        if style == "folk" and (md.numberOfParts or 1) != 1:
            continue  # a handful of multi-voice fife-and-drum settings; the folk path plays one line
        number = int(entry.number) if entry.number is not None else None
        work = ScoreWork(
            work_id=f"{path}#{number}" if number is not None else path,
            collection=collection, source_path=path, number=number, style=style,
            title=_title(path, md.title), composer=_composer(collection, md.composer),
            parts=int(md.numberOfParts or 1), quarter_length=float(md.scoreQuarterLength or 0.0),
        )  # fmt: skip
        suffix = Path(path).suffix
        rank = _FORMAT_PREFERENCE.index(suffix) if suffix in _FORMAT_PREFERENCE else len(_FORMAT_PREFERENCE)
        if collection in _GLOBAL_NUMBERS and number is not None:
            key: tuple = (collection, number)
        else:
            key = (str(Path(path).with_suffix("")), number)
        if key not in by_key or (rank, work.work_id) < (by_key[key][0], by_key[key][1].work_id):
            by_key[key] = (rank, work)
    for path, entries in merged.items():  # one work per file, its tunes are the voices
        md = entries[0].metadata
        by_key[(path, None)] = (0, ScoreWork(
            work_id=path, collection=path.split("/")[0], source_path=path, number=None,
            style=STYLE_OF_COLLECTION[path.split("/")[0]], title=clean_title(md.title),
            composer=_composer(path.split("/")[0], md.composer), parts=len(entries),
            quarter_length=max(float(e.metadata.scoreQuarterLength or 0.0) for e in entries),
        ))  # fmt: skip
    works = []
    for _, work in by_key.values():
        if work.title is None and str(Path(work.source_path).with_suffix("")) in analysis_titles:
            work = ScoreWork(**{**vars(work), "title": analysis_titles[str(Path(work.source_path).with_suffix(""))]})
        works.append(work)
    return tuple(sorted(works, key=lambda w: w.work_id))


def clean_title(raw: str | None) -> str | None:
    """Tidy a corpus title: DOS-encoded umlauts, shouting capitals, page references, trailing dots."""
    if not raw:
        return None
    title = raw
    if any("\x80" <= ch <= "\x9f" for ch in title):  # Essen titles are CP437 bytes read as Latin-1
        try:
            title = title.encode("latin-1").decode("cp437")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    title = re.sub(r",?\s*S\.\s*\d+\w*$", "", title)  # Essen's ", S. 212f" page references
    title = re.sub(r"\s*\(\d+[a-z]?\)$", "", title)  # and its "(76)", "(26c)" song numbers
    title = re.sub(r"^\d+[a-z]?\s*(\(\d+\))?\.\s+", "", title)  # an edition's "14 (105). " numbering
    title = re.sub(r"\s+-+\s+", " ", title)  # Ryan's "Croton -- Hornpipe"
    title = re.sub(r"\s+", " ", title).strip().rstrip(".,;:").strip()
    if title.isupper():
        title = title.title().replace("'S ", "'s ")
    if len(title) < 2 or not any(ch.isalpha() for ch in title):
        return None
    return title


_GENERIC_TITLES = ("first section", "second section", "third section", "fourth section", "music21 fragment")


def _title(path: str, raw: str | None) -> str | None:
    """The work's title: the metadata's, tidied, or one made from its file name."""
    title = clean_title(raw)
    if title and title.lower() in _GENERIC_TITLES:
        title = None
    match = re.match(r"palestrina/([A-Za-z]+(?:_[IVX]+)?)_(\d+)", path)  # "Credo_41_a": mass 41's Credo
    if match:
        section = f"{match.group(1).replace('_', ' ')} (mass {int(match.group(2))})"
        return section if not title or title.lower() in section.lower() else f"{section}: {title}"
    match = re.match(r"trecento/PMFC[\w]*-(.+)\.\w+$", path)  # "PMFC_13_07-Gloria Laus Honor.xml"
    if not title and match:
        title = clean_title(match.group(1))
    return title or title_from_path(path) or _title_from_stem(path)


def _title_from_stem(path: str) -> str | None:
    """"allor_che_ignuda.mxl" -> "Allor Che Ignuda", "laDonnaEMobile" -> "La Donna E Mobile"; None for codes."""
    stem = Path(path).stem
    spaced = re.sub(r"([A-Z])([A-Z][a-z])", r"\1 \2", re.sub(r"([a-z])([A-Z])", r"\1 \2", stem))
    words = spaced.replace("_", " ").split()
    if len(words) < 2 or any(ch.isdigit() for ch in stem):
        return None
    return " ".join(w[:1].upper() + w[1:] for w in words)


def title_from_path(path: str) -> str | None:
    """A catalogue title for untitled scores: "BWV 66.6", "Op. 18 No. 1, movement 3", "K. 458, movement 2"."""
    match = re.search(r"bwv(\d+[a-z]?(?:\.\d+)?)", path)
    if match:
        return f"BWV {match.group(1)}"
    match = re.search(r"(?:^|/)(opus|k)(\d+)(?:no(\d+))?(?:/movement(\d+))?", path)
    if not match:
        return None
    kind, number, sub, movement = match.groups()
    title = f"Op. {number}" if kind == "opus" else f"K. {number}"
    title += f" No. {sub}" if sub else ""
    return title + (f", movement {movement}" if movement else "")


def _composer(collection: str, raw: str | None) -> str | None:
    if collection in COMPOSERS:
        return COMPOSERS[collection]
    if STYLE_OF_COLLECTION.get(collection) == "folk" or not raw:
        return None
    name = raw.strip()
    if name.lower().startswith(("anonym", "anonyous")) or re.search(r"[A-Z]-[A-Z][a-z]", name):
        return None  # "Anonymous I-Rvat 4749": an anonymous piece, a manuscript siglum
    return name


# --- performing one work ----------------------------------------------------------------------


def score_piece(work: ScoreWork, rng: np.random.Generator, max_seconds: float = 40.0) -> ScorePiece | None:
    """Perform up to `max_seconds` of `work` as MIDI with attributes; None (reason logged) to skip it."""
    result = try_score_piece(work, rng, max_seconds)
    if isinstance(result, SkipReason):
        log.info("skipping score %s: %s", result.piece_id, result.reason)
        return None
    return result


def try_score_piece(work: ScoreWork, rng: np.random.Generator, max_seconds: float = 40.0) -> ScorePiece | SkipReason:
    """Like `score_piece`, but a skipped work returns its `SkipReason` instead of None."""
    try:
        return _perform(work, rng, max_seconds)
    except _Skip as skip:
        return SkipReason(work.piece_id, str(skip))
    except Exception as err:  # a corpus file music21 cannot read or analyse: skip it, never crash the build
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        return SkipReason(work.piece_id, f"music21 failed: {type(err).__name__}: {first}")


class _Skip(Exception):
    """A work that is fine to skip (too short, silent, ...); the message is the reason."""


@dataclass
class _Note:
    start: float  # quarter notes from the excerpt's start
    end: float
    pitch: int


def _perform(work: ScoreWork, rng: np.random.Generator, max_seconds: float) -> ScorePiece:
    from music21 import key as m21key
    from music21 import meter

    score = parse_work(work)
    if work.style == "folk":
        score = _expand_repeats(score)
    parts = list(score.parts)
    if not parts:
        raise _Skip("no parts")
    total = float(score.highestTime)
    bars = _bar_spans(parts[0], total)

    # Excerpt start: the first bar line at or after this segment's nominal start.
    target = work.segment * SEGMENT_QUARTERS
    start_index = next((i for i, (s, _) in enumerate(bars) if s >= target - 1e-6), None)
    if start_index is None:
        raise _Skip(f"segment {work.segment} starts past the end ({total:g} quarters)")
    start = bars[start_index][0]

    time_signature = _first(score, meter.TimeSignature, start)
    beat_quarters = float(time_signature.beatDuration.quarterLength) if time_signature else 1.0
    beats_per_bar = int(time_signature.beatCount) if time_signature else 4
    form = form_of(work)
    qpm, source = _notated_qpm(parts[0], start), "score"
    if qpm is None:
        lo, hi = FORM_TEMPO.get(form, STYLE_TEMPO[work.style]) if form else STYLE_TEMPO[work.style]
        qpm, source = float(rng.uniform(lo, hi)) * beat_quarters, "chosen"
    beat_bpm = _felt_tempo(qpm / beat_quarters, beats_per_bar)

    # Excerpt end: the last bar line within max_seconds, unless that would halve the excerpt.
    max_quarters = max_seconds * qpm / 60.0
    ends = [e for _, e in bars[start_index:] if e <= start + max_quarters + 1e-6]
    end = ends[-1] if ends and ends[-1] - start >= 0.5 * max_quarters else min(start + max_quarters, total)
    end_index = max(i for i, (s, _) in enumerate(bars) if s < end - 1e-6)
    if (end - start) * 60.0 / qpm < MIN_SECONDS:
        raise _Skip(f"too short: {(end - start) * 60.0 / qpm:.1f} s")

    excerpt = score  # music21's `measures` rebases the excerpt to start at 0
    if start > 1e-6 or end < total - 1e-6:
        excerpt = score.measures(start_index, end_index, indicesNotNumbers=True)
    sounding = [(p, _part_notes(p, end - start)) for p in excerpt.parts]
    sounding = [(p, line) for p, line in sounding if line]
    lines = [line for _, line in sounding]
    n_notes = sum(len(line) for line in lines)
    if n_notes < MIN_NOTES:
        raise _Skip(f"only {n_notes} notes in the excerpt")
    if n_notes > MAX_NOTES:
        raise _Skip(f"{n_notes} notes in {max_seconds:g} s is not a performable score")

    length = end - start
    bar_spans = [(s - start, min(e, end) - start) for s, e in bars[start_index : end_index + 1]]
    verses = 1
    if work.style == "folk" and length < 0.75 * max_quarters:  # a short song is sung for several verses
        lines, bar_spans, length, verses = _verses(lines, bar_spans, length, max_quarters)

    analysed = excerpt.analyze("key")
    tonic_pc, mode = int(analysed.tonic.pitchClass), str(analysed.mode)
    notated = next((k for k in score.recurse().getElementsByClass(m21key.Key)), None)
    if notated is not None and notated.mode not in ("major", "minor") and notated.tonic.name == analysed.tonic.name:
        mode = str(notated.mode)  # a named church mode on the analysed tonic

    # Instruments, then accompaniment for folk tunes.
    voices = _choose_instruments(work, [p for p, _ in sounding], rng)
    accompaniment, accomp_instrument = "none", None
    if work.style == "folk":
        accompaniment, accomp_instrument = _choose_accompaniment(work, voices[0], rng)
    dynamics = _pick(DYNAMICS, rng)

    midi = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    seconds_per_quarter = 60.0 / qpm
    if time_signature is not None:
        midi.time_signature_changes.append(
            pretty_midi.TimeSignature(time_signature.numerator, time_signature.denominator, 0.0)
        )
    # pretty_midi numbers keys 0-11 major, 12-23 minor.
    midi.key_signature_changes.append(pretty_midi.KeySignature(tonic_pc + (12 if _is_minorish(mode) else 0), 0.0))
    base = VELOCITY[dynamics]
    for index, (line, name) in enumerate(zip(lines, voices)):
        level = base + (6 if index == 0 else -4)
        midi.instruments.append(_instrument(name, line, seconds_per_quarter, level, rng))
    if accompaniment != "none":
        notes = _accompaniment_notes(accompaniment, lines[0], bar_spans, tonic_pc, mode, beat_quarters, length)
        strum = accomp_instrument in ("acoustic guitar", "nylon-string guitar", "harp")
        midi.instruments.append(_instrument(accomp_instrument, notes, seconds_per_quarter, base - 14, rng, strum=strum))

    instruments = list(dict.fromkeys(voices + ([accomp_instrument] if accomp_instrument else [])))
    attributes = {
        "style": work.style,
        "tempo_bpm": round(beat_bpm, 1),
        "key": key_name(tonic_pc, mode),
        "mode": mode,
        "time_signature": time_signature.ratioString if time_signature else None,
        "dynamics": dynamics,
        "instruments": instruments,
        "gm_programs": [GM_PROGRAMS[name] for name in instruments],
        "parts": _parts(len(lines), accompaniment),
        "mood": mood(work.style, beat_bpm, mode, dynamics),
        "composer": work.composer,
        "title": work.title,
        "collection": work.collection,
        "form": form,
        "origin": origin_of(work),
        "accompaniment": accompaniment,
        "tempo_qpm": round(qpm, 2),
        "tempo_source": source,
        "key_confidence": round(float(analysed.correlationCoefficient), 3),
        "verses": verses,
        "segment": work.segment,
        "start_quarters": round(start, 3),
        "seconds": round(length * seconds_per_quarter, 3),
    }
    return ScorePiece(work.piece_id, midi, attributes, work.segment)


def _verses(lines: list[list[_Note]], bars: list[tuple[float, float]], length: float,
            max_quarters: float) -> tuple[list[list[_Note]], list[tuple[float, float]], float, int]:  # fmt: skip
    """Play a short tune again and again (verses) up to the last bar line within `max_quarters`."""
    verses = math.ceil(max_quarters / length)
    tiled_bars = [(s + v * length, e + v * length) for v in range(verses) for s, e in bars]
    ends = [e for _, e in tiled_bars if e <= max_quarters + 1e-6]
    new_length = ends[-1] if ends else length
    tiled = [
        [_Note(n.start + v * length, min(n.end + v * length, new_length), n.pitch)
         for v in range(verses) for n in line if n.start + v * length < new_length - 1e-6]
        for line in lines
    ]  # fmt: skip
    bars_kept = [(s, e) for s, e in tiled_bars if s < new_length - 1e-6]
    return tiled, bars_kept, new_length, math.ceil(new_length / length - 1e-6)


def parse_work(work: ScoreWork):
    """The music21 Score of a work (tunes of a merged abc file become its parts); warnings muted."""
    from music21 import corpus, stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if work.number is None:
            parsed = corpus.parse(work.source_path)
        else:
            parsed = corpus.parse(work.source_path, number=work.number)
        if isinstance(parsed, stream.Opus):
            scores = list(parsed.scores)
            if not scores:
                raise _Skip("empty opus")
            parsed = parsed.mergeScores() if len(scores) > 1 else scores[0]
    return parsed


def _expand_repeats(score):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return score.expandRepeats()
    except Exception:  # malformed repeat marks: play it as written
        return score


def _bar_spans(part, total: float) -> list[tuple[float, float]]:
    """(start, end) in quarter notes of each bar of `part`; one span if it has no measures."""
    from music21 import stream

    starts = [float(m.offset) for m in part.getElementsByClass(stream.Measure)]
    if not starts:
        return [(0.0, total)]
    ends = starts[1:] + [max(total, starts[-1])]
    return [(s, e) for s, e in zip(starts, ends) if e > s]


def _first(score, cls, at: float):
    """The last element of `cls` at or before offset `at` in the first part (else the first one)."""
    found = None
    for element in score.parts[0].flatten().getElementsByClass(cls):
        if found is None or float(element.offset) <= at + 1e-6:
            found = element
    return found


def _notated_qpm(part, at: float) -> float | None:
    """Quarter notes per minute of the metronome mark in force at `at`, or None if unmarked."""
    from music21 import tempo

    qpm = None
    for mark in part.flatten().getElementsByClass(tempo.MetronomeMark):
        if float(mark.offset) > at + 1e-6:
            break
        value = mark.getQuarterBPM()
        if value is None or not 10.0 <= value <= 500.0:
            continue
        if mark.number is None and mark.text is None and abs(value - 120.0) < 1e-6:
            continue  # "Quarter=120 (playback only)": the notation program's default, not the editor's
        qpm = float(value)
    return qpm


def _felt_tempo(beat_bpm: float, beats_per_bar: int) -> float:
    """Fold a beat rate into 40-200 BPM: a fast triple beat is felt per bar, a slow one per subdivision."""
    bpm = beat_bpm
    if bpm > 200.0 and beats_per_bar > 1 and 40.0 <= bpm / beats_per_bar <= 200.0:
        return bpm / beats_per_bar
    while bpm > 200.0:
        bpm /= 2.0
    while bpm < 40.0:
        bpm *= 2.0
    return bpm


def _part_notes(part, length: float) -> list[_Note]:
    """Sounding notes of `part` in its first `length` quarter notes, ties merged."""
    notes = []
    flat = part.stripTies(inPlace=False).flatten()
    for element in flat.notes:
        quarters = float(element.duration.quarterLength)
        if element.duration.isGrace or quarters <= 0.0 or not hasattr(element, "pitches"):
            continue
        begin = float(element.offset)
        if begin < -1e-6 or begin >= length - 1e-6:
            continue
        finish = min(begin + quarters, length)
        for p in element.pitches:
            if p.midi is not None and 0 <= p.midi <= 127:
                notes.append(_Note(begin, finish, int(p.midi)))
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def _instrument(name: str, notes: list[_Note], seconds_per_quarter: float, level: int,
                rng: np.random.Generator, strum: bool = False) -> pretty_midi.Instrument:  # fmt: skip
    instrument = pretty_midi.Instrument(program=GM_PROGRAMS[name], name=name)
    jitter = rng.integers(-4, 5, size=len(notes))
    previous_start, order = None, 0
    for note, dv in zip(notes, jitter):
        order = order + 1 if note.start == previous_start else 0
        previous_start = note.start
        delay = 0.012 * order if strum else 0.0  # a strummed chord: one string after another
        start = note.start * seconds_per_quarter + delay
        end = max(note.end * seconds_per_quarter, start + 0.03)
        velocity = int(np.clip(level + dv, 1, 127))
        instrument.notes.append(pretty_midi.Note(velocity=velocity, pitch=note.pitch, start=start, end=end))
    return instrument


def _pick(weights: dict[str, float], rng: np.random.Generator) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _spread(ensemble: tuple[str, ...], n_parts: int) -> list[str]:
    """Instruments for `n_parts` voices, top down, spread evenly over an ensemble's voices."""
    k = len(ensemble)
    if n_parts == 1 or k == 1:
        return [ensemble[0]] * n_parts
    return [ensemble[round(i * (k - 1) / (n_parts - 1))] for i in range(n_parts)]


# Keywords in part names that name an instrument; checked in order.
_PART_WORDS = (
    ("violoncello", "cello"), ("cello", "cello"), ("viola", "viola"), ("violin", "violin"), ("violino", "violin"),
    ("violone", "cello"), ("contrabass", "contrabass"), ("double bass", "contrabass"), ("piano", "piano"),
    ("harpsichord", "harpsichord"), ("cembalo", "harpsichord"), ("organ", "church organ"), ("flute", "flute"),
    ("oboe", "oboe"), ("clarinet", "clarinet"), ("bassoon", "bassoon"), ("horn", "french horn"),
    ("trumpet", "trumpet"), ("trombone", "trombone"), ("guitar", "acoustic guitar"), ("harp", "harp"),
    ("choir", "voice"), ("voice", "voice"), ("soprano", "voice"), ("alto", "voice"), ("tenor", "voice"),
    ("bass", "voice"), ("canto", "voice"), ("singstimme", "voice"),
)  # fmt: skip


def _named_instruments(parts: list) -> list[str] | None:
    """The instruments the parts' names give, or None if any part is unnamed or unknown."""
    names = []
    for part in parts:
        # The part's own name first: notation programs often leave every instrument "Grand Piano".
        labels = [part.partName, getattr(part.getInstrument(), "instrumentName", None)]
        found = next((inst for label in labels if label for word, inst in _PART_WORDS if word in label.lower()), None)
        if found is None:
            return None
        names.append(found)
    return names


def _choose_instruments(work: ScoreWork, parts: list, rng: np.random.Generator) -> list[str]:
    """One instrument name per sounding part, top down (see the module docstring)."""
    n_parts = len(parts)
    if work.style == "folk":
        return [_pick(FOLK_LEADS[_folk_group(work)], rng)] * n_parts
    if work.style == "renaissance":
        return _spread(ENSEMBLES[_pick(RENAISSANCE_ENSEMBLES, rng)], n_parts)
    if work.style == "medieval":
        return _spread(ENSEMBLES[_pick(MEDIEVAL_ENSEMBLES, rng)], n_parts)
    if work.collection == "bach":
        choices = KEYBOARD_ENSEMBLES if n_parts <= 2 else CHORALE_ENSEMBLES
        return _spread(ENSEMBLES[_pick(choices, rng)], n_parts)
    named = _named_instruments(parts)
    if named is not None:
        return named
    if n_parts >= 3:
        return _spread(ENSEMBLES["string quartet"], n_parts)
    return _spread(ENSEMBLES[_pick(KEYBOARD_ENSEMBLES, rng) if work.style == "baroque" else "piano"], n_parts)


def _folk_group(work: ScoreWork) -> str:
    origin = origin_of(work)
    if work.source_path.startswith("miscFolk/americanfife"):
        return "fife"
    if work.source_path.startswith("miscFolk/northumbrian"):
        return "northumbrian"
    if origin in ("Ireland", "Scotland", "China"):
        return {"Ireland": "irish", "Scotland": "scottish", "China": "chinese"}[origin]
    return "irish" if work.collection in ("ryansMammoth", "nottingham-dataset") else "song"  # Ryan's: Irish-American


def _choose_accompaniment(work: ScoreWork, lead: str, rng: np.random.Generator) -> tuple[str, str | None]:
    weights = dict(FOLK_ACCOMPANIMENT)
    if origin_of(work) == "China":
        weights = {"none": 0.6, "drone": 0.4}  # a I-IV-V harmonisation does not suit pentatonic tunes
    kind = _pick(weights, rng)
    if kind == "none":
        return kind, None
    if kind == "drone":
        return kind, "bagpipe" if lead == "bagpipe" else _pick(DRONE_INSTRUMENTS, rng)
    return kind, _pick({k: v for k, v in CHORD_INSTRUMENTS.items() if k != lead}, rng)


# Scales (semitones above the tonic) of the modes music21 names.
MODE_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "ionian": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10),
    "aeolian": (0, 2, 3, 5, 7, 8, 10), "dorian": (0, 2, 3, 5, 7, 9, 10), "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11), "mixolydian": (0, 2, 4, 5, 7, 9, 10), "locrian": (0, 1, 3, 5, 6, 8, 10),
}  # fmt: skip
_DEGREE_PRIOR = {0: 0.3, 4: 0.2, 3: 0.15}  # prefer I, then V, then IV, when the melody does not decide


def diatonic_triads(tonic_pc: int, mode: str) -> list[tuple[int, tuple[int, int, int]]]:
    """(scale degree, pitch classes root-third-fifth) of the mode's major and minor triads."""
    scale = MODE_SCALES.get(mode, MODE_SCALES["minor" if _is_minorish(mode) else "major"])
    triads = []
    for degree in range(7):
        root, third, fifth = (scale[(degree + k) % 7] for k in (0, 2, 4))
        if (fifth - root) % 12 == 7:  # major or minor, not diminished
            triads.append((degree, ((tonic_pc + root) % 12, (tonic_pc + third) % 12, (tonic_pc + fifth) % 12)))
    return triads


def _chord_for_bar(melody: list[_Note], bar: tuple[float, float], triads) -> tuple[int, int, int]:
    """The triad whose tones cover most of the bar's melody (duration-weighted), with a prior for I, V, IV."""
    weights = np.zeros(12)
    for note in melody:
        overlap = min(note.end, bar[1]) - max(note.start, bar[0])
        if overlap > 0:
            weights[note.pitch % 12] += overlap * (1.5 if abs(note.start - bar[0]) < 1e-6 else 1.0)
    total = weights.sum() or 1.0
    best = max(triads, key=lambda t: (weights[list(t[1])].sum() / total + _DEGREE_PRIOR.get(t[0], 0.0), -t[0]))
    return best[1]


def _accompaniment_notes(kind: str, melody: list[_Note], bars: list[tuple[float, float]], tonic_pc: int,
                         mode: str, beat_quarters: float, length: float) -> list[_Note]:  # fmt: skip
    """A drone (tonic + fifth, re-struck every 4 bars) or block chords on each beat, in quarter notes."""
    notes: list[_Note] = []
    full_bar = max((e - s for s, e in bars), default=4.0)
    if kind == "drone":
        root = 38 + (tonic_pc - 38) % 12  # D2..C#3
        for i in range(0, len(bars), 4):
            start, end = bars[i][0], min(bars[min(i + 3, len(bars) - 1)][1], length)
            notes += [_Note(start, end, root), _Note(start, end, root + 7)]
        return notes
    triads = diatonic_triads(tonic_pc, mode)
    for start, end in bars:
        if end - start < 0.5 * full_bar:  # a pickup bar: no chord under it
            continue
        root, third, fifth = _chord_for_bar(melody, (start, end), triads)
        bass = 40 + (root - 40) % 12  # E2..D#3
        chord = sorted(55 + (pc - 55) % 12 for pc in (root, third, fifth))  # close position from G3
        beat = start
        while beat < min(end, length) - 1e-6:
            stop = min(beat + beat_quarters, end, length)
            notes += [_Note(beat, stop, bass)] + [_Note(beat, stop, p) for p in chord]
            beat += beat_quarters
    return notes


def _parts(n_lines: int, accompaniment: str) -> list[str]:
    parts = ["melody"]
    if n_lines >= 3 or accompaniment != "none":
        parts.append("harmony")
    if n_lines >= 2:
        parts.append("bass")
    return parts


def _is_minorish(mode: str) -> bool:
    return mode in ("minor", "aeolian", "dorian", "phrygian", "locrian")


# --- what the corpus files say beyond the bundled metadata ------------------------------------


def form_of(work: ScoreWork) -> str | None:
    """The piece's form: from its path, an abc `R:` (rhythm) field, or a word in its title."""
    if work.collection == "bach" and work.parts >= 4:
        return "chorale"
    for prefix, form in FORM_OF_PATH:
        if work.source_path.startswith(prefix):
            return form
    title = (work.title or "").lower()
    if work.style in ("renaissance", "medieval") and any(word in re.split(r"\W+", title)[:2] for word in MASS_WORDS):
        return "mass"
    header = _abc_header(work)
    for text in (header.get("R", "").lower(), title, Path(work.source_path).stem.lower()):
        for word, form in FORM_WORDS:
            if re.search(rf"\b{re.escape(word)}", text):
                return form
    return None


_ORIGIN_WORDS = (
    ("china", "China"), ("luxemburg", "Luxembourg"), ("lothringen", "Lorraine"), ("elsass", "Alsace"),
    ("oesterreich", "Austria"), ("schweiz", "Switzerland"), ("niederlande", "Netherlands"),
    ("ungarn", "Hungary"), ("jugoslawien", "Yugoslavia"), ("polen", "Poland"), ("irland", "Ireland"),
    ("deutschland", "Germany"),
)  # fmt: skip


def origin_of(work: ScoreWork) -> str | None:
    """Where a folk tune comes from (a place name), from its collection or its abc `O:` field."""
    if work.style != "folk":
        return None
    fixed = {"oneills1850": "Ireland", "airdsAirs": "Scotland"}
    if work.collection in fixed:
        return fixed[work.collection]
    if work.source_path.startswith("miscFolk/northumbrian"):
        return "Northumbria"
    if work.source_path.startswith("miscFolk/americanfife"):
        return "America"
    if work.source_path.startswith("essenFolksong/han"):
        return "China"
    text = _abc_header(work).get("O", "").lower()
    return next((place for word, place in _ORIGIN_WORDS if word in text), None)


def _abc_header(work: ScoreWork) -> dict[str, str]:
    """The `T:`, `R:`, `O:` header fields of the work's tune in its abc file ({} if not abc)."""
    if not work.source_path.endswith(".abc"):
        return {}
    return _abc_headers(work.source_path).get(work.number if work.number is not None else -1, {})


@functools.lru_cache(maxsize=64)
def _abc_headers(source_path: str) -> dict[int, dict[str, str]]:
    """Header fields per tune number of one abc file of the corpus (-1: the file's first tune)."""
    from music21 import corpus

    try:
        text = Path(corpus.getWork(source_path)).read_text(encoding="latin-1")
    except Exception:
        return {}
    headers: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z]):\s*(.*)$", line)
        if not match:
            continue
        field, value = match.group(1), match.group(2).strip()
        if field == "X":
            number = int(re.sub(r"\D", "", value) or -1)
            current = headers.setdefault(number, {})
            headers.setdefault(-1, current)
        elif current is not None and field in "TRO" and field not in current:
            current[field] = value
    return headers
