import pytest
import torch

from melody.checkpoint import load_weights, read_tensors, write_tensors
from melody.errors import MelodyError
from melody.modules.rvq import ResidualVQ, ema_codebook_update

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def blobs(centres, n, g, which=None):
    """`n` points from Gaussian blobs (σ = 0.3) around `centres`, or only around the rows in `which`."""
    pool = torch.arange(centres.shape[0]) if which is None else torch.tensor(which)
    picks = pool[torch.randint(len(pool), (n,), generator=g)]
    return centres[picks] + 0.3 * torch.randn(n, centres.shape[1], generator=g)


def fitted(dim=8, levels=3, codebook_size=16, n=400, seed=0, **kw) -> ResidualVQ:
    rvq = ResidualVQ(dim, levels, codebook_size, **kw)
    rvq.initialize(gaussian(n, dim, seed=seed), seed=0)
    return rvq


def test_decode_of_encode_is_the_eval_forward_output():
    rvq = fitted().eval()
    x = gaussian(4, 25, 8, seed=1)
    out = rvq(x)
    codes = rvq.encode(x)
    assert torch.equal(codes, out.codes)
    torch.testing.assert_close(rvq.decode(codes), out.quantized, rtol=0, atol=1e-6)
    assert not torch.allclose(out.quantized, x, atol=1e-2)  # it really quantises


def test_residual_error_falls_with_every_level():
    rvq = fitted(levels=4)
    x = gaussian(400, 8, seed=0)  # the data k-means saw: each level's k-means can only lower the error
    errors = [float((rvq.decode(rvq.encode(x, levels=l)) - x).pow(2).mean()) for l in range(1, 5)]
    # k-means on each level's residuals: every level removes about half of what is left (16 codes in 8-d).
    assert all(b < 0.65 * a for a, b in zip(errors, errors[1:])), errors
    held_out = gaussian(400, 8, seed=5)
    assert float((rvq.decode(rvq.encode(held_out)) - held_out).pow(2).mean()) < 0.5 * float(held_out.pow(2).mean())


def test_data_on_planted_codewords_is_reconstructed_exactly():
    g = torch.Generator().manual_seed(2)
    codewords = 5.0 * torch.randn(8, 4, generator=g)
    x = codewords[torch.cat([torch.arange(8), torch.randint(8, (192,), generator=g)])]
    rvq = ResidualVQ(4, 1, 8)
    rvq.train()(x, generator=g)  # the first training batch starts the codebook by k-means
    assert bool(rvq.initialized)
    rvq.eval()
    torch.testing.assert_close(rvq.decode(rvq.encode(x)), x, rtol=0, atol=1e-5)
    assert torch.cdist(codewords, rvq.codebooks[0]).min(-1).values.max() < 1e-5


def test_ema_update_moves_codewords_to_their_cluster_means():
    vectors = gaussian(64, 3, seed=3)
    codes = torch.arange(64) % 4
    codes[codes == 3] = 0  # code 3 is never chosen
    cluster_size, embed_sum = torch.ones(4), torch.zeros(4, 3)
    for _ in range(100):
        cluster_size, embed_sum, codebook = ema_codebook_update(cluster_size, embed_sum, vectors, codes, decay=0.9)
    for code in range(3):
        torch.testing.assert_close(codebook[code], vectors[codes == code].mean(0), rtol=0, atol=1e-3)
        assert abs(float(cluster_size[code]) - int((codes == code).sum())) < 1e-3
    assert float(cluster_size[3]) < 1e-4


def test_training_on_a_stream_raises_usage_and_lowers_error():
    g = torch.Generator().manual_seed(0)
    centres = 3.0 * torch.randn(8, 4, generator=g)
    rvq = ResidualVQ(4, 1, 8, decay=0.8, dead_threshold=8.0)  # 256 vectors a batch: 32 a code when all are used
    rvq.initialize(blobs(centres, 256, g, which=[0, 1]), seed=0)  # an unrepresentative first batch
    test = blobs(centres, 1024, g)

    def measure():
        rvq.eval()
        out = rvq(test)
        rvq.train()
        return float(out.perplexity[0]), float((out.quantized - test).pow(2).mean())

    perplexity_before, error_before = measure()
    for _ in range(40):
        rvq(blobs(centres, 256, g), generator=g)
    perplexity_after, error_after = measure()
    assert perplexity_after > perplexity_before + 1.5, (perplexity_before, perplexity_after)
    assert error_after < error_before / 5, (error_before, error_after)


def test_dead_codes_restart_at_batch_vectors():
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[4.0, 0.0, 0.0, 0.0], [-4.0, 0.0, 0.0, 0.0]])
    batch = blobs(centres, 128, g)
    rvq = ResidualVQ(4, 1, 8, decay=0.9, dead_threshold=1.0)
    codebook = torch.cat([centres, torch.full((6, 4), 100.0)])  # codes 2..7 sit far from any data
    rvq.codebooks[0].copy_(codebook)
    rvq.cluster_size[0].copy_(torch.tensor([64.0, 64.0, 0, 0, 0, 0, 0, 0]))
    rvq.embed_sum[0].copy_(codebook * rvq.cluster_size[0, :, None])
    rvq.initialized.fill_(True)

    out = rvq.train()(batch, generator=g)
    assert set(out.codes.flatten().tolist()) == {0, 1}
    moved = rvq.codebooks[0]
    assert torch.cdist(moved[2:], batch).min(-1).values.max() < 1e-5  # each restarted code is a batch vector
    assert torch.cdist(moved[:2], centres).diagonal().max() < 0.2  # the live codes stayed at their blobs
    assert torch.all(rvq.cluster_size[0, 2:] == 1.0)


def test_straight_through_gradient_reaches_the_input():
    rvq = fitted().train()
    x = gaussian(2, 5, 8, seed=6).requires_grad_(True)
    out = rvq(x, generator=torch.Generator().manual_seed(0))
    out.quantized.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * out.quantized.detach())  # d/dx of the quantised output is the identity

    x.grad = None
    rvq(x).commitment_loss.backward()  # the commitment term pulls the input towards its codewords
    assert x.grad.abs().sum() > 0


def test_state_dict_round_trips_through_safetensors(tmp_path):
    rvq = fitted()
    g = torch.Generator().manual_seed(7)
    for seed in range(3):
        rvq(gaussian(64, 8, seed=10 + seed), generator=g)
    write_tensors(tmp_path / "rvq.safetensors", rvq.state_dict())
    state, _ = read_tensors(tmp_path / "rvq.safetensors")
    assert set(state) == {"codebooks", "cluster_size", "embed_sum", "initialized"}

    loaded = ResidualVQ(8, 3, 16)
    load_weights(loaded, state, "rvq.safetensors")
    x = gaussian(3, 7, 8, seed=8)
    a, b = rvq.eval()(x), loaded.eval()(x)
    assert bool(loaded.initialized)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.quantized, b.quantized)


@pytest.mark.parametrize("shape", [(4, 8), (2, 6, 8), (2, 3, 5, 8)])
def test_shapes_for_any_leading_dims(shape):
    rvq = fitted()
    for mode in (rvq.train, rvq.eval):
        mode()
        out = rvq(gaussian(*shape, seed=9), generator=torch.Generator().manual_seed(0))
        assert out.quantized.shape == shape
        assert out.codes.shape == (*shape[:-1], 3) and out.codes.dtype == torch.long
        assert out.commitment_loss.shape == () and out.perplexity.shape == (3,) and out.usage.shape == (3,)
        assert rvq.encode(gaussian(*shape), levels=2).shape == (*shape[:-1], 2)
        assert rvq.decode(out.codes).shape == shape


def test_untrained_codebooks_are_one_line_errors():
    rvq = ResidualVQ(8, 2, 16)
    with pytest.raises(MelodyError, match="no codebooks yet"):
        rvq.eval()(gaussian(4, 8))
    with pytest.raises(MelodyError, match="at least 16 feature vectors, got 4"):
        rvq.train()(gaussian(4, 8))
