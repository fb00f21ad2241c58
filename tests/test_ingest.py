"""`melody data ingest`: bad files reported, clips and captions right, splits by file, resumable."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import melody.data.shards as shards
from melody.audio import loudness
from melody.data.ingest import STATE, ingest, read_captions, segment
from melody.data.shards import iter_samples, read_manifest, read_tar_members, shard_paths, split_of
from melody.errors import MelodyError

SR = 44_100
RATE = 16_000  # output rate: small, so the tests are fast
FAST = {"clip_seconds": 1.0, "sample_rate": RATE, "clips_per_shard": 3, "valid_fraction": 0.2, "test_fraction": 0.2, "progress": False}
GOOD = {  # relative path → (seconds, base frequency)
    "song0.wav": (3.3, 220.0),
    "song1.wav": (3.8, 262.0),
    "song2.wav": (4.3, 294.0),
    "song3.wav": (2.6, 330.0),
    "song4.wav": (3.0, 349.0),
    "song5.wav": (4.7, 392.0),
    "live/set one.flac": (2.5, 440.0),
    "live/jam.ogg": (2.4, 494.0),
    "live/demo.mp3": (2.5, 523.0),
}
BAD = {
    "corrupt.wav": "unreadable", "truncated.flac": "corrupt or truncated", "truncated.mp3": "truncated: the header promises",
    "silent.wav": "silent", "short.wav": "too short", "old.m4a": "unsupported",
}
CAPTIONS = {rel: f"caption of {rel}: a {int(f)} Hz chord" for rel, (_, f) in GOOD.items() if rel != "song3.wav"}


def chord(seconds: float, freq: float, seed: int) -> np.ndarray:
    """A stereo chord with a noise burst, `(samples, 2)` at 44.1 kHz."""
    t = np.arange(int(seconds * SR)) / SR
    left = sum(np.sin(2 * np.pi * freq * r * t) for r in (1.0, 1.25, 1.5)) / 3
    right = np.sin(2 * np.pi * freq * t + 0.3)
    noise = np.random.default_rng(seed).normal(0, 0.05, t.size) * (t % 1.0 < 0.1)
    return (0.3 * np.stack([left + noise, right + noise], axis=1)).astype(np.float32)


def make_source(root: Path) -> Path:
    """A folder of good files in four formats plus one of each kind of bad file."""
    for i, (rel, (seconds, freq)) in enumerate(GOOD.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, chord(seconds, freq, i), SR)
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    flac = (root / "live/set one.flac").read_bytes()
    (root / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    mp3 = (root / "live/demo.mp3").read_bytes()
    (root / "truncated.mp3").write_bytes(mp3[: len(mp3) // 2])  # decodes, but to half the header's length
    sf.write(root / "silent.wav", np.zeros((3 * SR, 2), np.float32), SR)
    sf.write(root / "short.wav", chord(0.3, 440.0, 9), SR)
    (root / "old.m4a").write_bytes(b"\0" * 100)
    (root / "._song0.wav").write_bytes(b"macOS resource fork")  # hidden: ignored
    (root / "notes.pdf").write_bytes(b"%PDF")  # not audio: ignored
    return root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_source(tmp_path / "src")


def write_jsonl(path: Path) -> Path:
    lines = [json.dumps({"file": rel, "caption": text, "mood": "calm", "bpm": 90}) for rel, text in CAPTIONS.items()]
    lines[1] = lines[1].replace('"file"', '"path"')  # the alias
    lines.append(json.dumps({"file": "gone/missing.wav", "caption": "no such file"}))
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def write_csv(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as spreadsheets write it
        w = csv.writer(f)
        w.writerow(["path", "caption", "mood", "bpm"])
        w.writerows([rel, text, "calm", "90"] for rel, text in CAPTIONS.items())
        w.writerow(["gone/missing.wav", "no such file", "", ""])
    return path


def write_txt(src: Path) -> None:
    for rel, text in CAPTIONS.items():
        (src / rel).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")


def corpus_bytes(out: Path) -> dict[str, bytes]:
    """Every shard and the manifest, by relative path (the state log and report are not corpus)."""
    files = sorted(out.glob("*/shard-*.tar")) + [out / "manifest.json"]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


def test_bad_files_are_skipped_with_reasons(src, tmp_path):
    report = ingest(src, tmp_path / "out", **FAST)
    reasons = {s["file"]: s["reason"] for s in report.skipped}
    assert set(reasons) == set(BAD)
    for rel, word in BAD.items():
        assert word in reasons[rel], (rel, reasons[rel])
    assert report.files == len(GOOD) + len(BAD) and report.ingested == len(GOOD)
    on_disk = json.loads((tmp_path / "out/ingest_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert f"skipped {len(BAD)} files" in report.summary()


def test_clips_have_the_right_length_rate_and_level(src, tmp_path):
    report = ingest(src, tmp_path / "out", **FAST)
    samples = list(iter_samples(tmp_path / "out"))
    assert len(samples) == report.clips == read_manifest(tmp_path / "out")["clips"]
    by_file: dict[str, list] = {}
    for s in samples:
        assert s["audio"].dtype == np.float32 and s["audio"].shape[0] == 1 and s["sample_rate"] == RATE
        by_file.setdefault(s["meta"]["file"], []).append(s)
    assert set(by_file) == set(GOOD)
    for rel, clips in by_file.items():
        seconds = GOOD[rel][0]
        full, tail = int(seconds), seconds - int(seconds)
        assert len(clips) == full + (tail >= 0.5)
        assert [c["meta"]["offset"] for c in clips] == [float(i) for i in range(len(clips))]
        assert all(c["audio"].shape[1] == RATE for c in clips[:full])
        assert [c["key"] for c in clips] == [f"{clips[0]['key'][:-5]}-c{i:03d}" for i in range(len(clips))]
    meta = samples[0]["meta"]
    assert meta["source"] == "ingest" and meta["real_recording"] is True and meta["piece"] == meta["file"]
    level = loudness(samples[0]["audio"], RATE)
    assert abs(level - -20.0) < 0.5  # 16-bit FLAC round trip changes it a hair


@pytest.mark.parametrize("kind", ["jsonl", "csv", "txt"])
def test_captions_reach_the_shards(kind, src, tmp_path):
    captions = None
    if kind == "jsonl":
        captions = write_jsonl(tmp_path / "captions.jsonl")
    elif kind == "csv":
        captions = write_csv(tmp_path / "captions.csv")
    else:
        write_txt(src)
    report = ingest(src, tmp_path / "out", captions, **FAST)
    for s in iter_samples(tmp_path / "out"):
        rel = s["meta"]["file"]
        assert s["meta"]["caption"] == CAPTIONS.get(rel, "")
        expected = {} if kind == "txt" or rel not in CAPTIONS else {"mood": "calm", "bpm": 90 if kind == "jsonl" else "90"}
        assert s["meta"]["attributes"] == expected
    assert report.uncaptioned == ["song3.wav"]
    assert report.unmatched_captions == ([] if kind == "txt" else ["gone/missing.wav"])


def test_read_captions_accepts_absolute_paths_under_src(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"file": str(tmp_path / "src/a/b.wav"), "caption": " x "}) + "\n")
    assert read_captions(path, tmp_path / "src") == {"a/b.wav": {"caption": "x", "attributes": {}}}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.jsonl", '{"file": "a.wav", "caption": "x"}\nnot json\n', "c.jsonl:2: not a JSON object"),
        ("c.jsonl", '{"file": "a.wav"}\n', "not an object with a 'caption' key"),
        ("c.csv", "name,text\na.wav,x\n", "needs a 'file' (or 'path') and a 'caption' column"),
        ("c.xlsx", "", "must be a .jsonl or .csv"),
    ],
)
def test_bad_captions_file_is_a_one_line_error(name, text, message, src, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MelodyError, match="^[^\n]*$") as err:
        ingest(src, tmp_path / "out", path, **FAST)
    assert message in str(err.value)
    with pytest.raises(MelodyError, match="captions file not found"):
        ingest(src, tmp_path / "out", tmp_path / "absent.csv", **FAST)


def test_missing_src_is_a_one_line_error(tmp_path):
    with pytest.raises(MelodyError, match="^[^\n]*no such folder; give the folder") as err:
        ingest(tmp_path / "nowhere", tmp_path / "out", **FAST)
    assert "\n" not in str(err.value)
    (tmp_path / "file.wav").write_bytes(b"")
    with pytest.raises(MelodyError, match="not a folder"):
        ingest(tmp_path / "file.wav", tmp_path / "out", **FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelodyError, match="no audio files found"):
        ingest(tmp_path / "empty", tmp_path / "out", **FAST)


def test_splits_are_by_file_and_stable_when_files_are_added(src, tmp_path):
    ingest(src, tmp_path / "out", **FAST)
    split_by_file: dict[str, set] = {}
    for s in iter_samples(tmp_path / "out"):
        split_by_file.setdefault(s["meta"]["file"], set()).add(s["meta"]["split"])
    assert all(len(v) == 1 for v in split_by_file.values())  # never a file in two splits
    assert {rel: v.pop() for rel, v in split_by_file.items()} == {rel: split_of(rel, 0, 0.2, 0.2) for rel in GOOD}
    sf.write(src / "aaa_first.wav", chord(2.0, 600.0, 7), SR)  # sorts before every other file
    ingest(src, tmp_path / "more", **FAST)
    moved = {s["meta"]["file"]: s["meta"]["split"] for s in iter_samples(tmp_path / "more")}
    assert all(moved[rel] == split_of(rel, 0, 0.2, 0.2) for rel in GOOD)


def test_split_of_follows_the_fractions_and_the_seed():
    names = [f"dir/{i}.wav" for i in range(4000)]
    splits = [split_of(n, 0, 0.05, 0.05) for n in names]
    assert 0.04 < splits.count("valid") / 4000 < 0.06 and 0.04 < splits.count("test") / 4000 < 0.06
    assert splits != [split_of(n, 1, 0.05, 0.05) for n in names]


def test_segment_keeps_a_long_tail_and_drops_a_short_one():
    audio = np.ones((1, 35), np.float32)
    assert [(o, c.shape[1]) for o, c in segment(audio, 10, 1.0, 0.5)] == [(0, 10), (10, 10), (20, 10), (30, 5)]
    assert [o for o, _ in segment(audio, 10, 1.0, 0.6)] == [0, 10, 20]
    assert segment(audio[:, :4], 10, 1.0, 0.5) == []


def test_colliding_keys_are_made_unique(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.wav", "a.flac", "a b.wav", "a_b.wav"):
        sf.write(src / name, chord(1.2, 300.0, 1), SR)
    ingest(src, tmp_path / "out", **FAST)
    keys = [s["key"] for s in iter_samples(tmp_path / "out")]
    assert len(keys) == len(set(keys)) == 4


def test_rerun_gives_byte_identical_shards(src, tmp_path):
    captions = write_jsonl(tmp_path / "captions.jsonl")
    first = ingest(src, tmp_path / "a", captions, **FAST)
    ingest(src, tmp_path / "b", captions, **FAST)
    assert corpus_bytes(tmp_path / "a") == corpus_bytes(tmp_path / "b")
    before = corpus_bytes(tmp_path / "a")
    again = ingest(src, tmp_path / "a", captions, **FAST)  # complete already: nothing is decoded
    assert corpus_bytes(tmp_path / "a") == before
    assert again.reused_shards == sum(len(s["shards"]) for s in first.splits.values()) and again.clips == first.clips


def test_workers_give_the_same_output(src, tmp_path):
    ingest(src, tmp_path / "one", **FAST)
    ingest(src, tmp_path / "two", **FAST | {"workers": 2})
    assert corpus_bytes(tmp_path / "one") == corpus_bytes(tmp_path / "two")


@pytest.mark.parametrize("fail_at", [1, 4])
def test_interrupted_run_resumes_to_the_same_corpus(fail_at, src, tmp_path, monkeypatch):
    ingest(src, tmp_path / "reference", **FAST)
    real_write = shards.write_shard
    calls = []

    def flaky(path, samples):
        calls.append(path)
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # Ctrl-C while the shard is written
        real_write(path, samples)

    monkeypatch.setattr(shards, "write_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        ingest(src, tmp_path / "out", **FAST)
    assert not (tmp_path / "out/manifest.json").exists()
    monkeypatch.setattr(shards, "write_shard", real_write)
    report = ingest(src, tmp_path / "out", **FAST)
    assert report.reused_shards == fail_at - 1
    assert corpus_bytes(tmp_path / "out") == corpus_bytes(tmp_path / "reference")


def test_killed_run_resumes_to_the_same_corpus(src, tmp_path):
    """SIGKILL in the middle of writing the third shard: a temp file is left and no cleanup runs."""
    ingest(src, tmp_path / "reference", **FAST)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import melody.data.shards as shards
        from melody.data.ingest import ingest
        from melody.io import atomic_path
        real, calls = shards.write_shard, []
        def dying(path, samples):
            calls.append(path)
            if len(calls) == 3:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(b"half a shard")
                    os.kill(os.getpid(), signal.SIGKILL)
            real(path, samples)
        shards.write_shard = dying
        ingest(Path({str(src)!r}), Path({str(tmp_path / "out")!r}), **{FAST!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert list((tmp_path / "out").glob("*/.shard-*.part*"))  # the temp file the kill left behind
    state = (tmp_path / "out" / STATE).read_text()
    (tmp_path / "out" / STATE).write_text(state + '{"split": "train", "sha')  # and a torn log line
    report = ingest(src, tmp_path / "out", **FAST)
    assert report.reused_shards == 2
    assert corpus_bytes(tmp_path / "out") == corpus_bytes(tmp_path / "reference")
    assert not list((tmp_path / "out").glob("*/.shard-*.part*"))


def test_deleted_shard_is_rebuilt(src, tmp_path):
    ingest(src, tmp_path / "out", **FAST)
    before = corpus_bytes(tmp_path / "out")
    (tmp_path / "out/train/shard-000001.tar").unlink()
    report = ingest(src, tmp_path / "out", **FAST)
    assert corpus_bytes(tmp_path / "out") == before
    assert 0 < report.reused_shards < len(before) - 1


def test_changed_parameters_start_over_and_leave_no_stale_shards(src, tmp_path):
    ingest(src, tmp_path / "out", **FAST)
    report = ingest(src, tmp_path / "out", **FAST | {"clips_per_shard": 100})
    assert report.reused_shards == 0
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").glob("*/shard-*.tar"))
    assert names == sorted(rel for s in report.splits.values() for rel in s["shards"])
    assert all(len(s["shards"]) <= 1 for s in report.splits.values())


def test_refuses_to_write_over_another_corpus(src, tmp_path):
    shards.write_manifest(tmp_path / "out", {}, source="synth")
    with pytest.raises(MelodyError, match="already holds a corpus not made by ingest"):
        ingest(src, tmp_path / "out", **FAST)


def test_the_cli_writes_shards_of_the_asked_size(tmp_path):
    src = tmp_path / "src"
    for i, (rel, (seconds, freq)) in enumerate(list(GOOD.items())[:3]):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(src / rel, chord(seconds, freq, i), SR)
    out = subprocess.run([sys.executable, "-m", "melody.cli", "data", "ingest", str(src), "--out", str(tmp_path / "out"),
                          "--clip-seconds", "1", "--sample-rate", str(RATE), "--clips-per-shard", "2", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    manifest = read_manifest(tmp_path / "out")
    counts = [len(read_tar_members(p)) // 2 for p in shard_paths(tmp_path / "out")]
    assert sum(info["clips"] for info in manifest["splits"].values()) == sum(counts) >= 10  # 3.3 + 3.8 + 4.3 s of 1 s clips
    assert max(counts) == 2 and len(counts) >= sum(counts) // 2
