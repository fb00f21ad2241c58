"""Corpora whose shards live elsewhere: `pipe:` URLs and brace patterns in the manifest, read by every stage."""

import json

import numpy as np
import pytest
from test_cli import melody_one_thread
from test_engine import config, train
from test_shards import make_corpus

from melody.data.loader import ShardDataset
from melody.data.shards import MANIFEST, expand_shards, is_url, iter_samples, relocate_manifest, shard_paths
from melody.data.stats import corpus_stats
from melody.errors import MelodyError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("local"), clips=10, per_shard=3)


@pytest.fixture(scope="module")
def remote(corpus, tmp_path_factory):
    """The same corpus read through `pipe:cat …` (as `pipe:aws s3 cp … -` or `pipe:curl …` would be)."""
    out = tmp_path_factory.mktemp("remote")
    relocate_manifest(corpus, out, f"pipe:cat {corpus}/{{shard}}")
    return out


def test_urls_and_local_paths_are_told_apart():
    assert is_url("pipe:aws s3 cp s3://b/x.tar -") and is_url("https://host/x.tar") and is_url("file:/x.tar")
    assert not is_url("train/shard-000000.tar") and not is_url("/abs/train/shard-000000.tar")


def test_a_relocated_corpus_reads_the_same_clips_through_its_urls(corpus, remote):
    urls = shard_paths(remote, "train")
    assert all(isinstance(u, str) and u.startswith("pipe:cat ") for u in urls) and len(urls) == 3
    assert json.loads((remote / MANIFEST).read_text())["splits"]["train"]["clips"] == 8
    local, far = list(iter_samples(corpus, "train")), list(iter_samples(remote, "train"))
    assert [s["key"] for s in far] == [s["key"] for s in local]
    for a, b in zip(local, far):
        np.testing.assert_array_equal(a["audio"], b["audio"])
        assert a["meta"] == b["meta"]
    crops = [ShardDataset.from_corpus(root, "train", crop_seconds=0.5, sample_rate=8000, seed=4) for root in (corpus, remote)]
    a, b = ([(s["key"], s["audio"].numpy()) for s in c] for c in crops)
    assert [k for k, _ in a] == [k for k, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_brace_patterns_expand_in_the_manifest(corpus, tmp_path):
    pattern = expand_shards(corpus, ["train/shard-{000000..000002}.tar"])
    assert pattern == shard_paths(corpus, "train")
    manifest = json.loads((corpus / MANIFEST).read_text())
    manifest["splits"]["train"]["shards"] = [f"pipe:cat {corpus}/train/shard-{{000000..000002}}.tar"]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert [s["key"] for s in iter_samples(tmp_path, "train")] == [s["key"] for s in iter_samples(corpus, "train")]


def test_a_stage_trains_from_remote_shards_as_from_local_ones(corpus, remote, tmp_path):
    steps = "train.steps=2"
    train(config(steps), corpus, tmp_path / "local")
    train(config(steps), remote, tmp_path / "remote")
    lines = {name: (tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("local", "remote")}
    drop = ("train/steps_per_s",)
    strip = [[{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines[n]] for n in lines]
    assert strip[0] == strip[1] and len(strip[0]) == 2


def test_stats_read_remote_shards(corpus, remote):
    local, far = corpus_stats(corpus).to_dict(), corpus_stats(remote).to_dict()
    assert far["splits"] == local["splits"]


def test_a_failing_shard_command_is_one_line_naming_it(corpus, tmp_path):
    relocate_manifest(corpus, tmp_path, "pipe:cat /nonexistent/{shard}")
    with pytest.raises(MelodyError) as err:
        next(iter(ShardDataset.from_corpus(tmp_path, "train", crop_seconds=0.5, sample_rate=8000)))
    text = str(err.value)
    assert "\n" not in text and "pipe:cat /nonexistent/train/shard-" in text and "manifest" in text


def test_relocating_needs_a_shard_placeholder_and_another_folder(corpus, tmp_path):
    with pytest.raises(MelodyError, match=r"no \{shard\}"):
        relocate_manifest(corpus, tmp_path, "pipe:cat /x.tar")
    with pytest.raises(MelodyError, match="is the source corpus"):
        relocate_manifest(corpus, corpus, "pipe:cat {shard}")
    out = melody_one_thread("data", "manifest", str(corpus), str(tmp_path / "m"), "--url", "https://host/c.tar")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "{shard}" in lines[0]
    ok = melody_one_thread("data", "manifest", str(corpus), str(tmp_path / "m"), "--url", "https://host/c/{shard}")
    assert ok.returncode == 0 and "train with --data" in ok.stdout
    assert shard_paths(tmp_path / "m", "valid") == ["https://host/c/valid/shard-000000.tar"]
