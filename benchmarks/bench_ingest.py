"""Throughput of `melody data ingest` on synthetic 44.1 kHz stereo files.

Writes N minutes of chords with noise bursts (files of `--file-seconds`, cycling through flac, wav,
ogg and mp3) to a temporary folder, ingests it with the default settings (10 s clips, 24 kHz mono,
-20 LUFS) once per `--workers` value, and writes seconds of audio per wall second and files per
second (and per CPU second, which other load on the machine does not skew) to
`benchmarks/results/ingest.json`. Audio generation is not timed.

    .venv/bin/python benchmarks/bench_ingest.py --minutes 10 --workers 1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melody.data.ingest import ingest  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402

SR = 44_100
FORMATS = (".flac", ".wav", ".ogg", ".mp3")
RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"


def synth_file(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A stereo chord progression (one chord a second) with short noise bursts, `(samples, 2)`."""
    t = np.arange(int(seconds * SR)) / SR
    roots = 110.0 * 2 ** (rng.integers(0, 24, int(seconds) + 1) / 12)
    f = roots[t.astype(int)]
    phase = 2 * np.pi * np.cumsum(f) / SR
    left = (np.sin(phase) + np.sin(1.25 * phase) + np.sin(1.5 * phase)) / 3
    right = (np.sin(phase + 0.2) + np.sin(2 * phase)) / 2
    burst = rng.normal(0, 0.3, t.size) * ((t % 0.5) < 0.03)
    return (0.25 * np.stack([left + burst, right + burst], axis=1)).astype(np.float32)


def make_folder(root: Path, minutes: float, file_seconds: float, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    count = max(1, int(round(minutes * 60 / file_seconds)))
    paths = []
    for i in range(count):
        path = root / f"album{i // 10:02d}" / f"track{i:04d}{FORMATS[i % len(FORMATS)]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = synth_file(file_seconds, rng)
        with sf.SoundFile(path, "w", SR, 2) as f:  # in 1 s blocks: libsndfile 1.2.2 segfaults on one big Vorbis write
            for start in range(0, len(audio), SR):
                f.write(audio[start:start + SR])
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and its finished worker processes (robust to other load on the machine)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def corpus_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/shard-*.tar"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of audio to ingest")
    parser.add_argument("--file-seconds", type=float, default=60.0, help="length of each synthetic file")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        files = make_folder(tmp / "src", args.minutes, args.file_seconds)
        generate_s = time.perf_counter() - start
        audio_s = sum(sf.info(str(p)).duration for p in files)
        runs, reference, load = [], None, os.getloadavg()[0]
        for workers in [int(w) for w in args.workers.split(",")]:
            out = tmp / f"out{workers}"
            start, cpu_start = time.perf_counter(), cpu_seconds()
            report = ingest(tmp / "src", out, workers=workers, progress=False)
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
            shards = corpus_bytes(out)
            reference = reference or shards
            runs.append({
                "workers": workers, "wall_s": round(wall, 3),
                "audio_seconds_per_s": round(audio_s / wall, 1), "files_per_s": round(len(files) / wall, 2),
                "cpu_s": round(cpu, 3), "audio_seconds_per_cpu_s": round(audio_s / cpu, 1),
                "clips": report.clips, "identical_to_first_run": shards == reference,
            })
            print(f"workers={workers}: {wall:.2f} s wall, {audio_s / wall:.0f}x real time, {len(files) / wall:.2f} files/s", flush=True)

    result = {
        "benchmark": "ingest",
        "input": {"minutes": round(audio_s / 60, 2), "files": len(files), "file_seconds": args.file_seconds,
                  "sample_rate": SR, "channels": 2, "formats": list(FORMATS), "generate_s": round(generate_s, 2)},
        "settings": {"clip_seconds": 10.0, "sample_rate": 24_000, "channels": 1, "normalize_lufs": -20.0},
        "machine": {"cpus": os.cpu_count(), "load_average_1min_before": round(load, 2), "platform": platform.platform(), "python": platform.python_version()},
        "runs": runs,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
