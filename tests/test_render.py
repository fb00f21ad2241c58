"""FluidSynth rendering: shape, level, determinism, drums, and a clear error without a soundfont."""

import numpy as np
import pretty_midi
import pytest

from melody.data.synth.arrange import arrange
from melody.errors import MelodyError

pytest.importorskip("fluidsynth")
render = pytest.importorskip("melody.data.synth.render")

try:
    render.default_soundfont()
except MelodyError:
    pytest.skip("no General MIDI soundfont installed", allow_module_level=True)

SR = 24_000


def _midi(program: int = 0, is_drum: bool = False, velocity: int = 90, pitches=(60, 64, 67, 72)) -> pretty_midi.PrettyMIDI:
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    instrument = pretty_midi.Instrument(program, is_drum=is_drum)
    for i, pitch in enumerate(pitches):
        instrument.notes.append(pretty_midi.Note(velocity, pitch, 0.25 * i, 0.25 * i + 0.2))
    midi.instruments.append(instrument)
    return midi


def test_render_is_float32_mono_lasting_the_music_plus_a_tail():
    midi = _midi()
    audio = render.render_midi(midi, sample_rate=SR, tail=0.5)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == round((midi.get_end_time() + 0.5) * SR)


def test_render_is_levelled_and_not_silent():
    audio = render.render_midi(_midi(), sample_rate=SR)
    rms_db = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(render.DEFAULT_RMS_DB, abs=0.1)
    assert np.abs(audio).max() <= 0.95 + 1e-6


def test_same_midi_gives_the_same_audio_even_after_other_pieces():
    midi = _midi(program=48)
    first = render.render_midi(midi, sample_rate=SR)
    render.render_midi(_midi(program=30, pitches=(40, 47, 52)), sample_rate=SR)
    assert np.array_equal(first, render.render_midi(midi, sample_rate=SR))


def test_drums_only_midi_makes_sound():
    audio = render.render_midi(_midi(is_drum=True, pitches=(36, 38, 42, 49)), sample_rate=SR, rms_db=None)
    assert np.abs(audio).max() > 0.01


def test_raw_level_follows_velocity():
    soft = render.render_midi(_midi(velocity=40), sample_rate=SR, rms_db=None)
    loud = render.render_midi(_midi(velocity=120), sample_rate=SR, rms_db=None)
    assert np.sqrt(np.mean(loud**2)) > 2 * np.sqrt(np.mean(soft**2))


def test_empty_midi_is_a_silent_tail():
    audio = render.render_midi(pretty_midi.PrettyMIDI(), sample_rate=SR, tail=0.25)
    assert len(audio) == SR // 4 and np.abs(audio).max() < 1e-6  # the reverb's anti-denormal offset, no more


def test_an_arranged_piece_renders():
    piece = arrange("funk", np.random.default_rng(0), duration=2.0)
    audio = render.render_midi(piece.midi, sample_rate=16_000)
    assert len(audio) == round((piece.midi.get_end_time() + 1.0) * 16_000)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05


def test_missing_soundfont_is_a_user_error(tmp_path):
    with pytest.raises(MelodyError, match="soundfont"):
        render.render_midi(_midi(), soundfont=tmp_path / "missing.sf2")
