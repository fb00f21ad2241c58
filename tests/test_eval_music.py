"""`melody eval music` through the CLI on the tiny random bundle and a tiny captioned corpus: the report's fields, its
MCC against `quality.mulan_cycle_consistency`, the Markdown table, the picture, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from test_pipeline import bundle  # noqa: F401 (the fixture)
from test_semantic_stages import one_line_error, run_ok
from test_shards import RATE

from melody.data.shards import ShardWriter, iter_samples, read_manifest, write_manifest
from melody.eval.quality import mulan_cycle_consistency
from melody.pipeline import MeLoDy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTIONS = [  # corpus-style captions: the first three ask for tags and a tempo, the fourth for tags only
    "an upbeat funk groove with slap bass and drums, at 120 BPM, in A minor.",
    "a calm piano piece, at 70 BPM.",
    "a techno track with synth, at 128 BPM.",
    "a gentle ambient pad",
    "a rock song with electric guitar, at 100 BPM.",  # beyond --limit 4
]
STAGES = ("mulan", "semantic_lm", "dpd", "vae")


def clicks(bpm, seconds, rate=RATE):
    """A click track: a decaying 1 kHz burst on every beat, `(samples,)` float32."""
    t = np.arange(int(seconds * rate)) / rate
    since_beat = t % (60.0 / bpm)
    return (0.5 * np.sin(2 * np.pi * 1000 * t) * np.exp(-since_beat * 40)).astype(np.float32)


def make_captioned_corpus(root, seconds=1.5):
    """A 'test' split of the clips of `CAPTIONS` (clicks at the stated tempo, or at 90 BPM) and a 'valid' split of 2."""
    writers = {"test": ShardWriter(root, "test", RATE, clips_per_shard=3), "valid": ShardWriter(root, "valid", RATE)}
    for i, caption in enumerate(CAPTIONS):
        bpm = float(caption.split(" BPM")[0].rsplit(" ", 1)[1]) if "BPM" in caption else 90.0
        writers["test"].add(f"clip-{i:03d}", clicks(bpm, seconds), {"caption": caption})
    for i in range(2):
        writers["valid"].add(f"valid-{i:03d}", clicks(100.0, seconds), {"caption": CAPTIONS[i]})
    for w in writers.values():
        w.flush()
    write_manifest(root, {s: w.summary() for s, w in writers.items()}, sample_rate=RATE, channels=1)
    return root


@pytest.fixture(scope="module")
def evaluated(bundle, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("music")
    corpus = make_captioned_corpus(root / "corpus")
    done = run_ok("eval", "music", str(bundle), "--data", str(corpus), "--limit", "4", "--seconds", "1", "--steps", "2",
                  "--seed", "3", "--batch-size", "3", "--out", str(root / "report"))
    return corpus, root / "report", json.loads((root / "report" / "music_eval.json").read_text()), done.stdout


def test_the_report_measures_each_clip_against_its_real_twin(evaluated):
    corpus, _, report, stdout = evaluated
    assert report["clips"] == 4 and report["seconds"] == 1.0 and report["steps"] == 2 and report["seed"] == 3
    assert [c["caption"] for c in report["per_clip"]] == CAPTIONS[:4]
    assert [c["seed"] for c in report["per_clip"]] == [3, 4, 5, 6]
    for name in ("musicnn", "mulan"):
        fad = report["fad"][name]
        assert fad["embedding"] and fad["dims"] == (200 if name == "musicnn" else 16)
        # reference: real half A (2 clips); the floor's real half B and the generated set: 2 clips each
        assert (fad["fad"]["n_real"], fad["fad"]["n_real_split"], fad["fad"]["n_generated"]) == (2, 2, 2)
        assert fad["fad"]["generated_vs_real"] >= 0 and fad["fad"]["real_vs_real"] >= 0
    assert -1 <= report["mcc"]["generated"] <= 1 and -1 <= report["mcc"]["real"] <= 1
    assert report["mcc"]["generated"] == pytest.approx(np.mean([c["mcc_generated"] for c in report["per_clip"]]))
    assert report["tag_clips"] == 4 and report["tag_adherence"]["generated"] > 0 and report["tag_adherence"]["real"] > 0
    tempo = report["tempo"]
    assert tempo["clips"] == 3 and [c["asked_bpm"] for c in report["per_clip"]] == [120.0, 70.0, 128.0, None]
    assert set(tempo["generated"]) == set(tempo["real"]) == {"clips", "mean_abs_error_bpm", "octave_error_rate",
                                                             "mean_abs_octave_error_bpm"}
    assert report["per_clip"][3]["bpm_generated"] is None and report["per_clip"][0]["bpm_real"] is not None
    assert report["forward_passes"] == {"mulan": 1, "semantic_lm": 25, "dpd": 2, "vae": 1}  # 1 s: one DPD window
    assert set(report["seconds_per_clip"]) == set(STAGES) and report["speed_x_real_time"] > 0
    assert "FAD musicnn" in stdout and "MCC" in stdout and "music_eval.md" in stdout
    assert report["corpus_digest"] == read_manifest(corpus)["digest"]  # which corpus: reports compare only on one


def test_real_mcc_is_quality_mulan_cycle_consistency_of_the_real_clips(evaluated, bundle):  # noqa: F811
    corpus, _, report, _ = evaluated
    samples = list(iter_samples(corpus, "test"))[:4]
    audio = torch.stack([torch.from_numpy(s["audio"][0, :RATE]) for s in samples])  # the first second
    mulan = MeLoDy.from_pretrained(bundle).mulan
    captions = [s["meta"]["caption"] for s in samples]
    direct = mulan_cycle_consistency(mulan, captions, audio)
    assert report["mcc"]["real"] == pytest.approx(direct, abs=1e-6)
    # the chance column: clip i against clip i + n/2's caption
    shuffled = mulan_cycle_consistency(mulan, captions[2:] + captions[:2], audio)
    assert report["mcc"]["mismatched"] is not None and report["tag_adherence"]["mismatched"] is not None
    assert shuffled != pytest.approx(direct, abs=1e-6)


def test_the_markdown_table_and_the_picture(evaluated):
    _, out, _, _ = evaluated
    table = (out / "music_eval.md").read_text()
    assert "| metric | generated | real (reference) | generated vs another clip's caption (chance) | note |" in table
    for row in ("FAD, musicnn (200-d)", "FAD, mulan (16-d)", "MCC (MuLan cycle consistency)", "tag adherence",
                "tempo error at the asked octave", "tempo octave errors", "forward passes per clip",
                "seconds per generated clip"):
        assert f"| {row}" in table, row
    assert "Corpus: shards' SHA-256 `" in table
    assert (out / "music_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("where, split, message", [
    ("nope", "test", "no such corpus folder"),
    ("corpus", "train", "no 'train' split"),
    ("corpus", "valid", "needs at least 4"),
])
def test_bad_input_is_one_line(evaluated, bundle, tmp_path, where, split, message):  # noqa: F811
    from test_cli import melody_one_thread

    corpus = evaluated[0].parent / where
    out = melody_one_thread("eval", "music", str(bundle), "--data", str(corpus), "--split", split, "--seconds", "1",
                            "--out", str(tmp_path / "r"), "--no-progress")
    assert message in one_line_error(out)
    assert not (tmp_path / "r").exists()


def test_the_report_says_whether_the_tempo_fit_was_on_and_the_baseline_has_none(evaluated, bundle):  # noqa: F811
    from melody.errors import MelodyError
    from melody.eval.music import evaluate_music

    corpus, out, report, _ = evaluated
    assert report["fit_tempo"] is False  # the model alone by default, as the baseline
    assert "the tempo fit on" not in (out / "music_eval.md").read_text()
    with pytest.raises(MelodyError, match="baseline has no tempo fit"):
        evaluate_music(MeLoDy.from_pretrained(bundle), corpus, baseline=object(), fit_tempo=True)


def test_best_of_draws_candidates_for_each_caption_and_says_so(evaluated, bundle):  # noqa: F811
    """`--best-of 2`: each caption's music the pipeline's best of 2 (twice the generation passes), named in the report;
    the other sources and the baseline refuse it in one line."""
    from melody.errors import MelodyError
    from melody.eval.music import evaluate_music, markdown

    corpus, _, plain, _ = evaluated
    model = MeLoDy.from_pretrained(bundle)
    report, _ = evaluate_music(model, corpus, limit=4, seconds=1.0, steps=2, seed=3, batch_size=2, attribute_clips=0,
                               best_of=2)
    assert report.best_of == 2 and "the best of 2 candidates by MuLan" in markdown(report)
    assert report.forward_passes["dpd"] == 2 * plain["forward_passes"]["dpd"]
    assert report.forward_passes["semantic_lm"] == 2 * plain["forward_passes"]["semantic_lm"]
    # candidate 0 is the plain run: a caption's best is at least as close to it by MuLan as the plain music
    for best, one in zip(report.per_clip, plain["per_clip"], strict=True):
        assert best.mcc_generated >= one["mcc_generated"] - 1e-6
    for best_of, kwargs, message in ((2, {"source": "tokens"}, "--best-of go with --source caption"),
                                     (2, {"baseline": object()}, "baseline draws one candidate"),
                                     (0, {}, "--best-of 0: draw between 1 and")):
        with pytest.raises(MelodyError, match=message):
            evaluate_music(model, corpus, best_of=best_of, **kwargs)
