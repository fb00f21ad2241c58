"""Audio I/O: load, resample, loudness-normalise and save waveforms.

Every stage of MeLoDy works on 24 kHz audio (paper notes, "Audio VAE-GAN"); this module is the one
place where files become arrays and arrays become files.

Choices:
- soundfile reads wav/flac/ogg/mp3 (its wheel bundles libsndfile 1.2 with MP3 support); torchaudio
  does not load beside the pinned CPU torch, so it is not used.
- soxr (the SoX resampler, "HQ" quality) resamples: a real band-limited resampler, not interpolation.
- Loudness is ITU-R BS.1770-4 integrated loudness through pyloudnorm; after the gain, a peak above
  `PEAK_CEILING` is scaled down (a plain gain, no limiter), so normalisation never clips.
- Waveforms are `np.float32` arrays shaped `(channels, samples)`.
- Files are written atomically (temp file in the same folder, then rename), so an interrupted
  save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf
import soxr

from melody.errors import MelodyError, first_line
from melody.io import atomic_path

SAMPLE_RATE = 24_000
PEAK_CEILING = 0.99
SILENCE_DBFS = -60.0
READ_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")
WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, read without decoding the samples."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    path = Path(path)
    if not path.is_file():
        raise MelodyError(f"{path}: no such audio file; check the path")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise MelodyError(f"{path}: unreadable audio ({first_line(err)}); give a wav, flac, ogg or mp3 file") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    channels: int = 1,
    *,
    min_seconds: float = 0.0,
    allow_silent: bool = False,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read `path` as float32 `(channels, samples)` at `sample_rate`.

    Raises `MelodyError` for a missing, unreadable, empty, too short or (unless `allow_silent`)
    silent file; `offset`/`duration` (seconds) read a window without decoding the whole file
    where the format allows seeking.
    """
    path = Path(path)
    if channels not in (1, 2):
        raise MelodyError(f"channels={channels} is not supported; use 1 (mono) or 2 (stereo)")
    info = audio_info(path)
    start = int(round(offset * info.sample_rate))
    frames = -1 if duration is None else int(round(duration * info.sample_rate))
    try:
        data, file_rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise MelodyError(f"{path}: unreadable audio ({first_line(err)}); the file may be corrupt or truncated") from None
    if data.shape[0] == 0:
        raise MelodyError(f"{path}: the file holds no audio samples; give a non-empty recording")
    if not np.isfinite(data).all():
        raise MelodyError(f"{path}: the file holds NaN or infinite samples; re-export it")
    wav = to_channels(data.T, channels)
    wav = resample(wav, file_rate, sample_rate)
    seconds = wav.shape[-1] / sample_rate
    if seconds < min_seconds:
        raise MelodyError(f"{path}: {seconds:.2f} s of audio is too short; at least {min_seconds:g} s is needed")
    if not allow_silent and is_silent(wav):
        raise MelodyError(f"{path}: the audio is silent (peak below {SILENCE_DBFS:g} dBFS); give a recording with sound")
    return wav


def to_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """Down-mix to mono by averaging, or up-mix mono to stereo by copying."""
    if wav.shape[0] == channels:
        return np.ascontiguousarray(wav, dtype=np.float32)
    if channels == 1:
        # Summing channel rows one at a time is ~6x faster than a strided mean over a transposed array.
        mono = np.zeros(wav.shape[-1], dtype=np.float32)
        for row in wav:
            mono += row
        return (mono / np.float32(wav.shape[0]))[None]
    if wav.shape[0] == 1:
        return np.repeat(wav, channels, axis=0).astype(np.float32)
    return np.ascontiguousarray(wav[:channels], dtype=np.float32)


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling of `(channels, samples)` with soxr (HQ)."""
    if from_rate <= 0 or to_rate <= 0:
        raise MelodyError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return np.asarray(wav, dtype=np.float32)
    out = soxr.resample(np.ascontiguousarray(wav.T, dtype=np.float32), from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32).reshape(wav.shape[0], -1)


def peak_dbfs(wav: np.ndarray) -> float:
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    return -np.inf if peak == 0.0 else 20.0 * np.log10(peak)


def is_silent(wav: np.ndarray, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    return peak_dbfs(wav) < threshold_dbfs


def loudness(wav: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4); -inf for silence or clips under 0.4 s."""
    if wav.shape[-1] < int(0.4 * sample_rate):
        return -np.inf
    meter = pyloudnorm.Meter(sample_rate)
    return float(meter.integrated_loudness(np.asarray(wav.T, dtype=np.float64)))


def loudness_normalize(wav: np.ndarray, sample_rate: int, target_lufs: float = -20.0) -> np.ndarray:
    """Apply the gain that brings integrated loudness to `target_lufs`, then keep the peak under `PEAK_CEILING`.

    Audio too short or too quiet to measure is returned unchanged; the caller decides whether
    silence is an error.
    """
    current = loudness(wav, sample_rate)
    if not np.isfinite(current):
        return wav.astype(np.float32)
    out = wav * np.float32(10.0 ** ((target_lufs - current) / 20.0))
    peak = float(np.max(np.abs(out)))
    if peak > PEAK_CEILING:
        out = out * np.float32(PEAK_CEILING / peak)
    return out.astype(np.float32)


def save_audio(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write `(channels, samples)` or `(samples,)` float audio as 16-bit wav/flac, atomically."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MelodyError(f"{path}: cannot write '{path.suffix}' files; use .wav or .flac")
    wav = np.atleast_2d(np.asarray(wav, dtype=np.float32))
    if wav.shape[0] > 2:
        raise MelodyError(f"{path}: expected mono or stereo audio shaped (channels, samples), got {wav.shape}")
    if not np.isfinite(wav).all():
        raise MelodyError(f"{path}: refusing to save audio with NaN or infinite samples")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wav, -1.0, 1.0).T, sample_rate, format=fmt[0], subtype=fmt[1])
    return path


def encode_flac(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit FLAC bytes of `(channels, samples)` audio (the shard format's audio payload)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.atleast_2d(wav), -1.0, 1.0).T, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an in-memory audio file to float32 `(channels, samples)` and its rate."""
    try:
        wav, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise MelodyError(f"corrupt audio payload in a shard ({first_line(err)}); rebuild the shard") from None
    return np.ascontiguousarray(wav.T), int(rate)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None):
    """Slaney-normalised mel filters `(n_mels, n_fft // 2 + 1)` as a torch tensor (librosa's design).

    Built once per shape (losses and metrics ask for the same few every step) and copied out, so a
    caller may modify its tensor.
    """
    import torch

    return torch.from_numpy(_mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).copy())


@functools.lru_cache(maxsize=64)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max)


def log_mel(wav, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 80, eps: float = 1e-5):
    """Log-magnitude mel spectrogram with `torch.stft`: `(..., samples)` → `(..., n_mels, frames)`."""
    import torch

    wav = torch.as_tensor(wav, dtype=torch.float32)
    shape = wav.shape[:-1]
    spec = torch.stft(
        wav.reshape(-1, wav.shape[-1]), n_fft, hop, window=torch.hann_window(n_fft, device=wav.device),
        center=True, return_complex=True,
    ).abs()
    mel = mel_filterbank(sample_rate, n_fft, n_mels).to(spec) @ spec
    return torch.log(mel.clamp_min(eps)).reshape(*shape, n_mels, -1)
