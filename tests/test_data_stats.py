import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf

import melody.audio
import melody.data.shards
from melody.audio import encode_flac
from melody.data.shards import ShardWriter, shard_paths, write_manifest, write_shard
from melody.data.stats import corpus_stats, describe, iter_metadata, split_stats, summary, write_stats
from melody.errors import MelodyError

RATE = 8_000
# (split, seconds, caption, source, attributes): a known spread of what the corpus states, and of what it leaves out
CLIPS = [
    ("train", 1.0, "a rock song", "procedural",
     {"style": "rock", "tempo_bpm": 120.0, "key": "C", "mode": "major", "instruments": ["electric guitar", "drums"],
      "gm_programs": [29, -1]}),
    ("train", 2.0, "a slow rock ballad with piano", "procedural",
     {"style": "rock", "tempo_bpm": 65.5, "key": "A", "mode": "minor", "instruments": ["piano"], "gm_programs": [0]}),
    ("train", 0.5, "jazz", "score",
     {"style": "jazz", "tempo_bpm": 125, "key": "Bb", "mode": "dorian", "instruments": ["piano", "drums"],
      "gm_programs": [0, -1]}),
    ("train", 1.5, "", "recording",
     {"style": None, "tempo_bpm": 98.0, "key": "C", "mode": "major", "instruments": [], "gm_programs": []}),
    ("valid", 1.0, "an ingested clip of music", "ingest", {"tempo_bpm": "120"}),  # a tempo as text is no tempo
]


def make_corpus(root):
    writers = {s: ShardWriter(root, s, RATE, clips_per_shard=2) for s in ("train", "valid")}
    for i, (split, seconds, caption, source, attributes) in enumerate(CLIPS):
        audio = 0.1 * np.sin(np.arange(int(seconds * RATE)) * 0.05).astype(np.float32)
        writers[split].add(f"clip-{i}", audio, {"caption": caption, "source": source, "attributes": attributes})
    for w in writers.values():
        w.flush()
    write_manifest(root, {s: w.summary() for s, w in writers.items()}, sample_rate=RATE, channels=1)
    return root


@pytest.fixture
def no_audio_read(monkeypatch):
    """Any decode (or even a header read) of a clip's audio fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a stats pass must not read audio")

    for module, name in [(melody.audio, "decode_audio_bytes"), (melody.data.shards, "decode_audio_bytes"), (sf, "read"),
                         (sf, "info"), (sf.SoundFile, "read")]:
        monkeypatch.setattr(module, name, refuse)


def test_stats_count_clips_hours_captions_and_attributes_exactly(tmp_path, no_audio_read):
    stats = corpus_stats(make_corpus(tmp_path))
    assert list(stats.splits) == ["train", "valid"] and stats.notes == ()
    train, valid, t = stats.splits["train"], stats.splits["valid"], stats.total
    assert (train.clips, train.seconds, valid.clips, valid.seconds) == (4, 5.0, 1, 1.0)
    assert t.clips == 5 and t.seconds == 6.0 and t.hours == pytest.approx(6.0 / 3600)
    d = t.clip_seconds
    assert (d.count, d.min, d.median, d.mean, d.max) == (5, 0.5, 1.0, 1.2, 2.0)
    assert d.edges == (0.0, 1.0, 2.0, 3.0) and d.counts == (1, 3, 1)  # [0, 1): 0.5 s; [1, 2): 1, 1.5, 1 s; [2, 3): 2 s
    w = t.caption_words  # 3, 6, 1 and 5 words; one clip has no caption
    assert (w.count, w.min, w.median, w.mean, w.max) == (4, 1.0, 4.0, 3.75, 6.0)
    assert w.edges == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0) and w.counts == (1, 0, 1, 0, 1, 1)
    b = t.tempo_bpm  # 120, 65.5, 125, 98
    assert (b.count, b.min, b.median, b.mean, b.max) == (4, 65.5, 109.0, 102.125, 125.0)
    assert b.edges == tuple(float(x) for x in range(60, 140, 10)) and b.counts == (1, 0, 0, 1, 0, 0, 2)
    h = t.histograms
    assert h["style"] == {"rock": 2, "jazz": 1}
    assert h["source"] == {"procedural": 2, "ingest": 1, "recording": 1, "score": 1}
    assert h["key"] == {"C": 2, "A": 1, "Bb": 1} and h["mode"] == {"major": 2, "dorian": 1, "minor": 1}
    assert h["key_mode"] == {"C major": 2, "A minor": 1, "Bb dorian": 1}
    assert h["instrument"] == {"drums": 2, "piano": 2, "electric guitar": 1}
    assert h["instrument_family"] == {"percussion": 2, "piano": 2, "guitar": 1}  # GM 29 guitar, 0 piano, -1 drum kit
    assert t.missing == {"caption": 1, "source": 0, "style": 2, "tempo_bpm": 1, "key": 1, "mode": 1, "instruments": 2,
                         "instrument_family": 2}
    assert t.seconds_by_source == {"procedural": 3.0, "recording": 1.5, "ingest": 1.0, "score": 0.5}
    assert valid.missing["tempo_bpm"] == 1 and valid.histograms["style"] == {}


def test_stats_of_one_split_and_the_files_written(tmp_path, no_audio_read):
    stats = corpus_stats(make_corpus(tmp_path / "c"), "valid")
    assert list(stats.splits) == ["valid"] and stats.total.clips == 1 and stats.total.caption_words.min == 5.0
    json_path, png_path = write_stats(stats, tmp_path / "out")
    saved = json.loads(json_path.read_text())
    assert saved["total"]["clips"] == 1 and saved["total"]["hours"] == round(1 / 3600, 6)
    assert saved["splits"]["valid"]["missing"]["tempo_bpm"] == 1 and saved["total"]["tempo_bpm"]["count"] == 0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size < 200_000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stats.json", "stats.png"]  # no temp file left
    assert summary(stats).splitlines()[1].split()[:3] == ["valid", "1", "0.00"]


def test_clip_length_comes_from_the_flac_header_when_the_metadata_lacks_it(tmp_path, monkeypatch):
    for module, name in [(melody.audio, "decode_audio_bytes"), (melody.data.shards, "decode_audio_bytes"), (sf, "read")]:
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("audio was decoded"))
    flac = encode_flac(np.zeros((1, 12_000), np.float32), RATE)
    write_shard(tmp_path / "train/shard-000000.tar", [("a", flac, b'{"caption": "x"}'), ("b", flac, b'{"seconds": 4.0}')])
    write_manifest(tmp_path, {"train": {"shards": ["train/shard-000000.tar"], "clips": 2, "seconds": 5.5}}, sample_rate=RATE)
    assert [m["seconds"] for m in iter_metadata(tmp_path)] == [1.5, 4.0]
    assert [m["key"] for m in iter_metadata(tmp_path)] == ["a", "b"]


def test_describe_widens_bins_and_handles_no_values():
    d = describe(range(0, 200), 1.0, max_bins=40)  # 200 one-wide bins → 5-wide: 40 bins
    assert d.edges[:3] == (0.0, 5.0, 10.0) and len(d.counts) == 40 and set(d.counts) == {5}
    assert describe([], 1.0).count == 0 and describe([], 1.0).median is None
    assert split_stats([]).clips == 0


def test_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(MelodyError, match="no such corpus folder"):
        corpus_stats(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelodyError, match="corpus manifest not found"):
        corpus_stats(tmp_path / "empty")
    make_corpus(tmp_path / "c")
    with pytest.raises(MelodyError, match="no 'test' split"):
        corpus_stats(tmp_path / "c", "test")
    shard = shard_paths(tmp_path / "c", "train")[0]
    with tarfile.open(shard) as tar:
        second = tar.getmembers()[2].offset  # the first header of the shard's second clip
    data = shard.read_bytes()
    for cut in (700, second, second + 100):  # in a payload; at a header (tarfile would stop there quietly); in a header
        shard.write_bytes(data[:cut])
        with pytest.raises(MelodyError, match="corrupt or truncated shard"):
            corpus_stats(tmp_path / "c")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "melody.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_the_table_writes_root_stats_and_fails_in_one_line(tmp_path):
    root = make_corpus(tmp_path / "c")
    out = cli("data", "stats", str(root), "--split", "train")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split()[:3] == ["train", "4", "0.00"] and "style (2): rock 2, jazz 1" in out.stdout
    assert json.loads((root / "stats" / "stats.json").read_text())["total"]["clips"] == 4
    assert (root / "stats" / "stats.png").is_file()
    missing = cli("data", "stats", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such corpus folder" in lines[0]
