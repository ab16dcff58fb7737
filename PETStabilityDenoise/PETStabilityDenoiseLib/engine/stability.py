"""Online per-voxel mean and sample standard deviation (Welford's algorithm).

The stability map S is the per-voxel sample std (ddof=1) of the network
outputs at the sampled epochs. Holding all 21 snapshots of a 136x136x112
volume would cost 21 volumes of memory; Welford's update needs two.
"""

from __future__ import annotations

import torch


class WelfordAccumulator:
    """Accumulates per-voxel mean and M2 on the device the samples live on.

    Float64 keeps the running sums exact enough that the result matches
    ``numpy.std(..., ddof=1)`` of stored snapshots to ~1e-7 relative.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, sample: torch.Tensor) -> None:
        """Adds one sample (any shape, the same shape every time)."""
        x = sample.detach().to(torch.float64)
        if self._mean is None:
            self._mean = torch.zeros_like(x)
            self._m2 = torch.zeros_like(x)
        elif x.shape != self._mean.shape:
            raise ValueError(f"sample shape {tuple(x.shape)} != accumulated shape {tuple(self._mean.shape)}")
        self.count += 1
        delta = x - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (x - self._mean)

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            raise RuntimeError("no samples accumulated")
        return self._mean

    def std(self) -> torch.Tensor:
        """Sample standard deviation (ddof=1); zeros when fewer than 2 samples."""
        if self._m2 is None:
            raise RuntimeError("no samples accumulated")
        if self.count < 2:
            return torch.zeros_like(self._m2)
        return torch.sqrt(self._m2 / (self.count - 1))
