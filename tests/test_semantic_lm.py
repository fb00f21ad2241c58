import math

import pytest
import torch

from melody.config import MelodyConfig, SemanticLMConfig, preset
from melody.modules.transformer import swiglu_hidden_dim
from melody.errors import MelodyError
from melody.modules.rvq import dequantize
from melody.semantic.lm import (CLOCK_MULTIPLES, SemanticLM, beat_clock, beat_grid, bucket_tempo, condition_dropout_mask,
                                continued_grid,
                                lm_loss, parameter_count, running_reconstruction, stretch_rates, stretch_tokens, tempo_bucket,
                                window_and_stride)
from melody.semantic.sampling import cfg_logits, generate, sample_token, two_scale_cfg_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, LEVELS, CODES = 16, 12, 8


def tiny(seed: int = 0, sharp: bool = False) -> SemanticLM:
    """sharp: attention and head weights × 4, so that outputs depend on the whole context (a freshly
    initialised LM mostly follows the last token, and its greedy output falls into a short loop)."""
    torch.manual_seed(seed)
    lm = SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4), VOCAB, LEVELS, CODES).eval()
    return sharpen(lm) if sharp else lm


@torch.no_grad()
def sharpen(lm: SemanticLM) -> SemanticLM:
    for block in lm.transformer.blocks:
        block.attn.qkv.weight.mul_(4)
        block.attn.out.weight.mul_(4)
    lm.head.weight.mul_(4)
    return lm


def mulan(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(CODES, (b, LEVELS), generator=torch.Generator().manual_seed(seed))


def semantic(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_logits_shape_and_level_specific_condition_embedding():
    lm = tiny()
    out = lm(mulan(3), semantic(3, 9))
    assert out.logits.shape == (3, 9, VOCAB) and out.next_logits.shape == (3, VOCAB)
    # the same code at two levels embeds differently
    same = torch.full((1, LEVELS), 5)
    cond = lm.condition(same, None, 1)
    assert not torch.allclose(cond[0, 0], cond[0, 1])
    with pytest.raises(ValueError):
        lm(torch.full((1, LEVELS), CODES), semantic(1, 3))  # out of range: would alias the next level


@torch.no_grad()
def test_logits_are_causal_over_semantic_tokens():
    lm = tiny()
    m, s = mulan(2), semantic(2, 12)
    changed = s.clone()
    changed[:, 6:] = (s[:, 6:] + 1) % VOCAB
    a, b = lm(m, s).logits, lm(m, changed).logits
    torch.testing.assert_close(b[:, :7], a[:, :7], atol=1e-6, rtol=0)  # logits[:, i] sees s[:, :i] only
    assert not torch.allclose(b[:, 7:], a[:, 7:])


@torch.no_grad()
def test_kv_cache_incremental_logits_match_the_full_pass():
    lm = tiny()
    m, s = mulan(2), semantic(2, 11)
    drop = torch.tensor([False, True])
    full = lm(m, s, drop)
    for first in (0, 4):
        cache = lm.new_cache()
        pieces = [lm(m, s[:, :first], drop, cache=cache).logits]
        for j in range(first, 11):
            pieces.append(lm(None, s[:, j:j + 1], cache=cache).logits)
        assert cache.length == LEVELS + 1 + 11
        torch.testing.assert_close(torch.cat(pieces, dim=1), full.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(cache.next_logits, full.next_logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        lm(m, s[:, :1], cache=cache)  # the condition is already cached


@torch.no_grad()
def test_dropped_condition_is_the_null_condition_and_ignores_mulan_tokens():
    lm = tiny()
    s = semantic(2, 8)
    m1, m2 = mulan(2, seed=3), mulan(2, seed=4)
    everything = torch.ones(2, dtype=torch.bool)
    null = lm(None, s).logits
    assert torch.equal(lm(m1, s, everything).logits, null)
    assert torch.equal(lm(m2, s, everything).logits, null)
    assert not torch.allclose(lm(m1, s).logits, lm(m2, s).logits)  # kept, the condition matters
    # per row
    mixed = lm(m1, s, torch.tensor([True, False])).logits
    assert torch.equal(mixed[0], null[0])
    torch.testing.assert_close(mixed[1], lm(m1, s).logits[1])


def test_condition_dropout_mask_rate_and_seed():
    def draw(seed: int, p: float = 0.1) -> torch.Tensor:
        return condition_dropout_mask(40_000, p, torch.Generator().manual_seed(seed))

    a = draw(0)
    assert a.dtype == torch.bool and a.shape == (40_000,)
    assert abs(a.float().mean().item() - 0.1) < 0.006
    assert torch.equal(a, draw(0)) and not torch.equal(a, draw(1))
    assert not draw(0, 0.0).any() and draw(0, 1.0).all()


def test_lm_loss_per_example_and_mask():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, VOCAB), torch.randint(VOCAB, (2, 5))
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    out = lm_loss(logits, targets)
    torch.testing.assert_close(out.per_example, ce.mean(1))
    torch.testing.assert_close(out.loss, ce.mean())
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    masked = lm_loss(logits, targets, mask)
    torch.testing.assert_close(masked.per_example, torch.stack((ce[0].mean(), ce[1, :2].mean())))
    torch.testing.assert_close(masked.loss, ce[mask].mean())
    assert masked.tokens.item() == 7


def naive_generate(lm: SemanticLM, m: torch.Tensor | None, n: int, window: int, stride: int,
                   prefix: torch.Tensor | None = None, guidance: float = 1.0, seed: int | None = None,
                   tempo: torch.Tensor | None = None, beats: torch.Tensor | None = None) -> torch.Tensor:
    """No cache: the whole window is recomputed for every token; greedy, or sampled with `seed`. The
    windowing rule written out: a window holds at most `window` tokens; to sample one more from a full
    window, keep its last `window − stride` tokens; a prefix of `window` tokens or more is a full window.
    A window starting `origin` frames after the prefix's first token is clocked on `beats` moved by that many frames."""
    b = m.shape[0] if m is not None else 1
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    content = prefix if prefix is not None else torch.zeros(b, 0, dtype=torch.long)
    origin = 0
    if content.shape[1] >= window:
        origin = content.shape[1] - (window - stride)
        content = content[:, origin:]
    out = []
    for _ in range(n):
        if content.shape[1] == window:
            content = content[:, stride:]
            origin += stride
        moved = None if beats is None else beats + torch.stack((origin * beats[:, 1], torch.zeros(b, dtype=beats.dtype)), 1)
        logits = lm(m, content, tempo=tempo, beats=moved).next_logits
        if guidance != 1.0:
            logits = cfg_logits(logits, lm(None, content).next_logits, guidance)
        token = logits.argmax(-1) if seed is None else sample_token(logits, 1.0, generator=generator)
        out.append(token)
        content = torch.cat((content, token[:, None]), dim=1)
    return torch.stack(out, dim=1)


@torch.no_grad()
def test_greedy_generate_is_deterministic_and_matches_the_naive_loop_within_a_window():
    lm = tiny(sharp=True)
    m = mulan(3)
    a = generate(lm, m, 10, temperature=0.0, window=16, stride=8)
    assert a.tokens.shape == (3, 10) and a.windows == 1
    assert torch.equal(a.tokens, generate(lm, m, 10, temperature=0.0, window=16, stride=8).tokens)
    assert torch.equal(a.tokens, naive_generate(lm, m, 10, window=16, stride=8))
    # with guidance: cond and uncond branches batched in one pass each
    g = generate(lm, m, 10, temperature=0.0, guidance=3.0, window=16, stride=8)
    assert torch.equal(g.tokens, naive_generate(lm, m, 10, window=16, stride=8, guidance=3.0))
    # a prefix continues: the last 6 tokens from the first 4
    rest = generate(lm, m, 6, prefix=a.tokens[:, :4], temperature=0.0, window=16, stride=8)
    assert torch.equal(rest.tokens, a.tokens[:, 4:])


@torch.no_grad()
def test_seeded_sampling_reproduces():
    lm = tiny(sharp=True)
    m = mulan(2)

    def run(seed: int) -> torch.Tensor:
        return generate(lm, m, 12, temperature=1.0, top_k=8, top_p=0.9, guidance=2.0, window=8, stride=3,
                        generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize("guidance", [1.0, 2.5])
@torch.no_grad()
def test_continuation_across_windows_matches_the_naive_windowing_rule(guidance: float):
    lm = tiny(seed=1, sharp=True)
    m = mulan(2, seed=5)
    window, stride, n = 8, 3, 19

    def run(count: int, window: int, stride: int, prefix: torch.Tensor | None = None):
        return generate(lm, m, count, prefix=prefix, temperature=1.0, guidance=guidance, window=window, stride=stride,
                        generator=torch.Generator().manual_seed(11))

    slid = run(n, window, stride)
    assert slid.windows == 1 + math.ceil((n - window) / stride)
    assert torch.equal(slid.tokens, naive_generate(lm, m, n, window, stride, guidance=guidance, seed=11))
    # a prefix longer than a window: continue from its last window − stride tokens
    prefix = semantic(2, 11, seed=6)
    cont = run(7, window, stride, prefix)
    assert torch.equal(cont.tokens, naive_generate(lm, m, 7, window, stride, prefix, guidance=guidance, seed=11))
    # a window large enough for everything: one long pass, as if there were no windows
    long = run(n, n, 1)
    assert long.windows == 1
    assert torch.equal(long.tokens, naive_generate(lm, m, n, window=10_000, stride=1, guidance=guidance, seed=11))
    assert not torch.equal(long.tokens, slid.tokens)  # the windows did change the context
    # and greedy, too
    greedy = generate(lm, m, n, temperature=0.0, guidance=guidance, window=window, stride=stride)
    assert torch.equal(greedy.tokens, naive_generate(lm, m, n, window, stride, guidance=guidance))
    assert not torch.equal(greedy.tokens, generate(lm, m, n, temperature=0.0, guidance=guidance, window=n, stride=1).tokens)


@pytest.mark.parametrize("n, window, stride, p", [(20, 8, 3, 0), (20, 8, 8, 0), (5, 8, 3, 0), (13, 8, 3, 5), (9, 8, 3, 12)])
@torch.no_grad()
def test_forward_passes_follow_the_formula(n: int, window: int, stride: int, p: int):
    lm = tiny()
    b = 2
    calls = []
    hook = lm.register_forward_hook(lambda module, args, output: calls.append(output.next_logits.shape[0]))
    try:
        prefix = semantic(b, p) if p else None
        result = generate(lm, mulan(b), n, prefix=prefix, temperature=0.0, guidance=2.0, window=window, stride=stride)
    finally:
        hook.remove()
    keep = window - stride
    first = p if p < window else keep  # tokens in the first window before decoding
    windows = 1 + math.ceil(max(0, n - (window - first)) / stride)
    assert result.forward_passes == n == len(calls)  # one pass per token, however many windows
    assert set(calls) == {2 * b}  # cond and uncond in the same batch
    assert result.windows == windows
    assert result.positions == (n - windows) + windows * (LEVELS + 1) + first + (windows - 1) * keep
    assert generate(lm, mulan(b), 0).forward_passes == 0


def overfit(lm: SemanticLM, m: torch.Tensor, s: torch.Tensor, tempo: torch.Tensor | None = None) -> tuple[float, float]:
    """Adam on one batch until the loss is 1/20 of its start (300 steps at most): (first loss, final loss)."""
    lm.train()
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    first = lm_loss(lm(m, s, tempo=tempo).logits, s).loss.item()
    for _ in range(300):
        opt.zero_grad()
        loss = lm_loss(lm(m, s, tempo=tempo).logits, s).loss
        loss.backward()
        opt.step()
        if loss.item() < first / 20:
            break
    lm.eval()
    with torch.no_grad():
        return first, lm_loss(lm(m, s, tempo=tempo).logits, s).loss.item()


def test_tiny_lm_overfits_a_sequence_and_greedy_generate_reproduces_it():
    lm = tiny()
    m, s = mulan(1, seed=7), semantic(1, 24, seed=8)
    first, final = overfit(lm, m, s)
    assert final < first / 5, (first, final)
    assert torch.equal(generate(lm, m, 24, temperature=0.0, window=32, stride=16).tokens, s)


def test_parameter_count_at_paper_shapes():
    cfg = MelodyConfig()
    c = cfg.semantic_lm
    d, depth, hidden = c.dim, c.depth, swiglu_hidden_dim(c.dim)
    levels, codes, vocab = cfg.mulan.rvq_levels, cfg.mulan.codebook_size, cfg.tokenizer.codebook_size
    block = 4 * d * d + 3 * d * hidden + 2 * d  # attention, SwiGLU, two RMSNorm gains
    expected = levels * codes * d + levels * d + d + vocab * d + depth * block + d + d * vocab
    count = parameter_count(c, vocab, levels, codes)
    assert count == expected
    assert 0.6 * 429.5e6 < count < 1.4 * 429.5e6  # the paper's 429.5 M, depth and width unknown
    assert tiny().num_parameters() == parameter_count(SemanticLMConfig(dim=32, depth=2, heads=4), VOCAB, LEVELS, CODES)
    assert window_and_stride(c, cfg.tokenizer.frame_rate) == (250, 125)
    assert SemanticLM.from_config(preset("tiny")).vocab_size == preset("tiny").tokenizer.codebook_size


# --- the codebook condition ---------------------------------------------------------------------

MULAN_DIM = 6


def codebook_lm(noise: float = 0.0, seed: int = 0) -> SemanticLM:
    torch.manual_seed(seed)
    lm = SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4, condition_embedding="codebook", condition_noise=noise),
                    VOCAB, LEVELS, CODES, MULAN_DIM).eval()
    lm.set_mulan_codebooks(torch.randn(LEVELS, CODES, MULAN_DIM, generator=torch.Generator().manual_seed(7)) / LEVELS)
    return lm


def test_running_reconstruction_is_the_rvq_decode_of_each_prefix_of_levels():
    codebooks = torch.randn(LEVELS, CODES, MULAN_DIM)
    codes = mulan(5)
    sums = running_reconstruction(codes, codebooks)
    assert sums.shape == (5, LEVELS, MULAN_DIM) and sums.dtype == torch.float32
    for level in range(1, LEVELS + 1):
        torch.testing.assert_close(sums[:, level - 1], dequantize(codes[:, :level], codebooks))


@torch.no_grad()
def test_the_codebook_condition_follows_the_codewords_not_the_code_numbers():
    lm = codebook_lm()
    assert not hasattr(lm, "mulan_embedding") and "mulan_codebooks" in lm.state_dict()
    m = mulan(2)
    cond = lm.condition(m, None, 2)
    assert cond.shape == (2, LEVELS, 32)
    # two codes with one codeword give one condition: the table would give two unrelated vectors
    other = m.clone()
    other[:, -1] = (m[:, -1] + 1) % CODES
    lm.mulan_codebooks[-1, other[:, -1]] = lm.mulan_codebooks[-1, m[:, -1]]
    torch.testing.assert_close(lm.condition(other, None, 2), cond)
    # a codeword a little off moves the condition a little; the last level's changes only the last position
    lm.mulan_codebooks[-1, other[:, -1]] += 1e-3
    moved = lm.condition(other, None, 2)
    assert torch.equal(moved[:, :-1], cond[:, :-1]) and 0 < (moved - cond).abs().max() < 0.1
    # the same tokens and semantic tokens give the same logits; another condition other ones
    s = semantic(2, 6)
    assert not torch.allclose(lm(m, s).logits, lm(mulan(2, seed=5), s).logits)


def test_condition_noise_is_drawn_in_training_only():
    lm, m = codebook_lm(noise=0.1), mulan(2)
    with torch.no_grad():
        assert torch.equal(lm.condition(m, None, 2), lm.condition(m, None, 2))
        lm.train()
        assert not torch.equal(lm.condition(m, None, 2), lm.condition(m, None, 2))
    # the noise is σ in MuLan's space: the projection of (noisy − clean) has std ≈ σ · |W row|
    torch.manual_seed(0)
    lm.train()
    with torch.no_grad():
        many = torch.stack([lm.condition(m, None, 2) for _ in range(400)])
    lm.eval()
    with torch.no_grad():
        spread = (many - lm.condition(m, None, 2)).std(dim=0)
    expected = 0.1 * lm.condition_projection.weight.norm(dim=1)  # (d,)
    torch.testing.assert_close(spread.mean(dim=(0, 1)), expected, rtol=0.15, atol=0.0)


def test_codebook_lm_checks_its_codebooks_and_config():
    with pytest.raises(MelodyError, match="do not fit"):
        codebook_lm().set_mulan_codebooks(torch.zeros(LEVELS, CODES, MULAN_DIM + 1))
    with pytest.raises(MelodyError, match="holds no codebooks"):
        tiny().set_mulan_codebooks(torch.zeros(LEVELS, CODES, MULAN_DIM))
    with pytest.raises(MelodyError, match="'table' or 'codebook'"):
        SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4, condition_embedding="tokens"), VOCAB, LEVELS, CODES, 4)
    with pytest.raises(MelodyError, match="condition_noise .* codebook condition"):  # a table has no codewords to perturb
        SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4, condition_noise=0.1), VOCAB, LEVELS, CODES, MULAN_DIM)
    with pytest.raises(MelodyError, match="embedding width"):
        SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4, condition_embedding="codebook"), VOCAB, LEVELS, CODES)
    cfg = SemanticLMConfig(dim=32, depth=2, heads=4, condition_embedding="codebook")
    # the projection (and its bias) replaces the table; the codebooks are a buffer, not parameters
    assert (parameter_count(cfg, VOCAB, LEVELS, CODES, MULAN_DIM) - tiny().num_parameters()
            == MULAN_DIM * 32 + 32 - LEVELS * CODES * 32)


# --- the tempo token -----------------------------------------------------------------------------

BUCKETS, TEMPO_RANGE = 6, (40.0, 240.0)


def tempo_lm(seed: int = 0) -> SemanticLM:
    torch.manual_seed(seed)
    return SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4, tempo_buckets=BUCKETS, tempo_range=TEMPO_RANGE),
                      VOCAB, LEVELS, CODES).eval()


def test_tempo_bucket_is_log_spaced_clamped_and_zero_for_no_tempo():
    edges = [40 * 6 ** (k / BUCKETS) for k in range(BUCKETS + 1)]  # 40 … 240, equal ratios
    bpm = torch.tensor([math.nan, 0.0, -5.0, 10.0, 40.0, edges[1] - 1e-6, edges[1] + 1e-6, 120.0, 239.9, 500.0],
                       dtype=torch.float64)
    assert tempo_bucket(bpm, BUCKETS, TEMPO_RANGE).tolist() == [0, 0, 0, 1, 1, 1, 2, 4, 6, 6]
    # each bucket's centre lies inside it and comes back to it; 0 stands for no tempo
    tokens = torch.arange(BUCKETS + 1)
    centres = bucket_tempo(tokens, BUCKETS, TEMPO_RANGE)
    assert math.isnan(centres[0])
    torch.testing.assert_close(centres[1:], torch.tensor([math.sqrt(a * b) for a, b in zip(edges, edges[1:])], dtype=torch.float64))
    assert torch.equal(tempo_bucket(centres, BUCKETS, TEMPO_RANGE), tokens)
    with pytest.raises(MelodyError, match="tempo_range"):
        tempo_bucket(bpm, BUCKETS, (120.0, 60.0))


@torch.no_grad()
def test_the_tempo_token_conditions_the_lm_and_dropping_the_condition_drops_it():
    lm = tempo_lm()
    assert lm.condition_length == LEVELS + 1
    m, s = mulan(2), semantic(2, 8)
    slow, fast = torch.tensor([1, 1]), torch.tensor([5, 5])
    assert not torch.allclose(lm(m, s, tempo=slow).logits, lm(m, s, tempo=fast).logits)
    torch.testing.assert_close(lm(m, s).logits, lm(m, s, tempo=torch.zeros(2, dtype=torch.long)).logits, atol=0, rtol=0)
    everything = torch.ones(2, dtype=torch.bool)
    assert torch.equal(lm(m, s, everything, tempo=fast).logits, lm(None, s).logits)  # the null condition has no tempo
    with pytest.raises(ValueError, match="tempo"):
        lm(m, s, tempo=torch.tensor([BUCKETS + 1, 0]))
    with pytest.raises(ValueError, match="tempo"):
        tiny()(m, s, tempo=fast)  # an LM without the token cannot be asked for a tempo


@torch.no_grad()
def test_tempo_goes_into_every_window_and_the_cache_matches_the_full_pass():
    lm = tempo_lm(seed=2)
    m, tempo = mulan(2), torch.tensor([2, 6])
    full = lm(m, semantic(2, 9), tempo=tempo)
    cache = lm.new_cache()
    pieces = [lm(m, semantic(2, 9)[:, :3], tempo=tempo, cache=cache).logits]
    pieces += [lm(None, semantic(2, 9)[:, j:j + 1], cache=cache).logits for j in range(3, 9)]
    assert cache.length == LEVELS + 2 + 9
    torch.testing.assert_close(torch.cat(pieces, dim=1), full.logits, atol=1e-5, rtol=0)
    # generation across windows follows the windowing rule with the tempo in every window's condition
    sharpen(lm)  # a fresh LM barely listens to one condition position

    def run(t):
        return generate(lm, m, 20, guidance=2.0, window=8, stride=3, tempo=t, generator=torch.Generator().manual_seed(3))

    result = run(tempo)
    assert torch.equal(result.tokens, naive_generate(lm, m, 20, 8, 3, guidance=2.0, seed=3, tempo=tempo))
    assert not torch.equal(result.tokens, run(torch.tensor([5, 1])).tokens)
    assert result.positions == (20 - result.windows) + result.windows * (LEVELS + 2) + (result.windows - 1) * 5


def test_an_lm_learns_the_tempo_token_when_only_it_tells_two_sequences_apart():
    lm = tempo_lm()
    m = mulan(1, seed=7).repeat(2, 1)  # the same MuLan tokens: only the tempo differs
    s = semantic(2, 16, seed=9)
    tempo = torch.tensor([1, 6])
    first, final = overfit(lm, m, s, tempo)
    assert final < first / 5, (first, final)
    assert torch.equal(generate(lm, m, 16, temperature=0.0, window=32, stride=16, tempo=tempo).tokens, s)


def clock_lm(seed: int = 0, dim: int = 32) -> SemanticLM:
    torch.manual_seed(seed)
    return SemanticLM(SemanticLMConfig(dim=dim, depth=2, heads=4, tempo_buckets=BUCKETS, tempo_range=TEMPO_RANGE,
                                       tempo_clock=True), VOCAB, LEVELS, CODES).eval()


def test_beat_grid_and_clock_put_the_beats_where_the_tempo_says():
    beats = beat_grid(torch.tensor([150.0, math.nan, 0.0, 120.0]), 25, torch.tensor([0.0, 3.0, 1.0, 1.5]))
    assert beats.dtype == torch.float64 and beats[0].tolist() == [0.0, 0.1] and beats[3].tolist() == [1.5, 0.08]
    assert beats[1:3, 1].isnan().all()  # no tempo (NaN, ≤ 0): no clock
    clock = beat_clock(beats, 0, 41)
    assert clock.shape == (4, 41, 2 * len(CLOCK_MULTIPLES)) and clock.dtype == torch.float32
    assert not clock[1:3].any()
    # 150 BPM at 25 Hz: a beat every 10 frames, a bar of four every 40
    m = torch.tensor(CLOCK_MULTIPLES)
    for frame, beat in ((0, 0.0), (5, 0.5), (10, 1.0), (20, 2.0), (40, 4.0)):
        torch.testing.assert_close(clock[0, frame], torch.cat(((2 * math.pi * m * beat).sin(), (2 * math.pi * m * beat).cos())))
    assert clock[0, 10, 6].item() == pytest.approx(1.0) and clock[0, 5, 6].item() == pytest.approx(-1.0)  # cos of the beat cycle
    assert clock[0, 20, 4].item() == pytest.approx(-1.0) and clock[0, 40, 4].item() == pytest.approx(1.0)  # half bar, bar
    torch.testing.assert_close(beat_clock(beats, 7, 30), clock[:, 7:37])  # frames first … first + length − 1
    # a row's grid starts at its phase: 120 BPM from beat 1.5, so frame 25 is beat 3.5
    want = 2 * math.pi * m * 3.5
    torch.testing.assert_close(clock[3, 25], torch.cat((want.sin(), want.cos())))
    # hours into a stream the clock keeps its digits (β is taken mod one bar before the angle)
    far = beat_clock(beat_grid(torch.tensor([137.0]), 25), 25 * 3600 * 5, 3)
    near = beat_clock(beat_grid(torch.tensor([137.0]), 25, torch.tensor([(25 * 3600 * 5 * 137 / 1500) % 4])), 0, 3)
    torch.testing.assert_close(far, near, atol=1e-6, rtol=0)


def test_a_tempo_change_goes_on_from_the_old_tempo_s_beat():
    old = beat_grid(torch.tensor([120.0, 90.0, math.nan, 100.0]), 25, torch.tensor([0.5, 0.0, 0.0, 0.0]))
    new = beat_grid(torch.tensor([150.0, 90.0, 100.0, math.nan]), 25)
    went_on = continued_grid(old, new, 60)
    torch.testing.assert_close(went_on[:, 1], new[:, 1], equal_nan=True)
    # at the change (frame 60) the new grid is on the old one's beat: 120 BPM from 0.5 → beat 5.3 (1.3 in the bar)
    at = lambda grid, frame: (grid[:, 0] + frame * grid[:, 1]) % 4  # noqa: E731
    assert at(went_on, 60)[0].item() == pytest.approx(at(old, 60)[0].item())
    torch.testing.assert_close(beat_clock(went_on[:1], 60, 1), beat_clock(old[:1], 60, 1), atol=1e-6, rtol=0)
    assert went_on[1].tolist() == [0.0, 90 / 1500]  # the same tempo: the same grid
    assert at(went_on, 60)[2].item() == pytest.approx(0.0)  # no clock before: a downbeat at the change
    assert math.isnan(went_on[3, 1])  # no tempo now: no clock
    assert 0.0 <= went_on[0, 0].item() < 4.0  # kept within a bar, however far into a stream
    torch.testing.assert_close(continued_grid(None, new, 0), new, equal_nan=True)  # a stream's first chunk


@torch.no_grad()
def test_the_beat_clock_conditions_every_frame_and_the_cache_matches_the_full_pass():
    lm = clock_lm(seed=3)
    m, s, tempo = mulan(3), semantic(3, 12), torch.tensor([2, 4, 0])
    beats = beat_grid(torch.tensor([100.0, 150.0, math.nan]), 25, torch.tensor([0.0, 0.5, 0.0]))
    full = lm(m, s, tempo=tempo, beats=beats)
    shifted = lm(m, s, tempo=tempo, beats=beats + torch.tensor([[0.25, 0.0]]))
    assert not torch.allclose(full.logits[:2], shifted.logits[:2])  # where the beats fall changes every frame's scores
    assert (full.logits[:2] - shifted.logits[:2]).abs().amax(dim=-1).min() > 0
    torch.testing.assert_close(full.logits[2], lm(m, s, tempo=tempo).logits[2], atol=0, rtol=0)  # no tempo: no clock
    dropped = torch.tensor([True, False, False])  # the dropped condition loses the clock, as it loses the tempo token
    torch.testing.assert_close(lm(m, s, dropped, tempo=tempo, beats=beats).logits[0], lm(None, s).logits[0], atol=0, rtol=0)
    lm.config.clock_guided = False  # … unless the clock is an input both guidance branches get
    unguided = lm(m, s, dropped, tempo=tempo, beats=beats).logits[0]
    torch.testing.assert_close(unguided, lm(None, s, beats=beats).logits[0], atol=0, rtol=0)
    assert not torch.allclose(unguided, lm(None, s).logits[0])
    lm.config.clock_guided = True
    cache = lm.new_cache()
    pieces = [lm(m, s[:, :4], tempo=tempo, beats=beats, cache=cache).logits]
    pieces += [lm(None, s[:, j:j + 2], cache=cache).logits for j in range(4, 12, 2)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache.next_logits, full.next_logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="beats"):
        lm(None, s[:, :1], cache=cache, beats=beats)  # the grid is in the cache already
    with pytest.raises(ValueError, match="beat clock"):
        tempo_lm()(m, s, tempo=tempo, beats=beats)  # an LM without a clock cannot be given one …
    tempo_lm()(m, s, tempo=tempo, beats=beat_grid(torch.full((3,), math.nan), 25))  # … except a grid of no tempo
    with pytest.raises(MelodyError, match="tempo_buckets"):
        SemanticLM(SemanticLMConfig(dim=32, depth=1, heads=4, tempo_clock=True), VOCAB, LEVELS, CODES)


@torch.no_grad()
def test_every_window_is_clocked_on_the_grid_of_the_first_token_given():
    lm = sharpen(clock_lm(seed=4))
    m, tempo = mulan(2), torch.tensor([3, 5])
    beats = beat_grid(torch.tensor([90.0, 140.0]), 25, torch.tensor([0.0, 0.75]))

    def run(n, prefix=None, grid=beats, seed=3, graphs=False):
        return generate(lm, m, n, prefix, guidance=2.0, window=8, stride=3, tempo=tempo, beats=grid,
                        generator=torch.Generator().manual_seed(seed), graphs=graphs)

    result = run(20)
    assert torch.equal(result.tokens, naive_generate(lm, m, 20, 8, 3, guidance=2.0, seed=3, tempo=tempo, beats=beats))
    assert torch.equal(result.tokens, run(20, graphs=True).tokens)  # the static cache's step takes the clock as an input
    assert not torch.equal(result.tokens, run(20, grid=beats + torch.tensor([[0.5, 0.0]])).tokens)
    # a long prefix: its first window starts from its last tokens, on the prefix's grid
    prefix = semantic(2, 11, seed=6)
    assert torch.equal(run(9, prefix).tokens,
                       naive_generate(lm, m, 9, 8, 3, prefix=prefix, guidance=2.0, seed=3, tempo=tempo, beats=beats))
    # so music continued in two calls is the music of one: the second call's prefix is the first's tokens
    once = generate(lm, m, 16, guidance=2.0, window=8, stride=3, tempo=tempo, beats=beats,
                    generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    first = generate(lm, m, 8, guidance=2.0, window=8, stride=3, tempo=tempo, beats=beats, generator=g).tokens
    then = generate(lm, m, 8, first, guidance=2.0, window=8, stride=3, tempo=tempo, beats=beats, generator=g).tokens
    assert torch.equal(once.tokens, torch.cat((first, then), dim=1))


def test_two_scale_guidance_is_one_scale_when_they_agree_and_caption_guidance_against_the_clock_at_one():
    c, b, u = torch.randn(3, 4, VOCAB).unbind(0)
    torch.testing.assert_close(two_scale_cfg_logits(c, b, u, 2.5, 2.5), cfg_logits(c, u, 2.5))
    torch.testing.assert_close(two_scale_cfg_logits(c, b, u, 2.5, 1.0), cfg_logits(c, b, 2.5))
    torch.testing.assert_close(two_scale_cfg_logits(c, b, u, 1.0, 1.0), c)


@torch.no_grad()
def test_tempo_guidance_samples_from_three_branches_caption_clocked_null_and_null():
    lm = sharpen(clock_lm(seed=8))
    lm.config.clock_guided = False  # the null condition keeps the clock: ℓ_β is trained
    m, tempo = mulan(2), torch.tensor([3, 5])
    beats = beat_grid(torch.tensor([90.0, 140.0]), 25, torch.tensor([0.0, 0.75]))
    dropped, silent = torch.ones(2, dtype=torch.bool), beat_grid(torch.full((2,), math.nan), 25)
    n, w, wb = 10, 2.0, 4.0
    expected = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(n):  # no cache, greedy: every branch recomputed over the whole content
        scores = [lm(m, expected, None, tempo=tempo, beats=beats).next_logits,
                  lm(m, expected, dropped, tempo=tempo, beats=beats).next_logits,
                  lm(m, expected, dropped, tempo=tempo, beats=silent).next_logits]
        expected = torch.cat((expected, two_scale_cfg_logits(*scores, w, wb).argmax(-1, keepdim=True)), dim=1)

    def run(clock_scale, graphs=False):
        return generate(lm, m, n, guidance=w, temperature=0.0, window=32, stride=16, tempo=tempo, beats=beats,
                        tempo_guidance=clock_scale, graphs=graphs)

    result = run(wb)
    assert torch.equal(result.tokens, expected) and result.forward_passes == n  # three branches, one batched call
    assert torch.equal(run(wb, graphs=True).tokens, expected)  # the static cache's step, 3 × b rows
    assert not torch.equal(run(1.0).tokens, expected)  # the clock's own scale is heard
    with pytest.raises(MelodyError, match="tempo guidance must be ≥ 0"):
        run(-1.0)
    lm.config.clock_guided = True  # a null condition that never heard the clock: ℓ_β was never trained
    with pytest.raises(MelodyError, match="clock_guided=false"):
        run(wb)


def test_an_lm_learns_where_the_beats_fall_when_only_the_clock_tells_sequences_apart():
    """One pattern (an accent on each beat, a weaker one on each half beat) at 150 BPM, 25 Hz (a beat every 10 frames),
    starting at four places in the bar: the same MuLan tokens and tempo token for all, so only the clock says where
    the beats fall. Greedy generation from each grid writes that grid's sequence."""
    lm = clock_lm(seed=5)
    offsets = (0, 3, 5, 8)  # frames from a beat to the first frame
    frames = torch.arange(30)
    s = torch.stack([torch.where((frames + o) % 10 == 0, 3, torch.where((frames + o) % 5 == 0, 2, 1)) for o in offsets])
    m, tempo = mulan(1, seed=7).repeat(4, 1), torch.full((4,), 4)
    beats = beat_grid(torch.full((4,), 150.0), 25, torch.tensor(offsets) / 10.0)
    lm.train()
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    first = lm_loss(lm(m, s, tempo=tempo, beats=beats).logits, s).loss.item()
    for _ in range(300):
        opt.zero_grad()
        loss = lm_loss(lm(m, s, tempo=tempo, beats=beats).logits, s).loss
        loss.backward()
        opt.step()
        if loss.item() < first / 50:
            break
    lm.eval()
    assert loss.item() < first / 10, (first, loss.item())
    assert torch.equal(generate(lm, m, 30, temperature=0.0, window=32, stride=16, tempo=tempo, beats=beats).tokens, s)


def test_stretching_tokens_plays_them_faster_or_slower_and_rate_one_gives_them_back():
    tokens = torch.arange(1, 11)[None].repeat(3, 1)  # 10 frames, all kept except the last two of row 2
    keep = torch.ones(3, 10, dtype=torch.bool)
    keep[2, 8:] = False
    out, kept = stretch_tokens(tokens, keep, torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    assert torch.equal(out[0], tokens[0]) and kept[0].all()
    assert out[1, :5].tolist() == [1, 3, 5, 7, 9] and kept[1].tolist() == [True] * 5 + [False] * 5  # twice as fast
    assert out[2].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and kept[2].all()  # half as fast: the window holds 5 frames
    fast, fast_kept = stretch_tokens(tokens[2:], keep[2:], torch.tensor([1.25], dtype=torch.float64))
    assert fast[0, :6].tolist() == [1, 2, 3, 4, 6, 7] and fast_kept[0].sum() == 7  # source frames 0..8.75: 8 and 9 unkept
    assert out.dtype == tokens.dtype and kept.dtype == torch.bool


def test_stretch_rates_are_log_uniform_within_the_spread_and_seeded():
    rates = stretch_rates(20_000, 0.25, torch.Generator().manual_seed(0))
    assert rates.dtype == torch.float64 and rates.min() >= 1 / 1.25 and rates.max() <= 1.25
    assert abs(float(rates.log().mean())) < 0.01 and abs(float((rates > 1).double().mean()) - 0.5) < 0.02
    assert torch.equal(rates[:10], stretch_rates(10, 0.25, torch.Generator().manual_seed(0)))
    assert torch.equal(stretch_rates(4, 0.0), torch.ones(4, dtype=torch.float64))
    with pytest.raises(MelodyError, match="tempo_stretch"):
        stretch_rates(4, -0.1)


def test_lm_nll_scores_without_building_a_graph():
    from melody.eval.semantic import lm_nll

    lm, grad = tiny(), []
    lm.register_forward_hook(lambda *_: grad.append(torch.is_grad_enabled()))
    lm_nll(lm, mulan(2), semantic(2, 8), torch.ones(2, 8, dtype=torch.bool))
    assert grad and not any(grad)  # held-out scoring in training runs with the model's parameters trainable


@torch.no_grad()
def test_stretched_nll_sets_the_moved_tempo_token_against_the_stale_one():
    from melody.eval.semantic import TokenizedSplit, lm_nll, stretched_nll

    lm, n = sharpen(tempo_lm(seed=1)), 4
    bpm = torch.tensor([60.0, 90.0, math.nan, 150.0], dtype=torch.float64)
    split = TokenizedSplit(semantic(n, 12), torch.ones(n, 12, dtype=torch.bool), mulan(n), mulan(n, seed=5),
                           [f"clip {i}" for i in range(n)], [""] * n, bpm, torch.zeros(n, dtype=torch.float64), 25.0)
    same = stretched_nll(lm, split, rates=(1.0,))
    assert same["told"] == same["stale"]  # not stretched: the moved token is the clip's own
    out = stretched_nll(lm, split, rates=(1.25,))
    stated = ~bpm.isnan()  # the clip stating no tempo is left out
    tokens, keep = stretch_tokens(split.semantic[stated], split.keep[stated], torch.full((3,), 1.25, dtype=torch.float64))
    told = tempo_bucket(bpm[stated] * 1.25, BUCKETS, TEMPO_RANGE)
    assert out["told"] == pytest.approx(lm_nll(lm, split.text_mulan[stated], tokens, keep, tempo=told))
    assert out["told"] != out["stale"] and "told_restated" not in out
    # with the captions' tokenizer: the condition restates the new tempo too (`semantic_lm.tempo_restate`)
    asked = []

    def caption_tokens(captions):
        asked.extend(captions)
        return mulan(len(captions), seed=9)

    out = stretched_nll(lm, split, rates=(1.25,), caption_tokens=caption_tokens)
    assert asked == ["clip 0, at 75 BPM.", "clip 1, at 112 BPM.", "clip 3, at 188 BPM."]  # 60, 90, 150 × 1.25, rounded
    assert out["told_restated"] == pytest.approx(lm_nll(lm, mulan(3, seed=9), tokens, keep, tempo=told))
    assert out["told_restated"] != out["told"]
    assert stretched_nll(tiny(), split) == {}  # an LM without the tempo token
    # an LM with a beat clock: `told` moves the clock's pace with the token, from the clips' first beats
    clocked = sharpen(clock_lm(seed=1))
    split.phase = torch.tensor([0.0, 1.5, math.nan, 2.25], dtype=torch.float64)
    out = stretched_nll(clocked, split, rates=(1.25,))
    grid = beat_grid(bpm[stated] * 1.25, 25.0, split.phase[stated])
    assert out["told"] == pytest.approx(lm_nll(clocked, split.text_mulan[stated], tokens, keep, tempo=told, beats=grid))
    assert out["told"] != pytest.approx(lm_nll(clocked, split.text_mulan[stated], tokens, keep, tempo=told))
    stale = beat_grid(bpm[stated], 25.0, split.phase[stated])
    assert out["stale"] == pytest.approx(lm_nll(clocked, split.text_mulan[stated], tokens, keep,
                                                tempo=tempo_bucket(bpm[stated], BUCKETS, TEMPO_RANGE), beats=stale))


@torch.no_grad()
def test_condition_probe_scores_each_condition_over_the_window_and_its_first_frames():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from condition_probe import CONDITIONS, perplexities

    from melody.eval.semantic import TokenizedSplit, lm_nll

    lm, n, t = tiny(sharp=True), 6, 20
    keep = torch.ones(n, t, dtype=torch.bool)
    keep[0, 15:] = False  # a shorter clip
    split = TokenizedSplit(semantic(n, t), keep, mulan(n), mulan(n, seed=3), [""] * n, [""] * n,
                           torch.full((n,), math.nan, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), 25.0)
    got = perplexities(lm, split, first_frames=5, seed=0)
    assert set(got) == set(CONDITIONS) and all(set(v) == {"window", "first second"} for v in got.values())
    first = keep & (torch.arange(t)[None, :] < 5)
    assert got["null"]["window"] == pytest.approx(math.exp(lm_nll(lm, None, split.semantic, keep)))
    assert got["caption"]["first second"] == pytest.approx(math.exp(lm_nll(lm, split.text_mulan, split.semantic, first)))
    assert got["audio"]["window"] != pytest.approx(got["another clip's audio"]["window"])  # shuffled among the clips
    # one condition for every clip: shuffling changes nothing
    same = TokenizedSplit(split.semantic, keep, mulan(1).expand(n, -1), split.text_mulan, [""] * n, [""] * n, split.bpm,
                          split.phase, split.frame_rate)
    again = perplexities(lm, same, first_frames=5, seed=0)
    assert again["audio"] == pytest.approx(again["another clip's audio"])
