from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from melody.data.synth import recordings
from melody.data.synth.recordings import (
    MAJOR_PROFILE, MINOR_PROFILE, RecordingClip, SkipReason, estimate_key, estimate_tempo,
    find_recordings, measure_attributes, recording_clips,
)  # fmt: skip
from melody.errors import MelodyError

RATE = 24_000
DRASCULA_TRACK = Path("/usr/share/scummvm/drascula/audio/track29.ogg")  # 32 s


def sine(freq, seconds, amp):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chords(triads, seconds_each=1.0):
    """Additive sine triads (MIDI pitches), each with a smooth envelope."""
    t = np.arange(int(seconds_each * RATE)) / RATE
    out = [sum(np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t) for m in triad) * np.hanning(len(t)) for triad in triads]
    return (0.2 * np.concatenate(out)).astype(np.float32)


def click_track(bpm, seconds=10.0):
    y = np.zeros(int(seconds * RATE), np.float32)
    click = (np.hanning(480)[240:] * np.sin(2 * np.pi * 1500 * np.arange(240) / RATE)).astype(np.float32)
    for beat in np.arange(0.0, seconds, 60.0 / bpm):
        i = int(beat * RATE)
        y[i : i + 240] += click[: len(y) - i]
    return y


@pytest.mark.parametrize("tonic", range(12))
def test_a_key_profile_is_recognised_in_every_transposition(tonic):
    assert estimate_key(np.roll(MAJOR_PROFILE, tonic))[1:] == ("major", pytest.approx(1.0))
    name, mode, r = estimate_key(np.roll(MINOR_PROFILE, tonic)[:, None].repeat(5, axis=1))
    assert mode == "minor" and r == pytest.approx(1.0)


def test_key_of_sine_chords_tells_c_major_from_a_minor():
    import librosa

    c_major = chords([(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)] * 2)
    a_minor = chords([(57, 60, 64), (62, 65, 69), (64, 68, 71), (57, 60, 64)] * 2)
    for audio, key in ((c_major, ("C", "major")), (a_minor, ("A", "minor"))):
        chroma = librosa.feature.chroma_cqt(y=audio, sr=RATE, hop_length=512, norm=None)
        tonic, mode, confidence = estimate_key(chroma)
        assert (tonic, mode) == key and confidence > 0.8


def test_key_names_follow_the_corpus_spelling():
    assert estimate_key(np.roll(MAJOR_PROFILE, 10))[0] == "Bb"
    assert estimate_key(np.roll(MINOR_PROFILE, 1))[0] == "C#"
    with pytest.raises(MelodyError):
        estimate_key(np.ones(11))


@pytest.mark.parametrize("bpm", [120.0, 90.0])
def test_tempo_of_a_click_track_is_within_two_percent(bpm):
    tempo, confidence = estimate_tempo(click_track(bpm), RATE)
    assert tempo == pytest.approx(bpm, rel=0.02)
    assert confidence > 0.5


def test_noise_has_low_tempo_confidence():
    noise = np.random.default_rng(0).normal(0, 0.1, 10 * RATE).astype(np.float32)
    assert estimate_tempo(noise, RATE)[1] < 0.3


def test_loudness_matches_the_bs1770_reference_sines():
    full_scale = measure_attributes(sine(1000.0, 5.0, 1.0), RATE)
    assert full_scale["loudness_lufs"] == pytest.approx(-3.0, abs=0.5) and full_scale["dynamics"] == "loud"
    reference = measure_attributes(sine(997.0, 5.0, 10 ** (-20 / 20)), RATE)
    assert reference["loudness_lufs"] == pytest.approx(-23.0, abs=0.5)
    assert measure_attributes(sine(997.0, 5.0, 10 ** (-35 / 20)), RATE)["dynamics"] == "soft"


def test_measured_attributes_follow_the_corpus_schema():
    a = measure_attributes(click_track(120.0), RATE)
    assert a["style"] is None and a["instruments"] == [] and a["real_recording"] is True
    assert set(a) >= {"tempo_bpm", "key", "mode", "time_signature", "dynamics", "gm_programs", "parts", "mood",
                      "loudness_lufs", "tempo_confidence", "key_confidence"}  # fmt: skip


def test_finding_recordings_dedupes_links_and_sorts_naturally(tmp_path, monkeypatch):
    monkeypatch.setattr(recordings, "PACKAGE_DIRS", {})
    (tmp_path / "audio").mkdir()
    (tmp_path / "en").mkdir()
    for name in ("track10.ogg", "track2.ogg", "notes.txt"):
        (tmp_path / "audio" / name).write_bytes(b"x")
    (tmp_path / "en" / "track2.ogg").symlink_to(tmp_path / "audio" / "track2.ogg")
    found = find_recordings([tmp_path / "audio", tmp_path / "en"])
    assert [p.name for p in found] == ["track2.ogg", "track10.ogg"]


def test_no_recordings_is_a_user_error_naming_the_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(recordings, "PACKAGE_DIRS", {tmp_path / "absent": ("x", "x")})
    with pytest.raises(MelodyError, match="apt-get install drascula-music asc-music"):
        find_recordings()


def test_silent_windows_and_short_tracks_are_skipped_with_reasons(tmp_path):
    path = tmp_path / "gappy.wav"
    audio = np.concatenate([click_track(100.0, 5.0) + sine(440.0, 5.0, 0.2), np.zeros(5 * RATE, np.float32),
                            sine(330.0, 5.0, 0.3)])  # fmt: skip
    sf.write(path, audio, RATE)
    skipped: list[SkipReason] = []
    clips = recording_clips(path, clip_seconds=5.0, sample_rate=RATE, rng=np.random.default_rng(0), skipped=skipped)
    assert [c.offset for c in clips] == [0.0, 10.0]
    assert [s.offset for s in skipped] == [5.0] and "silent" in skipped[0].reason
    short = tmp_path / "short.wav"
    sf.write(short, sine(440.0, 2.0, 0.3), RATE)
    skipped = []
    assert recording_clips(short, clip_seconds=5.0, sample_rate=RATE, skipped=skipped) == []
    assert "shorter than one 5 s clip" in skipped[0].reason


@pytest.mark.skipif(not DRASCULA_TRACK.is_file(), reason="drascula-music is not installed")
def test_clips_of_a_real_track_have_the_asked_shape_and_stay_inside_it():
    seconds = sf.info(str(DRASCULA_TRACK)).duration
    clips = recording_clips(DRASCULA_TRACK, clip_seconds=10.0, sample_rate=RATE, rng=np.random.default_rng(3))
    assert len(clips) == int(seconds // 10.0)
    for clip in clips:
        assert isinstance(clip, RecordingClip) and clip.piece_id == "drascula-track29"
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (10 * RATE,)
        assert 0.0 <= clip.offset and clip.offset + 10.0 <= seconds + 1e-6
        assert clip.attributes["real_recording"] and clip.attributes["package"] == "drascula-music"
        assert clip.attributes["tempo_bpm"] > 0 and clip.attributes["key"] and np.isfinite(clip.attributes["loudness_lufs"])
    offsets = [c.offset for c in clips]
    assert offsets == sorted(offsets) and np.all(np.diff(offsets) >= 10.0 - 1e-6)
    picked = recording_clips(DRASCULA_TRACK, clip_seconds=10.0, sample_rate=RATE, rng=np.random.default_rng(3), max_clips=2)
    assert len(picked) == 2 and set(c.offset for c in picked) <= set(offsets)


def test_doubtful_measurements_stay_out_of_the_caption(monkeypatch):
    from melody.data.synth.captions import caption_mentions, make_caption

    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(5 * RATE)).astype(np.float32)  # no beat to track
    a = measure_attributes(noise, RATE)
    assert a["tempo_confidence"] < recordings.MIN_TEMPO_CONFIDENCE and a["tempo_bpm"] is None and a["tempo_estimate"] > 0
    # The key profile correlation is not a strong doubt measure (noise scores ~0.7): force a doubtful key.
    monkeypatch.setattr(recordings, "estimate_key", lambda chroma: ("C", "major", 0.3))
    a = measure_attributes(noise, RATE)
    assert a["key"] is None and a["mode"] is None and a["key_estimate"] == "C major"
    for seed in range(5):
        caption = make_caption(a, np.random.default_rng(seed))
        assert "BPM" not in caption.upper() and "None" not in caption and "major" not in caption
        assert caption_mentions(caption, a)
