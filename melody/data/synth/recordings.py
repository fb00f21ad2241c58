"""Real recordings from Debian packages, cut into clips: the `recording` source of the built-in corpus.

MeLoDy (Lam et al., 2023) learns from real recordings; the only real, freely licensed music this
offline project can count on is what Debian packages ship: `drascula-music` (31 orchestral and
synth game-score tracks, 47 min, Ogg Vorbis) and `asc-music` (3 tracks, 18 min, MP3). There are no
captions, so every attribute here is *measured from the audio* and nothing else; `style`,
`instruments` and `mood` stay empty, and `real_recording` is True. The paper is silent on all of
this; the choices made here are:

- **Finding tracks.** `find_recordings` looks in the packages' folders (plus any given), reads
  `.ogg .oga .mp3 .flac .wav`, and de-duplicates by real path: drascula's five language folders
  are symlinks to its `audio/` folder, so the 186 files the package lists are 31 distinct tracks
  (~65 minutes in all, with asc-music). Order is natural ("track2" before "track10").
- **Clips.** A track is read with soundfile (via `melody.audio.load_audio`: mono = mean of the
  channels, soxr HQ resampling) and cut into non-overlapping `clip_seconds` windows on a grid whose
  phase is drawn from `rng`; with `max_clips`, that many windows are drawn from `rng` among the
  usable ones. `piece_id` names the track ("drascula-track7"), so a split by piece is a split by track.
- **Skips.** A window whose RMS is under `SILENT_DBFS`, or whose 100 ms frames are mostly under it
  (fades, gaps), is skipped with a reason (`SkipReason`, logged, and appended to `skipped` if given).
- **Tempo** (`estimate_tempo`): librosa's dynamic-programming beat tracker on the onset envelope;
  the tempo is refined from the tracked beats by a least-squares fit of beat time against beat
  index (the tracker's own estimate is quantised to whole onset frames, ~2 % at 120 BPM). The
  confidence is the onset envelope's normalised autocorrelation at the beat period (1: a
  metronome, ~0: no periodicity).
- **Key and mode** (`estimate_key`): Krumhansl-Schmuckler: the clip's summed constant-Q chroma is
  correlated with the 24 rotated Krumhansl-Kessler profiles; the best is the key, its Pearson r the
  confidence (the same measure music21 reports for the scores). Only major/minor are told apart.
- **Loudness** is ITU-R BS.1770-4 integrated loudness (K-weighting and gating), computed by
  `melody.audio.loudness` (pyloudnorm), the one loudness meter of the project; `dynamics` is
  `captions.dynamics_from_loudness` of it, the one rule for words from a measured loudness.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melody.audio import load_audio, loudness
from melody.data.synth.arrange import key_name
from melody.data.synth.captions import dynamics_from_loudness
from melody.errors import MelodyError

log = logging.getLogger(__name__)

# Where Debian's packages put their music, and the name each source goes by in piece ids.
PACKAGE_DIRS = {
    Path("/usr/share/scummvm/drascula/audio"): ("drascula", "drascula-music"),
    Path("/usr/share/games/asc/music"): ("asc", "asc-music"),
}
AUDIO_SUFFIXES = (".ogg", ".oga", ".mp3", ".flac", ".wav")
SILENT_DBFS = -50.0  # a window (or a 100 ms frame) quieter than this counts as silence
MAX_SILENT_FRACTION = 0.5  # a window more than half silent is skipped

# Krumhansl-Kessler key profiles (Krumhansl 1990), tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

_HOP = 512  # analysis hop in samples (21 ms at 24 kHz)


@dataclass(frozen=True)
class RecordingClip:
    """One clip of a real recording and what was measured on it."""

    piece_id: str  # the track, e.g. "drascula-track7": all clips of a track share it
    audio: np.ndarray  # (samples,) float32 mono at the requested sample rate
    offset: float  # seconds from the start of the track
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SkipReason:
    piece_id: str
    offset: float
    reason: str


def find_recordings(extra_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """The distinct audio files under the packages' folders and `extra_dirs`, in natural order."""
    dirs = [*PACKAGE_DIRS, *(Path(d) for d in extra_dirs)]
    seen: dict[Path, Path] = {}
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
                seen.setdefault(path.resolve(), path)
    if not seen:
        raise MelodyError(
            "no real recordings found; install them with `sudo apt-get install drascula-music asc-music`"
        )
    return sorted(seen.values(), key=_natural_key)


def _natural_key(path: Path) -> tuple:
    parts = re.split(r"(\d+)", str(path))
    return tuple(int(p) if p.isdigit() else p for p in parts)


def piece_id_of(path: str | Path) -> str:
    """The track's id: its source's short name and the file stem ("drascula-track7", "asc-frontiers")."""
    path = Path(path)
    source = _source_of(path)[0]
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{source}-{path.stem}").strip("-")


def _source_of(path: Path) -> tuple[str, str | None]:
    """(short name, Debian package) of a track's folder; the folder name for folders of one's own."""
    folder = path.parent.resolve()
    for known, names in PACKAGE_DIRS.items():
        if folder == known.resolve():
            return names
    return path.parent.name or "recording", None


def recording_clips(
    path: str | Path,
    clip_seconds: float = 10.0,
    sample_rate: int = 24_000,
    rng: np.random.Generator | None = None,
    max_clips: int | None = None,
    skipped: list[SkipReason] | None = None,
) -> list[RecordingClip]:
    """Cut one track into measured clips (see the module docstring); skipped windows go to `skipped`."""
    if clip_seconds <= 0:
        raise MelodyError(f"clip_seconds must be positive, got {clip_seconds}")
    rng = rng if rng is not None else np.random.default_rng(0)
    path = Path(path)
    piece_id = piece_id_of(path)
    package = _source_of(path)[1]
    audio = load_audio(path, sample_rate, channels=1, allow_silent=True)[0]
    n = int(round(clip_seconds * sample_rate))
    skips: list[SkipReason] = []
    if len(audio) < n:
        seconds = len(audio) / sample_rate
        skips.append(SkipReason(piece_id, 0.0, f"track is {seconds:.1f} s, shorter than one {clip_seconds:g} s clip"))
        _report(skips, skipped)
        return []
    n_windows = len(audio) // n
    phase = int(rng.integers(0, len(audio) - n_windows * n + 1))
    starts = [phase + i * n for i in range(n_windows)]
    usable = []
    for start in starts:
        reason = silence_reason(audio[start : start + n], sample_rate)
        if reason:
            skips.append(SkipReason(piece_id, start / sample_rate, reason))
        else:
            usable.append(start)
    if max_clips is not None and len(usable) > max_clips:
        usable = sorted(int(s) for s in rng.choice(usable, size=max_clips, replace=False))
    clips = []
    if usable:
        # Features of the whole track (in blocks): the constant-Q filters and the tuning estimate are
        # then made once per block, not once per clip (~2x faster), and clips are read off by frame.
        envelope, chroma = _features(audio, sample_rate)
        frames = n // _HOP
        for start in usable:
            window = np.ascontiguousarray(audio[start : start + n], dtype=np.float32)
            first = start // _HOP
            attributes = measure_attributes(
                window, sample_rate, envelope=envelope[first : first + frames], chroma=chroma[:, first : first + frames]
            )
            attributes["package"] = package
            clips.append(RecordingClip(piece_id, window, start / sample_rate, attributes))
    _report(skips, skipped)
    return clips


def _report(skips: Sequence[SkipReason], skipped: list[SkipReason] | None) -> None:
    for skip in skips:
        log.info("skipping %s at %.1f s: %s", skip.piece_id, skip.offset, skip.reason)
    if skipped is not None:
        skipped.extend(skips)


def silence_reason(window: np.ndarray, sample_rate: int) -> str | None:
    """Why a window is unusable as music (silent, or mostly silent), or None if it is usable."""
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) if window.size else 0.0
    rms_db = 20.0 * np.log10(rms) if rms > 0 else -np.inf
    if rms_db < SILENT_DBFS:
        return f"silent (RMS {rms_db:.1f} dBFS < {SILENT_DBFS:g})"
    frame = max(1, int(0.1 * sample_rate))
    frames = window[: len(window) // frame * frame].reshape(-1, frame)
    frame_db = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-20)
    quiet = float(np.mean(frame_db < SILENT_DBFS))
    if quiet > MAX_SILENT_FRACTION:
        return f"mostly silent ({quiet:.0%} of 100 ms frames under {SILENT_DBFS:g} dBFS)"
    return None


# --- measurements -----------------------------------------------------------------------------


def _features(audio: np.ndarray, sample_rate: int, block_seconds: float = 60.0, pad_seconds: float = 2.0):
    """Onset-strength envelope `(frames,)` and un-normalised constant-Q chroma `(12, frames)`, hop `_HOP`.

    Long tracks are analysed in blocks of `block_seconds` with `pad_seconds` of context on each side
    (frame `f` is centred on sample `f * _HOP` either way): a 7-minute track at once would need
    ~0.6 GB for the constant-Q transform, a block ~0.1 GB.
    """
    import librosa

    block = max(1, int(block_seconds * sample_rate) // _HOP) * _HOP
    pad = int(pad_seconds * sample_rate) // _HOP * _HOP
    starts = list(range(0, len(audio), block))
    if len(starts) > 1 and len(audio) - starts[-1] < block // 2:
        starts.pop()  # a short remainder joins the block before it (a tiny block upsets the CQT)
    envelopes, chromas = [], []
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        lo, hi = max(0, start - pad), len(audio) if last else min(len(audio), start + block + pad)
        piece = audio[lo:hi]
        skip = (start - lo) // _HOP
        keep = None if last else block // _HOP
        envelope = librosa.onset.onset_strength(y=piece, sr=sample_rate, hop_length=_HOP)
        chroma = librosa.feature.chroma_cqt(y=piece, sr=sample_rate, hop_length=_HOP, norm=None)
        stop = None if keep is None else skip + keep
        envelopes.append(envelope[skip:stop])
        chromas.append(chroma[:, skip:stop])
    return np.concatenate(envelopes), np.concatenate(chromas, axis=1)


# Below these, a measurement is too doubtful to caption (on the default 3 h corpus they drop the
# tempo of 18 % of the 222 recording clips and the key of 10 %).
MIN_TEMPO_CONFIDENCE = 0.2
MIN_KEY_CONFIDENCE = 0.5


def measure_attributes(
    audio: np.ndarray, sample_rate: int, envelope: np.ndarray | None = None, chroma: np.ndarray | None = None
) -> dict:
    """The corpus attributes of a real recording, from the audio alone (mono float `(samples,)`).

    `envelope` and `chroma` (from `_features`) may be passed in when already computed.
    """
    if envelope is None or chroma is None:
        envelope, chroma = _features(audio, sample_rate)
    tempo, tempo_confidence = tempo_from_envelope(envelope, sample_rate)
    tonic, mode, key_confidence = estimate_key(chroma)
    lufs = loudness(audio[None], sample_rate)
    # A caption states only what was measured with some confidence: a doubtful tempo or key is
    # left out of the caption (kept as an estimate) rather than taught to the model as a fact.
    tempo_known = tempo_confidence >= MIN_TEMPO_CONFIDENCE
    key_known = key_confidence >= MIN_KEY_CONFIDENCE
    return {
        "style": None,
        "tempo_bpm": round(tempo, 1) if tempo_known else None,
        "key": tonic if key_known else None,
        "mode": mode if key_known else None,
        "time_signature": None,
        "dynamics": dynamics_from_loudness(lufs) if np.isfinite(lufs) else "soft",
        "instruments": [],
        "gm_programs": [],
        "parts": [],
        "mood": None,
        "real_recording": True,
        "loudness_lufs": round(lufs, 2) if np.isfinite(lufs) else None,
        "tempo_confidence": round(tempo_confidence, 3),
        "key_confidence": round(key_confidence, 3),
        "tempo_estimate": round(tempo, 1),
        "key_estimate": f"{tonic} {mode}",
    }


def estimate_tempo(audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(beats per minute, confidence in [0, 1]) of mono audio; see `tempo_from_envelope`."""
    import librosa

    return tempo_from_envelope(librosa.onset.onset_strength(y=audio, sr=sample_rate, hop_length=_HOP), sample_rate)


def tempo_from_envelope(envelope: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(beats per minute, confidence in [0, 1]) from librosa's beat tracker, refined by a line fit."""
    import librosa

    tracked, beats = librosa.beat.beat_track(onset_envelope=envelope, sr=sample_rate, hop_length=_HOP, units="time")
    bpm = float(np.atleast_1d(tracked)[0])
    if len(beats) >= 4:
        period = float(np.polyfit(np.arange(len(beats)), beats, 1)[0])  # seconds per beat
        if period > 0 and abs(60.0 / period - bpm) < 0.1 * bpm:  # the fit refines, never relabels
            bpm = 60.0 / period
    if not bpm > 0:
        return 0.0, 0.0
    return bpm, _periodicity(envelope, 60.0 / bpm * sample_rate / _HOP)


def _periodicity(envelope: np.ndarray, lag: float) -> float:
    """Normalised autocorrelation of the mean-removed onset envelope at a fractional `lag` (frames)."""
    x = envelope - envelope.mean()
    energy = float(np.dot(x, x))
    if energy <= 0 or lag < 1 or lag >= len(x) - 1:
        return 0.0
    lo = int(np.floor(lag))
    ac = [float(np.dot(x[:-k], x[k:])) / energy for k in (lo, lo + 1)]
    frac = lag - lo
    # Unbiased by overlap length, so a steady periodic envelope reaches ~1 at any lag.
    scale = len(x) / (len(x) - lag)
    return float(np.clip(((1 - frac) * ac[0] + frac * ac[1]) * scale, 0.0, 1.0))


def estimate_key(chroma: np.ndarray) -> tuple[str, str, float]:
    """Krumhansl-Schmuckler key of a chroma `(12,)` or `(12, frames)` (C first): (tonic, mode, r).

    The chroma is summed over frames and correlated (Pearson r) with the Krumhansl-Kessler major
    and minor profiles in all 12 transpositions; the best match is the key and r its confidence.
    """
    profile = np.asarray(chroma, dtype=np.float64)
    if profile.ndim == 2:
        profile = profile.sum(axis=1)
    if profile.shape != (12,):
        raise MelodyError(f"a chroma has 12 rows (C first), got shape {np.shape(chroma)}")
    best = (-np.inf, 0, "major")
    if np.ptp(profile) > 0:
        for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
            for tonic in range(12):
                r = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
                if r > best[0]:
                    best = (r, tonic, mode)
    r, tonic, mode = best
    return key_name(tonic, mode), mode, (r if np.isfinite(r) else 0.0)

