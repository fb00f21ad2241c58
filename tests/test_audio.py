import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from melody.audio import (
    audio_info, is_silent, load_audio, log_mel, loudness, loudness_normalize, resample, save_audio, to_channels,
)
from melody.errors import MelodyError


def sine(freq, seconds, rate, amp=0.5, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels)


def dominant_frequency(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)]


@pytest.mark.parametrize("from_rate, to_rate", [(44_100, 24_000), (16_000, 24_000), (48_000, 22_050)])
def test_resampling_keeps_a_sines_frequency_and_length(from_rate, to_rate):
    x = sine(440.0, 2.0, from_rate)
    y = resample(x, from_rate, to_rate)
    assert y.dtype == np.float32 and y.shape == (1, 2 * to_rate)
    assert abs(dominant_frequency(y[0], to_rate) - 440.0) < 1.0
    assert abs(np.abs(y[0, 1000:-1000]).max() - 0.5) < 0.01  # no gain change in the passband


def test_resampling_removes_content_above_the_new_nyquist():
    x = sine(15_000.0, 1.0, 44_100)  # above 12 kHz: must vanish at 24 kHz, not alias down
    y = resample(x, 44_100, 24_000)
    assert np.abs(y[0, 500:-500]).max() < 0.01


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_load_any_format_to_mono_or_stereo_at_target_rate(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    x = sine(330.0, 1.5, 44_100, channels=2)
    sf.write(path, x.T, 44_100)
    mono = load_audio(path, 24_000, channels=1)
    stereo = load_audio(path, 24_000, channels=2)
    assert mono.dtype == np.float32 and mono.shape[0] == 1 and stereo.shape[0] == 2
    assert abs(mono.shape[1] - 36_000) < 2_500  # lossy codecs pad a little
    assert abs(dominant_frequency(mono[0], 24_000) - 330.0) < 2.0


def test_bad_audio_gets_one_clear_line(tmp_path):
    (tmp_path / "junk.wav").write_bytes(os.urandom(2048))
    sf.write(tmp_path / "silent.wav", np.zeros(24_000, dtype=np.float32), 24_000)
    sf.write(tmp_path / "short.wav", sine(440, 0.2, 24_000)[0], 24_000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 24_000)
    good = tmp_path / "good.flac"
    sf.write(good, sine(440, 3.0, 24_000)[0], 24_000)
    (tmp_path / "truncated.flac").write_bytes(good.read_bytes()[:300])
    cases = {
        "missing.wav": "no such audio file",
        "junk.wav": "unreadable audio",
        "silent.wav": "silent",
        "empty.wav": "no audio samples",
        "truncated.flac": "unreadable",
    }
    for name, message in cases.items():
        with pytest.raises(MelodyError) as err:
            load_audio(tmp_path / name)
        assert message in str(err.value) and name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MelodyError, match="too short"):
        load_audio(tmp_path / "short.wav", min_seconds=1.0)
    assert load_audio(tmp_path / "silent.wav", allow_silent=True).shape == (1, 24_000)


def test_offset_and_duration_read_a_window(tmp_path):
    x = np.linspace(-0.5, 0.5, 48_000, dtype=np.float32)
    sf.write(tmp_path / "ramp.wav", x, 24_000, subtype="FLOAT")
    part = load_audio(tmp_path / "ramp.wav", offset=0.5, duration=1.0)
    np.testing.assert_allclose(part[0], x[12_000:36_000], atol=1e-7)
    assert audio_info(tmp_path / "ramp.wav").seconds == 2.0


def test_loudness_normalisation_hits_the_target_without_clipping():
    quiet = sine(1000.0, 3.0, 24_000, amp=0.01)
    out = loudness_normalize(quiet, 24_000, target_lufs=-20.0)
    assert abs(loudness(out, 24_000) - (-20.0)) < 0.1
    loud = np.clip(sine(100.0, 3.0, 24_000, amp=1.0) * 3, -1, 1)
    out = loudness_normalize(loud, 24_000, target_lufs=-5.0)  # would need > 0 dBFS peaks
    assert np.abs(out).max() <= 0.99 + 1e-6
    # BS.1770 reference: a full-scale 1 kHz sine reads about -3 LUFS (mono)
    assert abs(loudness(sine(1000.0, 3.0, 24_000, amp=1.0), 24_000) - (-3.0)) < 0.2


def test_save_round_trip_and_unsupported_suffix(tmp_path):
    x = sine(220.0, 1.0, 24_000, channels=2)
    for suffix in (".wav", ".flac"):
        path = save_audio(tmp_path / f"o{suffix}", x, 24_000)
        back = load_audio(path, 24_000, channels=2)
        np.testing.assert_allclose(back, x, atol=1e-4)
    with pytest.raises(MelodyError, match="use .wav or .flac"):
        save_audio(tmp_path / "o.xyz", x)
    with pytest.raises(MelodyError, match="NaN"):
        save_audio(tmp_path / "nan.wav", np.full((1, 10), np.nan, dtype=np.float32))
    assert not (tmp_path / "nan.wav").exists()


def test_interrupted_save_leaves_no_partial_file(tmp_path):
    # A child process starts writing a long file and is killed mid-write.
    target = tmp_path / "long.wav"
    code = (
        "import numpy as np, soundfile, melody.audio as a\n"
        "orig = soundfile.write\n"
        "def slow(*args, **kw):\n"
        "    orig(*args, **kw)\n"
        "    print('written', flush=True)\n"
        "    import time; time.sleep(30)\n"
        "soundfile.write = slow\n"
        f"a.save_audio({str(target)!r}, np.zeros((1, 240000), np.float32) + 0.1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"  # the temp file is complete, the rename has not happened
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    # an earlier file under the same name survives an interrupted overwrite
    save_audio(target, sine(440, 0.5, 24_000))
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == before


def test_channel_mixing_and_silence():
    st = np.stack([np.ones(10, np.float32), -np.ones(10, np.float32)])
    assert np.allclose(to_channels(st, 1), 0.0) and is_silent(to_channels(st, 1))
    assert to_channels(st[:1], 2).shape == (2, 10)


def test_log_mel_shape_and_peak_bin():
    x = sine(1000.0, 1.0, 24_000)
    mel = log_mel(x, 24_000, n_fft=1024, hop=256, n_mels=80)
    assert mel.shape == (1, 80, 24_000 // 256 + 1) and str(mel.dtype) == "torch.float32"
    import librosa

    centres = librosa.mel_frequencies(n_mels=82, fmax=12_000)[1:-1]
    peak = int(mel[0].mean(-1).argmax())
    assert abs(centres[peak] - 1000.0) < 120.0


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os

    path = save_audio(tmp_path / "p.wav", sine(440, 0.1, 24_000))
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)
