"""Render MIDI to audio with FluidSynth, for the procedural half of the built-in captioned corpus.

MeLoDy (Lam et al., 2023) trains on ~257k hours of licensed music; this project cannot ship that, so
its built-in corpus renders procedurally arranged MIDI (`arrange.py`) through a General MIDI
soundfont. The paper says nothing about this; the choices made here are:

- **pyfluidsynth in-process, not the `fluidsynth` CLI.** Loading FluidR3_GM (148 MB) costs ~0.15-0.3 s,
  so each soundfont is loaded once per process; the MIDI events are sent straight to the synthesiser,
  so no temporary files are written.
- **Synthesise at 48 kHz, then resample.** FluidSynth's sample interpolation has no anti-alias filter,
  so at 24 kHz the soundfont's content above 12 kHz folds back as inharmonic partials (small: on a
  rock render, +0.5 dB in the 6-9 kHz band). Rendering at 48 kHz and resampling with soxr (a proper
  low-pass) avoids it for about twice the cost: ~95x real time instead of ~190x on one core.
- **A set level, not a peak normalisation.** The mono mix (mean of left and right) is scaled to an
  RMS of `rms_db` dBFS (default -20), then, if its peak would pass 0.95, down until it does not.
  Raw synth levels span 40 dB between a soft solo piano and a loud band (velocity also sets
  loudness in a soundfont), which would put quiet pieces near the noise floor of any model trained
  on them; `DYNAMICS_RMS_DB` gives the levels to use when a piece's dynamics are known, so a "soft"
  piece still plays quieter than a "loud" one. `rms_db=None` keeps the synth's own level.
- **Deterministic.** Each piece gets a fresh synthesiser (the loaded soundfont is lent to it), driven
  from one thread, and its float output (no dither) is read, so the same MIDI gives the same samples,
  in the same process or a fresh one. A reused, reset synthesiser is not reproducible (see `_Soundfont`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pretty_midi
import soxr

from melody.errors import MelodyError

if TYPE_CHECKING:
    import fluidsynth

# Where Debian/Ubuntu's `fluid-soundfont-gm` and `timgm6mb-soundfont` packages put their files.
_SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    Path("/usr/share/soundfonts/TimGM6mb.sf2"),
)
_SYNTH_RATE = 48_000  # FluidSynth's own rate; see the module docstring for why not 24 kHz.
_SYNTH_GAIN = 0.5  # FluidSynth master gain: a medium-velocity band peaks around 0.3-0.6.
_PEAK_CEILING = 0.95  # after levelling, louder peaks are scaled down to this.
DEFAULT_RMS_DB = -20.0
# RMS levels (dBFS) for the corpus' dynamics words, ~4-5 dB apart: quiet, comfortable, mastered-loud.
DYNAMICS_RMS_DB = {"soft": -25.0, "medium": -20.0, "loud": -16.0}
_DEFAULT_TAIL = 1.0  # seconds after the last note-off, so releases and reverb ring out.
_DRUM_BANK = 128  # the SoundFont bank that holds the GM drum kits.
_CHANNEL_TYPE_MELODIC, _CHANNEL_TYPE_DRUM = 0, 1
_MAX_CHANNELS = 256  # FluidSynth's limit: one channel per pretty_midi instrument, no sharing.


def default_soundfont() -> Path:
    """Return the General MIDI soundfont to render with: FluidR3_GM if installed, else TimGM6mb."""
    for path in _SOUNDFONT_CANDIDATES:
        if path.is_file():
            return path
    raise MelodyError(
        "no General MIDI soundfont found; install one with `sudo apt-get install fluid-soundfont-gm`"
    )


@dataclass(frozen=True)
class _Event:
    """One MIDI message on a FluidSynth channel, at a sample index of the synth's clock."""

    sample: int
    order: int  # at equal times: controls (0) before note-offs (1) before note-ons (2).
    kind: str  # "cc" | "bend" | "off" | "on"
    channel: int
    a: int  # controller number or key; the bend value for "bend"
    b: int = 0  # controller value or velocity


_LOG_WARN = 2  # FluidSynth's FLUID_WARN log level.


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C signatures this module calls directly (pyfluidsynth does not wrap them)."""
    ptr, i = ctypes.c_void_p, ctypes.c_int
    lib.fluid_synth_write_float.argtypes = [ptr, i, ptr, i, i, ptr, i, i]
    lib.fluid_synth_set_channel_type.argtypes = [ptr, i, i]
    lib.fluid_synth_pitch_bend.argtypes = [ptr, i, i]
    lib.fluid_synth_get_sfont_by_id.argtypes = [ptr, i]
    lib.fluid_synth_get_sfont_by_id.restype = ptr
    lib.fluid_synth_add_sfont.argtypes = [ptr, ptr]
    lib.fluid_synth_remove_sfont.argtypes = [ptr, ptr]
    lib.fluid_set_log_function.argtypes = [i, ptr, ptr]
    lib.fluid_set_log_function.restype = ptr
    return lib


class _Soundfont:
    """A soundfont loaded once per process and lent to a fresh synthesiser for each piece.

    Why a fresh synthesiser: a reused one is not reproducible even after `fluid_synth_system_reset`
    (measured: the reverb's modulated delay lines and some voice state carry over, ~-30 dB of
    difference), while creating one costs ~2 ms against ~150 ms for reloading FluidR3.
    """

    def __init__(self, path: Path):
        import fluidsynth  # here, so that importing melody does not need libfluidsynth.

        self._module = fluidsynth
        self.lib = _bind(fluidsynth._fl)
        self._owner = fluidsynth.Synth()  # keeps the soundfont alive for the whole process.
        sfid = self._owner.sfload(str(path))
        if sfid < 0:
            raise MelodyError(f"FluidSynth could not load the soundfont {path}; is the file intact?")
        self.sfont = self.lib.fluid_synth_get_sfont_by_id(self._owner.synth, sfid)

    def render(self, events: list[_Event], programs: list[tuple[int, bool]], n_samples: int) -> np.ndarray:
        """Play the sorted `events` on a fresh synthesiser; return `(2, n_samples)` float32 audio."""
        lib = self.lib
        channels = max(16, -(-len(programs) // 16) * 16)  # FluidSynth wants a multiple of 16.
        # A synth without a soundfont (just born, or just handed it back) warns once per channel
        # that it has no preset; those warnings are expected, so they are muted there.
        with _quiet(lib):
            # One core and no audio driver: FluidSynth then renders only inside write_float, in
            # this thread.
            fs = self._module.Synth(
                gain=_SYNTH_GAIN, samplerate=float(_SYNTH_RATE), channels=channels,
                **{"synth.cpu-cores": 1, "synth.polyphony": 512},
            )  # fmt: skip
            sfid = lib.fluid_synth_add_sfont(fs.synth, self.sfont)
        try:
            for channel, (program, is_drum) in enumerate(programs):
                kind = _CHANNEL_TYPE_DRUM if is_drum else _CHANNEL_TYPE_MELODIC
                lib.fluid_synth_set_channel_type(fs.synth, channel, kind)
                bank = _DRUM_BANK if is_drum else 0
                if fs.program_select(channel, sfid, bank, program) != 0:
                    fs.program_select(channel, sfid, bank, 0)  # a kit or patch this font lacks.
            return _play(lib, fs, events, n_samples)
        finally:
            with _quiet(lib):
                fs.system_reset()  # silence and unset everything before the font is taken back.
                lib.fluid_synth_remove_sfont(fs.synth, self.sfont)
                fs.delete()


@contextlib.contextmanager
def _quiet(lib: ctypes.CDLL) -> Iterator[None]:
    """Drop FluidSynth's warnings (not its errors) inside the block, then restore its logger."""
    previous = lib.fluid_set_log_function(_LOG_WARN, None, None)
    try:
        yield
    finally:
        lib.fluid_set_log_function(_LOG_WARN, previous, None)


def _play(lib: ctypes.CDLL, fs: fluidsynth.Synth, events: list[_Event], n_samples: int) -> np.ndarray:
    """Alternate rendering up to each event's sample and sending it; return `(2, n_samples)` audio."""
    # FluidSynth renders in blocks of 64 and applies an event at the next block boundary; the
    # timing error is at most 64 / 48 kHz = 1.3 ms.
    out = np.zeros((2, n_samples), dtype=np.float32)
    cursor = 0
    for event in events:
        stop = min(event.sample, n_samples)
        if stop > cursor:
            left, right = out[0, cursor:stop], out[1, cursor:stop]
            lib.fluid_synth_write_float(fs.synth, stop - cursor, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
            cursor = stop
        if event.kind == "on":
            fs.noteon(event.channel, event.a, event.b)
        elif event.kind == "off":
            fs.noteoff(event.channel, event.a)
        elif event.kind == "cc":
            fs.cc(event.channel, event.a, event.b)
        else:  # pretty_midi bends are -8192..8191; FluidSynth wants 0..16383.
            lib.fluid_synth_pitch_bend(fs.synth, event.channel, event.a + 8192)
    if n_samples > cursor:
        left, right = out[0, cursor:], out[1, cursor:]
        lib.fluid_synth_write_float(fs.synth, n_samples - cursor, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
    return out


# One loaded soundfont per (process, file): loading FluidR3 is the slow part of a short render.
# Keyed by pid so that a forked worker loads its own instead of sharing the parent's C state.
_SOUNDFONTS: dict[tuple[int, str], _Soundfont] = {}


def _soundfont_for(path: Path) -> _Soundfont:
    key = (os.getpid(), str(path.resolve()))
    if key not in _SOUNDFONTS:
        _SOUNDFONTS[key] = _Soundfont(path)
    return _SOUNDFONTS[key]


def midi_events(midi: pretty_midi.PrettyMIDI, rate: int) -> tuple[list[_Event], list[tuple[int, bool]]]:
    """Flatten `midi` into time-sorted events, one channel per instrument; also `(program, is_drum)` per channel."""
    if len(midi.instruments) > _MAX_CHANNELS:
        raise MelodyError(f"MIDI has {len(midi.instruments)} instruments; at most {_MAX_CHANNELS} can be rendered")
    events: list[_Event] = []
    programs: list[tuple[int, bool]] = []
    for channel, instrument in enumerate(midi.instruments):
        programs.append((instrument.program, instrument.is_drum))
        for cc in instrument.control_changes:
            events.append(_Event(round(cc.time * rate), 0, "cc", channel, cc.number, cc.value))
        for bend in instrument.pitch_bends:
            events.append(_Event(round(bend.time * rate), 0, "bend", channel, bend.pitch))
        for note in instrument.notes:
            if note.velocity <= 0 or note.end <= note.start:
                continue
            start = round(note.start * rate)
            # A note at least one sample long, so a note-on never lands after its own note-off.
            end = max(round(note.end * rate), start + 1)
            events.append(_Event(start, 2, "on", channel, note.pitch, min(int(note.velocity), 127)))
            events.append(_Event(end, 1, "off", channel, note.pitch))
    events.sort(key=lambda e: (e.sample, e.order, e.channel, e.a, e.b))
    return events, programs


def render_midi(
    midi: pretty_midi.PrettyMIDI,
    sample_rate: int = 24_000,
    soundfont: str | Path | None = None,
    rms_db: float | None = DEFAULT_RMS_DB,
    tail: float = _DEFAULT_TAIL,
) -> np.ndarray:
    """Synthesise `midi` to float32 mono audio `(t,)` at `sample_rate`, lasting its end time plus `tail` s.

    The result has an RMS of `rms_db` dBFS (None: the synth's own level), with peaks kept at or
    below 0.95; silence stays silence. Same MIDI and soundfont → same samples.
    """
    if sample_rate <= 0:
        raise MelodyError(f"sample_rate must be positive, got {sample_rate}")
    font = Path(soundfont) if soundfont is not None else default_soundfont()
    if not font.is_file():
        raise MelodyError(f"soundfont {font} does not exist; pass an .sf2 file or install fluid-soundfont-gm")
    synth = _soundfont_for(font)
    length = max(midi.get_end_time(), 0.0) + tail
    events, programs = midi_events(midi, _SYNTH_RATE)
    stereo = synth.render(events, programs, n_samples=round(length * _SYNTH_RATE))
    mono = stereo.mean(axis=0)
    if sample_rate != _SYNTH_RATE:
        mono = soxr.resample(mono, _SYNTH_RATE, sample_rate, quality="HQ")
    n_out = round(length * sample_rate)
    mono = np.pad(mono[:n_out], (0, max(0, n_out - len(mono)))).astype(np.float32)  # soxr may round down.
    return _level(mono, rms_db)


def _level(audio: np.ndarray, rms_db: float | None) -> np.ndarray:
    """Scale `audio` to `rms_db` dBFS RMS (if given), then down so its peak is at most 0.95."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms_db is not None and rms > 1e-7:  # below -140 dBFS it is silence: nothing to level
        audio = audio * np.float32(10 ** (rms_db / 20) / rms)
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > _PEAK_CEILING:
        audio = audio * np.float32(_PEAK_CEILING / peak)
    return audio.astype(np.float32)
