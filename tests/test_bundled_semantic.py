"""The bundled tiny semantic stack (melody/bundled/{mulan,tokenizer,semantic_lm}) on music it never saw.

One freshly rendered 10 s piece per style of the built-in corpus (seed 12345, not a corpus seed),
captioned by the corpus's own caption writer: the figures in the comments were measured on them.
"""

import numpy as np
import pytest
import torch

from melody.bundled import bundled
from melody.checkpoint import load_model
from melody.data.synth.arrange import STYLES, arrange
from melody.data.synth.captions import make_caption
from melody.data.synth.render import DYNAMICS_RMS_DB, render_midi
from melody.mulan import MuLan, retrieval_metrics
from melody.semantic.lm import SemanticLM
from melody.semantic.tokenizer import SemanticTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE, SECONDS = 24_000, 10.0


@pytest.fixture(scope="module")
def pieces():
    """(captions, audio (n, samples)) of one new piece per style."""
    captions, audio = [], []
    for i, style in enumerate(STYLES):
        piece = arrange(style, np.random.default_rng([12345, i]), duration=SECONDS)
        level = DYNAMICS_RMS_DB[piece.attributes["dynamics"]]
        audio.append(render_midi(piece.midi, sample_rate=RATE, rms_db=level)[: int(SECONDS * RATE)])
        captions.append(make_caption(piece.attributes, np.random.default_rng([12345, i, 1])))
    return captions, torch.from_numpy(np.stack(audio))


@pytest.fixture(scope="module")
def mulan():
    return load_model(bundled("mulan"), "mulan", "mulan", lambda c: MuLan.from_config(c.mulan, c.vae.sample_rate))


@pytest.fixture(scope="module")
def tokenizer():
    return load_model(bundled("tokenizer"), "tokenizer", "tokenizer",
                      lambda c: SemanticTokenizer.from_config(c.tokenizer, c.vae.sample_rate))


def test_bundled_mulan_finds_each_new_piece_from_its_caption(pieces, mulan):
    captions, audio = pieces
    with torch.no_grad():
        metrics = retrieval_metrics(mulan.embed_audio(audio), mulan.embed_text(captions))
    n = len(captions)
    # measured: text→audio R@1 0.82, mean rank 1.6 among 11 (chance 0.09, 6.0)
    assert metrics["t2a/R@1"] >= 0.5 and metrics["t2a/mean_rank"] < 3.0, metrics
    assert metrics["a2t/mean_rank"] < (n + 1) / 2, metrics
    tokens_audio, tokens_text = mulan.tokens_from_audio(audio), mulan.tokens_from_text(captions)
    assert tokens_audio.shape == tokens_text.shape == (n, 12) and tokens_audio.dtype == torch.long
    assert int(tokens_audio.max()) < mulan.rvq.codebook_size


def test_bundled_tokenizer_writes_25_tokens_a_second_that_tell_pieces_apart(pieces, tokenizer):
    _, audio = pieces
    tokens = tokenizer.tokens(audio)
    assert tokens.shape == (len(audio), 250) and tokens.dtype == torch.long
    assert torch.equal(tokens, tokenizer.tokens(audio))
    assert torch.equal(tokenizer.tokens(audio[:2, : RATE + 1]), tokenizer.tokens(audio[:2, : RATE + 1]))
    assert tokenizer.tokens(audio[:1, : RATE + 1]).shape == (1, 26)  # ceil(24001 / 960)

    def overlap(a, b):  # share of a's token occurrences whose code b also uses
        return float(torch.isin(a, b.unique()).float().mean())

    halves = [overlap(t[125:], t[:125]) for t in tokens]
    others = [overlap(tokens[i], tokens[j]) for i in range(len(tokens)) for j in range(len(tokens)) if i != j]
    # the second half of a piece reuses its first half's codes far more than another piece's (measured: 0.98 vs 0.04)
    assert np.mean(halves) > np.mean(others) + 0.3, (np.mean(halves), np.mean(others))


def test_bundled_lm_predicts_new_music_and_follows_its_condition(pieces, mulan, tokenizer):
    from melody.eval.semantic import code_overlap, lm_nll
    from melody.semantic.sampling import generate

    captions, audio = pieces
    lm = load_model(bundled("semantic_lm"), "semantic_lm", "semantic_lm", SemanticLM.from_config)
    assert (lm.vocab_size, lm.mulan_levels, lm.mulan_codebook_size) == (256, 12, 128)
    tokens = tokenizer.tokens(audio)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    from_audio, from_text = mulan.tokens_from_audio(audio), mulan.tokens_from_text(captions)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in tokens])
    real = float(np.exp(lm_nll(lm, from_audio, tokens, keep)))
    # measured: 2.5 on the pieces as played, 5.1 on the same tokens in random order (vocabulary 256)
    assert real < 5.0 and float(np.exp(lm_nll(lm, from_audio, shuffled, keep))) > 2 * real
    n = len(captions)
    for condition, at_least in ((from_text, 0.05), (from_audio, 0.2)):  # measured: 0.36 and 0.63
        made = generate(lm, condition, 250, temperature=1.0, guidance=3.0, generator=torch.Generator().manual_seed(0)).tokens
        own = np.mean([code_overlap(made[i], tokens[i]) for i in range(n)])
        other = np.mean([code_overlap(made[i], tokens[j]) for i in range(n) for j in range(n) if j != i])
        assert own > at_least and own > 5 * other, (own, other)  # measured: other pieces' codes 0.021 and 0.040
