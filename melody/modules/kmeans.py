"""k-means: the semantic tokenizer's codebook and the residual VQ's initialisation.

MeLoDy's semantic tokens are the indices of the nearest of **1024 k-means centroids** to each
25 Hz frame of a self-supervised model's features (§3.1, Fig. 1; as in w2v-BERT / AudioLM /
MusicLM); the MuLan tokens' residual VQ starts its codebooks from k-means on its first batch
(SoundStream, Zeghidour et al. 2021, §3.3). Both need two things, kept apart here:

- **fitting** (`fit_kmeans`), done once, offline, on the CPU: scikit-learn's `KMeans` (Lloyd,
  greedy k-means++ seeding) below `MINIBATCH_ABOVE` vectors, `MiniBatchKMeans` (Sculley 2010)
  above it or whenever a `batch_size` is given. scikit-learn rather than our own loop or faiss:
  it is already installed as a dependency of librosa (now also listed in our own dependencies),
  its k-means++ seeding and empty-cluster handling are well tested, and faiss is not installed;
  fitting is an offline step, so it needs no GPU or autograd. It is deterministic for a given
  `seed` (and a given number of OpenMP threads);
- **assigning** (`assign`, `KMeansQuantizer`): pure torch, on any device and inside a model,
  with no scikit-learn: the nearest centroid by squared Euclidean distance
  ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖², computed in chunks of rows so that `n × k` never has to fit in
  memory at once. Ties go to the lower index (`argmin`).

Choices where the paper is silent: one k-means++ initialisation (`n_init=1`) by default, since
greedy k-means++ is already robust and the semantic fit is large; mini-batches of
`max(4096, 4k)` vectors so that every batch can visit every centroid; half-precision features
are fitted and assigned in float32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from melody.errors import MelodyError

MINIBATCH_ABOVE = 50_000  # vectors; above this `fit_kmeans` switches to MiniBatchKMeans


def fit_kmeans(features: torch.Tensor, k: int, seed: int, max_iter: int = 100,
               batch_size: int | None = None, n_init: int = 1) -> torch.Tensor:
    """k-means centroids `(k, d)` of `features` `(n, d)`, deterministic under `seed`.

    Lloyd's algorithm with greedy k-means++ seeding (scikit-learn `KMeans`) for up to
    `MINIBATCH_ABOVE` vectors; mini-batch k-means (`MiniBatchKMeans`, `max_iter` epochs with early
    stopping) above that, or whenever `batch_size` is given. The centroids come back on the
    features' device, in their dtype (float32 for half-precision features). With fewer distinct
    vectors than `k`, some centroids are duplicates (scikit-learn's warning about it is silenced).
    """
    if features.dim() != 2:
        raise ValueError(f"fit_kmeans expects features (n, d), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if k < 1:
        raise ValueError(f"k-means needs k >= 1, got {k}")
    if n < k:
        raise MelodyError(f"k-means with {k} centroids needs at least {k} feature vectors, got {n}; fit it on more data")
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    data = features.detach().to("cpu", dtype).numpy()
    if batch_size is None and n <= MINIBATCH_ABOVE:
        model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed)
    else:
        model = MiniBatchKMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter,
                                batch_size=batch_size or max(4096, 4 * k), random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k: duplicates, said above
        model.fit(data)
    return torch.from_numpy(model.cluster_centers_).to(device=features.device, dtype=dtype)


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖² for `x` `(n, d)` and `centroids` `(k, d)` → `(n, k)`, clamped at 0."""
    x2 = x.pow(2).sum(-1, keepdim=True)  # (n, 1)
    c2 = centroids.pow(2).sum(-1)  # (k,)
    return (x2 - 2.0 * x @ centroids.T + c2).clamp_min(0.0)


def assign(features: torch.Tensor, centroids: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean) for `features` `(..., d)` → LongTensor `(...)`.

    Rows go through `squared_distances`' expansion `chunk_size` at a time (default: as many as
    keep a chunk's `(rows, k)` distance matrix at 4 M entries); the constant ‖x‖² is left out of
    the argmin, where it changes nothing but rounding. Runs on the inputs' device, in float32 at
    least; no gradient flows through an index.
    """
    d = centroids.shape[-1]
    if features.shape[-1] != d:
        raise ValueError(f"features of width {features.shape[-1]} cannot be assigned to centroids of width {d}")
    lead = features.shape[:-1]
    dtype = torch.promote_types(torch.promote_types(features.dtype, centroids.dtype), torch.float32)
    flat = features.detach().reshape(-1, d).to(dtype)  # (n, d)
    c = centroids.detach().to(device=flat.device, dtype=dtype)  # (k, d)
    c2 = c.pow(2).sum(-1)  # (k,)
    rows = chunk_size or max(1, (1 << 22) // max(1, c.shape[0]))
    codes = [(c2 - 2.0 * part @ c.T).argmin(-1) for part in flat.split(rows)]  # ‖x‖² dropped: same argmin
    out = torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long, device=flat.device)
    return out.reshape(lead)


class KMeansQuantizer(nn.Module):
    """Frames → k-means codes, `(..., d)` → `(...)` long: the semantic tokenizer's last step.

    The centroids are a persistent buffer (saved with the model's safetensors weights, never
    trained by gradients). Build it empty with `(codebook_size, dim)` and load weights, or fit it
    with `KMeansQuantizer.fit(features, k, seed)`.
    """

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.zeros(codebook_size, dim))  # (k, d)

    @classmethod
    def fit(cls, features: torch.Tensor, k: int, seed: int, **kmeans) -> KMeansQuantizer:
        """Fit `k` centroids to `features` `(n, d)` with `fit_kmeans` (extra keywords go to it)."""
        centroids = fit_kmeans(features, k, seed, **kmeans)
        quantizer = cls(k, features.shape[-1]).to(features.device)
        quantizer.centroids.copy_(centroids)
        return quantizer

    @property
    def codebook_size(self) -> int:
        return self.centroids.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return assign(features, self.centroids)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `(...)` → their centroids `(..., d)`."""
        return self.centroids[codes]
