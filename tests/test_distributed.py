"""Distributed training, proven on CPU: 2 processes (gloo) under torchrun and `accelerate launch`.

A 2-process run must equal a 1-process run with the same global batch: the ranks read disjoint shards
whose union is the single process's batch (shards of one micro-batch each, no shuffle buffer), DDP
averages the ranks' gradients, and MuLan's contrastive loss gathers the whole batch's embeddings.
Then: the ranks hold identical weights (fingerprints recorded at every save), accumulation equals a
bigger batch, and a run saved by 2 processes resumes on 1.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_mulan import tiny_bert
from test_semantic_stages import TINY_STACK
from test_shards import RATE, make_corpus

from melody.checkpoint import read_tensors
from melody.config import preset
from melody.data.loader import ShardDataset
from melody.errors import MelodyError
from melody.train.engine import Engine, micro_batch
from melody.mulan import MuLan
from melody.semantic.tokenizer import SemanticTokenizer
from melody.train.semantic import SemanticLMStage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MULAN = [
    f"data.sample_rate={RATE}", f"vae.sample_rate={RATE}",
    "mulan.embed_dim=16", "mulan.audio_dim=32", "mulan.audio_layers=1", "mulan.audio_heads=2", "mulan.n_mels=16",
    "mulan.rvq_levels=2", "mulan.codebook_size=8", "mulan.crop_seconds=1",
    # 4 examples per step: 2 per rank from shards of 2 clips; no shuffle buffer, so the 1-process run reads the
    # same 4 clips per step as the two ranks together
    "train.batch_size=4", "train.shuffle_buffer=0", "train.steps=3", "train.warmup_steps=1", "train.checkpoint_every=2",
    "train.sample_every=0", "train.log_every=1", "train.num_workers=0", "train.lr=3e-3", "train.mixed_precision=no",
]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def launch(launcher: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    out = subprocess.run([*launcher, *args, "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


SINGLE = [sys.executable, "-m", "melody.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "melody.cli"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "melody.cli"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    corpus = make_corpus(root / "corpus", clips=20, per_shard=2, seconds=(1.0,))  # 16 train clips in 8 shards
    bert = root / "bert"
    bert.mkdir()
    model, tokenizer = tiny_bert(bert, words=[f"{i}" for i in range(20)] + ["clip", "number"])
    model.save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    return corpus, [*MULAN, f"mulan.text_encoder={bert}"]


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory):
    corpus, overrides = setup
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, launcher in (("single", SINGLE), ("torchrun", TORCHRUN), ("accelerate", ACCELERATE)):
        out[name] = root / name
        launch(launcher, "train", "mulan", "--data", str(corpus), "--out", str(out[name]), *sets(overrides))
    return out


def weights(run) -> dict[str, torch.Tensor]:
    return read_tensors(run / "mulan.safetensors", "model")[0]


def trainer(run, step) -> dict:
    return json.loads((run / "checkpoints" / f"step-{step:08d}" / "trainer.json").read_text())


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_equal_one_with_the_same_global_batch(runs, launcher):
    one, two = weights(runs["single"]), weights(runs[launcher])
    assert one.keys() == two.keys()
    # Adam divides each gradient by its own running RMS, so where a gradient is near zero the reduction's rounding (one
    # sum over 4 examples against two sums of 2 added) becomes a visible share of that element's step: one element
    # of 21 745 moved 7e-5 (2 % of a step at lr 3e-3) on a Xeon; on an AMD EPYC one moved 1.04e-4 and 3 moved more than
    # 2e-5. Every element within 2e-4, nearly all within 2e-5 (the single run's step 2 is more than 1e-3 away).
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=2e-4, rtol=1e-4, msg=key)
    off = sum(int(((two[k] - one[k]).abs() > 2e-5).sum()) for k in one if one[k].is_floating_point())
    assert off <= 5e-4 * sum(one[k].numel() for k in one if one[k].is_floating_point())
    # and the three steps moved the weights well past that tolerance
    at_2 = read_tensors(runs["single"] / "checkpoints" / "step-00000002" / "models.safetensors", "c")[0]
    assert max((at_2[f"mulan.{k}"] - one[k]).abs().max().item() for k in one if one[k].is_floating_point()) > 1e-3
    losses = {name: [json.loads(line)["mulan/total"] for line in (runs[name] / "metrics.jsonl").read_text().splitlines()]
              for name in ("single", launcher)}
    assert len(losses["single"]) == 3
    np.testing.assert_allclose(losses[launcher], losses["single"], rtol=1e-4)  # rank 0 logs the global batch's loss


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_the_ranks_hold_identical_weights_at_every_save(runs, launcher):
    for step in (2, 3):
        record = trainer(runs[launcher], step)
        assert record["processes"] == 2 and record["micro_batch"] == 2
        prints = record["replica_fingerprints"]
        assert len(prints) == 2 and prints[0] == prints[1]
    single = trainer(runs["single"], 3)
    assert single["processes"] == 1 and single["micro_batch"] == 4 and len(single["replica_fingerprints"]) == 1


def test_a_run_of_two_processes_resumes_on_one(runs, setup, tmp_path):
    corpus, overrides = setup
    run = tmp_path / "resumed"
    shutil.copytree(runs["torchrun"], run)
    out = launch(SINGLE, "train", "mulan", "--data", str(corpus), "--out", str(run), "--resume",
                 *sets([*overrides, "train.steps=5"]))
    assert "now 1 × 4" in out.stderr and "data restarts at epoch 1" in out.stderr
    record = trainer(run, 5)
    assert record["step"] == 5 and record["processes"] == 1 and record["epoch"] == 1
    before = read_tensors(run / "checkpoints" / "step-00000003" / "models.safetensors", "c")[0]
    after = read_tensors(run / "checkpoints" / "step-00000005" / "models.safetensors", "c")[0]
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_ranks_read_disjoint_shards_that_cover_the_split(setup, monkeypatch):
    corpus, _ = setup
    seen = {}
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        data = ShardDataset.from_corpus(corpus, "train", crop_seconds=0.5, sample_rate=RATE, shuffle=16, seed=3)
        seen[rank] = [s["key"] for s in data]
    assert len(seen[0]) == len(seen[1]) == 8 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"clip-{i:03d}" for i in range(20) if i % 5 != 4)


def semantic_stage(corpus, bert, run, *overrides, conditioners=None):
    """The semantic LM's stage on random frozen conditioners (or `conditioners` = (mulan, tokenizer)), with its random
    choices off (no condition dropout, no caption conditions, no tempo token, no dropout): its loss is then a
    function of the batch alone."""
    cfg = preset("tiny", [*TINY_STACK, f"mulan.text_encoder={bert}", "semantic_lm.cond_dropout=0", "semantic_lm.dropout=0",
                          "semantic_lm.text_condition_prob=0", "semantic_lm.tempo_buckets=0", "semantic_lm.tempo_clock=false",
                          "semantic_lm.window_seconds=1",
                          "train.shuffle_buffer=0", "train.num_workers=0", "train.sample_every=0", "train.checkpoint_every=100",
                          "train.mixed_precision=no", "train.lr=3e-3", "train.warmup_steps=1", *overrides])
    torch.manual_seed(1)
    mulan = MuLan.from_config(cfg.mulan, cfg.vae.sample_rate)
    mulan.fit_tokens(torch.nn.functional.normalize(torch.randn(64, cfg.mulan.embed_dim), dim=-1))
    tokenizer = SemanticTokenizer.from_config(cfg.tokenizer, cfg.vae.sample_rate)
    tokenizer.quantizer.centroids.normal_()
    if conditioners is not None:
        mulan, tokenizer = conditioners
    return SemanticLMStage(cfg, corpus, run, (mulan, cfg), (tokenizer, cfg))


def test_accumulation_equals_the_bigger_batch(setup, tmp_path):
    """4 examples a step, as 1 × 4 or as 2 micro-batches of 2: the same weights after 3 steps (every clip lasts
    the whole 1 s window, so the token-mean loss of the batch is the mean of the micro-batches' means)."""
    corpus, overrides = setup
    bert = next(o.split("=", 1)[1] for o in overrides if o.startswith("mulan.text_encoder="))
    runs = {}
    for name, accum in (("whole", 1), ("accumulated", 2)):
        stage = semantic_stage(corpus, bert, tmp_path / name, "train.batch_size=4", f"train.grad_accum={accum}", "train.steps=3")
        engine = Engine(stage, tmp_path / name, progress=False, cpu=True)
        steps = []
        real_step = engine.optimizers["semantic_lm"].step
        engine.optimizers["semantic_lm"].step = lambda *a, **k: (steps.append(1), real_step(*a, **k))[1]
        runs[name] = (engine.fit(), len(steps), engine.unwrapped("semantic_lm").state_dict(), engine.micro_batch)
    (whole, n_whole, w_whole, mb_whole), (accum, n_accum, w_accum, mb_accum) = runs["whole"], runs["accumulated"]
    assert (whole.step, n_whole, mb_whole, whole.batch_in_epoch) == (3, 3, 4, 3)
    assert (accum.step, n_accum, mb_accum, accum.batch_in_epoch) == (3, 3, 2, 6)
    initial = semantic_stage(corpus, bert, tmp_path / "fresh", "train.batch_size=4").models["semantic_lm"].state_dict()
    assert max((w_whole[k] - initial[k]).abs().max().item() for k in initial) > 1e-3
    for key in w_whole:
        torch.testing.assert_close(w_accum[key], w_whole[key], atol=1e-5, rtol=1e-4, msg=key)


def test_a_batch_that_does_not_split_is_a_one_line_error():
    assert micro_batch(16, 2, 2) == 4 and micro_batch(4, 1, 1) == 4
    for args in ((6, 4, 1), (4, 2, 4), (4, 1, 0)):
        with pytest.raises(MelodyError) as err:
            micro_batch(*args)
        assert "\n" not in str(err.value)
    with pytest.raises(MelodyError, match="multiple of 4"):
        micro_batch(6, 2, 2)


# --- FSDP (train.fsdp): the semantic LM sharded over 2 processes ---------------------------------------------------

SEMANTIC = [*TINY_STACK, "semantic_lm.cond_dropout=0", "semantic_lm.dropout=0", "semantic_lm.text_condition_prob=0",
            "semantic_lm.tempo_buckets=0", "semantic_lm.tempo_clock=false", "semantic_lm.window_seconds=1",
            "train.shuffle_buffer=0", "train.num_workers=0",
            "train.sample_every=0", "train.mixed_precision=no", "train.lr=3e-3", "train.warmup_steps=1", "train.batch_size=4",
            "train.steps=3", "train.checkpoint_every=2", "train.log_every=1", "train.ema_decay=0.9"]


@pytest.fixture(scope="module")
def fsdp_runs(setup, tmp_path_factory):
    """The same 3 steps of the semantic LM (with an EMA) on 1 plain process and sharded over 2 (torchrun)."""
    from melody.checkpoint import save_model

    corpus, overrides = setup
    bert = next(o.split("=", 1)[1] for o in overrides if o.startswith("mulan.text_encoder="))
    root = tmp_path_factory.mktemp("fsdp")
    stage = semantic_stage(corpus, bert, root / "conditioners")
    save_model(root / "mulan", "mulan", stage.mulan, stage.cfg, "mulan")
    save_model(root / "tokenizer", "tokenizer", stage.tokenizer, stage.cfg, "tokenizer")
    common = ["--data", str(corpus), "--mulan", str(root / "mulan"), "--tokenizer", str(root / "tokenizer")]
    overrides = [*SEMANTIC, f"mulan.text_encoder={bert}"]
    runs = {"plain": root / "plain", "fsdp": root / "fsdp", "fsdp_accumulated": root / "fsdp_accumulated"}
    launch(SINGLE, "train", "semantic", *common, "--out", str(runs["plain"]), *sets(overrides))
    out = launch(TORCHRUN, "train", "semantic", *common, "--out", str(runs["fsdp"]), *sets([*overrides, "train.fsdp=true"]))
    assert out.stdout.count("trained semantic_lm to step 3") == 1  # the summary once, from rank 0, not once per process
    launch(TORCHRUN, "train", "semantic", *common, "--out", str(runs["fsdp_accumulated"]),
           *sets([*overrides, "train.fsdp=true", "train.grad_accum=2"]))
    return runs, common, overrides


def lm_state(run, step=None, file="models"):
    if step is None:
        return read_tensors(run / "semantic_lm.safetensors", "model")[0]
    return read_tensors(run / "checkpoints" / f"step-{step:08d}" / f"{file}.safetensors", "c")[0]


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4, msg=key)


def test_fsdp_over_two_processes_equals_one_plain_process(fsdp_runs):
    (runs, _, _) = fsdp_runs
    assert_same(lm_state(runs["plain"]), lm_state(runs["fsdp"]))  # the exports: EMA weights
    for step in (2, 3):
        assert_same(lm_state(runs["plain"], step), lm_state(runs["fsdp"], step))
        assert_same(lm_state(runs["plain"], step, "ema"), lm_state(runs["fsdp"], step, "ema"))
        assert_same(lm_state(runs["plain"], step, "optimizers"), lm_state(runs["fsdp"], step, "optimizers"))
    moved = lm_state(runs["plain"], 3)
    start = lm_state(runs["plain"], 2)
    assert max((moved[k] - start[k]).abs().max().item() for k in moved if moved[k].is_floating_point()) > 1e-3
    record = trainer(runs["fsdp"], 3)
    assert record["sharded"] and record["processes"] == 2 and record["micro_batch"] == 2
    assert len(record["replica_fingerprints"]) == 1  # one gathered copy, not a replica per rank
    assert not trainer(runs["plain"], 3)["sharded"]
    losses = {name: [json.loads(line)["semantic_lm/total"] for line in (runs[name] / "metrics.jsonl").read_text().splitlines()
                     if "semantic_lm/total" in line] for name in runs}
    np.testing.assert_allclose(losses["fsdp"], losses["plain"], rtol=1e-4)


def test_fsdp_with_accumulation_equals_the_bigger_batch(fsdp_runs):
    """2 processes × 2 micro-batches of 1 (sharded gradients summed over the micro-batches) = 1 process × 4."""
    (runs, _, _) = fsdp_runs
    assert trainer(runs["fsdp_accumulated"], 3)["micro_batch"] == 1
    assert_same(lm_state(runs["plain"]), lm_state(runs["fsdp_accumulated"]))
    assert_same(lm_state(runs["plain"], 3, "optimizers"), lm_state(runs["fsdp_accumulated"], 3, "optimizers"))


def test_a_sharded_run_resumes_plain_and_a_plain_run_resumes_sharded(fsdp_runs, setup, tmp_path):
    (runs, common, overrides) = fsdp_runs
    corpus, _ = setup
    more = [*overrides, "train.steps=5"]
    shutil.copytree(runs["fsdp"], tmp_path / "to_plain")
    shutil.copytree(runs["plain"], tmp_path / "to_fsdp")
    launch(SINGLE, "train", "semantic", *common, "--out", str(tmp_path / "to_plain"), "--resume", *sets(more))
    launch(TORCHRUN, "train", "semantic", *common, "--out", str(tmp_path / "to_fsdp"), "--resume",
           *sets([*more, "train.fsdp=true"]))
    assert not trainer(tmp_path / "to_plain", 5)["sharded"] and trainer(tmp_path / "to_fsdp", 5)["sharded"]
    # both changed layout (the data restarts at the next epoch in both), from equal step-3 states: equal again
    assert_same(lm_state(tmp_path / "to_plain", 5), lm_state(tmp_path / "to_fsdp", 5))
    assert_same(lm_state(tmp_path / "to_plain", 5, "optimizers"), lm_state(tmp_path / "to_fsdp", 5, "optimizers"))
    key = "semantic_lm.head.weight"
    assert not torch.equal(lm_state(tmp_path / "to_plain", 5)[key], lm_state(runs["plain"], 3)[key])


def test_fsdp_on_a_stage_that_calls_parts_of_its_models_is_a_one_line_error(setup, tmp_path):
    from melody.train.mulan import MuLanStage

    corpus, overrides = setup
    cfg = preset("tiny", [*overrides, "train.fsdp=true"])
    with pytest.raises(MelodyError, match="train.fsdp: the mulan stage") as err:
        Engine(MuLanStage(cfg, corpus), tmp_path / "run", progress=False, cpu=True)
    assert "\n" not in str(err.value)


def test_fsdp_of_the_dpd_equals_ddp_over_the_same_processes(setup, tmp_path):
    """The DPD's steps draw noise per rank, so its 2-process runs are compared with each other: sharded (FSDP)
    and replicated (DDP) over the same 2 processes make the same weights, EMA and optimiser state. (With the tiny
    preset's GRU recurrence, the harder case for sharding: cuDNN-style flat weights; the paper's SRU passes too.)"""
    from test_cli import TINY_VAE
    from test_dpd_stage import TINY_DPD
    from test_semantic_stages import run_ok

    corpus, _ = setup
    overrides = [*TINY_STACK, *TINY_VAE, *TINY_DPD, "train.num_workers=0", "train.shuffle_buffer=0", "train.log_every=1"]
    for stage in ("vae", "tokenizer"):
        run_ok("train", stage, "--data", str(corpus), "--out", str(tmp_path / stage), *sets([*overrides, "train.steps=2"]))
    dpd = [*overrides, "train.batch_size=4", "train.steps=3", "train.checkpoint_every=2", "train.ema_decay=0.9",
           "train.mixed_precision=no", "train.lr=3e-3", "train.warmup_steps=1"]
    runs = {"ddp": tmp_path / "ddp", "fsdp": tmp_path / "fsdp"}
    for name, run in runs.items():
        launch(TORCHRUN, "train", "dpd", "--data", str(corpus), "--vae", str(tmp_path / "vae"), "--tokenizer",
               str(tmp_path / "tokenizer"), "--out", str(run), *sets([*dpd, f"train.fsdp={name == 'fsdp'}"]))
    for file in ("models", "ema", "optimizers"):
        a, b = (read_tensors(run / "checkpoints" / "step-00000003" / f"{file}.safetensors", "c")[0] for run in runs.values())
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4, msg=key)
    assert trainer(runs["fsdp"], 3)["sharded"] and not trainer(runs["ddp"], 3)["sharded"]
    assert (runs["fsdp"] / "dpd.safetensors").is_file()
