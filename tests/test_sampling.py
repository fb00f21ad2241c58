import math

import pytest
import torch

from melody.semantic.sampling import apply_temperature, cfg_logits, draw, sample_token, top_k_filter, top_p_filter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits).nonzero()[:, -1].tolist())


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 2.0, -1.0, 3.0, 0.5]])
    out = top_k_filter(logits, 2)
    assert kept(out[0]) == {1, 3}
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])  # the survivors are untouched
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 5), logits)
    # ties: still exactly k survivors (torch.topk picks which of the tied ones)
    assert len(kept(top_k_filter(torch.zeros(6), 3))) == 3
    assert len(kept(top_k_filter(torch.tensor([5.0, 1.0, 1.0, 1.0, 0.0]), 2))) == 2


def test_top_p_keeps_the_smallest_set_with_mass_at_least_p():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # ranked: 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    logits = probs.log()
    assert kept(top_p_filter(logits, 0.45)) == {1}
    assert kept(top_p_filter(logits, 0.75)) == {1, 3}
    assert kept(top_p_filter(logits, 0.9)) == {1, 3, 0}
    assert kept(top_p_filter(logits, 0.96)) == {0, 1, 2, 3}
    assert kept(top_p_filter(logits, 0.0)) == {1}  # at least one
    assert torch.equal(top_p_filter(logits, 1.0), logits)

    torch.manual_seed(0)
    rows = torch.randn(200, 12) * 2
    for p in (0.3, 0.7, 0.9):
        out = top_p_filter(rows, p)
        probs = rows.softmax(-1)
        mass = torch.where(torch.isfinite(out), probs, 0.0).sum(-1)
        smallest_kept = torch.where(torch.isfinite(out), probs, math.inf).min(-1).values
        assert (mass >= p - 1e-6).all()  # enough mass
        assert (mass - smallest_kept < p).all()  # and no smaller set of the top tokens has it


def test_temperature_towards_zero_is_argmax_and_zero_is_greedy():
    torch.manual_seed(1)
    logits = torch.randn(8, 10)
    sharp = apply_temperature(logits, 1e-4).softmax(-1)
    torch.testing.assert_close(sharp, torch.nn.functional.one_hot(logits.argmax(-1), 10).float(), atol=1e-4, rtol=0)
    assert torch.equal(sample_token(logits, temperature=0.0), logits.argmax(-1))
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_sample_token_is_seeded_and_follows_the_distribution():
    probs = torch.tensor([0.2, 0.3, 0.5])
    logits = probs.log().expand(30_000, 3)

    def draw(seed: int, **kw) -> torch.Tensor:
        return sample_token(logits, generator=torch.Generator().manual_seed(seed), **kw)

    a, b = draw(0), draw(0)
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(1))
    freq = torch.bincount(a, minlength=3).float() / a.numel()
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)

    freq_k = torch.bincount(draw(2, top_k=2), minlength=3).float() / a.numel()  # renormalised over the top two
    torch.testing.assert_close(freq_k, torch.tensor([0.0, 0.375, 0.625]), atol=0.015, rtol=0)

    freq_t = torch.bincount(draw(3, temperature=2.0), minlength=3).float() / a.numel()  # p^(1/2), renormalised
    torch.testing.assert_close(freq_t, probs.sqrt() / probs.sqrt().sum(), atol=0.015, rtol=0)


def test_cfg_interpolates_and_is_the_same_on_logits_and_log_probs():
    torch.manual_seed(2)
    cond, uncond = torch.randn(4, 7), torch.randn(4, 7)
    assert torch.equal(cfg_logits(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_logits(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_logits(cond, uncond, 3.0), 3 * cond - 2 * uncond)
    on_log_probs = cfg_logits(cond.log_softmax(-1), uncond.log_softmax(-1), 3.0)
    torch.testing.assert_close(on_log_probs.softmax(-1), cfg_logits(cond, uncond, 3.0).softmax(-1))


def test_draw_is_torch_multinomials_draw_without_its_host_read():
    probs = torch.rand(4, 64, generator=torch.Generator().manual_seed(0)).softmax(-1)
    probs[:, :20] = 0.0  # filtered tokens are never drawn
    probs /= probs.sum(-1, keepdim=True)
    for seed in range(20):
        ours = draw(probs, torch.Generator().manual_seed(seed))
        theirs = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
        assert torch.equal(ours, theirs) and ours.dtype == torch.long and (ours >= 20).all()
    # and its frequencies are the probabilities: 20 000 draws of a 4-way distribution
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    counts = torch.bincount(draw(p.expand(20_000, 4), torch.Generator().manual_seed(1)), minlength=4)
    torch.testing.assert_close(counts / 20_000, p, atol=0.015, rtol=0)
