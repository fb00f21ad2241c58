"""`melody data check`: tag-to-caption mappings per judge, hit rates, verdicts, and the written report."""

import json
import subprocess
import sys

import numpy as np
import pytest

from melody.data.check import (
    MSD,
    MTT,
    STYLE_TAGS,
    check_clips,
    check_judges,
    expected_tags,
    instrument_tags,
    is_heard,
    judges_for,
    vocabulary_for,
    wilson_lower,
    write_report,
)
from melody.ears.musicnn import MSD_TAGS, TAGS
from melody.errors import MelodyError


class FakeTagger:
    """Tags a clip by a table keyed on its first sample, so hit rates can be worked out by hand."""

    def __init__(self, table: dict[int, dict[str, float]], labels: tuple[str, ...] = TAGS):
        self.table = table
        self.labels = labels
        self.calls = 0

    def tags(self, wav, sample_rate):
        self.calls += 1
        probs = np.full(len(self.labels), 0.01)
        for tag, p in self.table[int(round(float(wav[0]) * 4))].items():
            probs[self.labels.index(tag)] = p
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
    paths = write_report(check_judges(clips, [tagger], k=5), tmp_path / "out")

    data = json.loads(paths["json"].read_text())["reports"]["MTT_musicnn"]
    assert data["k"] == 5 and len(data["tags"]) == 50 and data["hit_rate"] == 1.0
    assert [g["group"] for g in data["groups"]] == ["ambient", "rock"]
    assert len(data["groups"][0]["mean_probs"]) == 50 and len(data["clips"]) == 2

    md = paths["md"].read_text()
    assert "| style | clips | mean top-5 tags | expected tags | hit rate |" in md
    assert "| rock | 1 | rock 0.90" in md and "100% (1/1)" in md

    assert set(paths) == {"json", "md", "png_mtt"}
    assert paths["png_mtt"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    report = check_corpus(tmp_path, judges=[tagger], k=1, split="valid", limit=2).reports[0]
    assert len(report.clips) == 2 and report.hit_rate == 1.0
    assert [c.top_tags[0][0] for c in report.clips] == ["rock", "synth"]
    assert len(check_corpus(tmp_path, judges=[tagger], k=1).reports[0].clips) == 4


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


# --- the MSD judge and the combined verdict ------------------------------------------------------


def test_msd_maps_every_corpus_style_to_msd_tags():
    from melody.data.synth.arrange import STYLES
    from melody.data.synth.scores import STYLES as SCORE_STYLES

    for style in (*STYLES, *SCORE_STYLES):
        tags = MSD.style_tags[style]
        assert tags and set(tags) <= set(MSD_TAGS), style
    assert MSD.style_tags["jazz"] == ("jazz",) and "Hip-Hop" in MSD.style_tags["hip hop"]
    assert MSD.descriptive <= set(MSD.style_tags) and "classical strings" in MSD.descriptive and "jazz" not in MSD.descriptive
    assert all(set(tags) <= set(MSD_TAGS) for tags in MSD.style_tags.values())


@pytest.mark.parametrize(
    "name, tags",
    [
        ("acoustic guitar", ("guitar", "acoustic")),
        ("nylon-string guitar", ("guitar", "acoustic")),
        ("distortion guitar", ("guitar",)),
        ("clean electric guitar", ("guitar",)),
        ("acoustic bass", ()),
        ("acoustic grand piano", ()),
        ("drums", ()),
        ("violin", ()),
        ("synth pad", ()),
    ],
)
def test_msd_names_only_guitars(name, tags):
    assert instrument_tags(name, MSD) == tags
    assert set(instrument_tags(name, MSD)) <= set(MSD_TAGS)


def test_the_vocabulary_follows_the_taggers_labels():
    assert vocabulary_for(TAGS) is MTT and vocabulary_for(MSD_TAGS) is MSD
    with pytest.raises(MelodyError, match="no tag vocabulary"):
        vocabulary_for(("a", "b"))
    assert judges_for("both") == ("MTT_musicnn", "MSD_musicnn") and judges_for("MSD") == ("MSD_musicnn",)
    with pytest.raises(MelodyError, match="unknown judge 'nope'"):
        judges_for("nope")
    _, meta = _clip(0, "procedural", "folk", ["acoustic guitar", "fiddle"])
    assert expected_tags(meta, MSD) == (("folk", "acoustic", "country"), ("guitar", "acoustic"))
    assert expected_tags(meta, MTT) == ((), ("guitar", "violin", "strings"))


def test_heard_needs_a_margin_and_enough_clips():
    assert wilson_lower(0, 0) == 0.0 and wilson_lower(10, 10) == pytest.approx(0.722, abs=1e-3)
    assert is_heard(20, 20, 0.5) and not is_heard(2, 2, 0.5)  # 2/2: the Wilson bound (0.34) is below the control
    assert not is_heard(14, 20, 0.5)  # beats it by the margin, but 14/20's bound (0.48) does not
    assert not is_heard(13, 20, 0.5) and not is_heard(20, 20, None) and not is_heard(0, 0, 0.1)


def test_combined_verdict_says_which_judge_hears_each_style():
    # key -> (MTT top tag, MSD top tag), k = 1
    mtt = FakeTagger({1: {"rock": 0.9}, 2: {"piano": 0.9}, 3: {"guitar": 0.9}, 4: {"ambient": 0.9}, 5: {"slow": 0.9}})
    msd = FakeTagger({1: {"rock": 0.9}, 2: {"jazz": 0.9}, 3: {"rock": 0.9}, 4: {"pop": 0.9}, 5: {"pop": 0.9}}, MSD_TAGS)
    styles = [(1, "rock"), (2, "jazz"), (3, "blues"), (4, "ambient")]
    clips = [_clip(key, "procedural", style) for key, style in styles for _ in range(10)]
    clips.append(_clip(5, "recording", None))
    check = check_judges(clips, [mtt, msd], k=1)
    assert mtt.calls == msd.calls == 41  # every clip tagged once by each judge

    verdicts = {s.group: s for s in check.styles}
    assert list(verdicts) == ["ambient", "blues", "jazz", "rock"]  # recordings have no style
    assert {g: s.verdict for g, s in verdicts.items()} == {
        "ambient": "heard by MTT",  # MSD tags it "pop"
        "blues": "not heard",  # MTT has no blues tag and MSD calls it "rock"
        "jazz": "heard by MSD",
        "rock": "heard by MTT, MSD",
    }
    rock_mtt, rock_msd = verdicts["rock"].hearings  # blues clips are "guitar" to MTT and "rock" to MSD: false alarms
    assert (rock_mtt.judge, rock_mtt.hit_rate, rock_mtt.control) == ("MTT_musicnn", 1.0, pytest.approx(1 / 3))
    assert (rock_msd.judge, rock_msd.hit_rate, rock_msd.control) == ("MSD_musicnn", 1.0, pytest.approx(1 / 3))
    ambient = {g.group: g for g in check.reports[0].groups}["ambient"]
    assert ambient.style_false_alarm_rate == 0.0  # the recording's "slow" is no false alarm: its style is unknown
    blues_mtt, blues_msd = verdicts["blues"].hearings
    assert blues_mtt.style_scored == 0 and blues_mtt.hit_rate is None and blues_mtt.control is None
    assert blues_msd.hit_rate == 0.0 and 0.0 < blues_msd.control < 1.0  # its "rock" meets the rock captions' tags
    assert verdicts["rock"].heard_by == ["MTT_musicnn", "MSD_musicnn"]

    only_mtt = check_judges(clips, [mtt], k=1)
    assert {s.group: s.verdict for s in only_mtt.styles}["jazz"] == "untested (no style tag)"


def test_a_judge_that_says_the_same_of_everything_hears_nothing():
    same = {key: {"jazz": 0.9, "blues": 0.8, "funk": 0.7} for key in (1, 2, 3)}
    clips = [_clip(key, "procedural", style) for key, style in [(1, "jazz"), (2, "blues"), (3, "funk")] for _ in range(10)]
    check = check_judges(clips, [FakeTagger(same, MSD_TAGS)], k=3)
    assert all(s.verdict == "not heard" for s in check.styles)
    assert all(s.hearings[0].hit_rate == 1.0 and s.hearings[0].control == 1.0 for s in check.styles)


def test_a_tag_that_fires_on_every_style_is_not_heard():
    calls_everything_jazz = FakeTagger({1: {"jazz": 0.9}, 2: {"jazz": 0.9}, 3: {"jazz": 0.9}}, MSD_TAGS)
    clips = [_clip(key, "procedural", style) for key, style in [(1, "jazz"), (2, "rock"), (3, "blues")] for _ in range(10)]
    jazz = {g.group: g for g in check_clips(clips, calls_everything_jazz, k=1).groups}["jazz"]
    assert jazz.style_hit_rate == 1.0 and jazz.style_mismatched_hit_rate == 0.0  # other captions don't say jazz...
    assert jazz.style_false_alarm_rate == 1.0 and jazz.style_control == 1.0  # ...but other clips are "jazz" too
    assert not jazz.style_heard


def test_report_has_a_combined_table_and_a_section_per_judge(tmp_path):
    mtt = FakeTagger({1: {"classical": 0.9}, 2: {"rock": 0.9}})
    msd = FakeTagger({1: {"beautiful": 0.9}, 2: {"rock": 0.9}}, MSD_TAGS)
    clips = [_clip(1, "score", "baroque", ["harpsichord"]), _clip(2, "procedural", "rock", ["distortion guitar"])]
    paths = write_report(check_judges(clips, [mtt, msd], k=1), tmp_path)
    md = paths["md"].read_text()
    assert "| style | clips | MTT hit/control | MSD hit/control | verdict |" in md
    assert "| baroque | 1 | 100% / 0% | 100%* / 0% | heard by MTT, MSD |" in md
    assert "\\* descriptors, not a genre" in md
    assert "## musicnn (MTT) tags" in md and "## musicnn (MSD) tags" in md
    assert md.index("MSD hit/control") < md.index("## musicnn (MTT) tags") < md.index("## musicnn (MSD) tags")
    data = json.loads(paths["json"].read_text())
    assert data["judges"] == ["MTT_musicnn", "MSD_musicnn"] and set(data["reports"]) == set(data["judges"])
    assert data["styles"][0]["group"] == "baroque" and data["styles"][0]["hearings"][1]["descriptive"]
    assert (tmp_path / "check_mtt.png").exists() and (tmp_path / "check_msd.png").exists()


def _tiny_corpus(root):
    from melody.data.shards import ShardWriter, write_manifest

    t = np.arange(4 * 16_000) / 16_000
    w = ShardWriter(root, "train", 16_000)
    for i, (style, instruments, hz) in enumerate(
        [("rock", ["distortion guitar", "drums"], 110), ("jazz", ["piano", "upright bass"], 220), ("ambient", ["synth pad"], 330)]
    ):
        audio = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        w.add(f"k{i}", audio, {"caption": f"a {style} clip", "source": "procedural",
                               "attributes": {"style": style, "instruments": instruments}})  # fmt: skip
    w.flush()
    write_manifest(root, {"train": w.summary()}, sample_rate=16_000, channels=1)


def _melody(*args):
    return subprocess.run([sys.executable, "-m", "melody.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_check_writes_both_judges(tmp_path):
    _tiny_corpus(tmp_path / "corpus")
    out = _melody("data", "check", str(tmp_path / "corpus"), "--out", str(tmp_path / "report"), "--limit", "2", "--no-progress")
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "report" / "check.md").read_text()
    assert "| style | clips | MTT hit/control | MSD hit/control | verdict |" in md
    assert "## musicnn (MTT) tags" in md and "## musicnn (MSD) tags" in md
    assert "| jazz | 1 | n/a |" in md and "ambient" not in md.split("## musicnn (MTT)")[0]  # --limit 2
    for name in ("check.json", "check_mtt.png", "check_msd.png"):
        assert (tmp_path / "report" / name).exists(), name
    assert json.loads((tmp_path / "report" / "check.json").read_text())["judges"] == ["MTT_musicnn", "MSD_musicnn"]

    msd = tmp_path / "msd"
    out = _melody("data", "check", str(tmp_path / "corpus"), "--out", str(msd), "--judge", "msd", "--limit", "1", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in msd.iterdir()) == ["check.json", "check.md", "check_msd.png"]
    assert "## musicnn (MTT)" not in out.stdout and "| style | clips | MSD hit/control | verdict |" in out.stdout


def test_cli_check_rejects_an_unknown_judge(tmp_path):
    _tiny_corpus(tmp_path)
    out = _melody("data", "check", str(tmp_path), "--judge", "nope")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: unknown judge 'nope'; use mtt, msd or both"
    ]
