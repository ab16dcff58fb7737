"""Gaussian filters: the classic post-filters that DIP is compared against, the scanner's PSF blur and
FWHM-to-sigma conversion that the simulator and the reconstruction's resolution model share, and the smoothing
within a mask of DDIP's final data correction."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from scipy import ndimage

FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))


def sigma_voxels(fwhm_mm: float, voxel_size_mm: Union[Sequence[float], np.ndarray]) -> np.ndarray:
    """The per-axis sigma, in voxels, of an isotropic Gaussian of ``fwhm_mm`` on voxels of ``voxel_size_mm``."""
    return float(fwhm_mm) / FWHM_PER_SIGMA / np.asarray(voxel_size_mm, dtype=float)


def psf_blur(volume: np.ndarray, fwhm_mm: float, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Isotropic Gaussian resolution blur (a scanner's PSF) of a volume with (z, y, x) voxel sizes in mm."""
    return ndimage.gaussian_filter(volume.astype(np.float32, copy=False), sigma_voxels(fwhm_mm, voxel_size_mm),
                                   mode="constant")


def gaussian_fwhm(image: np.ndarray, fwhm_voxels: float) -> np.ndarray:
    """Gaussian post-filter with a FWHM given in voxels (the paper's unit); 0 returns a copy."""
    if fwhm_voxels < 0:
        raise ValueError(f"FWHM must be >= 0 voxels; got {fwhm_voxels}")
    if fwhm_voxels == 0:
        return np.array(image, copy=True)
    return ndimage.gaussian_filter(image, fwhm_voxels / FWHM_PER_SIGMA)


def masked_gaussian(image: np.ndarray, mask: np.ndarray, sigma: Union[float, Sequence[float], np.ndarray]) -> np.ndarray:
    """Gaussian smoothing (``sigma`` in voxels, per axis or one for all) of ``image`` within ``mask`` only
    (normalised convolution), 0 outside it.

    Each voxel of the mask gets the Gaussian-weighted mean of the mask's voxels around it, so that values beyond
    the mask's edge (air, say) do not leak in.
    """
    inside = mask.astype(np.float32)
    weights = ndimage.gaussian_filter(inside, sigma)
    smoothed = ndimage.gaussian_filter(np.where(mask, image, 0).astype(np.float32), sigma)
    return np.where(mask, smoothed / np.maximum(weights, np.finfo(np.float32).tiny), 0).astype(np.float32)
