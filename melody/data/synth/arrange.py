"""Procedural arrangements in named styles: the MIDI half of the built-in captioned music corpus.

MeLoDy (Lam et al., 2023) learns text-to-music from captioned recordings; this project cannot ship
those, so part of its built-in corpus is music written here by rule, rendered by `render.py` and
captioned from the very attributes that produced it (`captions.py`), so every caption is true.

How a piece is made (`arrange`):

1. The style's `StyleSpec` (data) draws the global choices: tempo, meter, key, mode, dynamics,
   swing, and two chord progressions written as Roman numerals ("ii7 V7" is two chords in a bar).
2. The progressions are laid out A A B A ... with a final held tonic bar (the coda), giving a chord
   timeline and a section label per bar, so patterns stay the same within a section.
3. The style's part function picks instruments from style-appropriate General MIDI programs and calls
   shared generators: a phrase-based melody (4-bar phrases from a repeated 1-bar motif, chord tones on
   strong beats, scale steps between, a cadence at each phrase end), bass lines from pattern + tone
   strings or a walking-bass rule, comping/strumming/arpeggios/pads with voice leading, and drum
   grooves written as step strings, with a fill before each new phrase and a crash after.
4. Swing and a little human timing/velocity jitter are applied, and everything becomes a PrettyMIDI
   with one instrument per part, named "role: instrument" (e.g. "melody: tenor sax").

Time is measured in quarter-note beats; a bar is a row of sixteenth-note steps (16 in 4/4, 12 in 3/4
and 6/8). Pattern strings use one character per step: "x" starts a note (also "X" accent, "g" ghost
note), "-" holds it, "." is a rest. Tempo: `tempo_qpm` is quarter notes per minute (the MIDI
tempo); `tempo_bpm`, the one captions state, is the felt beat as in the score source: the quarter
in x/4, the dotted quarter in 6/8 (see `felt_bpm`).

All randomness comes from the caller's numpy Generator, so a seed reproduces a piece exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pretty_midi

from melody.errors import MelodyError

# ----------------------------------------------------------------------------------------------
# Music theory: keys, modes, chords.

_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_PC_OF = {name: pc for pc, name in enumerate(_SHARP_NAMES)} | {
    "Db": 1, "Eb": 3, "Gb": 6, "Ab": 8, "Bb": 10, "Cb": 11, "Fb": 4, "E#": 5, "B#": 0,
}  # fmt: skip
# How each tonic is usually spelled: flats for the flat-side keys, sharps where players say so.
_MAJOR_SPELLING = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_SPELLING = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")

MODES: Mapping[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
}
_MAJOR_LIKE = ("major", "mixolydian", "lydian")  # a major third above the tonic


def key_name(tonic: int, mode: str) -> str:
    """Spell the tonic pitch class `tonic` the way a key in `mode` is usually named ("Bb", "F#")."""
    return (_MAJOR_SPELLING if mode in _MAJOR_LIKE else _MINOR_SPELLING)[tonic % 12]


def pitch_class(name: str) -> int:
    """Return the pitch class 0-11 of a note name such as "E", "F#" or "Bb"."""
    if name not in _PC_OF:
        raise MelodyError(f"unknown note name {name!r}; use a letter A-G with an optional # or b")
    return _PC_OF[name]


def scale_pitch_classes(tonic: int, mode: str) -> frozenset[int]:
    """The seven pitch classes of `mode` on `tonic`."""
    return frozenset((tonic + step) % 12 for step in MODES[mode])


@dataclass(frozen=True)
class Chord:
    """A chord: absolute root pitch class and intervals above it (root first, ascending)."""

    root: int
    intervals: tuple[int, ...]
    symbol: str  # the Roman numeral it was written as, for debugging and tests

    @property
    def pitch_classes(self) -> tuple[int, ...]:
        return tuple((self.root + i) % 12 for i in self.intervals)

    def tone(self, degree: str) -> int:
        """Pitch class of a chord member: "R" root, "3" third, "5" fifth, "7" seventh."""
        wanted = {"R": (0,), "3": (4, 3, 5, 2), "5": (7, 6, 8), "7": (10, 11, 9)}[degree]
        for interval in wanted:  # first choice first: a sus chord's "third" is its 4th or 2nd
            if interval in self.intervals:
                return (self.root + interval) % 12
        # A triad has no seventh: use the minor seventh, the blues/rock/funk default.
        return (self.root + {"3": 4, "5": 7, "7": 10}[degree]) % 12


_NUMERAL = re.compile(r"^(b|#)?(VII|VI|V|IV|III|II|I|vii|vi|v|iv|iii|ii|i)(.*)$")
_DEGREE = {"i": 0, "ii": 2, "iii": 4, "iv": 5, "v": 7, "vi": 9, "vii": 11}  # major-scale steps
# Chord suffix -> intervals, for upper-case (major) and lower-case (minor) numerals.
_UPPER_SUFFIX = {
    "": (0, 4, 7), "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "6": (0, 4, 7, 9), "9": (0, 4, 7, 10, 14),
    "maj9": (0, 4, 7, 11, 14), "add9": (0, 4, 7, 14), "sus4": (0, 5, 7), "sus2": (0, 2, 7), "5": (0, 7),
    "7sus4": (0, 5, 7, 10),
}  # fmt: skip
_LOWER_SUFFIX = {
    "": (0, 3, 7), "7": (0, 3, 7, 10), "9": (0, 3, 7, 10, 14), "6": (0, 3, 7, 9), "add9": (0, 3, 7, 14),
    "ø7": (0, 3, 6, 10), "o": (0, 3, 6), "o7": (0, 3, 6, 9), "5": (0, 7),
}  # fmt: skip


def parse_numeral(numeral: str, tonic: int) -> Chord:
    """Turn a Roman numeral ("V7", "bVII", "iiø7", "Imaj7") in the key of `tonic` into a `Chord`.

    Degrees count in major-scale steps from the tonic, so a minor key's flat sixth is "bVI";
    upper case is a major chord, lower case minor, and the suffix adds sevenths etc.
    """
    match = _NUMERAL.match(numeral)
    if match is None:
        raise MelodyError(f"cannot read the chord numeral {numeral!r}")
    accidental, degree, suffix = match.groups()
    table = _UPPER_SUFFIX if degree.isupper() else _LOWER_SUFFIX
    if suffix not in table:
        raise MelodyError(f"unknown chord suffix {suffix!r} in {numeral!r}")
    shift = {"b": -1, "#": 1, None: 0}[accidental]
    root = (tonic + _DEGREE[degree.lower()] + shift) % 12
    return Chord(root=root, intervals=table[suffix], symbol=numeral)


# ----------------------------------------------------------------------------------------------
# Meter, events and the context every generator reads.


@dataclass(frozen=True)
class Meter:
    """A time signature as the generators see it: sixteenth-note steps per bar and where beats fall."""

    name: str  # "4/4"
    numerator: int
    denominator: int
    steps: int  # sixteenth-note steps per bar
    strong: tuple[int, ...]  # the strong beats: melody notes there are chord tones

    @property
    def beats(self) -> float:
        """Quarter-note beats per bar."""
        return self.steps / 4


METERS: Mapping[str, Meter] = {
    "4/4": Meter("4/4", 4, 4, steps=16, strong=(0, 8)),
    "3/4": Meter("3/4", 3, 4, steps=12, strong=(0,)),
    "6/8": Meter("6/8", 6, 8, steps=12, strong=(0, 6)),
}


@dataclass(frozen=True)
class Note:
    """One note of a part, timed in quarter-note beats from the start of the piece."""

    pitch: int
    start: float
    duration: float
    velocity: int


@dataclass(frozen=True)
class ChordSpan:
    start: float  # beats
    end: float
    chord: Chord


@dataclass(frozen=True)
class Context:
    """Everything about a piece that its parts must agree on."""

    meter: Meter
    n_bars: int  # including the final held bar (the coda)
    tonic: int
    mode: str
    chords: tuple[ChordSpan, ...]
    sections: tuple[str, ...]  # section label of each bar ("A", "B"), so patterns repeat per section
    velocity: int  # the dynamics level, around which each part sets its own

    @property
    def scale(self) -> frozenset[int]:
        return scale_pitch_classes(self.tonic, self.mode)

    @property
    def coda(self) -> int:
        """Index of the last bar, which holds the final tonic chord."""
        return self.n_bars - 1

    def bar_start(self, bar: int) -> float:
        return bar * self.meter.beats

    def chord_at(self, beat: float) -> Chord:
        for span in self.chords:
            if span.start <= beat < span.end:
                return span.chord
        return self.chords[-1].chord

    def next_chord(self, beat: float) -> Chord:
        """The chord after the one sounding at `beat` (the last one at the end)."""
        for i, span in enumerate(self.chords):
            if span.start <= beat < span.end:
                return self.chords[min(i + 1, len(self.chords) - 1)].chord
        return self.chords[-1].chord

    def spans_in_bar(self, bar: int) -> list[ChordSpan]:
        lo, hi = self.bar_start(bar), self.bar_start(bar + 1)
        return [s for s in self.chords if s.start < hi and s.end > lo]


def velocity_of(ctx: Context, offset: int, accent: str = "x") -> int:
    """The velocity of a note `offset` above the piece's dynamics level, for an accent character."""
    scale = {"X": 1.18, "x": 1.0, "g": 0.45}[accent]
    return int(np.clip(round((ctx.velocity + offset) * scale), 1, 127))


def bar_rhythm(pattern: str, meter: Meter) -> list[tuple[int, int, str]]:
    """`parse_rhythm` for a one-bar pattern, checked to fill exactly one bar of `meter`."""
    if len(pattern) != meter.steps:
        raise ValueError(f"pattern {pattern!r} has {len(pattern)} steps; a {meter.name} bar has {meter.steps}")
    return parse_rhythm(pattern)


def parse_rhythm(pattern: str) -> list[tuple[int, int, str]]:
    """Read a step string into `(step, length_in_steps, accent)` for each note it starts."""
    notes: list[tuple[int, int, str]] = []
    for step, char in enumerate(pattern):
        if char in "xXg":
            notes.append((step, 1, char))
        elif char == "-" and notes and notes[-1][0] + notes[-1][1] == step:
            s, length, accent = notes[-1]
            notes[-1] = (s, length + 1, accent)
        elif char not in ".-":
            raise MelodyError(f"bad character {char!r} in rhythm pattern {pattern!r}")
    return notes


def place(pc: int, low: int) -> int:
    """The lowest MIDI pitch with pitch class `pc` at or above `low`."""
    return low + (pc - low) % 12


def nearest(pitch: float, candidates: Sequence[int]) -> int:
    """The candidate closest to `pitch` (the lower one on a tie)."""
    return min(candidates, key=lambda p: (abs(p - pitch), p))


def pitches_in(pcs: Sequence[int] | frozenset[int], low: int, high: int) -> list[int]:
    """All MIDI pitches in `[low, high]` whose pitch class is in `pcs`."""
    wanted = set(pcs)
    return [p for p in range(low, high + 1) if p % 12 in wanted]


def scale_step(pitch: int, steps: int, scale: frozenset[int]) -> int:
    """Move `steps` scale tones up (positive) or down from `pitch`; 0 snaps down onto the scale."""
    if steps == 0:
        while pitch % 12 not in scale:
            pitch -= 1
        return pitch
    direction = 1 if steps > 0 else -1
    for _ in range(abs(steps)):
        pitch += direction
        while pitch % 12 not in scale:
            pitch += direction
    return pitch


# ----------------------------------------------------------------------------------------------
# Form: chord timeline and sections.

Progression = tuple[str, ...]  # one entry per bar; an entry may hold several numerals ("ii7 V7")


def plan_form(
    rng: np.random.Generator, progressions: Sequence[Progression], tonic: int, meter: Meter,
    n_body_bars: int, final: str,
) -> tuple[tuple[ChordSpan, ...], tuple[str, ...]]:  # fmt: skip
    """Lay two progressions out as A A B A ... over `n_body_bars`, then one bar of `final` (the coda)."""
    a = progressions[rng.integers(len(progressions))]
    b = progressions[rng.integers(len(progressions))]
    form = "AABA"
    bars: list[tuple[str, str]] = []  # (numerals of the bar, section)
    while len(bars) < n_body_bars:
        label = form[(len(bars) // len(a)) % len(form)] if len(a) == len(b) else "A"
        prog = a if label == "A" else b
        bars.extend((numerals, label) for numerals in prog)
    bars = bars[:n_body_bars] + [(final, "C")]
    spans: list[ChordSpan] = []
    for index, (numerals, _) in enumerate(bars):
        names = numerals.split()
        length = meter.beats / len(names)
        for j, name in enumerate(names):
            start = index * meter.beats + j * length
            spans.append(ChordSpan(start, start + length, parse_numeral(name, tonic)))
    return tuple(spans), tuple(label for _, label in bars)


# ----------------------------------------------------------------------------------------------
# Parts and their generators.

DRUMS, BASS, HARMONY, MELODY = "drums", "bass", "harmony", "melody"
ROLE_ORDER = (MELODY, HARMONY, BASS, DRUMS)  # the order instruments are listed in the attributes


@dataclass(frozen=True)
class Part:
    """One instrument of the arrangement: becomes one PrettyMIDI instrument named "role: name"."""

    role: str
    name: str  # what a listener would call it: "slap bass", "brushed drums"
    program: int  # GM program; for drums, the FluidSynth/GS kit number (0 standard, 40 brush...)
    notes: tuple[Note, ...]
    is_drum: bool = False
    volume: int = 100  # CC7, the mix balance
    pan: int = 64  # CC10
    reverb: int = 40  # CC91
    chorus: int = 0  # CC93
    pedal: tuple[tuple[float, float], ...] = ()  # sustain-pedal (CC64) down/up beats, for piano


def melody(
    rng: np.random.Generator, ctx: Context, rhythms: Sequence[str], low: int, high: int, offset: int,
    legato: float = 0.95, phrase_bars: int = 4,
) -> tuple[Note, ...]:  # fmt: skip
    """A phrase-structured melody: each section gets a motif (rhythm + scale-step contour) that its
    phrases repeat, with chord tones on strong beats, steps between, and a cadence ending each phrase.

    Each phrase plays motif, variant, motif, cadence (bars 1-4); its last note lands on the tonic for
    the last phrase and every other phrase, else on a chord tone (an open, "half" cadence).
    """
    scale = ctx.scale
    motifs: dict[str, tuple[str, str, list[int]]] = {}
    notes: list[Note] = []
    pitch = nearest((low + high) / 2, pitches_in((ctx.tonic,), low, high))
    phrase_starts = list(range(0, ctx.coda, phrase_bars))
    for phrase_index, first in enumerate(phrase_starts):
        last = min(first + phrase_bars, ctx.coda) - 1
        label = ctx.sections[first]
        if label not in motifs:
            motifs[label] = (
                rhythms[rng.integers(len(rhythms))], rhythms[rng.integers(len(rhythms))],
                _contour(rng, 16),
            )  # fmt: skip
        main, variant, contour = motifs[label]
        ends_home = last == ctx.coda - 1 or phrase_index % 2 == 1
        for bar in range(first, last + 1):
            position = bar - first
            if bar == last and last > first:
                pattern = _cadence_rhythm(rng, ctx.meter)
            else:
                pattern = variant if position == 1 else main
            onsets = bar_rhythm(pattern, ctx.meter)
            for k, (step, length, accent) in enumerate(onsets):
                start = ctx.bar_start(bar) + step / 4
                chord = ctx.chord_at(start)
                is_final = bar == last and k == len(onsets) - 1
                if is_final:
                    targets = (ctx.tonic,) if ends_home else _chord_tones_in_scale(chord, scale)
                    pitch = nearest(pitch, pitches_in(targets, low, high))
                else:
                    move = contour[(position % 2 * 8 + k) % len(contour)]
                    strong = step in ctx.meter.strong or length >= 6  # long notes are heard as harmony too
                    pitch = _next_pitch(pitch, move, strong, chord, scale, low, high)
                velocity = velocity_of(ctx, offset + (6 if step == 0 else 0), accent)
                notes.append(Note(pitch, start, length / 4 * legato, velocity))
    # The coda: the tonic, held.
    home = nearest(pitch, pitches_in((ctx.tonic,), low, high))
    notes.append(Note(home, ctx.bar_start(ctx.coda), ctx.meter.beats, velocity_of(ctx, offset)))
    return tuple(notes)


def _contour(rng: np.random.Generator, length: int) -> list[int]:
    """Scale-step moves for a motif: runs of 2-4 steps one way, then a turn; now and then a repeated
    note, or a leap of a fourth or fifth that is then filled in by a step back ("gap fill")."""
    moves: list[int] = []
    direction = 1 if rng.random() < 0.5 else -1
    run, run_length = 0, int(rng.integers(2, 5))
    while len(moves) < length:
        r = rng.random()
        if r < 0.12:
            moves.append(0)
        elif r < 0.24:
            moves.extend((direction * int(rng.integers(3, 5)), -direction))
            direction, run = -direction, 0
        else:
            moves.append(direction * (1 if rng.random() < 0.8 else 2))
            run += 1
        if run >= run_length:
            direction, run, run_length = -direction, 0, int(rng.integers(2, 5))
    return moves[:length]


def _cadence_rhythm(rng: np.random.Generator, meter: Meter) -> str:
    """A phrase-ending bar: a few notes, then a long one."""
    options = {
        "4/4": ("x---x---x-------", "x-x-x---x-------", "x-------x-------", "x---x-x-x-------"),
        "3/4": ("x---x-------", "x-x-x-------", "x-----------"),
        "6/8": ("x-x-x-x-----", "x---x-x-----", "x-----x-----"),
    }[meter.name]
    return options[rng.integers(len(options))]


def _chord_tones_in_scale(chord: Chord, scale: frozenset[int]) -> tuple[int, ...]:
    """The chord's tones that belong to the scale (all of them if none does)."""
    tones = tuple(pc for pc in chord.pitch_classes if pc in scale)
    return tones or chord.pitch_classes


def _next_pitch(
    pitch: int, move: int, strong: bool, chord: Chord, scale: frozenset[int], low: int, high: int
) -> int:
    """The next melody pitch: `move` scale steps from `pitch`, snapped to a chord tone if `strong`."""
    # Far from the middle of the range, moves away from it turn back: melodies wander around a
    # centre (an octave or so wide) instead of drifting to an edge and sticking there.
    centre, reach = (low + high) / 2, (high - low) * 0.3
    if move * (pitch - centre) > 0 and abs(pitch - centre) > reach:
        move = -move
    target = scale_step(pitch, move, scale)
    if strong:
        candidates = pitches_in(_chord_tones_in_scale(chord, scale), low, high)
        target = nearest(target + 0.1 * np.sign(move), candidates)  # tie: keep the direction
    return int(np.clip(target, low, high))


def bass_line(
    rng: np.random.Generator, ctx: Context, patterns: Sequence[tuple[str, str]], low: int, offset: int,
    legato: float = 0.9,
) -> tuple[Note, ...]:  # fmt: skip
    """A bass part from (rhythm, tones) patterns, one pattern per section.

    Tones are space-separated, cycled over the rhythm's notes: "R" root, "3"/"5"/"7" chord members,
    "6" the major sixth, "8" the octave, "L" the fifth below, "A" a half step below the next chord's
    root (an approach note), "g" a muted "dead" note on the root (as a "g" in the rhythm makes).
    Roots sit in the octave from `low`.
    """
    chosen: dict[str, tuple[str, str]] = {}
    notes: list[Note] = []
    for bar in range(ctx.coda):
        label = ctx.sections[bar]
        chosen.setdefault(label, patterns[rng.integers(len(patterns))])
        rhythm, tones = chosen[label]
        tokens = tones.split()
        for k, (step, length, accent) in enumerate(bar_rhythm(rhythm, ctx.meter)):
            start = ctx.bar_start(bar) + step / 4
            token = tokens[k % len(tokens)]
            if token == "g":
                token, accent = "R", "g"
            pitch = _bass_pitch(token, ctx, start, low)
            dur = 0.12 if accent == "g" else length / 4 * legato  # a ghost is a muted "dead" note
            notes.append(Note(pitch, start, dur, velocity_of(ctx, offset, accent)))
    notes.append(_held_root(ctx, low, offset))
    return tuple(notes)


def _bass_pitch(token: str, ctx: Context, beat: float, low: int) -> int:
    chord = ctx.chord_at(beat)
    root = place(chord.root, low)
    if token == "8":
        return root + 12
    if token == "L":
        return root - 5
    if token == "A":
        return place(ctx.next_chord(beat).root, low) - 1
    if token == "6":
        return root + 9
    return place(chord.tone(token), root)  # R, 3, 5, 7: at or above the root


def _held_root(ctx: Context, low: int, offset: int) -> Note:
    root = place(ctx.chord_at(ctx.bar_start(ctx.coda)).root, low)
    return Note(root, ctx.bar_start(ctx.coda), ctx.meter.beats, velocity_of(ctx, offset))


def walking_bass(rng: np.random.Generator, ctx: Context, low: int, offset: int) -> tuple[Note, ...]:
    """A jazz walking bass: a quarter note per beat, the root on the downbeat of each chord, chord and
    scale tones between, and a chromatic or scale approach into the next chord's root."""
    notes: list[Note] = []
    beats = int(ctx.meter.beats)
    pitch = place(ctx.chords[0].chord.root, low)
    for bar in range(ctx.coda):
        for beat in range(beats):
            t = ctx.bar_start(bar) + beat
            chord = ctx.chord_at(t)
            chord_starts = any(abs(s.start - t) < 1e-9 for s in ctx.chords)
            next_change = min((s.start for s in ctx.chords if s.start > t + 1e-9), default=t + beats)
            if chord_starts:
                pitch = nearest(pitch, pitches_in((chord.root,), low, low + 19))
            elif next_change - t <= 1 + 1e-9:  # last beat before a change: lead into it
                target = nearest(pitch, pitches_in((ctx.chord_at(next_change).root,), low, low + 19))
                pitch = target + (1 if rng.random() < 0.5 else -1)
            else:
                tones = pitches_in(set(chord.pitch_classes) | ctx.scale, low, low + 19)
                steps = [p for p in tones if 0 < abs(p - pitch) <= 4]
                pitch = steps[rng.integers(len(steps))] if steps else pitch
            notes.append(Note(pitch, t, 0.92, velocity_of(ctx, offset + (4 if beat == 0 else 0))))
    notes.append(_held_root(ctx, low, offset))
    return tuple(notes)


def voicing(chord: Chord, kind: str, low: int, high: int, previous: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Pitches for `chord` in `[low, high]`, moving as little as possible from `previous`.

    kinds: "power" root-fifth-octave; "guitar" an open six-string-like spread; "triad" three close
    notes; "close" up to four (with the seventh); "shell" rootless third/seventh/ninth-or-fifth for
    jazz comping; "spread" a low root under a close upper chord, for pads and piano.
    """
    if kind == "power":
        root = place(chord.root, low)
        return (root, root + 7, root + 12)
    if kind == "guitar":
        return _guitar_voicing(chord, low, high)
    if kind == "spread":
        root = place(chord.root, low)
        upper = voicing(chord, "triad" if len(chord.intervals) <= 3 else "close", root + 10, high, previous[1:])
        return (root, *upper)
    pcs = _voicing_pitch_classes(chord, kind)
    candidates = [
        c for c in (_stack(pcs[i:] + pcs[:i], base) for i in range(len(pcs)) for base in range(low, low + 12))
        if c[0] >= low and c[-1] <= high
    ]  # fmt: skip
    if not candidates:  # range too narrow for this chord: fall back to stacking from `low`
        return _stack(pcs, low)
    if previous and len(previous) == len(pcs):
        return min(candidates, key=lambda c: (sum(abs(a - b) for a, b in zip(c, previous)), c))
    centre = (low + high) / 2
    return min(candidates, key=lambda c: (abs(sum(c) / len(c) - centre), c))


def _voicing_pitch_classes(chord: Chord, kind: str) -> tuple[int, ...]:
    intervals = chord.intervals
    if kind == "shell":
        third = chord.tone("3")
        seventh = chord.tone("7") if len(intervals) > 3 else (chord.root + (9 if 4 in intervals else 7)) % 12
        top = (chord.root + 14) % 12 if 14 in intervals or len(intervals) > 3 else chord.tone("5")
        return (third, seventh, top)
    if kind == "triad":
        intervals = intervals[:3]
    else:  # close: drop the ninth, keep four notes at most
        intervals = tuple(i for i in intervals if i < 12)[:4]
    return tuple((chord.root + i) % 12 for i in intervals)


def _stack(pcs: Sequence[int], base: int) -> tuple[int, ...]:
    """Stack pitch classes upward starting at the first pc at or above `base`."""
    out = [place(pcs[0], base)]
    for pc in pcs[1:]:
        out.append(place(pc, out[-1] + 1))
    return tuple(out)


def _guitar_voicing(chord: Chord, low: int, high: int) -> tuple[int, ...]:
    """An open-position-like strum: bass root, then chord tones at least a minor third apart."""
    pcs = set(_voicing_pitch_classes(chord, "triad"))
    out = [place(chord.root, low)]
    for p in range(out[0] + 3, high + 1):
        if p % 12 in pcs and p - out[-1] >= 3:
            out.append(p)
        if len(out) == 6:
            break
    return tuple(out)


@dataclass(frozen=True)
class Comp:
    """How a harmony part plays: its rhythms (one chosen per section), voicing and register."""

    rhythms: tuple[str, ...]
    kind: str = "close"
    low: int = 52
    high: int = 76
    offset: int = -8
    legato: float = 0.9
    strum: float = 0.0  # beats between successive strings of a strum (0: all at once)


def comp(rng: np.random.Generator, ctx: Context, style: Comp) -> tuple[Note, ...]:
    """Chords in rhythm (guitar strumming, piano/clavinet comping, stabs, sustained pads).

    Onsets on eighth-note downbeats are down-strokes (low to high); off-beats are lighter up-strokes
    (high to low, top strings only), as a strummer's hand moves.
    """
    chosen: dict[str, str] = {}
    notes: list[Note] = []
    previous: tuple[int, ...] = ()
    for bar in range(ctx.coda + 1):
        label = ctx.sections[bar]
        if bar == ctx.coda:
            onsets = [(0, ctx.meter.steps, "x")]
        else:
            chosen.setdefault(label, style.rhythms[rng.integers(len(style.rhythms))])
            onsets = bar_rhythm(chosen[label], ctx.meter)
        for step, length, accent in onsets:
            start = ctx.bar_start(bar) + step / 4
            chord = ctx.chord_at(start)
            # A chord change inside a held note cuts it there.
            change = min((s.start for s in ctx.chords if start < s.start < start + length / 4), default=None)
            dur = ((change - start) if change is not None else length / 4 * style.legato)
            previous = voicing(chord, style.kind, style.low, style.high, previous)
            pitches = previous
            up = style.strum > 0 and step % 4 == 2 and step not in ctx.meter.strong
            if up:
                pitches = tuple(reversed(previous[-4:]))
            velocity = velocity_of(ctx, style.offset - (10 if up else 0), accent)
            for i, pitch in enumerate(pitches):
                notes.append(Note(pitch, start + i * style.strum, max(dur - i * style.strum, 0.05), velocity))
    return tuple(notes)


def arpeggio(
    rng: np.random.Generator, ctx: Context, rhythms: Sequence[str], orders: Sequence[tuple[int, ...]],
    kind: str, low: int, high: int, offset: int, legato: float = 1.6,
) -> tuple[Note, ...]:  # fmt: skip
    """Broken chords: each onset plays one voice of the voiced chord, in the section's `order`.

    `legato` above 1 lets notes ring over the next (as with a sustain pedal or a harp).
    """
    chosen: dict[str, tuple[str, tuple[int, ...]]] = {}
    notes: list[Note] = []
    previous: tuple[int, ...] = ()
    for bar in range(ctx.coda):
        label = ctx.sections[bar]
        chosen.setdefault(label, (rhythms[rng.integers(len(rhythms))], orders[rng.integers(len(orders))]))
        rhythm, order = chosen[label]
        for k, (step, length, accent) in enumerate(bar_rhythm(rhythm, ctx.meter)):
            start = ctx.bar_start(bar) + step / 4
            previous = voicing(ctx.chord_at(start), kind, low, high, previous)
            pitch = previous[order[k % len(order)] % len(previous)]
            end = min(start + length / 4 * legato, ctx.bar_start(bar + 1))
            accent_offset = 5 if step == 0 else 0
            notes.append(Note(pitch, start, end - start, velocity_of(ctx, offset + accent_offset, accent)))
    chord = voicing(ctx.chord_at(ctx.bar_start(ctx.coda)), kind, low, high, previous)
    notes.extend(Note(p, ctx.bar_start(ctx.coda), ctx.meter.beats, velocity_of(ctx, offset)) for p in chord)
    return tuple(notes)


def pad(ctx: Context, kind: str, low: int, high: int, offset: int) -> tuple[Note, ...]:
    """Sustained chords, one voicing per chord span, slightly overlapping for a seamless swell."""
    notes: list[Note] = []
    previous: tuple[int, ...] = ()
    for span in ctx.chords:
        previous = voicing(span.chord, kind, low, high, previous)
        notes.extend(Note(p, span.start, span.end - span.start + 0.05, velocity_of(ctx, offset)) for p in previous)
    return tuple(notes)


Groove = Mapping[int, str]  # GM drum key -> one bar of step string
KICK, SIDE_STICK, SNARE, CLAP, E_SNARE = 36, 37, 38, 39, 40
CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 42, 44, 46, 49, 51
LOW_TOM, HIGH_TOM, TAMBOURINE, SHAKER = 45, 50, 54, 70


def drums(
    rng: np.random.Generator, ctx: Context, grooves: Sequence[Groove], fills: Sequence[Groove], offset: int,
    crash: bool = True,
) -> tuple[Note, ...]:  # fmt: skip
    """A drum part: one groove per section, a fill in the bar before each new 4-bar phrase, a crash on
    the downbeat after it, and a final crash + kick on the coda."""
    chosen: dict[str, Groove] = {}
    notes: list[Note] = []
    for bar in range(ctx.coda):
        label = ctx.sections[bar]
        chosen.setdefault(label, grooves[rng.integers(len(grooves))])
        groove = chosen[label]
        if fills and bar % 4 == 3 and bar < ctx.coda - 1 and rng.random() < 0.7:
            groove = fills[rng.integers(len(fills))]
        if crash and bar % 4 == 0 and bar > 0:
            groove = {**groove, CRASH: "x".ljust(ctx.meter.steps, ".")}
        for key, pattern in groove.items():
            for step, _, accent in bar_rhythm(pattern, ctx.meter):
                start = ctx.bar_start(bar) + step / 4
                notes.append(Note(key, start, 0.25, velocity_of(ctx, offset, accent)))
    end = ctx.bar_start(ctx.coda)
    ending = (CRASH, KICK) if crash else (KICK,)
    notes.extend(Note(key, end, ctx.meter.beats, velocity_of(ctx, offset, "X")) for key in ending)
    return tuple(notes)


# ----------------------------------------------------------------------------------------------
# Styles: global choices as data, parts as one small function each.


@dataclass(frozen=True)
class StyleSpec:
    """What a style draws from. Weights need not sum to one."""

    tempo: tuple[int, int]  # inclusive range of quarter-note BPM
    meters: Mapping[str, float]
    modes: Mapping[str, float]
    keys: tuple[str, ...]
    dynamics: Mapping[str, float]
    progressions: Mapping[str, tuple[Progression, ...]]  # mode -> progressions
    parts: Callable[[np.random.Generator, Context], list[Part]]
    swing: tuple[float, float] = (0.5, 0.5)  # range of the off-beat's position (0.5 straight, 2/3 triplet)
    swing_unit: float = 1.0  # beats: 1.0 swings eighths, 0.5 sixteenths
    sevenths: bool = False  # end on a seventh chord (jazz) rather than a triad
    jitter: float = 0.01  # seconds of human timing spread (0 for machine-tight electronic music)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[rng.integers(len(options))]


def _weighted(rng: np.random.Generator, table: Mapping[str, float]) -> str:
    names = list(table)
    weights = np.array([table[n] for n in names], dtype=float)
    return names[rng.choice(len(names), p=weights / weights.sum())]


def _by_meter(ctx: Context, table: Mapping[str, tuple]) -> tuple:
    """The entry of a per-meter pattern table for this piece's meter."""
    return table[ctx.meter.name]


# --- rock


_ROCK_GROOVES = (
    {KICK: "x.......x.x.....", SNARE: "....x.......x...", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    {KICK: "x.....x.x.......", SNARE: "....x.......x...", CLOSED_HAT: "X.x.X.x.X.x.X.x."},
    {KICK: "x.......x.......", SNARE: "....x.......x...", RIDE: "x.x.x.x.x.x.x.x."},
    {KICK: "x.x.....x.x.....", SNARE: "....X.......X...", OPEN_HAT: "x.x.x.x.x.x.x.x."},
)
_ROCK_FILLS = (
    {KICK: "x.......x.......", SNARE: "....x...xxx.....", HIGH_TOM: "..........xx....", LOW_TOM: "............xxxx"},
    {KICK: "x...............", SNARE: "....x...x.x.xxxx", CLOSED_HAT: "x.x.x.x........."},
)


def _rock_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    guitar = _pick(rng, (30, 29))
    lead = _pick(rng, (30, 29, 30))
    # Ringing and syncopated chords: straight eighth-note chugs on this soundfont's distortion guitar
    # are heard as a synth sequencer (the tagger says "techno"), not as a band.
    guitar_rhythms = _pick(rng, (
        ("x-----x-x-----x-", "x---------x-x---"),
        ("x-------x-------", "x-----x-x-------"),
        ("x---x---x---x---", "x-----x-x-----x-"),
    ))  # fmt: skip
    parts = [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _ROCK_MELODY, 60, 84, 8), pan=80, reverb=50),
        Part(HARMONY, _NAMES[guitar], guitar, comp(rng, ctx, Comp(guitar_rhythms, "power", 40, 64, -4, 0.98)), pan=40),
        Part(BASS, "electric bass", _pick(rng, (33, 34)), bass_line(rng, ctx, _ROCK_BASS, 28, 4)),
        Part(DRUMS, "drums", _pick(rng, (0, 16, 8)), drums(rng, ctx, _ROCK_GROOVES, _ROCK_FILLS, 8), is_drum=True),
    ]
    if rng.random() < 0.3:
        organ = Comp(("x---------------", "x-------x-------"), "close", 55, 76, -22)
        parts.insert(2, Part(HARMONY, "organ", 18, comp(rng, ctx, organ), volume=70, pan=90))
    return parts


_ROCK_MELODY = ("x-x-x---x-x-x---", "x---x-x-x-------", "..x-x-x-x---x---", "x-----x-x-x-x---", "x-x-x-x-x---x---")
_ROCK_BASS = (
    ("x-x-x-x-x-x-x-x-", "R"),
    ("x-x-x-x-x-x-x-x-", "R R R R R R 5 8"),
    ("x---x---x-x-x---", "R R R 5 R"),
    ("x-----x-x-----x-", "R R R 5"),
)


# --- jazz


# The ride's "ding, ding-a ding" with 2 and 4 leaned on, the hi-hat's foot on 2 and 4, the kick
# feathered on every beat and the snare comping: each loud enough to be heard as a drum kit, since a
# jazz kit mixed far below the horn is heard as no drums at all.
_SWING_RIDE = {RIDE: "x...X.x.x...X.x.", PEDAL_HAT: "....x.......x...", KICK: "g...g...g...g..."}
_JAZZ_GROOVES: Mapping[str, tuple[Groove, ...]] = {
    "4/4": (
        {**_SWING_RIDE, SNARE: "......g.......x."},
        {**_SWING_RIDE, SNARE: "..g.......x...g."},
        {**_SWING_RIDE, SNARE: "......x...g...g.", KICK: "g...g...g.x.g..."},
    ),
    "3/4": ({RIDE: "x...X.x.X.x.", PEDAL_HAT: "....x...x...", KICK: "g...g...g...", SNARE: "......g...x."},),
}
_BRUSH_GROOVES: Mapping[str, tuple[Groove, ...]] = {
    # With the brush kit the snare row is the brushes' swish, played on every swung eighth.
    "4/4": ({SNARE: "g.g.x.g.g.g.x.g.", PEDAL_HAT: "....x.......x...", KICK: "g...g...g...g..."},),
    "3/4": ({SNARE: "g.g.x.g.x.g.", PEDAL_HAT: "....x...x...", KICK: "g...g...g..."},),
}
_JAZZ_FILLS: Mapping[str, tuple[Groove, ...]] = {
    "4/4": ({RIDE: "x...X.x.........", SNARE: "........x.gxx.x.", KICK: "g...g.......x..."},),
    "3/4": ({RIDE: "x...X.......", SNARE: "......x.gxx.", KICK: "g.......x..."},),
}
_JAZZ_COMP = {
    "4/4": ("x.....x.........", "..x.....x.......", "x.....x.....x...", "...x......x.....", "......x.....x..."),
    "3/4": ("x.....x.....", "..x.....x...", "....x...x..."),
}
_JAZZ_MELODY = {
    "4/4": ("x-x-x-x-x---x-x-", "..x-x-x-x-x-x---", "x-----x-x-x-x-x-", "x---x-x-x---..x-", "x-x-x---x-x-x---"),
    "3/4": ("x-x-x-x-x---", "x---x-x-x-x-", "..x-x-x-----"),
}
# Horns, vibes, and the guitar or piano that leads a trio. The tagger hears a lone sax or trumpet
# line as a violin; under the lead, the comping and the kit keep the band audible.
_JAZZ_LEADS = (66, 65, 56, 59, 11, 26, 0)
_LEAD_RANGE = {
    66: (51, 77), 65: (55, 82), 56: (57, 82), 59: (57, 80), 11: (57, 86), 71: (55, 82), 64: (62, 86), 73: (64, 89),
    26: (55, 79), 0: (60, 86),
}  # fmt: skip


def _jazz_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    lead = _pick(rng, _JAZZ_LEADS)
    low, high = _LEAD_RANGE[lead]
    # A guitar or piano lead comps for itself (a trio); a horn or vibes gets a piano or guitar behind it.
    keys = lead if lead in (0, 26) else _pick(rng, (0, 0, 4, 26))
    brushes = rng.random() < 0.4
    grooves = _by_meter(ctx, _BRUSH_GROOVES if brushes else _JAZZ_GROOVES)
    fills = () if brushes else _by_meter(ctx, _JAZZ_FILLS)
    comping = Comp(_by_meter(ctx, _JAZZ_COMP), "shell", 50, 74, 4, 0.8)
    return [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _by_meter(ctx, _JAZZ_MELODY), low, high, 0), volume=95,
             pan=76, reverb=55),
        Part(HARMONY, _NAMES[keys], keys, comp(rng, ctx, comping), pan=48, reverb=50),
        Part(BASS, "upright bass", 32, walking_bass(rng, ctx, 28, -6), volume=70, pan=58),
        Part(DRUMS, "brushed drums" if brushes else "drums", 40 if brushes else _pick(rng, (32, 0)),
             drums(rng, ctx, grooves, fills, 16, crash=False), is_drum=True, reverb=45),
    ]  # fmt: skip


# --- blues


_SHUFFLE = {KICK: "x.......x.......", SNARE: "....x.......x...", CLOSED_HAT: "x.x.x.x.x.x.x.x."}
_BLUES_GROOVES = (_SHUFFLE, {KICK: _SHUFFLE[KICK], SNARE: _SHUFFLE[SNARE], RIDE: "x.x.x.x.x.x.x.x."})
_BLUES_FILLS = ({KICK: "x...............", SNARE: "....x...x.x.x.x.", HIGH_TOM: "..........x.....", LOW_TOM: "..............x."},)
_BLUES_BASS = (
    ("x-x-x-x-x-x-x-x-", "R 3 5 6 7 6 5 3"),  # the boogie-woogie line
    ("x---x---x---x---", "R 3 5 7"),
    ("x-x-x-x-x-x-x-x-", "R R 5 5 7 7 5 5"),
)


def _blues_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    lead = _pick(rng, (27, 29, 27, 29, 22, 66, 26))  # mostly the electric guitar: blues is a guitar music
    low, high = {22: (60, 84), 66: (51, 77)}.get(lead, (55, 81))
    keys = _pick(rng, (0, 16, 4))
    bass = _pick(rng, (33, 32))
    comping = Comp(("x---..x-x---..x-", "..x-..x-..x-..x-", "x-------x-------"), "close", 52, 74, -10, 0.8)
    return [
        # A sax or harmonica lead is held back a little (alone on top it reads as a violin), and the
        # bass sits under the kit so the band is heard as a band.
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _BLUES_MELODY, low, high, 8),
             volume=100 if lead in (27, 29, 26) else 85, pan=78, reverb=50),
        Part(HARMONY, _NAMES[keys], keys, comp(rng, ctx, comping), pan=46),
        Part(BASS, _NAMES[bass], bass, bass_line(rng, ctx, _BLUES_BASS, 28, 0), volume=85),
        Part(DRUMS, "drums", _pick(rng, (0, 8)), drums(rng, ctx, _BLUES_GROOVES, _BLUES_FILLS, 10), is_drum=True),
    ]  # fmt: skip


_BLUES_MELODY = ("..x-x-x-x-------", "x-x-x---x-------", "x---x-x-x-x-x---", "....x-x-x---x---")
_TWELVE_BAR = ("I7", "IV7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "IV7", "I7", "V7")
_QUICK_CHANGE = ("I7", "I7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "IV7", "I7", "V7")
_MINOR_BLUES = ("i7", "i7", "i7", "i7", "iv7", "iv7", "i7", "i7", "bVI7", "V7", "i7", "V7")


# --- ambient


_AMBIENT_MELODY = {
    "4/4": (
        "x-------........", "x-----------....", "....x-----------", "x-------x-------", "x---x-----------", "........x-------",
    ),
    "3/4": ("x-----------", "x-------....", "....x-------", "x---x-------"),
}
_AMBIENT_LEADS = (8, 9, 10, 11, 108, 0, 73, 75, 98)
_AMBIENT_PADS = (88, 89, 91, 92, 94, 95, 49)


def _ambient_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    lead = _pick(rng, _AMBIENT_LEADS)
    low, high = (60, 84) if lead in (0, 73, 75) else (67, 91)
    pad_program = _pick(rng, _AMBIENT_PADS)
    parts = [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _by_meter(ctx, _AMBIENT_MELODY), low, high, 4, legato=1.0),
             pan=72, reverb=110, chorus=40),
        Part(HARMONY, _NAMES[pad_program], pad_program, pad(ctx, "spread", 40, 72, -6), reverb=110, chorus=60),
    ]  # fmt: skip
    if rng.random() < 0.5:  # a slow arpeggio for motion, on harp/e-piano/kalimba
        arp = _pick(rng, (46, 4, 108, 11))
        rhythm = _by_meter(ctx, {"4/4": ("x---x---x---x---", "x-------x---x---"), "3/4": ("x---x---x---",)})
        notes = arpeggio(rng, ctx, rhythm, ((0, 1, 2, 3), (0, 2, 1, 3), (3, 2, 1, 0)), "spread", 48, 79, -16, legato=3.0)
        parts.append(Part(HARMONY, _NAMES[arp], arp, notes, volume=80, pan=40, reverb=110))
    return parts


# --- electronic


_FOUR_ON_FLOOR = {KICK: "X...x...X...x...", CLAP: "....x.......x...", CLOSED_HAT: "..x...x...x...x."}
_ELECTRONIC_GROOVES = (
    _FOUR_ON_FLOOR,
    {**_FOUR_ON_FLOOR, CLOSED_HAT: "xxXxxxXxxxXxxxXx"},
    {KICK: _FOUR_ON_FLOOR[KICK], CLAP: _FOUR_ON_FLOOR[CLAP], OPEN_HAT: "..x...x...x...x."},
    {KICK: "X...x...X...x...", E_SNARE: "....x.......x...", CLOSED_HAT: "x.X.x.X.x.X.x.X.", OPEN_HAT: "..............x."},
)
_ELECTRONIC_FILLS = (
    {KICK: "X...x...X...x...", CLAP: "....x...x.x.xxxx", CLOSED_HAT: "xxXxxxXxxxXxxxXx"},
    {KICK: "X...x...x.x.xxxx", E_SNARE: "........x.x.xxxx"},
)
_ELECTRONIC_BASS = (
    ("..x-..x-..x-..x-", "R"),  # off-beat house bass
    ("x.xxx.xxx.xxx.xx", "R R 8 R R 8 R R 8 R R 8"),  # rolling
    ("x-.x..x.x-.x..x.", "R R 8 R R R 8 5"),
    ("x-x-x-x-x-x-x-x-", "R R 8 R R R 8 R"),
)
_ELECTRONIC_MELODY = ("x.x.x..x..x.x...", "x..x..x...x.x...", "x-.x-.x-x-.x-.x-", "x-x-x-..x-x-x-..", "x---x--.x-x-x---")


def _electronic_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    lead = _pick(rng, (81, 80, 84, 87, 81))
    bass = _pick(rng, (38, 39, 87))
    parts = [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _ELECTRONIC_MELODY, 60, 84, 4, legato=0.8),
             pan=70, reverb=60, chorus=30),
        Part(BASS, "synth bass", bass, bass_line(rng, ctx, _ELECTRONIC_BASS, 28, 8, 0.7)),
        Part(DRUMS, "drum machine", _pick(rng, (24, 25)), drums(rng, ctx, _ELECTRONIC_GROOVES, _ELECTRONIC_FILLS, 12),
             is_drum=True, reverb=20),
    ]  # fmt: skip
    if rng.random() < 0.6:  # sustained pad, or off-beat chord stabs
        program = _pick(rng, (89, 90, 95, 50))
        parts.insert(1, Part(HARMONY, _NAMES[program], program, pad(ctx, "spread", 43, 72, -14), volume=85, reverb=80, chorus=50))
    else:
        program = _pick(rng, (81, 90, 62))
        stabs = Comp(("..x...x...x...x.", "..x..x....x..x..", "x..x..x...x..x.."), "close", 55, 76, -10, 0.5)
        name = {81: "saw synth stabs", 90: "polysynth stabs", 62: "synth brass stabs"}[program]
        parts.insert(1, Part(HARMONY, name, program, comp(rng, ctx, stabs), volume=85, reverb=60))
    if rng.random() < 0.6:  # a sixteenth-note arpeggiator
        arp = _pick(rng, (81, 80, 98, 84))
        orders = ((0, 1, 2, 3), (0, 2, 1, 3, 2, 1), (3, 2, 1, 0), (0, 1, 2, 3, 2, 1))
        notes = arpeggio(rng, ctx, ("xxxxxxxxxxxxxxxx", "x.x.x.x.x.x.x.x."), orders, "close", 60, 84, -18, legato=0.7)
        name = {81: "saw synth arpeggio", 80: "square synth arpeggio", 98: "crystal synth arpeggio", 84: "synth arpeggio"}[arp]
        parts.insert(2, Part(HARMONY, name, arp, notes, volume=80, pan=44, reverb=60))
    return parts


# --- hip hop


# Boom-bap: a heavy kick and a cracking backbeat snare over eighth-note hats, mixed loudest (the beat
# is the track); the bass sits under it, since a loud plucked bass line is heard as a guitar.
_BOOM_BAP = (
    {KICK: "X.........X.x...", SNARE: "....X.......X...", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    {KICK: "X......x..X.....", SNARE: "....X.......X..g", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    {KICK: "X..x......X.....", SNARE: "....X.......X...", CLOSED_HAT: "x.xxx.x.x.xxx.x."},
    {KICK: "X.x.......X..x..", SNARE: "....X.......X...", CLOSED_HAT: "x.x.x.x.x.x.x.x.", OPEN_HAT: "..............x."},
)
_HIP_HOP_BASS = (("x-----x---x-----", "R R 5"), ("x-------..x-x---", "R R 8"), ("x---------x-----", "R 5"))


def _hip_hop_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    keys = _pick(rng, (4, 4, 0, 11))
    lead = _pick(rng, (73, 11, 80, 4, 65))
    low, high = _LEAD_RANGE.get(lead, (60, 84))
    comping = Comp(("x-------..x-----", "x-----------x---", "x---------------"), "close", 52, 74, -10, 0.95)
    bass = _pick(rng, (38, 33, 39))
    return [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _HIP_HOP_MELODY, low, high, -6), volume=75, pan=76, reverb=60),
        Part(HARMONY, _NAMES[keys], keys, comp(rng, ctx, comping), volume=75, pan=50, reverb=50, chorus=30),
        Part(BASS, _NAMES[bass], bass, bass_line(rng, ctx, _HIP_HOP_BASS, 28, 0), volume=80),
        Part(DRUMS, "drums", _pick(rng, (0, 8, 25)), drums(rng, ctx, _BOOM_BAP, (), 20, crash=False), is_drum=True,
             volume=127, reverb=20),
    ]


_HIP_HOP_MELODY = ("x-------x-x-----", "....x---x-------", "x---x-----------", "..x-x-x---------")


# --- funk


_FUNK_GROOVES = (
    {KICK: "x..x..x...x..x..", SNARE: "....X..g.g..X..g", CLOSED_HAT: "XxxxXxxxXxxxXxxx"},
    {KICK: "x.x...x..x......", SNARE: "....X.g.....X.g.", CLOSED_HAT: "x.x.x.x.x.x.x.xg", OPEN_HAT: "..............x."},
    {KICK: "x......x..x.....", SNARE: "....X..g.g..X...", CLOSED_HAT: "XxxxXxxxXxxxXxxx"},
)
_FUNK_FILLS = (
    {KICK: "x..x..x.........", SNARE: "....X...xgxgX.xx", CLOSED_HAT: "XxxxXxxx........"},
)
_FUNK_BASS = (
    ("x..x..x.x.x..x..", "R g 8 R 7 8 g"),
    ("x.gx..x.x..xx.g.", "R g R 8 R 7 8 g"),
    ("x..x.xg.x..x.xx.", "R 8 7 g R 8 5"),
    ("x.x..x.gx...x.x.", "R 8 R g R 7 8"),
)
_FUNK_MELODY = ("x.x...x.x.x.....", "..x.x..x.x..x...", "x..x..x.....x.x.", "x.x.x..x..x.....", "x-..x-..x.x.x...")


def _funk_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    lead = _pick(rng, (61, 61, 66, 65, 56))
    low, high = _LEAD_RANGE.get(lead, (55, 80))
    bass = _pick(rng, (36, 37, 36, 33))
    keys = _pick(rng, (7, 7, 28, 4))
    scratch = ("x.xx.xx.x.xx.xx.", "x.x..x.xx.x..x.x", ".xx.x.x..xx.x.x.", "x.x.x..x.xx..x.x")
    comping = Comp(scratch, "triad" if keys == 28 else "close", 55, 76, -10, 0.45)
    return [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _FUNK_MELODY, low, high, 8, legato=0.6), pan=74, reverb=40),
        Part(HARMONY, _NAMES[keys], keys, comp(rng, ctx, comping), pan=44, reverb=30),
        Part(BASS, _NAMES[bass], bass, bass_line(rng, ctx, _FUNK_BASS, 28, 8, 0.55)),
        Part(DRUMS, "drums", _pick(rng, (0, 8)), drums(rng, ctx, _FUNK_GROOVES, _FUNK_FILLS, 8), is_drum=True, reverb=25),
    ]


# --- bossa nova


_BOSSA_GROOVES = (
    {KICK: "x..xx..xx..xx..x", SIDE_STICK: "x..x..x...x..x..", CLOSED_HAT: "xxxxxxxxxxxxxxxx"},
    {KICK: "x..xx..xx..xx..x", SIDE_STICK: "..x..x....x..x..", SHAKER: "xxxxxxxxxxxxxxxx"},
)


def _bossa_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    lead = _pick(rng, (73, 65, 66, 11))
    low, high = _LEAD_RANGE.get(lead, (60, 84))
    comping = Comp(("x..x..x...x..x..", "..x..x..x..x....", "x..x..x..x..x..."), "close", 52, 72, -10, 0.9)
    return [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _BOSSA_MELODY, low, high, 4), pan=74, reverb=55),
        Part(HARMONY, "nylon-string guitar", 24, comp(rng, ctx, comping), pan=50, reverb=45),
        Part(BASS, "upright bass", 32, bass_line(rng, ctx, (("x-----x-x-----x-", "R 5 5 R"),), 28, 2)),
        Part(DRUMS, "drums", _pick(rng, (0, 40, 32)), drums(rng, ctx, _BOSSA_GROOVES, (), -14, crash=False),
             is_drum=True, reverb=40),
    ]  # fmt: skip


_BOSSA_MELODY = ("x-x-..x-x-..x---", "x---x-x-..x-x---", "..x-x---x-x-x---", "x-----x---x-x---")


# --- classical strings


_CLASSICAL_MELODY = {
    "4/4": ("x---x---x---x---", "x-x-x-x-x---x---", "x-----x-x---x---", "x---x-x-x-------", "x-x-x-x-x-x-x-x-"),
    "3/4": ("x---x---x---", "x-----x-x---", "x-x-x-x-x---", "x-------x---"),
    "6/8": ("x-x-x-x-x-x-", "x---x-x---x-", "x-----x-x-x-", "x-x-x-x-----"),
}
_CLASSICAL_ACCOMP = {
    "4/4": ("x-------x-------", "x-x-x-x-x-x-x-x-", "x---x---x---x---", "x---------------"),
    "3/4": ("....x---x---", "x-----------", "x---x---x---"),
    "6/8": ("x-----x-----", "x-x-x-x-x-x-", "..x-x-..x-x-"),
}
_CLASSICAL_BASS = {
    "4/4": (("x-------x-------", "R 5"), ("x---x---x---x---", "R 5 R 3"), ("x---------------", "R")),
    "3/4": (("x-----------", "R"), ("x-------x---", "R 5")),
    "6/8": (("x-----x-----", "R 5"), ("x-----------", "R")),
}


def _classical_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    ensemble = _pick(rng, ("quartet", "orchestra", "pizzicato"))
    accomp = _by_meter(ctx, _CLASSICAL_ACCOMP)
    tune = melody(rng, ctx, _by_meter(ctx, _CLASSICAL_MELODY), 64, 88, 6, legato=0.98)
    if ensemble == "pizzicato":
        lead, lead_name = 40, "violin"
        inner = [Part(HARMONY, "pizzicato strings", 45, comp(rng, ctx, Comp(accomp, "close", 55, 76, -4, 1.0)), pan=44)]
    elif ensemble == "orchestra":
        lead, lead_name = _pick(rng, ((40, "violin"), (48, "string ensemble")))
        pad_program = _pick(rng, (48, 49))
        inner = [Part(HARMONY, "string ensemble", pad_program, comp(rng, ctx, Comp(accomp, "close", 52, 74, -12, 0.98)), pan=50)]
    else:  # quartet: second violin and viola take the inner voices of a voice-led three-note chord
        lead, lead_name = 40, "violin"
        chords = comp(rng, ctx, Comp(accomp, "triad", 55, 76, -10, 0.98))
        upper, lower = _split_voices(chords)
        inner = [Part(HARMONY, "violin", 40, upper, pan=40), Part(HARMONY, "viola", 41, lower, pan=78)]
    bass_program = _pick(rng, (42, 42, 43))
    bass = bass_line(rng, ctx, _by_meter(ctx, _CLASSICAL_BASS), 36 if bass_program == 42 else 28, 0, legato=0.98)
    return [
        Part(MELODY, lead_name, lead, tune, pan=56, reverb=70),
        *inner,
        Part(BASS, _NAMES[bass_program], bass_program, bass, pan=84, reverb=70),
    ]


def _split_voices(notes: Sequence[Note]) -> tuple[tuple[Note, ...], tuple[Note, ...]]:
    """Split chords into the top voice and the rest (chords are notes sharing a start time)."""
    by_start: dict[float, list[Note]] = {}
    for note in notes:
        by_start.setdefault(note.start, []).append(note)
    top = tuple(max(chord, key=lambda n: n.pitch) for chord in by_start.values())
    rest = tuple(n for chord in by_start.values() for n in sorted(chord, key=lambda n: n.pitch)[:-1])
    return top, rest


# --- folk


_FOLK_STRUM = {
    "4/4": ("x-x-.xx-x-x-.xx-", "x---x-x-x---x-x-", "x-x-x-x-x-x-x-x-"),
    "3/4": ("x---x-x-x-x-", "x---x---x---"),
    "6/8": ("x-x-x-x-x-x-", "x---x-x---x-"),
}
_FOLK_MELODY = {
    "4/4": ("x---x-x-x---x---", "x-x-x-x-x---x---", "x---x---x-x-x-x-", "x-----x-x---x---"),
    "3/4": ("x---x-x-x---", "x-----x-x-x-", "x-x-x-x-x---"),
    "6/8": ("x-x-x-x-x-x-", "x---x-x---x-", "x-x-x-x---x-"),
}
_FOLK_BASS = {
    "4/4": (("x-------x-------", "R 5"), ("x---x---x---x---", "R 5 R 5")),
    "3/4": (("x-----------", "R"), ("x-------x---", "R 5")),
    "6/8": (("x-----x-----", "R 5"),),
}
_FOLK_PERCUSSION = {
    "4/4": (
        {KICK: "x.......x.......", TAMBOURINE: "....x.......x..."},
        {SHAKER: "x.x.x.x.x.x.x.x.", TAMBOURINE: "....x.......x..."},
    ),
    "3/4": ({KICK: "x...........", TAMBOURINE: "....x...x..."},),
    "6/8": ({KICK: "x.....x.....", TAMBOURINE: "...x.....x.."},),
}
_FOLK_LEADS = (110, 110, 73, 78, 74, 21, 22)
_FOLK_RANGE = {110: (62, 86), 73: (64, 89), 78: (72, 96), 74: (64, 88), 21: (60, 84), 22: (60, 84), 105: (55, 79)}


def _folk_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    lead = _pick(rng, _FOLK_LEADS)
    low, high = _FOLK_RANGE[lead]
    guitar = _pick(rng, (25, 25, 24))
    strum = Comp(_by_meter(ctx, _FOLK_STRUM), "guitar", 40, 67, -8, 0.95, strum=0.015)
    parts = [
        Part(MELODY, _NAMES[lead], lead, melody(rng, ctx, _by_meter(ctx, _FOLK_MELODY), low, high, 6), pan=74, reverb=50),
        Part(HARMONY, _NAMES[guitar], guitar, comp(rng, ctx, strum), pan=50, reverb=40),
    ]
    if rng.random() < 0.6:
        parts.append(Part(BASS, "upright bass", 32, bass_line(rng, ctx, _by_meter(ctx, _FOLK_BASS), 28, 0)))
    if rng.random() < 0.6:
        percussion = drums(rng, ctx, _by_meter(ctx, _FOLK_PERCUSSION), (), -18, crash=False)
        parts.append(Part(DRUMS, "percussion", 8, percussion, is_drum=True, volume=80, reverb=40))
    return parts


# --- piano ballad


_BALLAD_MELODY = {
    "4/4": ("x-----x-x-------", "x---x---x-x-x---", "..x-x-x-x-------", "x---x-x-x---x---"),
    "3/4": ("x-----x-x---", "x---x---x---", "x-x-x-x-----"),
    "6/8": ("x-x-x-x-----", "x-----x-x-x-", "x---x-x---x-"),
}
_BALLAD_ARPEGGIO = {
    "4/4": ("x-x-x-x-x-x-x-x-", "x---x---x---x---"),
    "3/4": ("x-x-x-x-x-x-", "x---x---x---"),
    "6/8": ("x-x-x-x-x-x-",),
}


def _ballad_parts(rng: np.random.Generator, ctx: Context) -> list[Part]:
    piano = _pick(rng, (0, 0, 1, 4))
    name = _NAMES[piano]
    orders = ((0, 2, 3, 1), (0, 1, 2, 3, 2, 1), (0, 2, 1, 3))
    left = arpeggio(rng, ctx, _by_meter(ctx, _BALLAD_ARPEGGIO), orders, "spread", 36, 72, -14, legato=1.0)
    right = melody(rng, ctx, _by_meter(ctx, _BALLAD_MELODY), 64, 86, 4, legato=1.0)
    pedal = tuple((s.start + 0.02, s.end - 0.02) for s in ctx.chords)  # re-pedal at each chord change
    parts = [
        Part(MELODY, name, piano, right, pan=68, reverb=60, pedal=pedal),
        Part(HARMONY, name, piano, left, pan=56, reverb=60, pedal=pedal),
    ]
    if rng.random() < 0.5:
        strings = _pick(rng, (48, 49, 50))
        parts.append(Part(HARMONY, "strings", strings, pad(ctx, "close", 52, 72, -26), volume=75, reverb=80))
    return parts


_NAMES: Mapping[int, str] = {
    0: "piano", 1: "bright piano", 4: "electric piano", 7: "clavinet", 8: "celesta", 9: "glockenspiel",
    10: "music box", 11: "vibraphone", 16: "organ", 18: "rock organ", 21: "accordion", 22: "harmonica",
    24: "nylon-string guitar", 25: "acoustic guitar", 26: "jazz guitar", 27: "clean electric guitar",
    28: "muted electric guitar", 29: "overdriven guitar", 30: "distortion guitar", 32: "upright bass",
    33: "electric bass", 34: "electric bass", 36: "slap bass", 37: "slap bass", 38: "synth bass",
    39: "synth bass", 40: "violin", 41: "viola", 42: "cello", 43: "contrabass", 45: "pizzicato strings",
    46: "harp", 48: "string ensemble", 49: "string ensemble", 50: "synth strings", 56: "trumpet",
    59: "muted trumpet", 61: "brass section", 62: "synth brass", 64: "soprano sax", 65: "alto sax",
    66: "tenor sax", 71: "clarinet", 73: "flute", 74: "recorder", 75: "pan flute", 78: "tin whistle",
    80: "square lead", 81: "saw lead", 84: "synth lead", 87: "synth lead", 88: "synth pad",
    89: "warm pad", 90: "polysynth pad", 91: "choir pad", 92: "bowed pad", 94: "halo pad",
    95: "sweep pad", 98: "crystal synth", 105: "banjo", 108: "kalimba", 110: "fiddle",
}  # fmt: skip

_ALL_KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_GUITAR_KEYS = ("E", "A", "D", "G", "C", "B", "F#")

SPECS: Mapping[str, StyleSpec] = {
    "rock": StyleSpec(
        tempo=(92, 144), meters={"4/4": 1}, modes={"major": 4, "minor": 4, "mixolydian": 2}, keys=_GUITAR_KEYS,
        dynamics={"medium": 1, "loud": 2},
        progressions={
            "major": (("I", "V", "vi", "IV"), ("I", "IV", "V", "IV"), ("vi", "IV", "I", "V"), ("I", "IV", "I", "V")),
            "minor": (
                ("i", "bVI", "bVII", "i"), ("i", "bVII", "bVI", "bVII"), ("i", "iv", "bVII", "i"), ("i", "bIII", "bVII", "iv"),
            ),
            "mixolydian": (("I", "bVII", "IV", "I"), ("I", "bVII", "I", "IV")),
        },
        parts=_rock_parts,
    ),
    "jazz": StyleSpec(
        tempo=(96, 160), meters={"4/4": 4, "3/4": 1}, modes={"major": 5, "minor": 2, "dorian": 2},
        keys=("F", "Bb", "Eb", "Ab", "C", "G", "D"), dynamics={"soft": 1, "medium": 2},
        progressions={
            "major": (("ii7", "V7", "Imaj7", "vi7"), ("Imaj7", "vi7", "ii7", "V7"), ("Imaj7", "IV7", "iii7 vi7", "ii7 V7"),
                      ("iii7", "vi7", "ii7", "V7")),
            "minor": (("iiø7", "V7", "i7", "i7"), ("i7", "iv7", "iiø7", "V7"), ("i7", "bVImaj7", "iiø7", "V7")),
            "dorian": (("i7", "IV7", "i7", "IV7"), ("i7", "i7", "IV7", "IV7"), ("i7", "ii7", "i7", "IV7")),
        },
        parts=_jazz_parts, swing=(0.6, 0.67), sevenths=True, jitter=0.012,
    ),  # fmt: skip
    "blues": StyleSpec(
        tempo=(76, 126), meters={"4/4": 1}, modes={"mixolydian": 3, "minor": 1}, keys=("E", "A", "G", "C", "D", "Bb", "F"),
        dynamics={"soft": 1, "medium": 2, "loud": 1},
        progressions={"mixolydian": (_TWELVE_BAR, _QUICK_CHANGE), "minor": (_MINOR_BLUES,)},
        parts=_blues_parts, swing=(0.64, 0.67), sevenths=True,
    ),
    "ambient": StyleSpec(
        tempo=(56, 84), meters={"4/4": 3, "3/4": 1}, modes={"major": 4, "minor": 3, "lydian": 2}, keys=_ALL_KEYS,
        dynamics={"soft": 3, "medium": 1},
        progressions={
            "major": (
                ("Imaj7", "Imaj7", "IVmaj7", "IVmaj7"), ("Iadd9", "vi7", "IVmaj7", "Iadd9"), ("Imaj7", "iii7", "vi7", "IVmaj7"),
            ),
            "minor": (("i7", "bVImaj7", "i7", "bVImaj7"), ("i9", "bVII", "bVImaj7", "bVII"), ("i7", "iv7", "bVImaj7", "i7")),
            "lydian": (("Imaj7", "II", "Imaj7", "II"), ("Imaj7", "Imaj7", "II", "vii")),
        },
        parts=_ambient_parts, jitter=0.02,
    ),  # fmt: skip
    "electronic": StyleSpec(
        tempo=(118, 134), meters={"4/4": 1}, modes={"minor": 6, "major": 3, "dorian": 2}, keys=_ALL_KEYS,
        dynamics={"medium": 1, "loud": 2},
        progressions={
            "minor": (
                ("i", "bVI", "bIII", "bVII"), ("i", "i", "bVI", "bVII"), ("i", "bVII", "bVI", "bVII"),
                ("i7", "iv7", "i7", "bVImaj7"),
            ),
            "major": (("I", "V", "vi", "IV"), ("vi", "IV", "I", "V"), ("IV", "V", "vi", "vi")),
            "dorian": (("i7", "IV", "i7", "IV"), ("i7", "bIII", "IV", "i7")),
        },
        parts=_electronic_parts, jitter=0.0,
    ),  # fmt: skip
    "hip hop": StyleSpec(
        tempo=(80, 96), meters={"4/4": 1}, modes={"minor": 3, "dorian": 2, "major": 1}, keys=_ALL_KEYS,
        dynamics={"soft": 1, "medium": 2},
        progressions={
            "minor": (("i7", "iv7", "i7", "iv7"), ("i7", "bVImaj7", "iv7", "V7"), ("i9", "bVImaj7", "i9", "bVImaj7")),
            "dorian": (("i7", "IV7", "i7", "IV7"), ("i9", "ii7", "i9", "ii7")),
            "major": (("Imaj7", "vi7", "ii7", "V7"), ("IVmaj7", "iii7", "ii7", "Imaj7")),
        },
        parts=_hip_hop_parts, swing=(0.55, 0.6), swing_unit=0.5, sevenths=True, jitter=0.008,
    ),  # fmt: skip
    "funk": StyleSpec(
        tempo=(92, 118), meters={"4/4": 1}, modes={"dorian": 5, "minor": 2, "mixolydian": 3},
        keys=("E", "A", "D", "G", "C", "F", "Bb"), dynamics={"medium": 2, "loud": 1},
        progressions={
            "dorian": (("i7", "IV7", "i7", "IV7"), ("i7", "i7", "i7", "IV9"), ("i9", "i9", "IV7", "IV7")),
            "minor": (("i7", "i7", "iv7", "i7"), ("i7", "bVII7", "i7", "bVII7")),
            "mixolydian": (("I7", "I7", "IV7", "I7"), ("I9", "bVII", "I9", "bVII"), ("I7", "IV7", "I7", "bVII7")),
        },
        parts=_funk_parts, swing=(0.5, 0.57), swing_unit=0.5, sevenths=True, jitter=0.006,
    ),  # fmt: skip
    "bossa nova": StyleSpec(
        tempo=(118, 144), meters={"4/4": 1}, modes={"major": 4, "minor": 1, "dorian": 1}, keys=_ALL_KEYS,
        dynamics={"soft": 2, "medium": 1},
        progressions={
            "major": (("Imaj7", "Imaj7", "II7", "II7"), ("ii7", "V7", "Imaj7", "vi7"), ("Imaj7", "vi7", "ii7", "V7")),
            "minor": (("i7", "iv7", "iiø7", "V7"), ("i7", "i7", "iv7", "V7")),
            "dorian": (("i7", "IV7", "i7", "IV7"),),
        },
        parts=_bossa_parts, sevenths=True,
    ),  # fmt: skip
    "classical strings": StyleSpec(
        tempo=(60, 132), meters={"4/4": 5, "3/4": 3, "6/8": 2}, modes={"major": 11, "minor": 9}, keys=_ALL_KEYS,
        dynamics={"soft": 1, "medium": 2, "loud": 1},
        progressions={
            "major": (("I", "IV", "V", "I"), ("I", "vi", "ii", "V"), ("I", "V", "vi", "iii", "IV", "I", "IV", "V"),
                      ("I", "ii", "V7", "I"), ("I", "IV", "I", "V")),
            "minor": (("i", "iv", "V", "i"), ("i", "bVI", "iv", "V"), ("i", "iv", "bVII", "bIII"), ("i", "V", "i", "V7")),
        },
        parts=_classical_parts, jitter=0.012,
    ),  # fmt: skip
    "folk": StyleSpec(
        tempo=(84, 132), meters={"4/4": 5, "3/4": 3, "6/8": 2}, modes={"major": 6, "mixolydian": 2, "dorian": 2},
        keys=("G", "D", "A", "C", "E", "F"), dynamics={"soft": 1, "medium": 2},
        progressions={
            "major": (("I", "IV", "I", "V"), ("I", "V", "IV", "I"), ("I", "IV", "V", "I"), ("I", "vi", "IV", "V")),
            "mixolydian": (("I", "bVII", "IV", "I"), ("I", "I", "bVII", "I")),
            "dorian": (("i", "bVII", "i", "bVII"), ("i", "IV", "i", "bVII"), ("i", "bIII", "bVII", "i")),
        },
        parts=_folk_parts, jitter=0.012,
    ),  # fmt: skip
    "piano ballad": StyleSpec(
        tempo=(58, 84), meters={"4/4": 3, "3/4": 1, "6/8": 1}, modes={"major": 2, "minor": 1}, keys=_ALL_KEYS,
        dynamics={"soft": 3, "medium": 2},
        progressions={
            "major": (("I", "V", "vi", "IV"), ("I", "vi", "IV", "V"), ("IV", "I", "V", "vi"), ("I", "iii", "IV", "V")),
            "minor": (("i", "bVI", "bIII", "bVII"), ("i", "iv", "bVII", "bIII"), ("i", "bVI", "iv", "V")),
        },
        parts=_ballad_parts, jitter=0.015,
    ),  # fmt: skip
}

STYLES: tuple[str, ...] = tuple(SPECS)

# ----------------------------------------------------------------------------------------------
# Assembly.

_DYNAMICS_VELOCITY = {"soft": 56, "medium": 80, "loud": 102}


@dataclass(frozen=True)
class Arrangement:
    """A generated piece and the facts about it that captions are made from (schema in `arrange`)."""

    midi: pretty_midi.PrettyMIDI
    attributes: dict


def arrange(style: str, rng: np.random.Generator, duration: float = 20.0) -> Arrangement:
    """Write a piece in `style` lasting at least `duration` seconds (plus a held final bar).

    `attributes` follows the corpus-wide schema: style, tempo_bpm (quarter notes per minute, an
    integer-valued float), key (tonic name), mode, time_signature, dynamics, instruments (human
    names, melody first, then harmony, bass, drums; no repeats), gm_programs (aligned with
    instruments; -1 for drums), parts (roles present) and mood.
    """
    if style not in SPECS:
        raise MelodyError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")
    if not duration > 0:
        raise MelodyError(f"duration must be positive, got {duration}")
    spec = SPECS[style]
    tempo = int(rng.integers(spec.tempo[0], spec.tempo[1] + 1))
    meter = METERS[_weighted(rng, spec.meters)]
    mode = _weighted(rng, spec.modes)
    tonic = pitch_class(_pick(rng, spec.keys))
    dynamics = _weighted(rng, spec.dynamics)
    swing = float(rng.uniform(*spec.swing))
    bar_seconds = meter.beats * 60.0 / tempo
    n_body = max(1, math.ceil(duration / bar_seconds - 1e-9))
    final = _final_numeral(mode, spec.sevenths)
    chords, sections = plan_form(rng, spec.progressions[mode], tonic, meter, n_body, final)
    ctx = Context(meter, n_body + 1, tonic, mode, chords, sections, _DYNAMICS_VELOCITY[dynamics])
    parts = [_finish(rng, p, swing, spec.swing_unit, spec.jitter * tempo / 60.0) for p in spec.parts(rng, ctx)]
    attributes = {
        "style": style,
        "tempo_bpm": felt_bpm(tempo, meter.name),
        "tempo_qpm": float(tempo),
        "key": key_name(tonic, mode),
        "mode": mode,
        "time_signature": meter.name,
        "dynamics": dynamics,
        **_instrument_lists(parts),
        "parts": [role for role in (DRUMS, BASS, HARMONY, MELODY) if any(p.role == role for p in parts)],
        "mood": mood(style, tempo, mode, dynamics),
    }
    return Arrangement(midi=to_midi(parts, tempo, meter, tonic, mode), attributes=attributes)


def _final_numeral(mode: str, sevenths: bool) -> str:
    if mode in _MAJOR_LIKE:
        return ("I7" if mode == "mixolydian" else "Imaj7") if sevenths else "I"
    return "i7" if sevenths else "i"


def _instrument_lists(parts: Sequence[Part]) -> dict[str, list]:
    """Human names (melody first, no repeats) and their GM programs (-1 for drums), index-aligned."""
    names: list[str] = []
    programs: list[int] = []
    for role in ROLE_ORDER:
        for part in parts:
            if part.role == role and part.name not in names:
                names.append(part.name)
                programs.append(-1 if part.is_drum else part.program)
    return {"instruments": names, "gm_programs": programs}


def felt_bpm(quarter_bpm: float, time_signature: str) -> float:
    """Beats per minute of the felt beat: the dotted quarter in compound meters (6/8, 9/8, 12/8), else the quarter."""
    numerator, denominator = (int(x) for x in time_signature.split("/"))
    compound = denominator == 8 and numerator % 3 == 0
    return float(round(quarter_bpm / 1.5)) if compound else float(round(quarter_bpm))


def mood(style: str, tempo: float, mode: str, dynamics: str) -> str:
    """A one-word mood from tempo, mode and dynamics (and a few style habits), for captions."""
    bright = mode in _MAJOR_LIKE
    if style == "ambient":
        return "dreamy" if bright else "dark"
    if style in ("funk", "hip hop") and not bright:
        return "groovy"
    if tempo >= 120:
        if dynamics == "loud":
            return "energetic" if bright else "intense"
        return "upbeat" if bright else "driving"
    if tempo < 84:
        if bright:
            return "calm" if dynamics == "soft" else "warm"
        return "melancholic" if dynamics != "loud" else "dramatic"
    if bright:
        return "relaxed" if dynamics == "soft" else "cheerful"
    return "moody" if dynamics != "loud" else "dark"


def _finish(rng: np.random.Generator, part: Part, swing: float, unit: float, jitter_beats: float) -> Part:
    """Swing the part, spread its timing and velocities a little like a player would, and make sure
    no two notes of one pitch overlap (a synthesiser would cut or merge them)."""
    notes = []
    for note in part.notes:
        start, end = swung(note.start, swing, unit), swung(note.start + note.duration, swing, unit)
        spread = jitter_beats / 2 if part.is_drum else jitter_beats  # drummers are the tightest
        shift = float(rng.normal(0.0, spread)) if spread > 0 else 0.0
        velocity = int(np.clip(note.velocity + rng.integers(-5, 6), 1, 127))
        start = max(0.0, start + shift)
        notes.append(Note(note.pitch, start, max(end + shift - start, 0.03), velocity))
    return replace(part, notes=_without_overlaps(notes))


def swung(beat: float, ratio: float, unit: float = 1.0) -> float:
    """Move off-beats later: within each `unit` of beats, the midpoint goes to `ratio` of the unit.

    ratio 0.5 is straight; 2/3 is a triplet swing. Piecewise linear, so durations stretch with it.
    """
    if ratio == 0.5:
        return beat
    cell, frac = divmod(beat / unit, 1.0)
    warped = frac * 2 * ratio if frac < 0.5 else ratio + (frac - 0.5) * 2 * (1 - ratio)
    return (cell + warped) * unit


def _without_overlaps(notes: Sequence[Note]) -> tuple[Note, ...]:
    ordered = sorted(notes, key=lambda n: (n.start, n.pitch))
    last: dict[int, int] = {}  # pitch -> index in `out` of the latest note with that pitch
    out: list[Note] = []
    for note in ordered:
        i = last.get(note.pitch)
        if i is not None and out[i].start + out[i].duration > note.start:
            out[i] = replace(out[i], duration=max(note.start - out[i].start - 0.01, 0.02))
        last[note.pitch] = len(out)
        out.append(note)
    return tuple(out)


def to_midi(parts: Sequence[Part], tempo: int, meter: Meter, tonic: int, mode: str) -> pretty_midi.PrettyMIDI:
    """Write the parts as a PrettyMIDI: one instrument per part, mix controllers at time 0."""
    midi = pretty_midi.PrettyMIDI(initial_tempo=float(tempo))
    midi.time_signature_changes.append(pretty_midi.TimeSignature(meter.numerator, meter.denominator, 0.0))
    if mode in ("major", "minor"):
        midi.key_signature_changes.append(pretty_midi.KeySignature(tonic + (12 if mode == "minor" else 0), 0.0))
    seconds = 60.0 / tempo
    for part in parts:
        instrument = pretty_midi.Instrument(part.program, is_drum=part.is_drum, name=f"{part.role}: {part.name}")
        for number, value in ((7, part.volume), (10, part.pan), (91, part.reverb), (93, part.chorus)):
            instrument.control_changes.append(pretty_midi.ControlChange(number, value, 0.0))
        for down, up in part.pedal:
            instrument.control_changes.append(pretty_midi.ControlChange(64, 127, down * seconds))
            instrument.control_changes.append(pretty_midi.ControlChange(64, 0, up * seconds))
        for note in part.notes:
            start = note.start * seconds
            instrument.notes.append(pretty_midi.Note(note.velocity, note.pitch, start, start + note.duration * seconds))
        midi.instruments.append(instrument)
    return midi
