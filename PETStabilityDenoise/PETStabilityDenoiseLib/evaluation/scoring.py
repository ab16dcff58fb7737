"""Scoring of one simulated case: the metrics of METHOD.md §4 and what the stability map singles out.

The demo, the defaults study (benchmarks/tune_defaults.py), the simulator calibration and ``petstab evaluate``
all score images with :class:`Scorer`, so that a number means the same thing everywhere. Pure numpy on arrays
of the PET grid; the case's masks name the regions.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import stats

from . import metrics

# The regions whose stability is compared with white matter's (mask names of the simulated case).
STABILITY_REGIONS = {"peaks": ("peak_left", "peak_right"), "lesions": ("lesions",), "hypo": ("hypo",),
                     "cortex": ("gm",)}


class Scorer:
    """The metrics of one simulated case.

    Args:
        case: a :class:`~PETStabilityDenoiseLib.simulation.SimulatedCase`.
        full_dose: full-dose OSEM on the PET grid (the reference on real data); None leaves out the ROI bias
            against it.
    """

    def __init__(self, case, full_dose: Optional[np.ndarray] = None) -> None:
        self.masks: Dict[str, np.ndarray] = {k: sitk.GetArrayFromImage(v).astype(bool) for k, v in case.masks.items()}
        self.rois = sorted(k[len("roi_"):] for k in self.masks if k.startswith("roi_"))
        self.truth = sitk.GetArrayFromImage(case.truth).astype(np.float32)
        self.truth_blurred = sitk.GetArrayFromImage(case.truth_blurred).astype(np.float32)
        self.full_dose = full_dose
        self.lesion_ratio = case.lesion_true_ratio
        self.hypo_ratio = case.hypo_true_ratio

    def __call__(self, image: np.ndarray) -> Dict[str, float]:
        """Every metric of ``image``; NaN where the case lacks the regions (no lesions, no hypometabolism)."""
        m = self.masks
        wm_std, wm_cov = metrics.wm_noise(image, m["wm_eroded"])
        scores = {
            "pvr": metrics.peak_to_valley_ratio(image, [m["peak_left"], m["peak_right"]], m["valley"]),
            "wm_std": wm_std,
            "wm_cov": wm_cov,
            "lesion_cr": (metrics.contrast_recovery(image, m["lesions"], m["lesion_background"], self.lesion_ratio)
                          if m["lesions"].any() else math.nan),
            "hypo_recovery": (metrics.hypometabolism_recovery(image, m["hypo"], m["hypo_mirror"], self.hypo_ratio)
                              if "hypo" in m else math.nan),
            "psnr": metrics.psnr(image, self.truth, m["head"]),
            "psnr_blurred": metrics.psnr(image, self.truth_blurred, m["head"]),
            "ssim": metrics.ssim(image, self.truth, m["head"]),
            "ssim_blurred": metrics.ssim(image, self.truth_blurred, m["head"]),
        }
        for roi in self.rois:
            scores[f"bias_truth_{roi}"] = self.bias(image, self.truth, f"roi_{roi}")
            if self.full_dose is not None:
                scores[f"bias_fulldose_{roi}"] = self.bias(image, self.full_dose, f"roi_{roi}")
        return scores

    def bias(self, image: np.ndarray, reference: np.ndarray, mask: str) -> float:
        """Relative bias of the mean of ``image`` in mask ``mask`` against ``reference``."""
        return metrics.roi_bias(image, reference, self.masks[mask])

    def stability_contrast(self, stability: np.ndarray) -> Dict[str, float]:
        """Mean S in peaks, lesions, the hypometabolic region and cortex, each over mean S in eroded white matter.

        Above 1, the map singles the region out; the blend then keeps more of the PET there than in white matter.
        """
        wm = float(stability[self.masks["wm_eroded"]].mean())
        out = {}
        for name, mask_names in STABILITY_REGIONS.items():
            present = [self.masks[k] for k in mask_names if k in self.masks and self.masks[k].any()]
            out[f"s_{name}_over_wm"] = (float(np.mean([stability[mask].mean() for mask in present])) / wm
                                        if present and wm > 0 else math.nan)
        return out

    def stability_steps(self, stability: np.ndarray) -> Dict[str, float]:
        """The map's mean step between neighbouring head voxels over its mean in the head, along z, y and x
        (``metrics.neighbour_steps``): the straight edges of a sliding-window grid raise it."""
        steps = metrics.neighbour_steps(stability, self.masks["head"])
        return {f"std_step_{axis}": step for axis, step in zip("zyx", steps)}

    def error_ranking(self, output: np.ndarray, stability: np.ndarray) -> Dict[str, float]:
        """How well a stability map ranks the error of the output it came with, over the head.

        Pearson and Spearman correlations of ``stability`` with |output - reference|, the reference being the truth
        and the PSF-blurred truth. For a DDPM, ``stability`` is the std of its samples and ``output`` their mean.
        """
        head = self.masks["head"]
        scores = {}
        for name, reference in (("truth", self.truth), ("blurred_truth", self.truth_blurred)):
            error = np.abs(output - reference)[head]
            scores[f"std_error_pearson_{name}"] = float(stats.pearsonr(stability[head], error)[0])
            scores[f"std_error_spearman_{name}"] = float(stats.spearmanr(stability[head], error)[0])
        return scores


def leading_run(sweep: Sequence[dict], noise: str = "wm_cov") -> List[dict]:
    """The sweep's settings (in sweep order: Gaussian FWHM up, DIP epoch up) up to where its noise stops moving one
    way: past that point (a wide Gaussian that blurs cortex into white matter) the noise no longer measures
    smoothing."""
    xs = [float(p[noise]) for p in sweep]
    end = 1
    while end < len(xs) and (xs[end] - xs[end - 1]) * (xs[1] - xs[0]) > 0:
        end += 1
    return list(sweep[:end])


def at_matched_noise(sweep: Sequence[dict], wm_cov: float, key: str, noise: str = "wm_cov") -> float:
    """A sweep's ``key`` at white-matter noise ``wm_cov``, by linear interpolation between the settings of its
    :func:`leading_run`. NaN outside that run's noise range, never an extrapolation."""
    points = sorted((float(p[noise]), float(p[key])) for p in leading_run(sweep, noise))
    if not points or not points[0][0] <= wm_cov <= points[-1][0]:
        return math.nan
    return float(np.interp(wm_cov, [p[0] for p in points], [p[1] for p in points]))


def below_least_noisy(sweep: Sequence[dict], wm_cov: float, key: str, noise: str = "wm_cov") -> float:
    """Where noise ``wm_cov`` is below every setting of the sweep's :func:`leading_run`: ``key`` of its least noisy
    setting, the nearest comparison the sweep offers (a point with less noise and a higher ``key`` beats that setting
    on both). NaN otherwise, and for an empty sweep."""
    run = leading_run(sweep, noise)
    if not run:
        return math.nan
    least = min(run, key=lambda p: float(p[noise]))
    return float(least[key]) if wm_cov < float(least[noise]) else math.nan
