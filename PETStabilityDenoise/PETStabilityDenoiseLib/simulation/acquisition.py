"""Slice-wise 2D PET acquisition on numpy arrays in (z, y, x) order: attenuation, randoms and
scatter, Poisson counts and dose thinning. Sinograms are (z, angle, bin) arrays; the projector and OSEM are
``engine.tomography``'s, shared with ``petstab reconstruct``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..engine.filters import FWHM_PER_SIGMA
from ..engine.tomography import ParallelBeamProjector
from ..errors import InputError


def attenuation_factors(mu_per_mm: np.ndarray, projector: ParallelBeamProjector) -> np.ndarray:
    """Survival probability exp(-line integral of mu) of every line of response."""
    return np.exp(-projector.forward(mu_per_mm)).astype(np.float32)


def background_sinogram(
    trues: np.ndarray, fraction: float, bin_mm: float, scatter_share: float = 0.5, scatter_fwhm_mm: float = 100.0
) -> np.ndarray:
    """Expected randoms + scatter, totalling ``fraction`` times the true counts.

    Randoms are flat within each slice (their rate follows the singles, not the activity's shape) and scale
    with the slice's trues; scatter is the trues blurred broadly along the detector and a little axially.
    """
    total = fraction * float(trues.sum())
    per_slice = trues.sum(axis=(1, 2), keepdims=True)
    randoms = np.broadcast_to(per_slice, trues.shape).astype(np.float32)
    scatter = ndimage.gaussian_filter(trues, (1.0, 0.0, scatter_fwhm_mm / FWHM_PER_SIGMA / bin_mm), mode="constant")
    randoms *= (1.0 - scatter_share) * total / max(float(randoms.sum()), 1e-12)
    scatter *= scatter_share * total / max(float(scatter.sum()), 1e-12)
    return (randoms + scatter).astype(np.float32)


def poisson_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Measured prompts: Poisson counts around the expected sinogram."""
    return np.asarray(rng.poisson(expected)).astype(np.int32)


def thin_counts(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Lower-dose counts by keeping each count with probability ``fraction`` (as list-mode thinning does)."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"dose fraction must be in (0, 1], got {fraction}")
    return rng.binomial(counts, fraction).astype(np.int32)
