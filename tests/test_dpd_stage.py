"""`melody train dpd` and `melody eval dpd` end to end on a tiny corpus with tiny frozen VAE and tokenizer."""

import json

import pytest
from test_cli import TINY_VAE, melody_one_thread
from test_mulan import tiny_bert
from test_semantic_stages import TINY_STACK, one_line_error, run_ok, sets
from test_shards import make_corpus

from melody.checkpoint import load_model_and_config
from melody.dpd import DPD
from melody.mulan import MuLan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_DPD = ["dpd.hidden=32", "dpd.blocks=2", "dpd.segment_size=8", "dpd.merge_factors=2,4", "dpd.angle_dim=16",
            "dpd.heads=2", "dpd.crop_seconds=1", "dpd.steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpd")
    corpus = make_corpus(root / "corpus", clips=10, per_shard=3)
    overrides = [*TINY_STACK, *TINY_VAE, *TINY_DPD]
    runs = {name: root / name for name in ("vae", "tokenizer", "dpd")}
    run_ok("train", "vae", "--data", str(corpus), "--out", str(runs["vae"]), *sets([*overrides, "train.steps=2"]))
    run_ok("train", "tokenizer", "--data", str(corpus), "--out", str(runs["tokenizer"]), *sets(overrides))
    run_ok("train", "dpd", "--data", str(corpus), "--out", str(runs["dpd"]), "--vae", str(runs["vae"]),
           "--tokenizer", str(runs["tokenizer"]), *sets([*overrides, "train.sample_every=3"]))
    return corpus, runs, overrides


def test_train_dpd_exports_a_model_sized_by_its_conditioners_and_logs_samples(trained):
    _, runs, _ = trained
    dpd, cfg = load_model_and_config(runs["dpd"], "dpd", "dpd", DPD.from_config)
    assert (dpd.latent_dim, dpd.vocab_size) == (16, 16) and cfg.dpd.hidden == 32
    rows = [json.loads(line) for line in (runs["dpd"] / "metrics.jsonl").read_text().splitlines()]
    sampled = [r for r in rows if "valid/mel_distance" in r]
    assert [r["step"] for r in sampled] == [3] and sampled[0]["valid/mel_distance_vae"] > 0
    assert (runs["dpd"] / "samples" / "step-00000003" / "spectrograms.png").is_file()
    assert set(json.loads((runs["dpd"] / "conditioners.json").read_text())) == {"vae", "tokenizer"}


def test_eval_dpd_reports_every_step_count_against_chance_and_the_vae_floor(trained, tmp_path):
    corpus, runs, _ = trained
    out = run_ok("eval", "dpd", str(runs["dpd"]), "--data", str(corpus), "--vae", str(runs["vae"]), "--tokenizer",
                 str(runs["tokenizer"]), "--split", "valid", "--steps", "1,3", "--seconds", "1", "--no-tagger",
                 "--out", str(tmp_path))
    report = json.loads((tmp_path / "dpd_eval.json").read_text())
    assert report["clips"] == 2 and [r["steps"] for r in report["rows"]] == [1, 3]
    assert [r["forward_passes_per_clip"] for r in report["rows"]] == [1, 3]  # guided, both branches in one call per step
    assert all(r["mel_distance"] > 0 and r["mel_distance_other_clip"] > 0 for r in report["rows"])
    assert report["mel_distance_vae"] > 0 and "VAE floor" in out.stdout and (tmp_path / "dpd_eval.png").is_file()
    bad = melody_one_thread("eval", "dpd", str(runs["dpd"]), "--data", str(corpus), "--vae", str(runs["vae"]),
                            "--tokenizer", str(runs["tokenizer"]), "--steps", "5,x", "--no-progress")
    assert "--steps wants comma-separated integers" in one_line_error(bad)


def test_resuming_the_dpd_with_another_vae_is_refused(trained, tmp_path):
    corpus, runs, overrides = trained
    run_ok("train", "vae", "--data", str(corpus), "--out", str(tmp_path / "vae2"),
           *sets([*overrides, "train.steps=2", "train.seed=1"]))
    out = melody_one_thread("train", "dpd", "--data", str(corpus), "--out", str(runs["dpd"]), "--resume",
                            "--vae", str(tmp_path / "vae2"), "--tokenizer", str(runs["tokenizer"]),
                            *sets(["train.steps=4"]), "--no-progress")
    assert "another vae model" in one_line_error(out)


def test_a_dpd_hearing_mulan_starts_from_a_plain_one_and_is_judged_with_its_mulan(trained, tmp_path):
    """`--init` from a DPD trained without the MuLan condition: its weights, plus the condition's zero projection
    and MuLan's codebooks; `melody eval dpd` then needs `--mulan`."""
    corpus, runs, overrides = trained
    bert = tmp_path / "bert"
    bert.mkdir()
    model, tokenizer = tiny_bert(bert, words=["clip", "number"])
    model.save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    overrides = [*overrides, f"mulan.text_encoder={bert}"]
    run_ok("train", "mulan", "--data", str(corpus), "--out", str(tmp_path / "mulan"), *sets(overrides))
    common = ["--data", str(corpus), "--vae", str(runs["vae"]), "--tokenizer", str(runs["tokenizer"])]
    heard = [*overrides, "dpd.mulan_condition=true", "train.steps=2"]
    missing = melody_one_thread("train", "dpd", *common, "--out", str(tmp_path / "none"), *sets(heard), "--no-progress")
    assert "training needs a MuLan; give --mulan" in one_line_error(missing)
    run_ok("train", "dpd", *common, "--out", str(tmp_path / "dpd"), "--mulan", str(tmp_path / "mulan"),
           "--init", str(runs["dpd"]), *sets(heard))
    plain = load_model_and_config(runs["dpd"], "dpd", "dpd", DPD.from_config)[0]
    dpd = load_model_and_config(tmp_path / "dpd", "dpd", "dpd", DPD.from_config)[0]
    mulan = load_model_and_config(tmp_path / "mulan", "mulan", "mulan",
                                  lambda c: MuLan.from_config(c.mulan, c.vae.sample_rate))[0]
    assert dpd.mulan_levels == 4 and dpd.has_codebooks(mulan.rvq.codebooks)
    assert json.loads((tmp_path / "dpd" / "init.json").read_text())["init"] == str(runs["dpd"])
    assert set(json.loads((tmp_path / "dpd" / "conditioners.json").read_text())) == {"vae", "tokenizer", "mulan"}
    assert dpd.num_parameters() - plain.num_parameters() == 16 * 32 + 32  # the projection, MuLan's 16 → hidden 32
    args = ["eval", "dpd", str(tmp_path / "dpd"), *common, "--split", "valid", "--steps", "1", "--seconds", "1",
            "--no-tagger", "--out", str(tmp_path / "eval")]
    assert "give the MuLan it was trained with" in one_line_error(melody_one_thread(*args, "--no-progress"))
    run_ok(*args, "--mulan", str(tmp_path / "mulan"))
    assert json.loads((tmp_path / "eval" / "dpd_eval.json").read_text())["clips"] == 2
