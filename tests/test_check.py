"""`melody data check`: tag-to-caption mappings, hit rates, and the written report."""

import json

import numpy as np
import pytest

from melody.data.check import STYLE_TAGS, check_clips, expected_tags, instrument_tags, write_report
from melody.ears.musicnn import TAGS
from melody.errors import MelodyError


class FakeTagger:
    """Tags a clip by a table keyed on its first sample, so hit rates can be worked out by hand."""

    labels = TAGS

    def __init__(self, table: dict[int, dict[str, float]]):
        self.table = table

    def tags(self, wav, sample_rate):
        probs = np.full(len(TAGS), 0.01)
        for tag, p in self.table[int(round(float(wav[0]) * 4))].items():
            probs[TAGS.index(tag)] = p
        return probs


def _clip(key: int, source: str, style, instruments=(), caption="") -> tuple[np.ndarray, dict]:
    meta = {"caption": caption, "source": source, "attributes": {"style": style, "instruments": list(instruments)}}
    return np.full(100, key / 4, np.float32), meta  # survives 16-bit FLAC in shards


@pytest.mark.parametrize(
    "name, tags",
    [
        ("distortion guitar", ("guitar",)),
        ("slap bass", ()),
        ("synth bass", ("synth", "electronic")),
        ("bass drum", ("drums", "beat", "beats")),
        ("drums", ("drums", "beat", "beats")),
        ("harpsichord", ("harpsichord",)),
        ("Orchestral Harp", ("harp",)),
        ("string ensemble", ("strings", "violin", "cello")),
        ("violin", ("violin", "strings")),
        ("choir aahs", ("choir", "choral", "vocal", "voice", "vocals", "singing")),
        ("synth pad", ("synth", "electronic")),
        ("church organ", ()),
        ("soprano sax", ()),
        ("synth brass", ("synth", "electronic")),
        ("polysynth stabs", ("synth", "electronic")),
        ("nylon-string guitar", ("guitar",)),
        ("violoncello", ("cello", "strings")),
        ("tin whistle", ("flute",)),
    ],
)
def test_instrument_names_map_to_the_tags_that_name_them(name, tags):
    assert instrument_tags(name) == tags


def test_every_mapped_tag_is_an_mtt_tag():
    mapped = {t for tags in STYLE_TAGS.values() for t in tags}
    names = ("drums", "synth", "harpsichord", "harp", "piano", "guitar", "violin", "cello", "strings", "flute", "sitar", "choir")
    for name in names:
        mapped |= set(instrument_tags(name))
    assert mapped <= set(TAGS)


def test_expected_tags_split_style_and_instruments():
    _, meta = _clip(0, "procedural", "rock", ["distortion guitar", "slap bass", "drums"])
    assert expected_tags(meta) == (("rock", "guitar", "metal"), ("guitar", "drums", "beat", "beats"))
    _, meta = _clip(0, "recording", None)
    assert expected_tags(meta) == ((), ())


def test_check_clips_counts_hits_per_group():
    tagger = FakeTagger(
        {
            1: {"rock": 0.9, "loud": 0.8},  # rock clip: style hit
            2: {"piano": 0.9, "slow": 0.5},  # rock clip: miss (no rock/guitar/metal/drums tags in top-2)
            3: {"piano": 0.7, "drums": 0.6},  # jazz clip: no style tag, instrument hit (drums)
            4: {"guitar": 0.9, "rock": 0.2},  # recording: not scored
            5: {"classical": 0.9, "strings": 0.8},  # score folk: no style tag, instrument hit (violin? no: strings)
            6: {"quiet": 0.9, "soft": 0.8},  # procedural folk, flute: miss
        }
    )
    clips = [
        _clip(1, "procedural", "rock", ["distortion guitar"], "a loud rock song"),
        _clip(2, "procedural", "rock", ["distortion guitar", "drums"]),
        _clip(3, "procedural", "jazz", ["piano", "upright bass", "drums"]),
        _clip(4, "recording", None),
        _clip(5, "score", "folk", ["violin"]),
        _clip(6, "procedural", "folk", ["flute"]),
    ]
    report = check_clips(clips, tagger, k=2)
    groups = {g.group: g for g in report.groups}
    assert list(groups) == ["jazz", "procedural: folk", "rock", "score: folk", "recording"]
    assert [c.hit for c in report.clips] == [True, False, True, None, True, False]

    rock = groups["rock"]
    assert (rock.clips, rock.scored, rock.hits, rock.hit_rate) == (2, 2, 1, 0.5)
    assert (rock.style_scored, rock.style_hits, rock.instrument_scored, rock.instrument_hits) == (2, 1, 2, 0)
    assert rock.expected_tags[:3] == ["rock", "guitar", "metal"] and "drums" in rock.expected_tags
    assert rock.mean_top_tags[0][0] == "rock"
    assert rock.mean_probs[TAGS.index("piano")] == pytest.approx((0.01 + 0.9) / 2)

    jazz = groups["jazz"]
    assert jazz.style_hit_rate is None and jazz.instrument_hit_rate == 1.0 and jazz.hit_rate == 1.0
    assert groups["recording"].scored == 0 and groups["recording"].hit_rate is None
    assert groups["score: folk"].hit_rate == 1.0 and groups["procedural: folk"].hit_rate == 0.0
    assert report.hit_rate == pytest.approx(3 / 5)
    assert report.clips[0].caption == "a loud rock song" and report.clips[0].top_tags[0] == ("rock", 0.9)


def test_check_clips_on_nothing_raises():
    with pytest.raises(MelodyError, match="empty"):
        check_clips([], FakeTagger({}))


def test_write_report_writes_json_markdown_and_heat_map(tmp_path):
    tagger = FakeTagger({1: {"rock": 0.9}, 2: {"ambient": 0.8, "synth": 0.7}})
    clips = [_clip(1, "procedural", "rock", ["distortion guitar"]), _clip(2, "procedural", "ambient", ["synth pad"])]
    paths = write_report(check_clips(clips, tagger, k=5), tmp_path / "out")

    data = json.loads(paths["json"].read_text())
    assert data["k"] == 5 and len(data["tags"]) == 50 and data["hit_rate"] == 1.0
    assert [g["group"] for g in data["groups"]] == ["ambient", "rock"]
    assert len(data["groups"][0]["mean_probs"]) == 50 and len(data["clips"]) == 2

    md = paths["md"].read_text()
    assert "| style | clips | mean top-5 tags | expected tags | hit rate |" in md
    assert "| rock | 1 | rock 0.90" in md and "100% (1/1)" in md

    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_clips_with_the_real_tagger():
    from melody.ears.musicnn import MusicnnTagger

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, 4 * 24000).astype(np.float32)
    t = np.arange(4 * 24000) / 24000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    ambient = {"source": "procedural", "attributes": {"style": "ambient", "instruments": ["synth pad"]}}
    clips = [(noise, {"source": "recording", "attributes": {}}), (tone, ambient)]
    report = check_clips(clips, MusicnnTagger.load(), k=5)
    assert [g.group for g in report.groups] == ["ambient", "recording"]
    assert all(len(c.top_tags) == 5 for c in report.clips)
    assert report.clips[1].hit in (True, False) and report.clips[0].hit is None


def test_check_corpus_reads_clips_from_real_shards(tmp_path):
    from melody.data.check import check_corpus
    from melody.data.shards import ShardWriter, write_manifest

    writers = {s: ShardWriter(tmp_path, s, 24_000) for s in ("train", "valid")}
    for i, (key, style, split) in enumerate([(1, "rock", "valid"), (2, "ambient", "valid"), (1, "rock", "valid"), (2, "ambient", "train")]):
        audio, meta = _clip(key, "procedural", style, ["synth pad"])
        writers[split].add(f"clip{i}", audio, meta)
    for w in writers.values():
        w.flush()
    write_manifest(tmp_path, {s: w.summary() for s, w in writers.items()}, sample_rate=24_000, channels=1)
    tagger = FakeTagger({1: {"rock": 0.9}, 2: {"synth": 0.9}})
    report = check_corpus(tmp_path, tagger=tagger, k=1, split="valid", limit=2)
    assert len(report.clips) == 2 and report.hit_rate == 1.0
    assert [c.top_tags[0][0] for c in report.clips] == ["rock", "synth"]
    assert len(check_corpus(tmp_path, tagger=tagger, k=1).clips) == 4


def test_control_matches_top_tags_against_other_groups_captions():
    rock = [_clip(1, "procedural", "rock", ["distortion guitar"]) for _ in range(3)]
    ambient = [_clip(2, "procedural", "ambient", ["synth pad"]) for _ in range(3)]
    discerning = FakeTagger({1: {"rock": 0.9}, 2: {"ambient": 0.9}})
    report = check_clips(rock + ambient, discerning, k=1)
    assert report.hit_rate == 1.0 and report.mismatched_hit_rate == 0.0
    deaf = FakeTagger({1: {"rock": 0.9, "synth": 0.8}, 2: {"rock": 0.9, "synth": 0.8}})  # same tags for all
    report = check_clips(rock + ambient, deaf, k=2)
    assert report.hit_rate == 1.0 and report.mismatched_hit_rate == 1.0
    assert all(g.mismatched_hit_rate == 1.0 for g in report.groups)
    alone = check_clips(rock, discerning, k=1)  # one group: no other captions to compare with
    assert alone.mismatched_hit_rate is None and alone.groups[0].mismatched_hit_rate is None
