"""`melody data synth`: a tiny build of the built-in corpus, end to end."""

import numpy as np
import pytest

from melody.config import preset
from melody.data.shards import iter_samples, read_manifest, shard_paths, split_of
from melody.data.synth.build import allot_clips, build_corpus, cut_clips, plan_seconds
from melody.data.synth.captions import caption_mentions
from melody.errors import MelodyError


def tiny_data(hours=0.02, seed=0):
    cfg = preset("tiny").data
    cfg.hours, cfg.seed = hours, seed
    cfg.valid_fraction = cfg.test_fraction = 0.25  # tiny builds still get every split now and then
    cfg.soundfont = "/usr/share/sounds/sf2/TimGM6mb.sf2"  # 6 MB: quick to load in each worker
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "c"
    report = build_corpus(root, tiny_data(), workers=2, progress=False)
    return root, report


def test_tiny_build_writes_valid_shards_from_all_three_sources(corpus):
    root, report = corpus
    manifest = read_manifest(root)
    assert manifest["sample_rate"] == 24_000 and manifest["source"] == "synth"
    samples = list(iter_samples(root))
    assert len(samples) == sum(report.clips.values()) >= 6
    sources = {s["meta"]["source"] for s in samples}
    assert sources == {"procedural", "score", "recording"}
    for s in samples:
        assert s["audio"].shape == (1, 240_000) and s["audio"].dtype == np.float32 and s["sample_rate"] == 24_000
        assert np.abs(s["audio"]).max() > 0.01
        assert s["meta"]["real_recording"] == (s["meta"]["source"] == "recording")
        assert s["meta"]["split"] == split_of(s["meta"]["piece"], 0, 0.25, 0.25)


def test_captions_match_their_metadata(corpus):
    root, _ = corpus
    for s in iter_samples(root):
        meta = s["meta"]
        assert meta["caption"] and meta["caption"] == meta["captions"][0]
        for caption in meta["captions"]:
            assert caption_mentions(caption, meta["attributes"]), (caption, meta["attributes"])
        if meta["source"] == "recording":
            assert meta["attributes"]["style"] is None and meta["attributes"]["instruments"] == []


def test_pieces_never_straddle_splits(corpus):
    root, _ = corpus
    split_of_piece = {}
    for s in iter_samples(root):
        assert split_of_piece.setdefault(s["meta"]["piece"], s["meta"]["split"]) == s["meta"]["split"]


def test_build_is_deterministic_whatever_the_worker_count(corpus, tmp_path):
    root, _ = corpus
    again = tmp_path / "again"
    build_corpus(again, tiny_data(), workers=1, progress=False)
    first, second = shard_paths(root), shard_paths(again)
    assert [p.relative_to(root) for p in first] == [p.relative_to(again) for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))


def test_another_seed_builds_another_corpus(corpus, tmp_path):
    root, _ = corpus
    other = tmp_path / "other"
    cfg = tiny_data(seed=1)
    cfg.score_share = cfg.recording_share = 0.0
    build_corpus(other, cfg, workers=1, progress=False)
    captions = {s["meta"]["caption"] for s in iter_samples(other)}
    assert captions.isdisjoint({s["meta"]["caption"] for s in iter_samples(root)})


def test_build_refuses_to_overwrite_and_bad_plans(corpus):
    root, _ = corpus
    with pytest.raises(MelodyError, match="already holds a corpus"):
        build_corpus(root, tiny_data(), workers=1, progress=False)
    cfg = tiny_data()
    cfg.procedural_share = cfg.score_share = cfg.recording_share = 0.0
    with pytest.raises(MelodyError, match="shares"):
        plan_seconds(cfg)


def test_cut_clips_drops_the_short_tail():
    clips = cut_clips(np.arange(25, dtype=np.float32), 1, 10.0)
    assert [o for o, _ in clips] == [0.0, 10.0] and all(len(c) == 10 for _, c in clips)


def test_recording_clips_are_spread_over_every_track():
    assert allot_clips([10, 10, 10], 9) == [3, 3, 3]
    assert allot_clips([1, 10, 10], 9) == [1, 4, 4]
    assert allot_clips([2, 3], 100) == [2, 3]  # never more than a track holds
    assert allot_clips([5, 5, 5], 4) == [2, 1, 1]
    assert sum(allot_clips([7, 0, 30, 2, 11], 25)) == 25
