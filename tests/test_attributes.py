"""Attribute classifiers (`melody.eval.attributes`): labels from corpus metadata, exact accuracy, rare classes, beating
chance on real (rendered) clips heard by musicnn, one-line errors, and their rows in `melody eval music`'s report."""

import copy
import dataclasses
import json

import numpy as np
import pytest
from test_cli import melody
from test_pipeline import bundle  # noqa: F401 (the fixture)

from melody.data.shards import ShardWriter, write_manifest
from melody.ears.musicnn import MusicnnTagger
from melody.errors import MelodyError
from melody.eval.attributes import (ATTRIBUTES, Accuracy, AttributeReport, accuracy, clip_labels, fit_attribute_classifiers,
                                    fit_classifier, score_attributes, spread_clips, spread_indices, train_classifiers)
from melody.eval.compare import compare_reports
from melody.eval.music import evaluate_music, markdown, summary, write_music_report
from melody.eval.stats import mcnemar_p, wilson_interval
from melody.eval.quality import musicnn_outputs
from melody.pipeline import MeLoDy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16_000


def meta(style=None, programs=(), bpm=None, mode=None):
    return {"caption": f"a {style or 'recorded'} clip", "attributes": {"style": style, "gm_programs": list(programs),
                                                                        "tempo_bpm": bpm, "mode": mode}}


def test_labels_come_from_the_metadata():
    jazz = meta("jazz", [66, 0, 32, -1], 171.0, "minor")  # tenor sax leads a jazz quartet
    assert clip_labels(jazz) == {"style": "jazz", "instrument family": "reed", "tempo class": "fast", "mode": "minor"}
    folk = meta("folk", [110, 21], 120.0, "mixolydian")  # the fiddle is a violin patch; a major third
    assert clip_labels(folk) == {"style": "folk", "instrument family": "strings", "tempo class": "fast", "mode": "major"}
    assert clip_labels(meta("baroque", [19], 76.0, "Dorian")) == {"style": "baroque", "instrument family": "organ",
                                                                  "tempo class": "slow", "mode": "minor"}
    assert clip_labels(meta("hip hop", [-1, 38], 90.0, "lydian"))["instrument family"] == "percussion"
    assert clip_labels(meta("ambient", [90], 76.5, "major"))["tempo class"] == "medium"  # just above SLOW_BPM
    assert clip_labels(meta("ambient", [81], 119.9, "blues"))["mode"] is None  # not a scale with a third we know
    recording = meta(None, [], 159.5, "major")  # a real recording: tempo and key measured, no style or instruments
    assert clip_labels(recording) == {"style": None, "instrument family": None, "tempo class": "fast", "mode": "major"}
    assert clip_labels({"caption": "no attributes"}) == dict.fromkeys(ATTRIBUTES)
    assert clip_labels(meta("rock", [True], 0.0, None))["instrument family"] is None  # a bool is no GM program


def test_accuracy_counts_only_clips_of_a_learnt_class():
    predicted = ["a", "b", "a", "a", "c", "b"]
    labels = ["a", "a", "a", None, "zzz", "b"]  # None: no label; "zzz": a class the classifier never learnt
    assert accuracy(predicted, labels, ("a", "b", "c")) == Accuracy(3 / 4, 4, 3 / 4, wilson_interval(3, 4))
    assert accuracy(["a"], ["b"], ("a", "b")) == Accuracy(0.0, 1, 1.0, wilson_interval(0, 1))
    assert accuracy(["a"], [None], ("a", "b")) == Accuracy(None, 0, None)
    with pytest.raises(MelodyError, match="2 predictions for 1 labels"):
        accuracy(["a", "b"], ["a"], ("a", "b"))


def test_rare_classes_are_dropped_and_separable_features_are_learnt():
    """Three Gaussian blobs in 8-d, 6 clips each, and a class of 3 clips: the rare class is dropped and reported, the
    others are told apart exactly (class centres 10 σ apart); unlabelled rows are ignored."""
    rng = np.random.default_rng(0)
    centres = {"x": 0, "y": 1, "z": 2, "rare": 3}
    labels = [c for c in ("x", "y", "z") for _ in range(6)] + ["rare"] * 3 + [None] * 2
    features = np.stack([10 * np.eye(8)[centres.get(c, 4)] + rng.normal(size=8) for c in labels])
    clf = fit_classifier("style", features, labels)
    assert clf.classes == ("x", "y", "z") and clf.dropped == {"rare": 3} and clf.train_clips == 18
    test = np.stack([10 * np.eye(8)[centres[c]] + rng.normal(size=8) for c in ("x", "y", "z") * 3])
    assert clf.predict(test) == ["x", "y", "z"] * 3
    lonely = fit_classifier("mode", features, ["major"] * 18 + ["minor"] * 3 + [None] * 2)
    assert lonely.classes == ("major",) and lonely.dropped == {"minor": 3} and lonely.model is None
    scores = score_attributes({"mode": lonely}, test, test, [meta(mode="major")] * 9, list(range(9)))
    assert scores["mode"].real.accuracy is None and scores["mode"].note.startswith("not measured: fewer than 2 classes")


def test_spread_indices_cover_the_split_in_order():
    assert spread_indices(10, 4) == [0, 2, 5, 7]
    assert spread_indices(3, 5) == [0, 1, 2]
    assert spread_indices(935, 400)[-1] == 932 and len(set(spread_indices(935, 400))) == 400


STYLES = {  # style → (lead GM program, BPM, mode), each rendered with its own sound below
    "ambient": (0, 60.0, "major"),  # piano; slow
    "rock": (30, 100.0, "dorian"),  # distortion guitar; medium; minor
    "techno": (81, 140.0, "minor"),  # saw lead; fast
}


def render(style, seconds, rng):
    """A clip whose sound follows its style: a soft sustained chord, a clipped guitar-like tone over low thumps, a
    sawtooth over noise hats; pitch and level vary from clip to clip."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = rng.uniform(180, 260)
    beat = 60.0 / STYLES[style][1]
    since = t % beat
    if style == "ambient":
        x = sum(np.sin(2 * np.pi * f0 * r * t) for r in (1, 1.26, 1.5)) * (0.6 + 0.4 * np.sin(2 * np.pi * t / 4))
    elif style == "rock":
        x = np.clip(3 * np.sin(2 * np.pi * f0 * t), -1, 1) + 2 * np.sin(2 * np.pi * 55 * t) * np.exp(-since * 12)
    else:
        x = 2 * ((f0 * 2 * t) % 1.0) - 1 + rng.normal(size=t.size) * np.exp(-since * 60)
    return (rng.uniform(0.1, 0.2) * x / np.abs(x).max()).astype(np.float32)


def make_attribute_corpus(root, train_per_style=5, test_per_style=2, seconds=3.0, rare=2, empty_train=False):
    """'train' and 'test' splits of rendered clips labelled by `STYLES`, plus `rare` train clips of a style too rare to
    learn (and no other attribute)."""
    rng = np.random.default_rng(0)
    writers = {s: ShardWriter(root, s, RATE, clips_per_shard=4) for s in ("train", "test")}
    for split, n in (("train", 0 if empty_train else train_per_style), ("test", test_per_style)):
        for i in range(n):
            for style, (program, bpm, mode) in STYLES.items():
                clip_meta = meta(style, [program, -1], bpm, mode) | {"caption": f"a {style} piece, at {bpm:g} BPM."}
                writers[split].add(f"{split}-{style}-{i}", render(style, seconds, rng), clip_meta)
    for i in range(0 if empty_train else rare):
        writers["train"].add(f"train-rare-{i}", render("ambient", seconds, rng), meta("polka"))
    for w in writers.values():
        w.flush()
    write_manifest(root, {s: w.summary() for s, w in writers.items()}, sample_rate=RATE, channels=1)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_attribute_corpus(tmp_path_factory.mktemp("attributes") / "corpus")


def test_classifiers_beat_chance_on_real_clips(corpus):
    tagger = MusicnnTagger.load()
    classifiers, read = train_classifiers(spread_clips(corpus, "train", 3.0, RATE, 100), RATE, tagger)
    assert read == 17
    assert classifiers["style"].dropped == {"polka": 2} and classifiers["style"].classes == ("ambient", "rock", "techno")
    assert classifiers["instrument family"].classes == ("guitar", "piano", "synth")
    assert classifiers["tempo class"].classes == ("fast", "medium", "slow") and classifiers["mode"].classes == ("major", "minor")
    test = list(spread_clips(corpus, "test", 3.0, RATE, 100))
    features = musicnn_outputs([audio for audio, _ in test], RATE, tagger).embeddings
    metas = [m for _, m in test]
    scores = score_attributes(classifiers, features, features[::-1], metas, list(range(len(test)))[::-1])
    for name, score in scores.items():
        assert score.real.clips == 6 and score.chance == 1 / len(score.classes)
        assert score.real.accuracy >= 5 / 6 > max(score.chance, score.real.majority), name
        # generated = the real clips reversed, and the control pairs each with the reversed labels: they agree
        assert score.mismatched.accuracy == score.real.accuracy


def test_empty_train_split_is_a_one_line_error(tmp_path):
    empty = make_attribute_corpus(tmp_path / "corpus", empty_train=True)
    for call, message in ((lambda: spread_clips(empty, "train", 1.0, RATE, 10), "'train' split holds no clips"),
                          (lambda: spread_clips(empty, "valid", 1.0, RATE, 10), "no 'valid' split"),
                          (lambda: spread_clips(empty, "test", 1.0, RATE, 0), "at least 1"),
                          (lambda: train_classifiers(iter([]), RATE), "no train clips"),
                          (lambda: fit_attribute_classifiers(np.zeros((0, 200)), []), "no train clips")):
        with pytest.raises(MelodyError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def evaluated(bundle, corpus):  # noqa: F811
    model = MeLoDy.from_pretrained(bundle)
    report, _ = evaluate_music(model, corpus, seconds=1.0, steps=2, batch_size=6, attribute_clips=16)
    return model, report


def test_eval_music_reports_the_attribute_classifiers(evaluated):
    _, report = evaluated
    attributes = report.attributes
    assert attributes.measured and attributes.train_split == "train" and attributes.train_clips == 16
    assert list(attributes.scores) == list(ATTRIBUTES) and "musicnn" in attributes.features
    for score in attributes.scores.values():
        assert score.real.clips == 6 and score.generated.clips == 6 and score.mismatched.clips == 6
        assert 0 <= score.generated.accuracy <= 1 and 0 <= score.real.accuracy <= 1
    # 16 of the 17 train clips spread over the split: all but the last, so one 'polka' clip is left, too few
    assert attributes.scores["style"].dropped == {"polka": 1} and attributes.scores["style"].train_clips == 15
    table = markdown(report)
    for name in ATTRIBUTES:
        assert f"| {name} accuracy ↑ |" in table
    assert "Attribute classifiers: balanced logistic regression" in table and "attribute accuracy" in summary(report)
    assert "not heard" not in table  # the rendered sounds are told apart on real clips
    deaf = dataclasses.replace(attributes.scores["mode"], real=Accuracy(0.5, 6, 0.5))  # no better than always "minor"
    deaf_table = markdown(dataclasses.replace(report, attributes=dataclasses.replace(
        attributes, scores={**attributes.scores, "mode": deaf})))
    assert "| mode accuracy ↑ |" in deaf_table and "**not heard**" in deaf_table.split("| mode accuracy")[1].splitlines()[0]
    off = dataclasses.replace(report, attributes=AttributeReport("train", 0, "musicnn", {}, "not measured: --attribute-clips 0"))
    assert "| attribute classifiers | n/a | n/a | n/a | not measured: --attribute-clips 0 |" in markdown(off)
    assert "not measured: --attribute-clips 0" in summary(off)


def test_eval_music_refuses_a_negative_clip_count(evaluated, corpus):
    model, _ = evaluated
    with pytest.raises(MelodyError, match="--attribute-clips must be 0"):
        evaluate_music(model, corpus, seconds=1.0, attribute_clips=-1)


def flipped(report: dict, attribute: str) -> dict:
    """A copy of the report whose generated clips get `attribute` right exactly where the report's got it wrong."""
    other = copy.deepcopy(report)
    score = other["attributes"]["scores"][attribute]
    classes = score["classes"]
    for row in score["per_clip"]:
        asked, _, generated = row
        if asked in classes:
            row[2] = asked if generated != asked else next(c for c in classes if c != asked)
    for clip in other["per_clip"]:
        clip["mcc_generated"] += 0.1
    return other


def test_eval_compare_pairs_two_reports_clip_by_clip(evaluated, tmp_path):
    _, report = evaluated
    for score in report.attributes.scores.values():  # the per-clip predictions behind each accuracy
        counted = [(asked, generated) for asked, _, generated in score.per_clip if asked in score.classes]
        assert len(score.per_clip) == report.clips and len(counted) == score.generated.clips
        right = sum(asked == generated for asked, generated in counted)
        assert score.generated.accuracy == right / len(counted)
        assert score.generated.interval == wilson_interval(right, len(counted))
    assert f"{report.attributes.scores['style'].generated.accuracy:.3f} (" in markdown(report)  # shown with its interval
    silence = np.zeros(RATE, dtype=np.float32)
    write_music_report(report, [("a caption", silence, silence)], tmp_path / "first")
    first = json.loads((tmp_path / "first" / "music_eval.json").read_text())

    same = compare_reports(first, first)
    assert same.clips == report.clips and [o.name for o in same.outcomes][:4] == [f"{a} accuracy" for a in ATTRIBUTES]
    assert all(o.only_first == o.only_second == 0 and o.p == 1.0 for o in same.outcomes)
    assert all(v.difference == 0.0 for v in same.values if v.clips)

    second = flipped(first, "style")
    style = next(o for o in compare_reports(first, second).outcomes if o.name == "style accuracy")
    right = round(report.attributes.scores["style"].generated.accuracy * style.clips)
    assert (style.only_first, style.only_second) == (right, style.clips - right)
    assert style.p == mcnemar_p(right, style.clips - right) and style.second == pytest.approx(1 - style.first)
    mcc = compare_reports(first, second).values[0]
    assert mcc.name == "MCC" and mcc.difference == pytest.approx(0.1) and mcc.interval == pytest.approx((0.1, 0.1))

    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "music_eval.json").write_text(json.dumps(second))
    out = melody("eval", "compare", str(tmp_path / "first"), str(tmp_path / "second" / "music_eval.json"),
                 "--out", str(tmp_path / "cmp"))
    assert out.returncode == 0, out.stderr
    assert "| style accuracy |" in out.stdout and (tmp_path / "cmp" / "compare.md").read_text() in out.stdout
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["clips"] == report.clips

    old = copy.deepcopy(first)
    for score in old["attributes"]["scores"].values():
        score.pop("per_clip")
    elsewhere = {**first, "corpus_digest": "another"}
    strangers = {**first, "per_clip": [{**c, "key": "x" + c["key"]} for c in first["per_clip"]]}
    for other, message in ((old, "re-run `melody eval music`"), (elsewhere, "different corpus digests"),
                           (strangers, "share no clip")):
        with pytest.raises(MelodyError, match=message):
            compare_reports(first, other)
    (tmp_path / "bad.json").write_text("{ not json")
    out = melody("eval", "compare", str(tmp_path / "first"), str(tmp_path / "bad.json"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
