"""Classic post-filters that DIP is compared against."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))


def gaussian_fwhm(image: np.ndarray, fwhm_voxels: float) -> np.ndarray:
    """Gaussian post-filter with a FWHM given in voxels (the paper's unit); 0 returns a copy."""
    if fwhm_voxels < 0:
        raise ValueError(f"FWHM must be >= 0 voxels; got {fwhm_voxels}")
    if fwhm_voxels == 0:
        return np.array(image, copy=True)
    return ndimage.gaussian_filter(image, fwhm_voxels / FWHM_PER_SIGMA)
