"""Does a generator copy its training slices? Nearest-neighbour distances to the training set.

Diffusion models can reproduce their training images: Dar et al. ("Unconditional Latent
Diffusion Models Memorize Patient Imaging Data", arXiv:2402.01054, 2024) found many synthetic
CT, MR and X-ray images to be near copies of training patients, more so with few training
images and long training. A library meant for sharing synthetic data must measure this.

The check: for every synthetic slice, the distance to its nearest training slice; for every
real held-out slice (the test slices whose masks the synthetic slices were generated from), the
same distance. The real distances say how close a *new* patient's slice comes to the training
set; a synthetic slice much closer than that is a copy. The **copy rate** is the share of
synthetic slices nearer to a training slice than the 5th percentile of the real held-out
slices' nearest-training distances (:func:`memorization_summary`). Real held-out slices from
the same population score about 5 % by construction; a generator that copies scores near 1.

Two spaces (:func:`pixel_vectors`, :meth:`medsynth.models.OrganSegmenter.bottleneck_features`):

- **pixel**: Euclidean distance of the [0, 1] slices divided by sqrt(pixels), i.e. the RMS
  difference in window units (x 400 = HU). A memorised slice reproduces the training slice's
  intensities, and CT intensities are calibrated, so a plain intensity difference is the
  direct test; 1 - correlation would forgive a global shift or contrast change, which in HU is
  a real difference, and the RMS value can be read as HU.
- **feature**: Euclidean distance of the in-domain segmenter's pooled bottleneck features,
  which ignore noise and small shifts that inflate pixel distances of near copies.

Nearest neighbours are found by brute force in float64 (:class:`NearestNeighbors`), chunked so
that a training set of any size streams through in fixed memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COPY_PERCENTILE",
    "SUMMARY_QUANTILES",
    "NearestNeighbors",
    "nearest_neighbors",
    "pixel_vectors",
    "memorization_summary",
]

#: Percentile of the real held-out slices' nearest-training distances below which a synthetic
#: slice counts as a copy.
COPY_PERCENTILE = 5.0
#: Quantiles reported for both distance distributions.
SUMMARY_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


def pixel_vectors(images: Tensor | np.ndarray) -> Tensor:
    """``[N, 1, H, W]`` slices -> float64 ``[N, H*W]`` scaled by 1/sqrt(H*W), so that Euclidean
    distances between rows are RMS differences per pixel."""
    t = torch.as_tensor(images)
    if t.dim() != 4 or t.shape[1] != 1 or not t.dtype.is_floating_point:
        raise ValueError(f"images must be float [N, 1, H, W], got {tuple(t.shape)} {t.dtype}")
    flat = t.detach().double().flatten(1)  # [N, H*W]
    return flat / flat.shape[1] ** 0.5


class NearestNeighbors:
    """Running nearest neighbour of fixed queries over a reference set fed in chunks.

    Brute force: squared distances ``|q|² + |r|² - 2 q·r`` in float64 (clamped at 0), the
    minimum kept per query; ties go to the earliest reference row. Reference rows are numbered
    across :meth:`update` calls in the order they arrive.

    Args:
        queries: ``[Q, D]``.
        chunk_size: Reference rows per distance block (memory ``Q x chunk_size`` float64).
        device: Where distances are computed (None: the queries' device).
    """

    def __init__(
        self, queries: Tensor | np.ndarray, chunk_size: int = 1024, device: str | torch.device | None = None
    ) -> None:
        q = torch.as_tensor(queries)
        if q.dim() != 2 or q.shape[0] == 0:
            raise ValueError(f"queries must have shape [Q > 0, D], got {tuple(q.shape)}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.queries = q.to(device if device is not None else q.device, torch.float64)  # [Q, D]
        self._q2 = (self.queries**2).sum(dim=1)  # [Q]
        self.chunk_size = chunk_size
        self._best = torch.full_like(self._q2, float("inf"))  # [Q] squared distances
        self._index = torch.full(self._q2.shape, -1, dtype=torch.long, device=self._q2.device)  # [Q]
        self.num_reference = 0

    @torch.no_grad()
    def update(self, reference: Tensor | np.ndarray) -> None:
        """Take the next reference rows ``[R, D]`` into account."""
        r_all = torch.as_tensor(reference)
        if r_all.dim() != 2 or r_all.shape[1] != self.queries.shape[1]:
            raise ValueError(
                f"reference must have shape [R, {self.queries.shape[1]}], got {tuple(r_all.shape)}"
            )
        for start in range(0, r_all.shape[0], self.chunk_size):
            r = r_all[start : start + self.chunk_size].to(self.queries.device, torch.float64)  # [r, D]
            d2 = (self._q2[:, None] + (r**2).sum(dim=1)[None] - 2.0 * self.queries @ r.T).clamp_(min=0)
            best, arg = d2.min(dim=1)  # [Q]: the first minimum of the chunk
            better = best < self._best  # strict: an earlier row keeps a tie
            self._best = torch.where(better, best, self._best)
            self._index = torch.where(better, arg + self.num_reference + start, self._index)
        self.num_reference += r_all.shape[0]

    @property
    def distances(self) -> Tensor:
        """Euclidean distance of each query to its nearest reference row, float64 ``[Q]``."""
        if self.num_reference == 0:
            raise ValueError("no reference rows given yet (call update)")
        return self._best.sqrt()

    @property
    def indices(self) -> Tensor:
        """Row of the nearest reference, int64 ``[Q]`` (numbered over all updates)."""
        if self.num_reference == 0:
            raise ValueError("no reference rows given yet (call update)")
        return self._index


def nearest_neighbors(
    queries: Tensor | np.ndarray, reference: Tensor | np.ndarray, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Distance ``[Q]`` (float64) and index ``[Q]`` of each query's nearest row of ``reference``."""
    nn = NearestNeighbors(queries, chunk_size)
    nn.update(reference)
    return nn.distances, nn.indices


def memorization_summary(
    synthetic: Tensor | np.ndarray | Sequence[float],
    real: Tensor | np.ndarray | Sequence[float],
    percentile: float = COPY_PERCENTILE,
    quantiles: Sequence[float] = SUMMARY_QUANTILES,
) -> dict[str, float]:
    """Copy rate and distance quantiles from nearest-training distances.

    Args:
        synthetic: Distance of each synthetic slice to its nearest training slice.
        real: The same for each real held-out slice.
        percentile: The copy threshold is this percentile of ``real`` (numpy, linear).
        quantiles: Reported quantiles of both distributions.

    Returns:
        ``copy_rate`` (share of ``synthetic`` strictly below the threshold), ``threshold``, and
        ``synthetic_q05``, ``real_q05``, ... (``q`` + the quantile in percent).
    """
    s = np.asarray(torch.as_tensor(synthetic, dtype=torch.float64).cpu()).reshape(-1)
    r = np.asarray(torch.as_tensor(real, dtype=torch.float64).cpu()).reshape(-1)
    if s.size == 0 or r.size == 0:
        raise ValueError(f"need distances of both sets, got {s.size} synthetic and {r.size} real")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must lie in (0, 100), got {percentile!r}")
    threshold = float(np.percentile(r, percentile))
    out = {"copy_rate": float(np.mean(s < threshold)), "threshold": threshold}
    for q in quantiles:
        tag = f"q{round(100 * q):02d}"
        out[f"synthetic_{tag}"] = float(np.quantile(s, q))
        out[f"real_{tag}"] = float(np.quantile(r, q))
    return out
