import numpy as np
import pytest
import torch

from melody.data.loader import ShardDataset, choose_crop, collate, crop_audio, make_loader
from melody.data.shards import (ShardWriter, iter_samples, read_manifest, read_tar_members, safe_key, shard_paths,
                                shards_digest, write_manifest)
from melody.errors import MelodyError

RATE = 8_000


def make_corpus(root, clips=10, per_shard=3, seconds=(1.0, 2.0), tempo=False, uncaptioned=()):
    """tempo: clip i's metadata states 60 + 10 i BPM; the clips in `uncaptioned` have caption "" (as ingested)."""
    writers = {s: ShardWriter(root, s, RATE, clips_per_shard=per_shard) for s in ("train", "valid")}
    for i in range(clips):
        split = "valid" if i % 5 == 4 else "train"
        n = int(RATE * seconds[i % len(seconds)])
        audio = (0.1 * (i + 1) * np.ones(n, dtype=np.float32) * np.sign(np.sin(np.arange(n)))).astype(np.float32)
        meta = {"caption": "" if i in uncaptioned else f"clip number {i}", "index": i} | ({"attributes": {"tempo_bpm": 60 + 10 * i}} if tempo else {})
        writers[split].add(f"clip-{i:03d}", audio, meta)
    for w in writers.values():
        w.flush()
    write_manifest(root, {s: w.summary() for s, w in writers.items()}, sample_rate=RATE, channels=1)
    return root


def test_shards_round_trip_audio_and_metadata(tmp_path):
    make_corpus(tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest["splits"]["train"]["clips"] == 8 and len(manifest["splits"]["train"]["shards"]) == 3
    samples = list(iter_samples(tmp_path, "train"))
    assert [s["key"] for s in samples] == [f"clip-{i:03d}" for i in range(10) if i % 5 != 4]
    for s in samples:
        i = s["meta"]["index"]
        assert s["meta"]["caption"] == f"clip number {i}" and s["meta"]["split"] == "train"
        assert s["audio"].dtype == np.float32 and s["audio"].shape[0] == 1 and s["sample_rate"] == RATE
        assert abs(np.abs(s["audio"]).max() - 0.1 * (i + 1)) < 1e-3  # 16-bit FLAC
    assert read_tar_members(shard_paths(tmp_path, "train")[0])[:2] == ["clip-000.flac", "clip-000.json"]


def test_shards_are_byte_identical_when_rewritten(tmp_path):
    make_corpus(tmp_path / "a")
    make_corpus(tmp_path / "b")
    for a, b in zip(shard_paths(tmp_path / "a"), shard_paths(tmp_path / "b")):
        assert a.read_bytes() == b.read_bytes()


def test_the_manifest_names_its_corpus_by_the_shards_digest(tmp_path):
    """Two builds of the same clips share a digest wherever they live; a corpus with one other clip does not."""
    a, b = read_manifest(make_corpus(tmp_path / "a")), read_manifest(make_corpus(tmp_path / "b"))
    assert len(a["digest"]) == 64 and a["digest"] == b["digest"] == shards_digest(tmp_path / "a", a["splits"])
    other = read_manifest(make_corpus(tmp_path / "c", seconds=(1.0, 2.5)))
    assert other["digest"] != a["digest"]
    assert shards_digest(tmp_path / "a", {"train": {"shards": ["pipe:cat train/shard-000000.tar"]}}) is None


def test_bad_corpora_are_clear_errors(tmp_path):
    with pytest.raises(MelodyError, match="no such corpus folder"):
        read_manifest(tmp_path / "nope")
    make_corpus(tmp_path)
    with pytest.raises(MelodyError, match="no 'test' split"):
        shard_paths(tmp_path, "test")
    shard = shard_paths(tmp_path, "train")[0]
    shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 2])
    with pytest.raises(MelodyError, match="corrupt or truncated shard"):
        list(iter_samples(tmp_path, "train"))
    shard.unlink()
    with pytest.raises(MelodyError, match="missing"):
        shard_paths(tmp_path, "train")
    with pytest.raises(ValueError):
        ShardWriter(tmp_path, "train", RATE).add("a.b", np.zeros(10, np.float32), {})
    assert safe_key("My Song.v2 (live)") == "My_Song_v2_live"


def test_crops_are_exact_and_padded():
    rng = np.random.default_rng(0)
    audio = np.arange(10, dtype=np.float32)[None]
    where = choose_crop(10, 4, rng)
    out = crop_audio(audio, 4, where)
    assert out.shape == (1, 4) and np.array_equal(out[0], np.arange(where.start, where.start + 4))
    short = crop_audio(audio, 16, choose_crop(10, 16, rng))
    assert short.shape == (1, 16) and np.array_equal(short[0, :10], audio[0]) and not short[0, 10:].any()


def test_loader_yields_batches_of_the_right_shape(tmp_path):
    make_corpus(tmp_path)
    ds = ShardDataset.from_corpus(tmp_path, "train", crop_seconds=1.5, sample_rate=RATE, shuffle=4, seed=1)
    batches = list(make_loader(ds, batch_size=3, num_workers=0))
    assert len(batches) == 2  # 8 clips, drop_last
    b = batches[0]
    assert b["audio"].shape == (3, 1, 12_000) and b["audio"].dtype == torch.float32
    assert len(b["caption"]) == 3 and all(c.startswith("clip number") for c in b["caption"])
    assert set(b["length"].tolist()) <= {8_000, 12_000}


def test_loader_is_deterministic_under_a_seed_and_resamples(tmp_path):
    make_corpus(tmp_path)

    def keys_and_audio(seed, epoch=0, rate=RATE):
        ds = ShardDataset.from_corpus(tmp_path, "train", crop_seconds=0.5, sample_rate=rate, shuffle=8, seed=seed)
        ds.set_epoch(epoch)
        items = list(ds)
        return [i["key"] for i in items], torch.stack([i["audio"] for i in items])

    k1, a1 = keys_and_audio(3)
    k2, a2 = keys_and_audio(3)
    assert k1 == k2 and torch.equal(a1, a2)
    k3, _ = keys_and_audio(3, epoch=1)
    assert sorted(k3) == sorted(k1) and k3 != k1
    _, up = keys_and_audio(3, rate=16_000)
    assert up.shape[-1] == 8_000


def test_workers_split_shards_without_repeats(tmp_path):
    make_corpus(tmp_path, clips=20, per_shard=2)
    ds = ShardDataset.from_corpus(tmp_path, "train", crop_seconds=0.25, sample_rate=RATE, shuffle=0)
    keys = [k for b in make_loader(ds, batch_size=1, num_workers=2, drop_last=False) for k in b["key"]]
    assert sorted(keys) == sorted(f"clip-{i:03d}" for i in range(20) if i % 5 != 4)


def test_collate_keeps_metadata_lists():
    items = [{"audio": torch.zeros(1, 4), "length": 4, "start": 0.5, "caption": "a", "key": "k", "meta": {"x": 1}}] * 2
    out = collate(items)
    assert out["audio"].shape == (2, 1, 4) and out["meta"] == [{"x": 1}, {"x": 1}]
    assert out["start"].dtype == torch.float64 and out["start"].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_mid_epoch_exactly(tmp_path, workers):
    # 20 train clips in 10 shards of 2: with two workers each reads 5 shards (5 batches of 2), so
    # neither runs dry before the other and the round-robin order holds to the end of the epoch.
    make_corpus(tmp_path, clips=24, per_shard=2)
    ds = ShardDataset.from_corpus(tmp_path, "train", crop_seconds=0.25, sample_rate=RATE, seed=5)
    loader = make_loader(ds, batch_size=2, num_workers=workers)

    def batches(batches_done):
        ds.set_position(1, batches_done, 2)
        return [(b["key"], b["audio"]) for b in loader]

    full = batches(0)
    assert len(full) == 10 and len({k for keys, _ in full for k in keys}) == 20
    for n in (1, 2, 5, 7, 9, 10):
        resumed = batches(n)
        assert [keys for keys, _ in resumed] == [keys for keys, _ in full[n:]], n
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, full[n:], strict=True)), n
