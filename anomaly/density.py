"""Gaussian density of normal embeddings: mean and Ledoit-Wolf covariance, Mahalanobis score.

`GaussianDensity` is an `nn.Module` whose fitted mean and precision are buffers, so they travel in
the member's `state_dict` and a checkpoint loads with `weights_only=True`. The score is the
Mahalanobis distance itself (not squared): scikit-learn's `LedoitWolf().mahalanobis(X)` returns the
squared distance, i.e. `score(X) ** 2`.

The kNN memory bank of the moment member (and benchmarks/anomaly_densities.py): `coreset` picks
the rows of a bank by greedy k-center selection on a random projection (PatchCore's coreset),
`knn_distance` is the mean Euclidean distance of unit vectors to their `k` nearest bank rows.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import Tensor, nn

K_NEIGHBOURS = 3
PROJECTION_DIM = 128  # coreset selection runs on a random projection of this size


def mahalanobis(x: Tensor, mean: Tensor, inv_cov: Tensor) -> Tensor:
    """Mahalanobis distance `(N,)` of rows `x (N, D)` from `mean (D,)` under precision `(D, D)`.

    Computed in the precision's dtype; returned in `x`'s floating dtype.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D), got {tuple(x.shape)}")
    if mean.ndim != 1:
        raise ValueError(f"mean must be (D,), got {tuple(mean.shape)}")
    if inv_cov.ndim != 2 or inv_cov.shape[0] != inv_cov.shape[1]:
        raise ValueError(f"inv_cov must be square (D, D), got {tuple(inv_cov.shape)}")
    D = mean.shape[0]
    if x.shape[1] != D or inv_cov.shape[0] != D:
        raise ValueError(
            f"sizes disagree: x {tuple(x.shape)}, mean {tuple(mean.shape)}, "
            f"inv_cov {tuple(inv_cov.shape)}"
        )
    delta = x.to(inv_cov.dtype) - mean.to(inv_cov.dtype)  # (N, D)
    squared = torch.einsum("nd,de,ne->n", delta, inv_cov, delta)
    # rounding can push a distance of ~0 just below zero
    return squared.clamp(min=0.0).sqrt().to(x.dtype if x.is_floating_point() else torch.float32)


class GaussianDensity(nn.Module):
    """`fit(normal_emb)` then `score(emb)`: distance from the normal embeddings' Gaussian.

    Buffers: `mean (D,)` and `precision (D, D)` in float64 (the inverse of a shrunk covariance is
    better kept in double), `n_fit` () the number of embeddings fitted on (0 = not fitted).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("precision", torch.eye(dim, dtype=torch.float64))
        self.register_buffer("n_fit", torch.tensor(0, dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return int(self.n_fit) > 0

    def fit(self, emb: Tensor) -> GaussianDensity:
        """Fit on normal embeddings `(N, D)`, N >= 2, with scikit-learn's Ledoit-Wolf shrinkage.

        Shrinkage keeps the covariance invertible when N is small compared with D.
        """
        D = self.mean.shape[0]
        if emb.ndim != 2 or emb.shape[1] != D:
            raise ValueError(f"emb must be (N, {D}), got {tuple(emb.shape)}")
        if emb.shape[0] < 2:
            raise ValueError(f"need at least 2 embeddings to fit a covariance, got {emb.shape[0]}")
        x = emb.detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(x).all():
            raise ValueError("embeddings contain NaN or inf")
        lw = LedoitWolf().fit(x)
        self.mean.copy_(torch.from_numpy(lw.location_))
        self.precision.copy_(torch.from_numpy(lw.precision_))
        self.n_fit.fill_(x.shape[0])
        return self

    def score(self, emb: Tensor) -> Tensor:
        """Mahalanobis distance `(N,)` of embeddings `(N, D)`; higher = less normal."""
        if not self.fitted:
            raise RuntimeError("the density is not fitted: call fit() on normal embeddings first")
        return mahalanobis(emb, self.mean, self.precision)


def l2_normalise(x: Tensor) -> Tensor:
    """Rows `(N, D)` scaled to unit length (rows of zeros stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def coreset(x: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of `size` rows of `x (N, D)` by greedy k-center selection: each pick is the row
    farthest from those already picked, on a Gaussian random projection to 128 dimensions. All
    rows when N <= size."""
    n = len(x)
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(x.shape[1], PROJECTION_DIM)) / np.sqrt(PROJECTION_DIM)
    z = torch.from_numpy((x @ proj).astype(np.float32))
    picked = [int(rng.integers(n))]
    dist = ((z - z[picked[0]]) ** 2).sum(dim=1)
    for _ in range(size - 1):
        i = int(dist.argmax())
        picked.append(i)
        dist = torch.minimum(dist, ((z - z[i]) ** 2).sum(dim=1))
    return np.array(picked)


def knn_distance(q: Tensor, memory: Tensor, k: int = K_NEIGHBOURS, chunk: int = 4096) -> Tensor:
    """Mean Euclidean distance `(M,)` of unit rows `q (M, D)` to their `k` nearest unit rows of
    `memory (B, D)` (all B when B < k), computed `chunk` rows at a time."""
    if q.ndim != 2 or memory.ndim != 2 or q.shape[1] != memory.shape[1] or len(memory) == 0:
        raise ValueError(f"need (M, D) and (B, D), B > 0; got {tuple(q.shape)}, {memory.shape}")
    memory = memory.to(q)
    out = []
    for i in range(0, len(q), chunk):
        d2 = (2.0 - 2.0 * q[i : i + chunk] @ memory.T).clamp(min=0.0)  # unit vectors
        near = d2.topk(min(k, len(memory)), dim=1, largest=False).values
        out.append(near.sqrt().mean(dim=1))
    return torch.cat(out) if out else q.new_zeros(0)
