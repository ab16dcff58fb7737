"""The evaluation study: simulate each subject, run every method and sweep, score, cache.

For one subject the simulator makes the truth, the MR and OSEM at full dose
and each requested dose (lower doses are thinned from the full-dose counts).
Then, at each dose:

- OSEM + Gaussian post-filter, FWHM 0 to 4 voxels in steps of 0.5 (0 is OSEM);
- non-local means (scikit-image), h at several multiples of a noise estimate;
- conditional DIP at epochs 110, 120, ..., 200, all from one fit;
- the stability blend at alpha 0, 0.1, ..., 1.0, from the same fit.

Every image is scored with METHOD.md §4's metrics plus PSNR and SSIM against
the truth. A subject's rows and its panel slices are cached in
``<out>/cache`` under a key of all the settings, so re-plotting, or adding a
subject, recomputes nothing that is already there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .. import metrics
from ..blend import blend
from ..config import DIPConfig
from ..filters import gaussian_fwhm
from ..pipeline import denoise
from ..simulation import SimulationConfig, simulate_case

log = logging.getLogger(__name__)

FULL_DOSE = 1.0
GAUSSIAN_FWHMS = tuple(float(f) for f in np.arange(0.0, 4.01, 0.5))
DIP_EPOCHS = tuple(range(110, 201, 10))
ALPHAS = tuple(round(float(a), 1) for a in np.arange(0.0, 1.01, 0.1))
# h as multiples of the noise estimate; 1.0 is scikit-image's usual choice for Gaussian noise.
NLM_H_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
NLM_PATCH_SIZE, NLM_PATCH_DISTANCE = 3, 3
# The paper's operating points (METHOD.md §1), used for the ROI plots and image panels;
# DIP's is its last epoch (200 in the paper's schedule).
OPERATING_POINTS = {"gaussian": 1.5, "nlm": 1.0, "blend": 0.6}
METHOD_LABELS = {"gaussian": "OSEM + Gaussian", "nlm": "Non-local means", "dip": "Conditional DIP",
                 "blend": "Stability blend"}
SETTING_NAMES = {"gaussian": "fwhm_voxels", "nlm": "h_factor", "dip": "epochs", "blend": "alpha"}
PANEL_IMAGES = ("truth", "osem_full", "osem", "gaussian", "nlm", "dip", "blend", "stability")


@dataclass(frozen=True)
class Subject:
    """One anatomical model: a name for the tables and its tissue label volume."""

    name: str
    labels_path: Path


@dataclass(frozen=True)
class StudySettings:
    """Everything that changes the numbers; its hash keys the cache."""

    doses: tuple
    dip: DIPConfig
    seed: int = 0
    n_lesions: int = 3
    gaussian_fwhms: tuple = GAUSSIAN_FWHMS
    dip_epochs: tuple = DIP_EPOCHS
    alphas: tuple = ALPHAS
    nlm_h_factors: tuple = NLM_H_FACTORS

    def __post_init__(self) -> None:
        if not self.doses or any(not 0 < d <= 1 for d in self.doses):
            raise ValueError(f"doses must be fractions in (0, 1]; got {self.doses}")
        epochs = [e for e in self.dip_epochs if e <= self.dip.epochs]
        if not epochs:
            raise ValueError(f"none of the DIP epochs {self.dip_epochs} is reached in {self.dip.epochs} epochs")
        object.__setattr__(self, "dip_epochs", tuple(epochs))

    def operating_points(self) -> Dict[str, float]:
        return {**OPERATING_POINTS, "dip": self.dip_epochs[-1]}

    def key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Scorer:
    """The metrics of one simulated case, at one dose."""

    def __init__(self, case, full_dose_osem: np.ndarray) -> None:
        self.masks = {k: sitk.GetArrayFromImage(v).astype(bool) for k, v in case.masks.items()}
        self.rois = sorted(k[len("roi_"):] for k in self.masks if k.startswith("roi_"))
        self.truth = sitk.GetArrayFromImage(case.truth).astype(np.float32)
        self.full_dose = full_dose_osem
        self.ratio = case.lesion_true_ratio

    def __call__(self, image: np.ndarray) -> Dict[str, float]:
        m = self.masks
        wm_std, wm_cov = metrics.wm_noise(image, m["wm_eroded"])
        scores = {
            "pvr": metrics.peak_to_valley_ratio(image, [m["peak_left"], m["peak_right"]], m["valley"]),
            "wm_std": wm_std, "wm_cov": wm_cov,
            "lesion_cr": metrics.contrast_recovery(image, m["lesions"], m["lesion_background"], self.ratio),
            "psnr": metrics.psnr(image, self.truth, m["head"]),
            "ssim": metrics.ssim(image, self.truth, m["head"]),
        }
        for roi in self.rois:
            scores[f"bias_truth_{roi}"] = metrics.roi_bias(image, self.truth, m[f"roi_{roi}"])
            scores[f"bias_fulldose_{roi}"] = metrics.roi_bias(image, self.full_dose, m[f"roi_{roi}"])
        return scores


def head_noise_sigma(image: np.ndarray, head: np.ndarray) -> float:
    """A noise scale for non-local means: the std of the image minus its 1-voxel Gaussian smoothing, in the head.

    It needs no truth and no wavelets, and it grows with the noise, which is all the h sweep needs.
    """
    residual = image - gaussian_fwhm(image, 2.355)
    return float(residual[head].std())


def nonlocal_means(image: np.ndarray, h_factor: float, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=h_factor * sigma, sigma=sigma, patch_size=NLM_PATCH_SIZE,
                            patch_distance=NLM_PATCH_DISTANCE, fast_mode=True).astype(np.float32)


def panel_slice_index(case) -> int:
    """The axial slice (z index) through the centre of the two colliculus-like peaks."""
    peaks = sitk.GetArrayFromImage(case.masks["peak_left"]) | sitk.GetArrayFromImage(case.masks["peak_right"])
    return int(round(np.nonzero(peaks)[0].mean()))


def evaluate_subject(
    subject: Subject, settings: StudySettings, cache_dir: Path,
    progress: Optional[Callable[[str], None]] = None,
) -> List[dict]:
    """The subject's rows, from the cache when its key matches, otherwise computed and cached."""
    cache_dir = Path(cache_dir)
    rows_path, panels_path = cache_dir / f"{subject.name}.json", cache_dir / f"{subject.name}_panels.npz"
    if rows_path.is_file() and panels_path.is_file():
        cached = json.loads(rows_path.read_text())
        if cached.get("key") == settings.key():
            log.info("%s: using the cached results in %s", subject.name, rows_path)
            return cached["rows"]
    say = progress or log.info

    t_start = time.perf_counter()
    doses = tuple(sorted(set(settings.doses) | {FULL_DOSE}, reverse=True))
    case = simulate_case(sitk.ReadImage(str(subject.labels_path)),
                         SimulationConfig(doses=doses, seed=settings.seed, n_lesions=settings.n_lesions))
    full_dose = sitk.GetArrayFromImage(case.osem[FULL_DOSE]).astype(np.float32)
    score = Scorer(case, full_dose)
    z = panel_slice_index(case)
    panels = {"truth": score.truth[z], "osem_full": full_dose[z]}
    rows, timings = [], {"simulate_s": time.perf_counter() - t_start}
    operating_points = settings.operating_points()

    for dose in settings.doses:
        x0 = sitk.GetArrayFromImage(case.osem[dose]).astype(np.float32)
        images_at_operating_points = {"osem": x0}

        def add(method: str, setting: float, image: np.ndarray) -> None:
            rows.append({"subject": subject.name, "dose": dose, "method": method,
                         "setting_name": SETTING_NAMES[method], "setting": setting, **score(image)})
            if setting == operating_points[method]:
                images_at_operating_points[method] = image

        t = time.perf_counter()
        for fwhm in settings.gaussian_fwhms:
            add("gaussian", fwhm, gaussian_fwhm(x0, fwhm))
        sigma = head_noise_sigma(x0, score.masks["head"])
        for h_factor in settings.nlm_h_factors:
            add("nlm", h_factor, nonlocal_means(x0, h_factor, sigma))
        timings[f"filters_s_dose{dose}"] = time.perf_counter() - t

        say(f"{subject.name}, dose {dose:g}: fitting DIP ({settings.dip.epochs} epochs)")
        t = time.perf_counter()
        snapshots = {}
        result = denoise(case.osem[dose], case.mr, settings.dip, output_epochs=settings.dip_epochs,
                         on_output=lambda epoch, array: snapshots.__setitem__(epoch, array.astype(np.float32)))
        timings[f"dip_s_dose{dose}"] = time.perf_counter() - t
        for epoch in settings.dip_epochs:
            add("dip", epoch, snapshots[epoch])
        network_output = sitk.GetArrayFromImage(result.network_output).astype(np.float32)
        stability = sitk.GetArrayFromImage(result.stability).astype(np.float32)
        for alpha in settings.alphas:
            blended, _ = blend(x0, network_output, stability, alpha, stability_mean=result.stability_mean)
            add("blend", alpha, blended)

        images_at_operating_points["stability"] = stability
        for name, image in images_at_operating_points.items():
            panels[f"{name}_dose{dose}"] = image[z]

    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(panels_path, **panels)
    timings["total_s"] = time.perf_counter() - t_start
    rows_path.write_text(json.dumps({"key": settings.key(), "subject": subject.name,
                                     "labels": str(subject.labels_path), "timings": timings, "rows": rows}, indent=1))
    say(f"{subject.name}: done in {timings['total_s']:.0f} s")
    return rows


def cached_rows(subjects: Sequence[Subject], settings: StudySettings, cache_dir: Path) -> List[dict]:
    """Every subject's rows from the cache alone; raises when one is missing or stale."""
    rows = []
    for subject in subjects:
        path = Path(cache_dir) / f"{subject.name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no cached results for {subject.name} in {cache_dir}: run without --replot first")
        cached = json.loads(path.read_text())
        if cached.get("key") != settings.key():
            raise ValueError(f"the cached results for {subject.name} were made with other settings: "
                             "run without --replot to recompute them")
        rows += cached["rows"]
    return rows


def load_panels(subject: Subject, cache_dir: Path) -> Dict[str, np.ndarray]:
    with np.load(Path(cache_dir) / f"{subject.name}_panels.npz") as data:
        return {name: data[name] for name in data.files}


def cached_timings(subjects: Sequence[Subject], cache_dir: Path) -> Dict[str, dict]:
    return {s.name: json.loads((Path(cache_dir) / f"{s.name}.json").read_text())["timings"] for s in subjects}
