"""CUDA-graph decoding (melody.cuda_graphs) and the static KV cache it needs.

On the CPU the static path runs eagerly, so these tests check everything a recorded graph replays: the static
cache against the growing one, the sampler's graph path against its plain path, the buffer protocol. The tests
marked `cuda` record real graphs and run only where a GPU is (`benchmarks/gpu_check.sh` runs them there)."""

import copy

import pytest
import torch

from melody.config import DPDConfig, SemanticLMConfig
from melody.cuda_graphs import GraphedCalls, GraphedStep
from melody.dpd import DPD
from melody.modules.transformer import Transformer, TransformerConfig
from melody.runtime import Compiled
from melody.semantic.lm import SemanticLM
from melody.semantic.sampling import generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="records CUDA graphs: needs a GPU")

VOCAB, LEVELS, CODES = 50, 3, 16


def tiny_lm(seed: int = 0, device: str = "cpu") -> SemanticLM:
    torch.manual_seed(seed)
    lm = SemanticLM(SemanticLMConfig(dim=32, depth=2, heads=4), VOCAB, LEVELS, CODES).eval()
    with torch.no_grad():  # sharper logits than the default init gives, so sampling is not near-uniform
        lm.head.weight.mul_(8.0)
    return lm.to(device)


@pytest.mark.parametrize("causal", [True, False])
def test_static_cache_gives_the_growing_cache_outputs(causal: bool):
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(32, 2, 4, causal=causal)).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        grown, static = net.new_cache(), net.new_static_cache(2, 12, torch.float32, "cpu")
        outs = []
        for cache in (grown, static):
            first = net(x[:, :5], cache=cache)  # a prefill of 5, then 4 single-token steps
            steps = [net(x[:, i:i + 1], cache=cache) for i in range(5, 9)]
            outs.append(torch.cat([first, *steps], dim=1))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    assert static[0].length == 9 and int(static[0].position) == 9
    if causal:  # and both equal one pass over the whole sequence
        torch.testing.assert_close(outs[1], net(x), atol=1e-5, rtol=1e-5)


def test_static_cache_refuses_overflow_and_padding_and_resets():
    net = Transformer(TransformerConfig(16, 1, 2, causal=True)).eval()
    cache = net.new_static_cache(1, 4, torch.float32, "cpu")
    with torch.no_grad():
        net(torch.randn(1, 3, 16), cache=cache)
        with pytest.raises(ValueError, match="holds 4 tokens; 3 \\+ 2 do not fit"):
            net(torch.randn(1, 2, 16), cache=cache)
        cache[0].reset()
        assert cache[0].length == 0 and int(cache[0].position) == 0
        with pytest.raises(ValueError, match="no key padding"):
            net(torch.randn(1, 2, 16), cache=cache, mask=torch.tensor([[True, False]]))


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_generate_on_the_graph_path_samples_the_plain_paths_tokens(guidance: float):
    """Across four windows (three re-encoded from a fresh cache), with and without guidance."""
    lm = tiny_lm()
    m = torch.randint(0, CODES, (2, LEVELS), generator=torch.Generator().manual_seed(3))
    runs = [generate(lm, m, 40, guidance=guidance, temperature=1.0, generator=torch.Generator().manual_seed(7),
                     window=16, stride=8, graphs=graphs) for graphs in (False, True)]
    assert torch.equal(runs[1].tokens, runs[0].tokens)
    assert (runs[1].forward_passes, runs[1].windows) == (runs[0].forward_passes, runs[0].windows) == (40, 4)
    assert len(set(runs[0].tokens[0].tolist())) > 5  # sampled, not one token repeated


def test_generate_keeps_its_decode_graph_on_the_lm_between_calls():
    lm = tiny_lm()
    m = torch.randint(0, CODES, (2, LEVELS), generator=torch.Generator().manual_seed(3))

    def run(seed: int, graphs: bool, mulan: torch.Tensor = m) -> torch.Tensor:
        return generate(lm, mulan, 20, guidance=3.0, generator=torch.Generator().manual_seed(seed), window=16, stride=8,
                        graphs=graphs).tokens

    first = run(7, True)
    (kept,) = lm._decode_graphs.values()
    step = kept.step
    assert step is not None and torch.equal(first, run(7, False))
    # a second call (another seed, another condition) replays the same recorded step and samples the plain path's tokens
    other = torch.randint(0, CODES, (2, LEVELS), generator=torch.Generator().manual_seed(4))
    assert torch.equal(run(8, True, other), run(8, False, other))
    assert list(lm._decode_graphs.values()) == [kept] and kept.step is step
    assert not copy.deepcopy(lm)._decode_graphs  # a copy's graphs would replay on this LM's buffers


def test_compiled_decode_samples_the_plain_paths_tokens_and_is_compiled_once():
    """`compiled=True` on the CPU: the static step through torch.compile (inductor), eagerly on its buffers; its
    windows' re-encoding and the cache's write position work as on the graph path."""
    lm = tiny_lm()
    m = torch.randint(0, CODES, (2, LEVELS), generator=torch.Generator().manual_seed(3))

    def run(compiled: bool) -> torch.Tensor:
        return generate(lm, m, 40, guidance=3.0, temperature=1.0, generator=torch.Generator().manual_seed(7),
                        window=16, stride=8, compiled=compiled)

    plain = run(False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):  # the step reads no host-side counter: one compilation
        first, again = run(True), run(True)
    assert torch.equal(first.tokens, plain.tokens) and torch.equal(again.tokens, plain.tokens)
    assert (first.forward_passes, first.windows) == (40, 4)
    (kept,) = lm._decode_graphs.values()
    assert kept.compiled and not kept.step.recorded  # on the CPU: compiled, run eagerly


def test_graphed_step_copies_inputs_in_and_outputs_out():
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        return x * 2

    step = GraphedStep(fn, (torch.zeros(3),))
    assert not step.recorded  # the CPU: eager on the static buffers
    out = step(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(out, torch.tensor([2.0, 4.0, 6.0])) and calls[-1] is step.inputs[0]
    with pytest.raises(ValueError, match=r"recorded input is \(3,\) torch.float32, got \(4,\)"):
        step(torch.zeros(4))
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        step(torch.zeros(3), torch.zeros(3))


def test_graphed_calls_on_the_cpu_call_the_model_itself():
    seen = []
    graphed = GraphedCalls(lambda x, y=None: seen.append((x, y)) or x + 1)
    x = torch.ones(2)
    assert torch.equal(graphed(x, y=None), x + 1) and seen[-1][0] is x and not graphed.steps


def test_graphed_calls_keep_one_step_per_signature_and_drop_the_least_recent():
    seen = []
    graphed = GraphedCalls(lambda x, y=None: seen.append(x.shape) or x * 2 if y is None else x + y, keep=2,
                           devices=("cpu",))  # the bookkeeping of CUDA, over eager steps
    a, b, c = torch.ones(2), torch.ones(3), torch.ones(4)
    assert torch.equal(graphed(a), a * 2) and torch.equal(graphed(b), b * 2)
    assert torch.equal(graphed(a, y=a), a + a)  # another signature: y present
    assert len(graphed.steps) == 2  # b's step was the least recent, dropped
    graphed(a, y=a)
    graphed(c)
    kept = [key[2][0] for key in graphed.steps]  # the first input's shape in each kept signature
    assert kept == [(2,), (4,)]
    with pytest.raises(ValueError, match="keep at least 1"):
        GraphedCalls(lambda x: x, keep=0)


@cuda
def test_recorded_decode_replays_the_plain_decoders_tokens():
    lm = tiny_lm(device="cuda")
    m = torch.randint(0, CODES, (2, LEVELS), generator=torch.Generator().manual_seed(3)).cuda()
    runs = [generate(lm, m, 40, guidance=3.0, temperature=1.0,
                     generator=torch.Generator(device="cuda").manual_seed(7), window=16, stride=8, graphs=graphs)
            for graphs in (False, True)]
    assert torch.equal(runs[1].tokens, runs[0].tokens)


@cuda
def test_recorded_dpd_pass_equals_the_eager_pass_at_every_shape():
    torch.manual_seed(0)
    dpd = DPD(DPDConfig(hidden=64, blocks=2, segment_size=8, segment_hop=4, merge_factors=(2, 4), heads=4,
                        roformer_layers=1, angle_dim=16), latent_dim=8, vocab_size=VOCAB).cuda().eval()
    with torch.no_grad():  # the output layer starts at zero: give it weights so the comparison means something
        dpd.output.weight.normal_(0, 0.1)
    graphed = GraphedCalls(dpd)
    for length in (40, 24, 40):
        x, delta = torch.randn(2, length, 8, device="cuda"), torch.rand(2, length, device="cuda")
        tokens = torch.randint(0, VOCAB, (2, length // 4), device="cuda")
        drop = torch.tensor([False, True], device="cuda")
        with torch.no_grad():
            want = dpd(x, delta, tokens, drop=drop)
            got = graphed(x, delta, tokens, drop=drop)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert len(graphed.steps) == 2 and all(step.recorded for step in graphed.steps.values())


@cuda
def test_compiled_recorded_decode_replays_the_plain_decoders_tokens():
    lm = tiny_lm(device="cuda")
    m = torch.randint(0, CODES, (2, LEVELS), generator=torch.Generator().manual_seed(3)).cuda()
    runs = [generate(lm, m, 40, guidance=3.0, temperature=1.0, generator=torch.Generator(device="cuda").manual_seed(7),
                     window=16, stride=8, graphs=graphs, compiled=graphs) for graphs in (False, True)]
    assert torch.equal(runs[1].tokens, runs[0].tokens)
    (kept,) = lm._decode_graphs.values()
    assert kept.compiled and kept.step.recorded


@cuda
def test_compiled_recorded_dpd_pass_equals_the_eager_pass():
    """With the SRU's fused kernel (called between the compiled parts) and under bf16 autocast as the pipeline runs it."""
    torch.manual_seed(0)
    dpd = DPD(DPDConfig(hidden=64, blocks=2, segment_size=8, segment_hop=4, merge_factors=(2, 4), heads=4,
                        roformer_layers=1, angle_dim=16), latent_dim=8, vocab_size=VOCAB).cuda().eval()
    with torch.no_grad():
        dpd.output.weight.normal_(0, 0.1)
    x, delta = torch.randn(2, 40, 8, device="cuda"), torch.rand(2, 40, device="cuda")
    tokens = torch.randint(0, VOCAB, (2, 10), device="cuda")
    drop = torch.tensor([False, True], device="cuda")
    graphed = GraphedCalls(Compiled(dpd))  # as `MeLoDy.compiled_dpd` compiles it
    with torch.no_grad():
        want = dpd(x, delta, tokens, drop=drop)
        torch.testing.assert_close(graphed(x, delta, tokens, drop=drop), want, atol=1e-4, rtol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            want = dpd(x, delta, tokens, drop=drop).float()
            got = graphed(x, delta, tokens, drop=drop).float()
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    assert all(step.recorded for step in graphed.steps.values())
