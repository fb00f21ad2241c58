"""`melody train all`: every stage in order with the bundled model's recipe, bundled, skipped when done, resumed when not."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_cli import TINY_VAE, melody_one_thread
from test_mulan import tiny_bert
from test_pipeline import TINY_DPD
from test_semantic_stages import TINY_STACK, one_line_error, run_ok, sets
from test_shards import make_corpus

from melody.bundled import BUNDLE
from melody.checkpoint import fingerprint, read_tensors
from melody.config import preset, to_dict
from melody.errors import MelodyError
from melody.pipeline import STAGES as BUNDLE_STAGES
from melody.pipeline import MeLoDy
from melody.train import recipes
from melody.train.engine import TrainingStopped
from melody.train.recipes import OVERRIDES, STAGES, load_stage, stage_overrides

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 2


@pytest.fixture(scope="module")
def corpus_and_overrides(tmp_path_factory):
    root = tmp_path_factory.mktemp("all")
    corpus = make_corpus(root / "corpus", clips=10, per_shard=3)
    (root / "bert").mkdir()
    model, tokenizer = tiny_bert(root / "bert", words=[f"{i}" for i in range(10)] + ["clip", "number", "calm", "piano"])
    model.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    # tiny shapes for every stage; they come after the tiny recipe, so its batch sizes and lengths give way
    overrides = [*TINY_VAE, *TINY_STACK, *TINY_DPD, f"mulan.text_encoder={root / 'bert'}", f"train.steps={STEPS}"]
    return corpus, overrides


@pytest.fixture(scope="module")
def trained(corpus_and_overrides, tmp_path_factory):
    corpus, overrides = corpus_and_overrides
    runs = tmp_path_factory.mktemp("runs")
    out = run_ok("train", "all", "--data", str(corpus), "--out", str(runs), "--preset", "tiny", *sets(overrides))
    return runs, out.stdout.splitlines()


def train_all(corpus, runs, overrides):
    return run_ok("train", "all", "--data", str(corpus), "--out", str(runs), *sets(overrides)).stdout.splitlines()


def bundle_weights(bundle):
    return {stage: read_tensors(bundle / stage / f"{stage}.safetensors")[0] for stage in BUNDLE_STAGES}


def test_train_all_trains_every_stage_in_order_and_bundles_what_generates(trained, corpus_and_overrides):
    runs, lines = trained
    # the LM's recipe reads cached features: train all makes them first, from the bundle's MuLan and tokenizer
    # (and the DPD's last fine-tune, from the bundle's VAE, tokenizer and MuLan)
    caching = {"semantic": ["semantic: caching the features of mulan, tokenizer (melody data encode)"],
               "dpd-mulan": ["dpd-mulan: caching the features of mulan, tokenizer, vae (melody data encode)"]}
    expected = [line for plan in STAGES for line in (
        f"{plan.name}: training in {runs / plan.name}", *caching.get(plan.name, []),
        f"trained {plan.model} to step {STEPS}; model: {runs / plan.name / plan.model}.safetensors")]
    assert lines[:len(expected)] == expected
    assert lines[-1] == f'generate with: melody generate "a calm piano piece" --bundle {runs / "bundle"}'
    for plan in STAGES:
        assert json.loads((runs / plan.name / "latest.json").read_text())["step"] == STEPS
    assert (runs / "curves.png").stat().st_size > 10_000
    # the VAE is bundled in float16, as the bundled one, and the DPD learned that VAE's latents
    for model in ("vae", "semantic_lm"):  # bundled in float16, as the bundled ones
        weights = read_tensors(runs / "bundle" / model / f"{model}.safetensors")[0]
        assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}, model
    assert len(list((corpus_and_overrides[0] / "features").glob("*-none/features.json"))) == 1
    # the DPD's chain: each fine-tune starts from the run before it, and the bundle's DPD hears MuLan tokens
    for plan in STAGES:
        if plan.init:
            assert json.loads((runs / plan.name / "init.json").read_text())["init"] == str(runs / plan.init)
    assert load_stage(runs / "bundle" / "dpd", "dpd")[0].mulan_levels == 4
    frozen = json.loads((runs / "dpd" / "conditioners.json").read_text())
    assert frozen["vae"] == fingerprint(load_stage(runs / "bundle" / "vae", "vae")[0])
    assert frozen["vae"] != fingerprint(load_stage(runs / "vae", "vae")[0])

    model = MeLoDy.from_pretrained(runs / "bundle")
    out = model.generate(["calm piano"], 0.5, steps=2)
    assert out.audio.shape == (1, 1, round(0.5 * model.vae.cfg.sample_rate)) and bool(torch.isfinite(out.audio).all())


def test_running_again_skips_every_finished_stage_and_keeps_the_bundle(trained, corpus_and_overrides):
    runs, _ = trained
    corpus, overrides = corpus_and_overrides
    before = bundle_weights(runs / "bundle")
    lines = train_all(corpus, runs, overrides)
    assert lines[:len(STAGES)] == [f"{plan.name}: finished ({runs / plan.name / plan.model}.safetensors), skipped"
                                   for plan in STAGES]
    assert not any(line.startswith("trained ") for line in lines)
    after = bundle_weights(runs / "bundle")
    for stage in BUNDLE_STAGES:
        assert before[stage].keys() == after[stage].keys()
        assert all(torch.equal(before[stage][k], after[stage][k]) for k in before[stage]), stage


def test_an_unfinished_stage_is_resumed(trained, corpus_and_overrides, tmp_path):
    runs, _ = trained
    corpus, overrides = corpus_and_overrides
    shutil.copytree(runs, tmp_path / "runs")
    runs = tmp_path / "runs"
    (runs / "dpd-mulan" / "dpd.safetensors").unlink()  # what Ctrl-C leaves: checkpoints, no exported model
    before = read_tensors(runs / "bundle" / "dpd" / "dpd.safetensors")[0]
    lines = train_all(corpus, runs, [*overrides, f"train.steps={STEPS + 1}"])
    assert lines[5:8] == ["dpd-ft: finished (" + str(runs / "dpd-ft" / "dpd.safetensors") + "), skipped",
                          f"dpd-mulan: resuming in {runs / 'dpd-mulan'}",
                          f"trained dpd to step {STEPS + 1}; model: {runs / 'dpd-mulan' / 'dpd.safetensors'}"]
    after = read_tensors(runs / "bundle" / "dpd" / "dpd.safetensors")[0]
    assert not all(torch.equal(before[k], after[k]) for k in before)  # the bundle has the longer-trained DPD


def test_a_stop_says_to_run_train_all_again(corpus_and_overrides, tmp_path, monkeypatch):
    corpus, overrides = corpus_and_overrides

    def stopped(*args, **kwargs):
        raise TrainingStopped("SIGINT", 7)

    monkeypatch.setattr(recipes, "train_stage", stopped)
    with pytest.raises(MelodyError, match=r"^vae: stopped by SIGINT at step 7; saved — run the same `melody train all` again"):
        recipes.train_all(corpus, tmp_path / "runs", "tiny", overrides, say=lambda line: None)


def test_a_bad_key_is_one_line_before_anything_trains(corpus_and_overrides, tmp_path):
    corpus, _ = corpus_and_overrides
    out = melody_one_thread("train", "all", "--data", str(corpus), "--out", str(tmp_path / "runs"), "--set", "dpd.dept=3")
    assert "unknown config key 'dpd.dept'" in one_line_error(out)
    assert not (tmp_path / "runs").exists()


# --- the recipe is what the bundled model was trained with ---------------------------------------

# Per stage, the config sections its own training decides (others are its conditioners' or ride along).
OWN_SECTIONS = {"vae": ("data", "vae", "train"), "mulan": ("mulan", "train"), "tokenizer": ("tokenizer", "train"),
                "semantic": ("semantic_lm", "train"), "dpd": ("dpd", "train"), "dpd-ft": ("dpd", "train"),
                "dpd-mulan": ("dpd", "train")}
# the runs a later plan of their model started from: not bundled, their config kept beside their logs
RECORDED = {"dpd": "training/dpd-tiny/config.json", "dpd-ft": "training/dpd-tiny-ft/config.json"}
MEASURED = {("vae", "latent_clamp")}  # set from the data when training ends, not by a recipe
SAMPLING = {("dpd", "steps")}  # how the DPD samples, chosen after the first runs (their configs predate it)


def bundled_config(plan):
    """The config.json the plan's run was recorded with: the bundled model's, or for a run a later plan of its model
    started from, the one kept in `training/` (every one is kept, so a missing one fails the test)."""
    if plan.name in RECORDED:
        return json.loads((Path(__file__).parents[1] / RECORDED[plan.name]).read_text())
    return json.loads((BUNDLE / plan.model / "config.json").read_text())


@pytest.mark.parametrize("plan", STAGES, ids=[p.name for p in STAGES])
def test_the_tiny_recipe_gives_the_config_the_bundled_model_was_trained_with(plan):
    made = json.loads(json.dumps(to_dict(preset("tiny", stage_overrides("tiny", plan.name)))))  # tuples as lists
    bundled = bundled_config(plan)
    assert bundled["preset"] == made["preset"] == "tiny"
    for section in OWN_SECTIONS[plan.name]:
        differ = {k: (made[section][k], v) for k, v in bundled[section].items()
                  if made[section].get(k) != v and (section, k) not in MEASURED
                  and not (plan.name in RECORDED and (section, k) in SAMPLING)}
        assert not differ, f"{plan.name}: {section} (recipe, bundled): {differ}"


def test_user_overrides_win_over_the_recipe_and_paper_has_none():
    assert stage_overrides("tiny", "mulan", ["train.batch_size=4"])[-1] == "train.batch_size=4"
    assert preset("tiny", stage_overrides("tiny", "mulan", ["train.batch_size=4"])).train.batch_size == 4
    assert all(stage_overrides("paper", plan.name) == [] for plan in STAGES) and OVERRIDES["paper"] == {}
    with pytest.raises(MelodyError, match="no training recipe for preset 'huge'"):
        stage_overrides("huge", "vae")


def test_metrics_join_held_out_rows_and_a_relogged_step_keeps_its_last_row(tmp_path):
    from melody.train.curves import read_metrics

    rows = [{"step": 10, "a/total": 3.0, "adv/loss": 9.0}, {"step": 10, "valid/x": 0.5},  # a run, then stopped
            {"step": 10, "a/total": 2.0}, {"step": 20, "a/total": 1.0}]  # resumed before step 10: logged again
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 30, "a/to')  # a line cut by a crash
    metrics = read_metrics(path)
    assert set(metrics) == {"a/total"} and metrics["a/total"][1].tolist() == [2.0, 1.0]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert {k: v[1].tolist() for k, v in read_metrics(path).items()} == {"a/total": [3.0], "adv/loss": [9.0], "valid/x": [0.5]}
