"""The fused SRU kernel (melody.modules.fused_sru) against the DPD's step loop, run through Triton's interpreter on
the CPU (the compiled kernel runs where the DPD samples on a GPU; benchmarks/gpu_check.sh reruns these there)."""

import pytest
import torch

from melody.dpd import SRU
from melody.modules import fused_sru

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def kernel(monkeypatch):
    """The kernel built for Triton's interpreter on CPU tensors (or compiled, when the tests run on a GPU)."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    fused_sru._kernel.cache_clear()
    yield fused_sru.sru_unit
    fused_sru._kernel.cache_clear()


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def random_sru(hidden: int) -> SRU:
    torch.manual_seed(0)
    sru = SRU(hidden).to(device())
    with torch.no_grad():  # the gates' vectors start at zero; random ones exercise every term
        sru.v.normal_()
        sru.b.normal_()
    return sru


@pytest.mark.parametrize("reverse", [False, True])
def test_fused_sru_matches_the_step_loop(kernel, reverse):
    hidden = 200  # not a multiple of the kernel's 128 lanes: the masked tail is exercised
    sru = random_sru(hidden)
    x = torch.randn(3, 10, hidden, device=device())
    with torch.no_grad():
        u = sru.w(x)
        fused = kernel(u, x, sru.v, sru.b, reverse)
    with torch.enable_grad():  # the step loop (the fused path is taken only without gradients, on a GPU)
        loop = sru(x, reverse=reverse).detach()
    assert fused.shape == (3, 10, hidden) and fused.dtype == torch.float32
    torch.testing.assert_close(fused, loop, atol=2e-6, rtol=1e-5)
    # each direction is causal in its own order: changing the last frame moves only that frame forwards,
    # and every frame backwards
    changed = x.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        moved = (kernel(sru.w(changed), changed, sru.v, sru.b, reverse) - fused).abs().amax(dim=(0, 2))
    assert (moved[:-1] > 0).all() if reverse else (moved[:-1] == 0).all()


def test_fused_sru_under_bf16_autocast_matches_the_loop(kernel):
    sru = random_sru(64)
    x = torch.randn(2, 16, 64, device=device()).bfloat16()
    with torch.autocast(device(), dtype=torch.bfloat16):
        with torch.no_grad():
            fused = kernel(sru.w(x), x, sru.v, sru.b)
        loop = sru(x).detach()
    # the kernel answers in float32; the unit (either path) in its input's dtype, rounded once from the same state
    assert fused.dtype == torch.float32 and loop.dtype == torch.bfloat16
    torch.testing.assert_close(fused.bfloat16(), loop, atol=0, rtol=2**-8)


def test_fused_sru_checks_shapes_and_is_used_only_for_cuda_sampling(kernel):
    sru = random_sru(8)
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="SRU shapes"):
        kernel(torch.randn(2, 4, 16), x, sru.v.cpu(), sru.b.cpu())
    with torch.no_grad():
        assert not fused_sru.usable(x)  # a CPU tensor
    if torch.cuda.is_available():
        with torch.no_grad():
            assert fused_sru.usable(x.cuda())
        assert not fused_sru.usable(x.cuda())  # gradients wanted: training keeps the loop
