import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from melody.checkpoint import read_tensors, write_tensors
from melody.errors import MelodyError
from melody.modules.kmeans import KMeansQuantizer, assign, fit_kmeans

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_blobs(seed: int, k: int = 8, dim: int = 16, per_blob: int = 40, spread: float = 0.5):
    """`k` Gaussian blobs, centres ~ N(0, 10²) (pairwise ≈ 57 apart), σ = `spread`; returns (points, labels, centres)."""
    g = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.randn(k, dim, generator=g)
    labels = torch.arange(k).repeat_interleave(per_blob)
    points = centres[labels] + spread * torch.randn(k * per_blob, dim, generator=g)
    order = torch.randperm(k * per_blob, generator=g)
    return points[order], labels[order], centres


@pytest.mark.parametrize("batch_size", [None, 64], ids=["lloyd", "minibatch"])
def test_fit_recovers_planted_blobs(batch_size):
    points, labels, centres = planted_blobs(0)
    centroids = fit_kmeans(points, 8, seed=0, batch_size=batch_size)
    codes = assign(points, centroids)
    assert centroids.shape == (8, 16)
    assert adjusted_rand_score(labels.numpy(), codes.numpy()) == 1.0
    # Each true centre has exactly one centroid beside it (within the sampling error of 40 points).
    nearest = torch.cdist(centres, centroids).min(-1)
    assert sorted(nearest.indices.tolist()) == list(range(8))
    assert nearest.values.max() < 0.5


def test_assign_matches_brute_force_argmin():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(3, 50, 8, generator=g, dtype=torch.float64)
    centroids = torch.randn(17, 8, generator=g, dtype=torch.float64)
    expected = torch.cdist(features.reshape(-1, 8), centroids).argmin(-1).reshape(3, 50)
    assert torch.equal(assign(features, centroids, chunk_size=7), expected)  # uneven chunks
    assert torch.equal(assign(features, centroids), expected)
    assert assign(features[0, 0], centroids).shape == ()


def test_fit_is_deterministic_under_seed():
    points = torch.rand(300, 4, generator=torch.Generator().manual_seed(2))  # no structure: the seed matters
    first = fit_kmeans(points, 8, seed=3)
    assert torch.equal(first, fit_kmeans(points, 8, seed=3))
    assert not torch.equal(first, fit_kmeans(points, 8, seed=4))
    assert torch.equal(fit_kmeans(points, 8, seed=3, batch_size=32), fit_kmeans(points, 8, seed=3, batch_size=32))


def test_too_few_points_is_one_line_error():
    with pytest.raises(MelodyError, match="at least 8 feature vectors, got 5") as excinfo:
        fit_kmeans(torch.randn(5, 4), 8, seed=0)
    assert "\n" not in str(excinfo.value)


def test_quantizer_saves_centroids_and_assigns(tmp_path):
    points, labels, _ = planted_blobs(4, k=4, dim=6, per_blob=10)
    quantizer = KMeansQuantizer.fit(points, 4, seed=0)
    codes = quantizer(points.reshape(4, 10, 6))
    assert codes.shape == (4, 10) and codes.dtype == torch.long
    assert adjusted_rand_score(labels.numpy(), codes.flatten().numpy()) == 1.0
    assert torch.equal(quantizer.decode(codes), quantizer.centroids[codes])

    write_tensors(tmp_path / "km.safetensors", quantizer.state_dict())
    state, _ = read_tensors(tmp_path / "km.safetensors")
    assert set(state) == {"centroids"}
    loaded = KMeansQuantizer(4, 6)
    loaded.load_state_dict(state)
    assert torch.equal(loaded(points), quantizer(points))
