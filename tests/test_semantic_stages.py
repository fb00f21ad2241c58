"""The semantic stack's training stages and evaluations, end to end through the CLI on a tiny corpus."""

import json
import math

import pytest
import torch
from test_cli import melody_one_thread
from test_mulan import tiny_bert
from test_shards import RATE, make_corpus

from melody.checkpoint import fingerprint, load_model_and_config, save_model
from melody.eval.semantic import bigram_log_probs, lm_nll, ngram_nll, unigram_log_probs
from melody.mulan import MuLan, contrastive_loss, has_caption, retrieval_metrics, same_caption
from melody.semantic.lm import SemanticLM, lm_loss
from melody.semantic.tokenizer import SemanticTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Sizes that train a step in well under a second; 2 s windows of 8 kHz audio.
TINY_STACK = [
    f"data.sample_rate={RATE}", f"vae.sample_rate={RATE}",
    "mulan.embed_dim=16", "mulan.audio_dim=32", "mulan.audio_layers=1", "mulan.audio_heads=2", "mulan.n_mels=16",
    "mulan.rvq_levels=4", "mulan.codebook_size=8", "mulan.crop_seconds=2",
    "tokenizer.dim=32", "tokenizer.layers=2", "tokenizer.heads=2", "tokenizer.n_mels=16", "tokenizer.targets=8",
    "tokenizer.codebook_size=16", "tokenizer.feature_layer=1", "tokenizer.crop_seconds=2", "tokenizer.mask_prob=0.3",
    "semantic_lm.dim=32", "semantic_lm.depth=1", "semantic_lm.heads=2", "semantic_lm.window_seconds=2",
    "semantic_lm.stride_seconds=1", "semantic_lm.tempo_buckets=8",  # the tempo token's path runs in every test,
    "semantic_lm.tempo_clock=true",  # and the beat clock's
    "train.batch_size=4", "train.steps=3", "train.warmup_steps=1", "train.sample_every=2", "train.checkpoint_every=2",
    "train.num_workers=0", "train.log_every=1",
]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def run_ok(*args):
    out = melody_one_thread(*args, "--no-progress")
    assert out.returncode == 0, out.stderr
    return out


def one_line_error(out):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    corpus = make_corpus(root / "corpus", clips=10, per_shard=3)
    text_encoder = root / "bert"
    text_encoder.mkdir()
    model, tokenizer = tiny_bert(text_encoder, words=[f"{i}" for i in range(10)] + ["clip", "number"])
    model.save_pretrained(text_encoder)
    tokenizer.save_pretrained(text_encoder)
    overrides = [*TINY_STACK, f"mulan.text_encoder={text_encoder}"]
    runs = {name: root / name for name in ("mulan", "tokenizer", "semantic")}
    run_ok("train", "mulan", "--data", str(corpus), "--out", str(runs["mulan"]), *sets(overrides))
    run_ok("train", "tokenizer", "--data", str(corpus), "--out", str(runs["tokenizer"]), *sets(overrides))
    run_ok("train", "semantic", "--data", str(corpus), "--out", str(runs["semantic"]), "--mulan", str(runs["mulan"]),
           "--tokenizer", str(runs["tokenizer"]), *sets(overrides))
    return corpus, runs, overrides


def test_stages_export_models_with_fitted_tokens_and_log_held_out_figures(stack):
    _, runs, _ = stack
    mulan, mulan_cfg = load_model_and_config(runs["mulan"], "mulan", "mulan",
                                             lambda c: MuLan.from_config(c.mulan, c.vae.sample_rate))
    assert bool(mulan.rvq.initialized) and mulan.rvq.codebooks.shape == (4, 8, 16)
    tokenizer, _ = load_model_and_config(runs["tokenizer"], "tokenizer", "tokenizer",
                                         lambda c: SemanticTokenizer.from_config(c.tokenizer, c.vae.sample_rate))
    assert tokenizer.quantizer.centroids.shape == (16, 32) and bool(tokenizer.quantizer.centroids.abs().sum() > 0)
    assert (runs["tokenizer"] / "targets.safetensors").is_file()
    lm, lm_cfg = load_model_and_config(runs["semantic"], "semantic_lm", "semantic_lm", SemanticLM.from_config)
    assert (lm.vocab_size, lm.mulan_levels, lm.mulan_codebook_size) == (16, 4, 8)
    assert lm_cfg.mulan == mulan_cfg.mulan  # the LM's config records the conditioners' sizes
    prints = json.loads((runs["semantic"] / "conditioners.json").read_text())
    assert prints == {"mulan": fingerprint(mulan), "tokenizer": fingerprint(tokenizer)}
    expected = {"mulan": "valid/t2a_R@10", "tokenizer": "valid/masked_acc", "semantic": "valid/ppl_null"}
    for name, key in expected.items():
        rows = [json.loads(line) for line in (runs[name] / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if key in r] == [2, 3], name  # sampled every 2 steps and at the end
        assert (runs[name] / "curves.png").is_file()


def test_eval_mulan_and_semantic_write_reports(stack, tmp_path):
    corpus, runs, _ = stack
    out = run_ok("eval", "mulan", str(runs["mulan"]), "--data", str(corpus), "--split", "valid", "--out", str(tmp_path))
    assert "text→audio R@1" in out.stdout
    report = json.loads((tmp_path / "mulan_eval.json").read_text())
    assert report["clips"] == 2 and report["chance"]["R@1"] == 0.5
    assert all(0.0 <= report["retrieval"][k] <= 1.0 for k in ("t2a/R@1", "t2a/R@10", "a2t/R@1", "a2t/R@10"))
    assert len(report["token_match_by_level"]) == 4 and (tmp_path / "mulan_eval.png").is_file()

    out = run_ok("eval", "semantic", str(runs["semantic"]), "--data", str(corpus), "--split", "valid",
                 "--mulan", str(runs["mulan"]), "--tokenizer", str(runs["tokenizer"]), "--out", str(tmp_path))
    report = json.loads((tmp_path / "semantic_eval.json").read_text())
    assert set(report["perplexity"]) == set(report["perplexity_first_second"]) == {"lm_audio", "lm_text", "lm_null", "bigram", "unigram"}
    assert report["tokens"] == 25 + 50 and report["vocab"] == 16  # the valid clips last 1 s and 2 s: 25 Hz tokens
    assert all(1.0 <= p < 1000 for p in report["perplexity"].values())
    assert "perplexity LM" in out.stdout and (tmp_path / "semantic_eval.png").is_file()


def test_resuming_the_lm_with_another_mulan_is_refused(stack, tmp_path):
    corpus, runs, overrides = stack
    mulan, cfg = load_model_and_config(runs["mulan"], "mulan", "mulan", lambda c: MuLan.from_config(c.mulan, c.vae.sample_rate))
    with torch.no_grad():
        mulan.audio.out.weight.add_(0.01)
    save_model(tmp_path / "other", "mulan", mulan, cfg, "mulan")
    out = melody_one_thread("train", "semantic", "--data", str(corpus), "--out", str(runs["semantic"]), "--resume",
                            "--mulan", str(tmp_path / "other"), "--tokenizer", str(runs["tokenizer"]),
                            *sets(["train.steps=4"]), "--no-progress")
    assert "another mulan model" in one_line_error(out)


def test_second_tokenizer_iteration_predicts_the_first_ones_tokens(stack, tmp_path):
    corpus, runs, overrides = stack
    run_ok("train", "tokenizer", "--data", str(corpus), "--out", str(tmp_path / "it2"), "--teacher", str(runs["tokenizer"]),
           *sets([*overrides, "train.steps=2"]))
    cfg = json.loads((tmp_path / "it2" / "config.json").read_text())
    assert cfg["tokenizer"]["targets"] == 16  # the head predicts the teacher's 16 codes
    assert not (tmp_path / "it2" / "targets.safetensors").exists()  # no log-mel targets in iteration 2


def test_codebook_refit_keeps_the_encoder_and_adds_the_onset_column(stack, tmp_path):
    """`melody train tokenizer --encoder RUN --set tokenizer.onset_weight=1`: no step, the encoder's weights as they
    were, a codebook over one more column; with --teacher too, or another encoder size, one line."""
    corpus, runs, overrides = stack
    run_ok("train", "tokenizer", "--data", str(corpus), "--out", str(tmp_path / "refit"), "--encoder", str(runs["tokenizer"]),
           *sets([*overrides, "tokenizer.onset_weight=1"]))
    from melody.train.recipes import load_stage

    old, _ = load_stage(runs["tokenizer"], "tokenizer")
    new, cfg = load_stage(tmp_path / "refit", "tokenizer")
    assert json.loads((tmp_path / "refit" / "latest.json").read_text())["step"] == 0
    assert cfg.tokenizer.onset_weight == 1.0 and new.onset_scale.item() > 0
    for name, weight in old.encoder.state_dict().items():
        assert torch.equal(weight, new.encoder.state_dict()[name]), name
    assert new.quantizer.centroids.shape == (16, 33)
    wav = torch.randn(2, RATE) * 0.1
    assert new.tokens(wav).shape == old.tokens(wav).shape == (2, 25)
    out = melody_one_thread("train", "tokenizer", "--data", str(corpus), "--out", str(tmp_path / "both"), "--encoder",
                            str(runs["tokenizer"]), "--teacher", str(runs["tokenizer"]), *sets(overrides), "--no-progress")
    assert "give one of them" in one_line_error(out)
    out = melody_one_thread("train", "tokenizer", "--data", str(corpus), "--out", str(tmp_path / "wider"), "--encoder",
                            str(runs["tokenizer"]), *sets([*overrides, "tokenizer.dim=48"]), "--no-progress")
    assert "other sizes than this run's" in one_line_error(out)


def test_a_codebook_lm_trains_on_its_mulans_codebooks(stack, tmp_path):
    corpus, runs, overrides = stack
    run_ok("train", "semantic", "--data", str(corpus), "--out", str(tmp_path / "lm"), "--mulan", str(runs["mulan"]),
           "--tokenizer", str(runs["tokenizer"]),
           *sets([*overrides, "semantic_lm.condition_embedding=codebook", "semantic_lm.condition_noise=0.1"]))
    lm, cfg = load_model_and_config(tmp_path / "lm", "semantic_lm", "semantic_lm", SemanticLM.from_config)
    mulan, _ = load_model_and_config(runs["mulan"], "mulan", "mulan", lambda c: MuLan.from_config(c.mulan, c.vae.sample_rate))
    assert cfg.semantic_lm.condition_embedding == "codebook" and torch.equal(lm.mulan_codebooks, mulan.rvq.codebooks)
    logs = [json.loads(line) for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for row in logs for k, v in row.items() if k != "step")
    # an LM that read another MuLan's codebooks is no start for a run against this MuLan: refused before step 0
    lm.set_mulan_codebooks(mulan.rvq.codebooks + 0.01)
    save_model(tmp_path / "other", "semantic_lm", lm, cfg, "semantic_lm")
    out = melody_one_thread("train", "semantic", "--data", str(corpus), "--out", str(tmp_path / "ft"), "--mulan",
                            str(runs["mulan"]), "--tokenizer", str(runs["tokenizer"]), "--init", str(tmp_path / "other"),
                            *sets([*overrides, "semantic_lm.condition_embedding=codebook"]), "--no-progress")
    assert "another MuLan's codebooks" in one_line_error(out) and not (tmp_path / "ft" / "metrics.jsonl").exists()


def test_mulan_learns_from_captioned_clips_only(stack, tmp_path):
    """A corpus ingested with some files uncaptioned trains MuLan, and its retrieval is measured on the captioned."""
    _, _, overrides = stack
    corpus = make_corpus(tmp_path / "corpus", clips=10, per_shard=3, uncaptioned=(1, 3, 9))  # 9: a valid clip
    run_ok("train", "mulan", "--data", str(corpus), "--out", str(tmp_path / "mulan"), *sets(overrides))
    losses = [json.loads(line)["mulan/total"] for line in (tmp_path / "mulan" / "metrics.jsonl").read_text().splitlines()
              if "mulan/total" in line]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    run_ok("eval", "mulan", str(tmp_path / "mulan"), "--data", str(corpus), "--split", "valid", "--out", str(tmp_path))
    report = json.loads((tmp_path / "mulan_eval.json").read_text())
    assert report["clips"] == 1 and [row["key"] for row in report["per_clip"]] == ["clip-004"]


def test_eval_semantic_scores_no_text_condition_for_uncaptioned_clips(stack, tmp_path):
    corpus, runs, _ = stack
    bare = make_corpus(tmp_path / "corpus", clips=10, per_shard=3, uncaptioned=(4, 9))  # the whole valid split
    for data, text_scored in ((corpus, True), (bare, False)):
        run_ok("eval", "semantic", str(runs["semantic"]), "--data", str(data), "--split", "valid", "--mulan",
               str(runs["mulan"]), "--tokenizer", str(runs["tokenizer"]), "--out", str(tmp_path / "report"))
        report = json.loads((tmp_path / "report" / "semantic_eval.json").read_text())
        assert math.isfinite(report["perplexity"]["lm_audio"]) and math.isfinite(report["generation"]["audio"]["own_clip"])
        assert math.isfinite(report["perplexity"]["lm_text"]) == text_scored
        assert math.isfinite(report["generation"]["text"]["own_clip"]) == text_scored


def test_semantic_training_needs_a_finished_mulan(stack, tmp_path):
    corpus, runs, overrides = stack
    unfinished = tmp_path / "mulan"
    out = melody_one_thread("train", "mulan", "--data", str(corpus), "--out", str(unfinished), *sets([*overrides, "train.steps=5"]),
                            "--no-progress")  # runs to the end: use its last checkpoint as an unfinished run instead
    assert out.returncode == 0, out.stderr
    (unfinished / "mulan.safetensors").unlink()  # what a run stopped before its end leaves: checkpoints only
    out = melody_one_thread("train", "semantic", "--data", str(corpus), "--out", str(tmp_path / "lm"), "--mulan", str(unfinished),
                            "--tokenizer", str(runs["tokenizer"]), *sets(overrides), "--no-progress")
    assert "no fitted tokens" in one_line_error(out)


# --- pure functions ------------------------------------------------------------------------------

def test_contrastive_loss_leaves_out_pairs_with_the_same_caption():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.9, 0.4], [0.1, 1.0]]), dim=-1)
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    same = same_caption(["x", "x", "y"])
    assert same.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    logits = (a @ t.T / 0.5).tolist()
    # by hand: rows 0 and 1 no longer see each other's caption (nor column 0 / 1 each other's clip)
    def ce(row, i, skip):
        kept = [v for j, v in enumerate(row) if j not in skip]
        return -(row[i] - math.log(sum(math.exp(v) for v in kept)))
    cols = [list(c) for c in zip(*logits)]
    expected = 0.5 * (sum(ce(logits[i], i, {1 - i} if i < 2 else set()) for i in range(3)) / 3
                      + sum(ce(cols[i], i, {1 - i} if i < 2 else set()) for i in range(3)) / 3)
    assert float(contrastive_loss(a, t, 0.5, same)) == pytest.approx(expected, rel=1e-5)
    assert float(contrastive_loss(a, t, 0.5, same)) < float(contrastive_loss(a, t, 0.5))


def test_an_uncaptioned_clip_takes_no_part_in_the_contrastive_loss():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1).requires_grad_()
    captions = ["x", "", "y", "x", "  "]
    keep = has_caption(captions)
    assert keep.tolist() == [True, False, True, True, False]
    loss = contrastive_loss(a, t, 0.5, same_caption(captions), keep)
    rows = [0, 2, 3]
    assert loss.item() == pytest.approx(contrastive_loss(a[rows], t[rows], 0.5, same_caption(["x", "y", "x"])).item())
    loss.backward()
    assert float(a.grad[[1, 4]].abs().sum()) == 0.0 and float(t.grad[[1, 4]].abs().sum()) == 0.0
    assert float(a.grad[rows].abs().sum()) > 0.0
    none = contrastive_loss(a, t, 0.5, same_caption(captions), torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad  # every process of a distributed step still runs backward


def test_retrieval_counts_a_clip_with_the_same_caption_as_a_hit():
    e = torch.eye(3)
    text = e[[1, 1, 2]]  # captions 0 and 1 are the same text; caption 0 lands on clip 1
    plain = retrieval_metrics(e, text)
    shared = retrieval_metrics(e, text, same_caption(["a", "a", "b"]))
    assert plain["t2a/R@1"] == pytest.approx(2 / 3) and shared["t2a/R@1"] == 1.0


def test_ngram_baselines_match_hand_counts():
    tokens, keep = torch.tensor([[0, 0, 1]]), torch.ones(1, 3, dtype=torch.bool)
    unigram = unigram_log_probs(tokens, keep, 2).exp()
    assert unigram.tolist() == pytest.approx([3 / 5, 2 / 5])  # (2 + 1) / (3 + 2), (1 + 1) / (3 + 2)
    bigram = bigram_log_probs(tokens, keep, 2).exp()
    assert bigram.flatten().tolist() == pytest.approx([1.6 / 3, 1.4 / 3, 0.6, 0.4])  # (c + p) / (c(a) + 1), row = previous
    nll = ngram_nll(tokens, keep, unigram.log(), bigram.log())
    assert nll == pytest.approx(-(math.log(0.6) + math.log(1.6 / 3) + math.log(1.4 / 3)) / 3)
    cut = torch.tensor([[True, True, False]])  # a padded frame is not scored
    assert ngram_nll(tokens, cut, unigram.log(), None) == pytest.approx(-math.log(0.6))


def test_lm_nll_is_the_token_weighted_mean_of_lm_loss():
    from melody.config import SemanticLMConfig

    torch.manual_seed(0)
    lm = SemanticLM(SemanticLMConfig(dim=16, depth=1, heads=2), 8, 2, 4).eval()
    semantic = torch.randint(0, 8, (5, 7))
    keep = torch.arange(7)[None, :] < torch.tensor([7, 3, 5, 1, 6])[:, None]
    cond = torch.randint(0, 4, (5, 2))
    with torch.no_grad():
        whole = lm_loss(lm(cond, semantic).logits, semantic, keep).loss
    assert lm_nll(lm, cond, semantic, keep, batch_size=2) == pytest.approx(float(whole), rel=1e-5)


def test_fingerprint_follows_the_weights():
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert fingerprint(a) != fingerprint(b)


def test_fine_tuning_starts_from_the_init_models_weights(stack, tmp_path):
    """`melody train semantic --init RUN`: the LM starts from that model's weights (at lr 0 it ends with them, bit for
    bit), the run records where it started; another width, or --init with --resume, is one line."""
    corpus, runs, overrides = stack
    conditioners = ["--mulan", str(runs["mulan"]), "--tokenizer", str(runs["tokenizer"])]
    run_ok("train", "semantic", "--data", str(corpus), "--out", str(tmp_path / "ft"), *conditioners,
           "--init", str(runs["semantic"]), *sets([*overrides, "train.steps=2", "train.lr=0"]))
    start, _ = load_model_and_config(runs["semantic"], "semantic_lm", "semantic_lm", SemanticLM.from_config)
    tuned, _ = load_model_and_config(tmp_path / "ft", "semantic_lm", "semantic_lm", SemanticLM.from_config)
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), tuned.state_dict().values(), strict=True))
    record = json.loads((tmp_path / "ft" / "init.json").read_text())
    assert record == {"init": str(runs["semantic"]), "fingerprints": {"semantic_lm": fingerprint(start)}}
    fresh = tmp_path / "fresh"
    run_ok("train", "semantic", "--data", str(corpus), "--out", str(fresh), *conditioners,
           *sets([*overrides, "train.steps=2", "train.lr=0"]))
    scratch, _ = load_model_and_config(fresh, "semantic_lm", "semantic_lm", SemanticLM.from_config)
    assert not torch.equal(scratch.head.weight, start.head.weight) and not (fresh / "init.json").exists()

    wider = melody_one_thread("train", "semantic", "--data", str(corpus), "--out", str(tmp_path / "wide"), *conditioners,
                              "--init", str(runs["semantic"]), *sets([*overrides, "semantic_lm.dim=64"]), "--no-progress")
    assert "the weights do not fit this model's config" in one_line_error(wider)
    assert not (tmp_path / "wide" / "latest.json").exists()
    both = melody_one_thread("train", "semantic", "--data", str(corpus), "--out", str(tmp_path / "ft"), *conditioners,
                             "--init", str(runs["semantic"]), "--resume", "--no-progress")
    assert "give one of them" in one_line_error(both)
