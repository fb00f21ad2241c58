"""Captions from attributes: the text half of the built-in corpus' (audio, text) pairs.

MeLoDy (Lam et al., 2023) conditions on MuLan embeddings of free-text descriptions; the paper's
captions come from its data. Here the captions are written from the attributes that made (or were
measured on) each clip, so they are true by construction, and are drawn from paraphrase templates
so that the text side does not collapse onto one sentence shape.

Three sources share the attribute schema (see `arrange.arrange`):

- procedural pieces: style, tempo, key, mode, meter, dynamics, instruments, mood all known;
- scores: the same, with a style such as "classical", "folk", "choral", "renaissance", and maybe
  "composer" and "title";
- recordings: `style` None, `instruments` empty, and only what was measured: tempo, key, mode,
  and "dynamics" or "loudness_lufs". Such captions say "about" the tempo and name no style or
  instrument.

Every caption names the style (if any), the tempo as a number, key and mode, and at least one
instrument (if any): `caption_mentions` checks exactly that, for tests and the corpus self-check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from melody.data.synth.arrange import MODES, key_name, pitch_class
from melody.errors import MelodyError

# Noun phrases per style; each contains its style's `_STYLE_ALIASES` entry (or the style itself).
_STYLE_PHRASES: Mapping[str, tuple[str, ...]] = {
    "rock": ("rock track", "rock song", "rock instrumental", "rock tune"),
    "jazz": ("jazz piece", "jazz tune", "jazz number", "jazz performance"),
    "blues": ("blues tune", "blues number", "blues track", "blues shuffle"),
    "ambient": ("ambient piece", "ambient soundscape", "ambient track"),
    "electronic": ("electronic track", "electronic dance track", "electronic tune"),
    "hip hop": ("hip hop beat", "hip hop instrumental", "hip hop track"),
    "funk": ("funk groove", "funk track", "funk jam"),
    "bossa nova": ("bossa nova", "bossa nova tune", "bossa nova piece"),
    "classical strings": ("classical string piece", "classical string ensemble piece", "classical strings arrangement"),
    "folk": ("folk tune", "folk song", "folk piece"),
    "piano ballad": ("piano ballad",),
    "classical": ("classical piece", "classical composition", "piece of classical music"),
    "choral": ("choral piece", "choral work", "piece of choral music"),
    "renaissance": ("Renaissance piece", "Renaissance composition", "piece of Renaissance music"),
}  # fmt: skip
_STYLE_ALIASES: Mapping[str, tuple[str, ...]] = {"classical strings": ("classical string",)}
_RECORDING_NOUNS = ("recording", "track", "piece of music", "music clip", "excerpt")
_DYNAMICS_WORDS: Mapping[str, tuple[str, ...]] = {
    "soft": ("soft", "gentle", "quiet"),
    "medium": ("moderately loud", "medium-volume"),
    "loud": ("loud", "powerful"),
}
_MEASURED_DYNAMICS_WORDS: Mapping[str, tuple[str, ...]] = {
    "soft": ("quiet", "soft"), "medium": ("moderately loud",), "loud": ("loud",),
}
_TEMPO_WORDS = ("at {t} BPM", "at {t} bpm", "at a tempo of {t} BPM", "at {t} beats per minute")
_ABOUT_TEMPO_WORDS = ("at about {t} BPM", "at around {t} bpm", "at roughly {t} beats per minute")
_KEY_WORDS = ("in {k}", "in the key of {k}", "in {k}")


def dynamics_from_loudness(lufs: float) -> str:
    """A dynamics word for an integrated loudness: mastered pop/rock sits near -9 to -14 LUFS."""
    if lufs >= -13.0:
        return "loud"
    if lufs <= -23.0:
        return "soft"
    return "medium"


@dataclass(frozen=True)
class _Phrases:
    """The caption's building blocks; an empty string means "not known, say nothing"."""

    subject: str  # "an upbeat funk groove" / "a recording"
    described: str  # the same without the article: "upbeat funk groove"
    bare_subject: str  # without article and adjectives: "funk groove"
    instruments: str  # "slap bass, clavinet and drums"
    tempo: str  # "at 112 BPM"
    bpm: str  # "112 BPM"
    key: str  # "in E minor"
    key_mode: str  # "E minor"
    meter: str  # "3/4 time" (only when not 4/4, or when drawn)
    dynamics: str  # "loud"
    mood: str  # "upbeat"
    credit: str  # 'by Mozart' / '"Ave verum corpus" by Mozart'


def make_caption(attributes: Mapping, rng: np.random.Generator) -> str:
    """A natural-language caption for a clip with these `attributes`, one of several templates."""
    p = _phrases(attributes, rng)
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    text = re.sub(r"\s+", " ", template(p)).strip(" ,;")
    return text[:1].upper() + text[1:]


def caption_mentions(caption: str, attributes: Mapping) -> bool:
    """Whether `caption` names the style (if any), the tempo as a number, key and mode (if known),
    and at least one of the instruments (if any)."""
    lowered = caption.lower()
    style = attributes.get("style")
    if style and not any(a.lower() in lowered for a in _STYLE_ALIASES.get(style, (style,))):
        return False
    tempo = attributes.get("tempo_bpm")
    if tempo is not None and not re.search(rf"(?<![\d.]){round(float(tempo))}(?![\d.])", caption):
        return False
    key_mode = _key_mode(attributes)
    if key_mode and not re.search(rf"(?<![A-Za-z#]){re.escape(key_mode)}(?![A-Za-z])", caption):
        return False
    instruments = attributes.get("instruments") or []
    return not instruments or any(name.lower() in lowered for name in instruments)


def _key_mode(attributes: Mapping) -> str:
    return " ".join(str(x) for x in (attributes.get("key"), attributes.get("mode")) if x)


def _phrases(attributes: Mapping, rng: np.random.Generator) -> _Phrases:
    def pick(options: Sequence[str]) -> str:
        return options[rng.integers(len(options))]

    style = attributes.get("style")
    measured = not style and not attributes.get("instruments")  # a recording: facts were measured
    tempo = attributes.get("tempo_bpm")
    key_mode = _key_mode(attributes)
    dynamics = attributes.get("dynamics")
    if dynamics is None and attributes.get("loudness_lufs") is not None:
        dynamics = dynamics_from_loudness(float(attributes["loudness_lufs"]))
    mood = attributes.get("mood") or ""
    noun = pick(_style_phrases(style)) if style else pick(_RECORDING_NOUNS)
    words = _MEASURED_DYNAMICS_WORDS if measured else _DYNAMICS_WORDS
    dynamics_word = pick(words[dynamics]) if dynamics in words else ""
    # Up to two adjectives before the noun, in a varying mix; the dynamics are said only once.
    adjectives = [w for w in (mood, dynamics_word) if w and rng.random() < 0.6]
    if dynamics_word in adjectives:
        dynamics_word = ""
    subject = " ".join((", ".join(adjectives), noun)).strip()
    t = round(float(tempo)) if tempo is not None else None
    meter = attributes.get("time_signature") or ""
    return _Phrases(
        subject=f"{_article(subject)} {subject}",
        described=subject,
        bare_subject=noun,
        instruments=_list_instruments(attributes.get("instruments") or [], rng),
        tempo=pick(_ABOUT_TEMPO_WORDS if measured else _TEMPO_WORDS).format(t=t) if t is not None else "",
        bpm=(f"about {t} BPM" if measured else f"{t} BPM") if t is not None else "",
        key=pick(_KEY_WORDS).format(k=key_mode) if key_mode else "",
        key_mode=key_mode,
        meter=f"{meter} time" if meter and (meter != "4/4" or rng.random() < 0.3) else "",
        dynamics=dynamics_word,
        mood=mood,
        credit=_credit(attributes, rng),
    )


def _style_phrases(style: str) -> tuple[str, ...]:
    return _STYLE_PHRASES.get(style, (f"{style} piece", f"{style} track", f"piece of {style} music"))


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _list_instruments(names: Sequence[str], rng: np.random.Generator) -> str:
    """Up to four instruments, melody first; sometimes only the first few, never none."""
    if not names:
        return ""
    count = len(names) if rng.random() < 0.6 else int(rng.integers(1, len(names) + 1))
    chosen = list(names[: min(count, 4)])
    return chosen[0] if len(chosen) == 1 else f"{', '.join(chosen[:-1])} and {chosen[-1]}"


def _credit(attributes: Mapping, rng: np.random.Generator) -> str:
    """'by Composer', '"Title" by Composer' or '"Title"' for scores (drawn, not always)."""
    composer, title = attributes.get("composer"), attributes.get("title")
    if rng.random() < 0.3:
        return ""
    if composer and title and rng.random() < 0.5:
        return f'"{title}" by {composer}'
    if composer:
        return f"by {composer}"
    return f'"{title}"' if title else ""


def _words(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _commas(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _sentences(*parts: str) -> str:
    return " ".join(f"{p[:1].upper()}{p[1:]}." for p in parts if p)


def _with(p: _Phrases, word: str = "with") -> str:
    return f"{word} {p.instruments}" if p.instruments else ""


# Each template uses every known fact a caption must carry (style, tempo, key and mode, an
# instrument); the optional ones (meter, dynamics, mood, credit) come and go. Examples are for a
# funk piece; a recording reads "A loud recording in D minor at about 128 BPM" and the like.


def _subject_first(p: _Phrases) -> str:
    """An upbeat funk groove with slap bass and brass section at 112 BPM in E minor"""
    return _words(p.subject, p.credit, _with(p), p.tempo, p.key)


def _listing(p: _Phrases) -> str:
    """Groovy funk groove in E dorian, 112 BPM, with slap bass, clavinet and drums."""
    return _commas(_words(p.described, p.credit, p.key), p.bpm, p.meter, _with(p)) + "."


def _two_sentences(p: _Phrases) -> str:
    """Funk groove featuring slap bass and clavinet. E dorian, 112 BPM, loud."""
    return _sentences(_words(p.bare_subject, p.credit, _with(p, "featuring")), _commas(p.key_mode, p.bpm, p.meter, p.dynamics))


def _players_first(p: _Phrases) -> str:
    """Slap bass, clavinet and drums play an upbeat funk groove in E minor at 112 beats per minute"""
    verb = "play" if " and " in p.instruments else "plays"
    lead = _words(p.instruments, verb, p.subject) if p.instruments else p.subject
    return _words(lead, p.credit, p.key, p.tempo)


def _tags(p: _Phrases) -> str:
    """funk groove, E dorian, 112 BPM, 4/4 time, loud, groovy, slap bass, clavinet, drums"""
    return _commas(p.bare_subject, p.credit, p.key_mode, p.bpm, p.meter, p.dynamics, p.mood, p.instruments.replace(" and ", ", "))


def _this_is(p: _Phrases) -> str:
    """This is an upbeat funk groove in E minor. It moves at 112 BPM and features slap bass and drums."""
    features = f"features {p.instruments}" if p.instruments else ""
    second = _words("it moves", p.tempo, "and" if p.tempo and features else "", features) if (p.tempo or features) else ""
    return _sentences(_words("this is", p.subject, p.credit, p.key), second)


def _played_on(p: _Phrases) -> str:
    """A funk groove in E minor, 112 BPM, loud, 4/4 time, played on slap bass and drums"""
    return _commas(_words(p.subject, p.credit, p.key), p.bpm, p.dynamics, p.meter, _with(p, "played on"))


def _key_first(p: _Phrases) -> str:
    """In E minor at 112 BPM: an upbeat funk groove with slap bass and drums."""
    lead = _words(p.key, p.tempo)
    body = _words(p.subject, p.credit, _with(p)) + "."
    return f"{lead}: {body}" if lead else body


_TEMPLATES: tuple[Callable[[_Phrases], str], ...] = (
    _subject_first, _listing, _two_sentences, _players_first, _tags, _this_is, _played_on, _key_first,
)  # fmt: skip


# --- Direct controls: tempo and key said the way the corpus's captions say them -----------------------------

BPM_RANGE = (30.0, 300.0)  # beyond any music the corpus holds, so a typo is caught rather than honoured
_TEMPO_SAID = re.compile(r"\s*,?\s*\b(?:at\s+)?(?:a\s+tempo\s+of\s+)?(?:about\s+|around\s+|roughly\s+)?"
                         r"\d+(?:\.\d+)?\s*(?:bpm|beats\s+per\s+minute)\b", re.IGNORECASE)
_KEY_SAID = re.compile(r"\s*,?\s*\b(?:in\s+)?(?:the\s+key\s+of\s+)?[A-G](?:#|b)?\s+(?:" + "|".join(MODES) + r")\b",
                       re.IGNORECASE)


def parse_key(key: str) -> str:
    """'a minor', 'F# major', 'Bb dorian' → the key as the corpus spells it ('A minor', 'F# major', 'Bb dorian')."""
    parts = key.split()
    if len(parts) != 2 or parts[1].lower() not in MODES:
        raise MelodyError(f"key {key!r}: give a tonic and a mode, e.g. 'A minor' (modes: {', '.join(MODES)})")
    tonic, mode = parts[0][:1].upper() + parts[0][1:], parts[1].lower()
    return f"{key_name(pitch_class(tonic), mode)} {mode}"


_STATED_BPM = re.compile(r"(\d+(?:\.\d+)?)\s*(?:bpm|beats per minute)", re.IGNORECASE)


def prompt_bpm(prompt: str) -> float | None:
    """The tempo a prompt states ("at 112 BPM", "at about 90 beats per minute"), or None."""
    found = _STATED_BPM.search(prompt)
    return float(found.group(1)) if found else None


def check_bpm(bpm: float) -> float:
    if not (isinstance(bpm, (int, float)) and BPM_RANGE[0] <= bpm <= BPM_RANGE[1]):
        raise MelodyError(f"bpm {bpm}: give a tempo between {BPM_RANGE[0]:g} and {BPM_RANGE[1]:g} beats per minute")
    return float(bpm)


def restate_tempo(caption: str, bpm: float) -> str:
    """`caption` saying `bpm` (rounded, and clamped into `BPM_RANGE`) in place of any tempo it states, as
    `with_controls` says a `--bpm`: what a semantic-LM example stretched to that tempo is captioned with."""
    return with_controls(caption, bpm=min(max(round(bpm), BPM_RANGE[0]), BPM_RANGE[1]))


def with_controls(prompt: str, bpm: float | None = None, key: str | None = None) -> str:
    """`prompt` with the tempo and key it must follow, worded as the training captions word them ("at 120 BPM",
    "in A minor"), so that the text tower meets words it was trained on. A tempo or key the prompt already
    names is replaced: the direct control wins over the text, and is honoured when the text says nothing."""
    text = prompt.strip()
    if bpm is not None:
        text = _TEMPO_SAID.sub("", text)
    if key is not None:
        text = _KEY_SAID.sub("", text)
    said = _commas(f"at {round(check_bpm(bpm))} BPM" if bpm is not None else "",
                   f"in {parse_key(key)}" if key is not None else "")
    if not said:
        return prompt
    return f"{text.rstrip(' .,;')}, {said}." if text.rstrip(" .,;") else f"Music {said}."
