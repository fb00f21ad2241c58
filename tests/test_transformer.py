import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from melody.modules.transformer import (
    Attention,
    CrossAttention,
    RMSNorm,
    Transformer,
    TransformerBlock,
    TransformerConfig,
    apply_rotary,
    rotary_phases,
    swiglu_hidden_dim,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM, HEADS, DEPTH = 32, 4, 2


def tiny(causal: bool = True, cross_dim: int | None = None, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(DIM, DEPTH, HEADS, causal=causal, cross_dim=cross_dim)).eval()


def test_rmsnorm_gives_unit_rms_and_keeps_shape():
    x = 3.0 * torch.randn(2, 5, DIM) + 1.0
    y = RMSNorm(DIM)(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.pow(2).mean(-1).sqrt(), torch.ones(2, 5), atol=1e-4, rtol=0)


def test_swiglu_hidden_follows_llama_rounding():
    assert swiglu_hidden_dim(768) == 2048
    assert swiglu_hidden_dim(32) == 128  # int(2·4·32/3) = 85 → 128


def test_rotary_keeps_norms_and_scores_depend_on_relative_position():
    torch.manual_seed(0)
    d = 16
    phases = rotary_phases(d, torch.arange(40))
    x = torch.randn(40, d)
    torch.testing.assert_close(apply_rotary(x, phases).norm(dim=-1), x.norm(dim=-1))

    q, k = torch.randn(d), torch.randn(d)

    def score(m: int, n: int) -> torch.Tensor:
        return apply_rotary(q, phases[m]) @ apply_rotary(k, phases[n])

    torch.testing.assert_close(score(5, 2), score(13, 10))
    torch.testing.assert_close(score(30, 1), score(29, 0))
    assert not torch.allclose(score(5, 2), score(5, 3))
    torch.testing.assert_close(rotary_phases(d, torch.arange(7, 19)), phases[7:19])


def test_rotary_is_roformer_eq34_on_adjacent_pairs():
    torch.manual_seed(0)
    d, m = 8, torch.arange(5)
    x = torch.randn(3, 5, d)
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    cos, sin = (m[:, None] * theta).cos(), (m[:, None] * theta).sin()  # (t, d/2)
    even, odd = x[..., 0::2], x[..., 1::2]
    expected = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rotary(x, rotary_phases(d, m)), expected, atol=1e-6, rtol=0)
    # a strided view (q and k of one qkv projection) and bf16 give the same numbers
    qkv = torch.randn(2, 5, 3 * d).unflatten(-1, (3, d)).transpose(0, 2)  # (3, 5, 2, d): not contiguous
    torch.testing.assert_close(apply_rotary(qkv[:2].transpose(1, 2), rotary_phases(d, m)),
                               apply_rotary(qkv[:2].transpose(1, 2).contiguous(), rotary_phases(d, m)))
    assert apply_rotary(x.bfloat16(), rotary_phases(d, m)).dtype == torch.bfloat16


def test_stacked_gate_and_value_give_the_same_block_output_and_lm_tokens():
    """A GPU sampling copy's SwiGLUs compute W1 x and W3 x as one product ([W1; W3] x): the same numbers."""
    from melody.config import SemanticLMConfig
    from melody.runtime import stacked_gates
    from melody.semantic.lm import SemanticLM
    from melody.semantic.sampling import generate

    net = tiny()
    x = torch.randn(2, 7, DIM)
    with torch.no_grad():
        want = net(x)
        stacked_gates(net)
        got = net(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    ff = net.blocks[0].ff
    assert not hasattr(ff, "w1") and not hasattr(ff, "w3") and ff.w13.weight.shape == (2 * ff.w2.in_features, DIM)
    assert "blocks.0.ff.w13.weight" in net.state_dict()

    torch.manual_seed(0)
    lm = SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4), 50, 3, 16).eval()
    m = torch.randint(0, 16, (2, 3), generator=torch.Generator().manual_seed(3))
    runs = [generate(model, m, 30, guidance=3.0, generator=torch.Generator().manual_seed(7), window=16, stride=8).tokens
            for model in (lm, stacked_gates(copy.deepcopy(lm)))]
    assert torch.equal(runs[0], runs[1])


def test_rotary_in_real_form_under_compile_gives_the_complex_forms_numbers():
    """Under torch.compile the phases are (cos, sin) pairs (inductor generates no code for complex numbers); the
    rotation they give is Eq. 34's, compiled or not."""
    torch.manual_seed(0)
    d, m = 8, torch.arange(3, 8)
    x = torch.randn(2, 5, d)
    complex_form = rotary_phases(d, m)
    real_form = torch.view_as_real(complex_form)  # (t, d/2, 2): what rotary_phases gives while compiling
    assert not real_form.is_complex() and real_form.shape == (5, d // 2, 2)
    torch.testing.assert_close(apply_rotary(x, real_form), apply_rotary(x, complex_form), atol=1e-6, rtol=0)
    compiled = torch.compile(lambda x, m: apply_rotary(x, rotary_phases(d, m)), fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x, m), apply_rotary(x, complex_form), atol=1e-6, rtol=0)


@torch.no_grad()
def test_causal_attention_ignores_future_tokens():
    torch.manual_seed(0)
    x = torch.randn(2, 10, DIM)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, DIM)
    attn = Attention(DIM, HEADS, causal=True)
    torch.testing.assert_close(attn(changed)[:, :6], attn(x)[:, :6], atol=1e-6, rtol=0)
    model = tiny()
    out, out_changed = model(x), model(changed)
    torch.testing.assert_close(out_changed[:, :6], out[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(out_changed[:, 6:], out[:, 6:])


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_kv_cache_decoding_matches_full_causal_pass(chunk: int, padded: bool):
    model = tiny()
    torch.manual_seed(1)
    x = torch.randn(2, 11, DIM)
    mask = None
    if padded:  # left padding of two tokens in the second row
        mask = torch.ones(2, 11, dtype=torch.bool)
        mask[1, :2] = False
    full = model(x, mask=mask)
    cache = model.new_cache()
    pieces = []
    for start in range(0, 11, chunk):
        piece_mask = None if mask is None else mask[:, start:start + chunk]
        pieces.append(model(x[:, start:start + chunk], mask=piece_mask, cache=cache))
    assert cache[0].length == 11 and cache[0].offset == 11
    keep = slice(None) if not padded else (mask[:, :, None].expand_as(full))
    torch.testing.assert_close(torch.cat(pieces, dim=1)[keep], full[keep], atol=1e-5, rtol=0)


@torch.no_grad()
def test_padding_mask_hides_masked_tokens_in_bidirectional_encoder():
    model = tiny(causal=False)
    torch.manual_seed(2)
    x = torch.randn(2, 9, DIM)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, :3] = False
    changed = torch.where(mask[..., None], x, 100 * torch.randn_like(x))
    out, out_changed = model(x, mask=mask), model(changed, mask=mask)
    torch.testing.assert_close(out_changed[mask], out[mask], atol=1e-5, rtol=0)
    assert not torch.allclose(model(changed)[mask], out[mask])  # without the mask they do leak


@torch.no_grad()
def test_cross_attention_follows_memory_and_fully_masked_memory_contributes_exactly_zero():
    model = tiny(causal=False, cross_dim=24)
    torch.manual_seed(3)
    x, mem_a, mem_b = torch.randn(2, 7, DIM), torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    assert not torch.allclose(model(x, memory=mem_a), model(x, memory=mem_b))

    none = torch.zeros(2, 5, dtype=torch.bool)
    out_a, out_b = model(x, memory=mem_a, memory_mask=none), model(x, memory=mem_b, memory_mask=none)
    assert not out_a.isnan().any()
    assert torch.equal(out_a, out_b)
    assert torch.equal(out_a, model(x))  # memory=None: no condition, the same thing

    # a block whose cross-attention output weights are zero contributes exactly zero too
    block = model.blocks[0]
    silent = TransformerBlock(model.config).eval()
    silent.load_state_dict(block.state_dict())
    nn.init.zeros_(silent.cross.out.weight)
    assert torch.equal(block(x, memory=mem_a, memory_mask=none), silent(x, memory=mem_b))

    # per row: the masked row gets zero, the other row still attends
    cross = CrossAttention(DIM, HEADS, 24)
    rows = torch.tensor([[True] * 5, [False] * 5])
    y = cross(x, mem_a, rows)
    assert torch.equal(y[1], torch.zeros_like(y[1])) and y[0].abs().sum() > 0


def test_tiny_causal_language_model_overfits_a_sequence():
    torch.manual_seed(0)
    vocab, length = 16, 32
    tokens = torch.randint(vocab, (1, length + 1))
    embed, body, head = nn.Embedding(vocab, DIM), Transformer(TransformerConfig(DIM, DEPTH, HEADS, causal=True)), nn.Linear(DIM, vocab)
    params = [*embed.parameters(), *body.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)

    def loss() -> torch.Tensor:
        logits = head(body(embed(tokens[:, :-1])))
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    first = loss().item()
    for _ in range(200):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        if value.item() < first / 5:
            break
    assert loss().item() < first / 5, (first, loss().item())


def test_same_seed_gives_same_parameters_and_outputs():
    a, b = tiny(cross_dim=8, seed=7), tiny(cross_dim=8, seed=7)
    for (name_a, p_a), (name_b, p_b) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert name_a == name_b and torch.equal(p_a, p_b)
    x, mem = torch.randn(2, 6, DIM), torch.randn(2, 3, 8)
    with torch.no_grad():
        assert torch.equal(a(x, memory=mem), b(x, memory=mem))
    assert not torch.equal(tiny(seed=8).blocks[0].attn.qkv.weight, a.blocks[0].attn.qkv.weight)


def test_shared_memory_rows_give_the_same_output_as_repeated_memory():
    from melody.modules.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(16, 2, 2, causal=False, cross_dim=8)).eval()
    x, memory = torch.randn(6, 5, 16), torch.randn(2, 7, 8)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    repeated = model(x, memory=memory.repeat_interleave(3, 0), memory_mask=mask.repeat_interleave(3, 0))
    shared = model(x, memory=memory, memory_mask=mask, memory_repeat=3)
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-6)


def test_the_kv_cache_writes_each_step_in_place_and_holds_the_concatenation():
    from melody.modules.transformer import KVCache

    torch.manual_seed(0)
    cache, seen_k, seen_v, buffers = KVCache(), [], [], set()
    for t_new in [5] + [1] * 70:
        k, v = torch.randn(2, 3, t_new, 4), torch.randn(2, 3, t_new, 4)
        seen_k.append(k)
        seen_v.append(v)
        keys, values, keep = cache.extend(k, v, None)
        assert torch.equal(keys, torch.cat(seen_k, dim=2)) and torch.equal(values, torch.cat(seen_v, dim=2)) and keep is None
        buffers.add(cache.buffers[0].data_ptr())
        assert keys.data_ptr() == cache.buffers[0].data_ptr()  # a view of the buffer, not a copy
    assert cache.length == 75 and cache.offset == 75
    assert len(buffers) == 2 and cache.buffers[0].shape[2] == 2 * 65  # room for 64, then doubled once when full
