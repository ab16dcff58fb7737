"""Image-quality metrics of METHOD.md section 4, on numpy arrays and boolean-like masks of the same shape."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _region(image: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """Voxel values of ``image`` inside ``mask``, after checking that the mask fits and selects something."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape:
        raise ValueError(f"{name} mask shape {mask.shape} does not match image shape {image.shape}")
    values = image[mask.astype(bool)]
    if values.size == 0:
        raise ValueError(f"{name} mask is empty")
    return values.astype(np.float64)


def _nonzero(value: float, name: str) -> float:
    if value == 0:
        raise ValueError(f"{name} mean is zero")
    return value


def peak_to_valley_ratio(image: np.ndarray, peak_masks: Sequence[np.ndarray], valley_mask: np.ndarray) -> float:
    """Mean of the peak ROI means divided by the valley ROI mean."""
    if len(peak_masks) == 0:
        raise ValueError("no peak masks given")
    peaks = [_region(image, m, f"peak {i}").mean() for i, m in enumerate(peak_masks)]
    valley = _nonzero(_region(image, valley_mask, "valley").mean(), "valley")
    return float(np.mean(peaks) / valley)


def wm_noise(image: np.ndarray, wm_mask: np.ndarray) -> tuple[float, float]:
    """(standard deviation, coefficient of variation std/mean) inside the (eroded) white-matter mask."""
    values = _region(image, wm_mask, "white-matter")
    std = float(values.std())
    return std, std / _nonzero(float(values.mean()), "white-matter")


def roi_bias(image: np.ndarray, reference: np.ndarray, roi_mask: np.ndarray) -> float:
    """Relative bias of the ROI mean against the reference: (mean - mean_ref) / mean_ref."""
    if np.shape(reference) != np.shape(image):
        raise ValueError(f"reference shape {np.shape(reference)} does not match image shape {np.shape(image)}")
    ref = _nonzero(float(_region(reference, roi_mask, "ROI").mean()), "reference ROI")
    return float((_region(image, roi_mask, "ROI").mean() - ref) / ref)


def neighbour_steps(image: np.ndarray, mask: np.ndarray) -> tuple[float, ...]:
    """Mean |difference| between neighbouring voxels that are both in ``mask``, along each axis, over the mean of
    ``image`` in ``mask``: how rough a map is; the straight edges of sliding windows raise it."""
    mask = np.asarray(mask, dtype=bool)
    mean = _nonzero(float(_region(image, mask, "roughness").mean()), "roughness")
    image = np.asarray(image, dtype=np.float64)
    steps = []
    for axis in range(image.ndim):
        both = np.logical_and(np.take(mask, range(1, mask.shape[axis]), axis),
                              np.take(mask, range(mask.shape[axis] - 1), axis))
        steps.append(float(np.abs(np.diff(image, axis=axis))[both].mean()) / mean)
    return tuple(steps)


def contrast_recovery(
    image: np.ndarray, lesion_mask: np.ndarray, background_mask: np.ndarray, true_ratio: float
) -> float:
    """Hot-lesion contrast recovery: (lesion mean / background mean - 1) / (true ratio - 1)."""
    if true_ratio == 1:
        raise ValueError("true ratio must differ from 1")
    lesion = _region(image, lesion_mask, "lesion").mean()
    background = _nonzero(float(_region(image, background_mask, "lesion background").mean()), "lesion background")
    return float((lesion / background - 1.0) / (true_ratio - 1.0))


def hypometabolism_recovery(
    image: np.ndarray, region_mask: np.ndarray, mirror_mask: np.ndarray, true_ratio: float
) -> float:
    """How much of a hypometabolic region's deficit survives: (1 - r) / (1 - r_true), r = region mean / mirror mean.

    1 means the deficit is shown at its true depth; 0 means it has vanished.
    """
    if true_ratio == 1:
        raise ValueError("true ratio must differ from 1")
    mirror = _nonzero(float(_region(image, mirror_mask, "hypometabolism mirror").mean()), "hypometabolism mirror")
    ratio = _region(image, region_mask, "hypometabolism").mean() / mirror
    return float((1.0 - ratio) / (1.0 - true_ratio))


def psnr(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB inside ``mask``, with the truth's maximum there as the peak."""
    if np.shape(truth) != np.shape(image):
        raise ValueError(f"truth shape {np.shape(truth)} does not match image shape {np.shape(image)}")
    reference = _region(truth, mask, "PSNR")
    mse = float(np.mean((_region(image, mask, "PSNR") - reference) ** 2))
    peak = float(reference.max())
    if peak <= 0:
        raise ValueError("the truth has no positive value inside the PSNR mask")
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def ssim(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004: Gaussian window sigma 1.5) over the bounding box of ``mask``.

    The data range is the truth's maximum inside the mask, as for :func:`psnr`.
    """
    from skimage.metrics import structural_similarity

    if np.shape(truth) != np.shape(image):
        raise ValueError(f"truth shape {np.shape(truth)} does not match image shape {np.shape(image)}")
    peak = float(_region(truth, mask, "SSIM").max())
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(np.asarray(mask, bool)))
    return float(structural_similarity(np.asarray(image, np.float64)[box], np.asarray(truth, np.float64)[box],
                                       data_range=peak, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))
