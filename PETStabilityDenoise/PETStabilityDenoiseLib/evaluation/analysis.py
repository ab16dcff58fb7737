"""The study's numbers from its rows: means with two spreads, matched-noise comparisons, the targets, the sweeps.

Pure Python and numpy on the rows of :mod:`.study` (dicts with the columns ``study.ID_COLUMNS`` and the scores);
``report`` turns them into text and ``plots`` into figures.

A *case* is one (subject, realisation) of a condition. Means are over all cases; the two spreads separate what
the noise does (sd over realisations, pooled within subjects) from what the anatomy does (sd over subjects, of
the per-subject means).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .scoring import at_matched_noise, below_least_noisy
from .study import StudySettings, is_count_sweep

# The ROIs of the paper's ROI analysis (METHOD.md §1); the simulator also has occipital and the colliculi.
PAPER_ROIS = ("cerebellar_cortex", "frontal", "medial_temporal", "parietal", "posterior_cingulate_precuneus",
              "striatum", "thalamus")
STABILITY_KEYS = (("s_peaks_over_wm", "peaks"), ("s_lesions_over_wm", "lesions"), ("s_hypo_over_wm", "hypo"),
                  ("s_cortex_over_wm", "cortex"))
# How well S ranks the error of its output (Scorer.error_ranking); fits scored before it existed lack it.
ERROR_RANKING_KEY = "std_error_spearman_blurred_truth"
# The quantities compared at matched white-matter CoV: (key, label, relative?).
MATCHED_KEYS = (("pvr", "PVR", True), ("lesion_cr", "lesion CR", False), ("hypo_recovery", "hypo recovery", False))
TARGET_DOSE = 0.1
ROI_BIAS_TARGET = 0.03  # every paper ROI's |bias| at most 3 % (the realistic-regime and DDIP issues' target)

Case = Tuple[str, int]  # (subject, realisation)


@dataclass(frozen=True)
class Summary:
    """A mean over cases with its two spreads (NaN where there are too few values for one)."""

    mean: float
    sd_realisations: float  # pooled within-subject sd: the noise realisations' spread
    sd_subjects: float  # sd of the per-subject means: the anatomy's spread
    n: int  # cases with a value
    subjects: int

    def format(self, fmt: str) -> str:
        """``mean ± sd_realisations/sd_subjects``, '–' for a missing spread, 'n/a' without values."""
        if not self.n:
            return "n/a"

        def spread(value: float) -> str:
            return "–" if math.isnan(value) else fmt.format(value).lstrip("+")

        return f"{fmt.format(self.mean)} ± {spread(self.sd_realisations)}/{spread(self.sd_subjects)}"


def summarise(values: Iterable[Tuple[str, float]]) -> Summary:
    """Mean and two spreads of (subject, value) pairs, one pair per case; NaN values are left out.

    The sd over realisations pools each subject's squared deviations from its own mean (ddof 1 per subject); the sd
    over subjects is the sample sd of the per-subject means. Each needs at least two values to exist.
    """
    by_subject: Dict[str, List[float]] = defaultdict(list)
    for subject, value in values:
        if value is not None and not math.isnan(value):
            by_subject[subject].append(float(value))
    everything = [v for vs in by_subject.values() for v in vs]
    if not everything:
        return Summary(math.nan, math.nan, math.nan, 0, 0)
    squares = sum(float(np.sum((np.array(vs) - np.mean(vs)) ** 2)) for vs in by_subject.values())
    dof = sum(len(vs) - 1 for vs in by_subject.values())
    means = [float(np.mean(vs)) for vs in by_subject.values()]
    return Summary(mean=float(np.mean(everything)),
                   sd_realisations=math.sqrt(squares / dof) if dof else math.nan,
                   sd_subjects=float(np.std(means, ddof=1)) if len(means) > 1 else math.nan,
                   n=len(everything), subjects=len(means))


def summarise_cases(values: Dict[Case, float]) -> Summary:
    return summarise((subject, value) for (subject, _), value in values.items())


def wins(differences: Iterable[float]) -> str:
    """'k/n': how many of the valid differences are above 0."""
    valid = [d for d in differences if not math.isnan(d)]
    if not valid:
        return "outside the sweep's noise range"
    return f"{sum(d > 0 for d in valid)}/{len(valid)}"


def with_mean_bias(row: dict) -> dict:
    """The row plus its mean ROI bias over the paper's ROIs, against the truth and against full-dose OSEM."""
    out = dict(row)
    for reference in ("truth", "fulldose"):
        values = [row[f"bias_{reference}_{roi}"] for roi in PAPER_ROIS if f"bias_{reference}_{roi}" in row]
        out[f"mean_bias_{reference}"] = float(np.mean(values)) if values else math.nan
    return out


class Results:
    """The rows, per-fit records and full-dose references of every case, indexed for look-up.

    Args:
        rows: one dict per (condition, subject, realisation, dose, method, setting).
        fits: one dict per DIP fit or DDPM run (its time and stability contrast).
        references: full-dose OSEM's scores, one dict per case (with condition, subject and realisation).
    """

    def __init__(self, rows: Sequence[dict], fits: Sequence[dict] = (), references: Sequence[dict] = ()) -> None:
        self.rows, self.fits = list(rows), list(fits)
        self._sweeps: Dict[tuple, List[dict]] = defaultdict(list)
        for row in self.rows:
            self._sweeps[(row["condition"], row["subject"], row["realisation"], row["dose"], row["method"])].append(row)
        for sweep in self._sweeps.values():
            sweep.sort(key=lambda r: r["setting"])
        self._references = {(r["condition"], r["subject"], r["realisation"]): r for r in references}

    def cases(self, condition: str, realisation: Optional[int] = None) -> List[Case]:
        """The condition's (subject, realisation) pairs, all or of one realisation."""
        return sorted({(s, r) for c, s, r, _, _ in self._sweeps if c == condition
                       and (realisation is None or r == realisation)})

    def methods(self, condition: str, dose: float) -> List[str]:
        return sorted({m for c, _, _, d, m in self._sweeps if c == condition and d == dose})

    def sweep(self, condition: str, case: Case, dose: float, method: str) -> List[dict]:
        """One case's rows of one method, in setting order."""
        return self._sweeps.get((condition, case[0], case[1], dose, method), [])

    def at(self, condition: str, case: Case, dose: float, method: str, setting: float) -> Optional[dict]:
        return next((r for r in self.sweep(condition, case, dose, method) if r["setting"] == setting), None)

    def reference(self, condition: str, case: Case) -> dict:
        """Full-dose OSEM's scores of the case (KeyError if it has none)."""
        return self._references[(condition, case[0], case[1])]

    def has_metric(self, condition: str, key: str) -> bool:
        """Whether any of the condition's rows has a value of ``key`` (the legacy regime has no hypometabolism)."""
        return any(not math.isnan(r[key]) for r in self.rows if r["condition"] == condition)

    def per_case(self, condition: str, value: Callable[[Case], float],
                 realisation: Optional[int] = None) -> Dict[Case, float]:
        """``value(case)`` for each case; NaN where it raises LookupError (a row that the case lacks)."""
        out = {}
        for case in self.cases(condition, realisation):
            try:
                out[case] = float(value(case))
            except LookupError:
                out[case] = math.nan
        return out

    def summary(self, condition: str, dose: float, method: str, setting: float, key: str,
                realisation: Optional[int] = None) -> Summary:
        """``key`` of one method at one setting, over the condition's cases."""
        return summarise_cases(self.per_case(condition, lambda c: self.row(condition, c, dose, method, setting)[key],
                                             realisation))

    def row(self, condition: str, case: Case, dose: float, method: str, setting: float) -> dict:
        """Like :meth:`at`, but raises KeyError when the row is missing."""
        row = self.at(condition, case, dose, method, setting)
        if row is None:
            raise KeyError((condition, case, dose, method, setting))
        return row

    def curve(self, condition: str, dose: float, method: str, x: str, y: str) -> Dict[str, np.ndarray]:
        """Per setting of a sweep: mean of ``x`` and ``y`` over cases, and the sd over subjects of ``y``."""
        cases = self.cases(condition)
        settings = sorted({r["setting"] for case in cases for r in self.sweep(condition, case, dose, method)})
        out: Dict[str, List[float]] = {"setting": [], "x": [], "y": [], "y_sd": []}
        for setting in settings:
            xs = summarise_cases(self.per_case(condition, lambda c: self.row(condition, c, dose, method, setting)[x]))
            ys = summarise_cases(self.per_case(condition, lambda c: self.row(condition, c, dose, method, setting)[y]))
            for name, value in (("setting", setting), ("x", xs.mean), ("y", ys.mean),
                                ("y_sd", 0.0 if math.isnan(ys.sd_subjects) else ys.sd_subjects)):
                out[name].append(value)
        return {name: np.array(values, dtype=float) for name, values in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# Matched noise


def matched(results: Results, condition: str, case: Case, dose: float, point: dict, reference: str,
            key: str) -> float:
    """``key`` of the ``reference`` sweep at ``point``'s white-matter CoV (NaN outside the sweep's range)."""
    return at_matched_noise(results.sweep(condition, case, dose, reference), point["wm_cov"], key)


def least_noisy(results: Results, condition: str, case: Case, dose: float, point: dict, reference: str,
                key: str) -> float:
    """``key`` of the ``reference`` sweep's least noisy setting, where ``point`` has less white-matter noise than
    every setting (NaN otherwise)."""
    return below_least_noisy(results.sweep(condition, case, dose, reference), point["wm_cov"], key)


def matched_gain(results: Results, condition: str, dose: float, method: str, setting: float, reference: str,
                 key: str, relative: bool = False, realisation: Optional[int] = None,
                 least_noisy_fallback: bool = False) -> Dict[Case, float]:
    """Per case: ``method`` at ``setting`` minus the ``reference`` sweep at the same WM CoV (ratio - 1 if
    ``relative``). With ``least_noisy_fallback``, where ``method`` is less noisy than every setting of the sweep,
    minus its least noisy setting instead (then a gain >= 0 means less noise and at least as much ``key``)."""
    def gain(case: Case) -> float:
        point = results.row(condition, case, dose, method, setting)
        other = matched(results, condition, case, dose, point, reference, key)
        if least_noisy_fallback and math.isnan(other):
            other = least_noisy(results, condition, case, dose, point, reference, key)
        if relative:
            return point[key] / other - 1.0 if other else math.nan
        return point[key] - other

    return results.per_case(condition, gain, realisation)


def dip_psnr_gain(results: Results, condition: str, dose: float, epoch: float,
                  realisation: Optional[int] = None) -> Dict[Case, float]:
    """Per case: DIP's PSNR against the PSF-blurred truth at ``epoch`` minus the best Gaussian FWHM's."""
    def gain(case: Case) -> float:
        gaussians = results.sweep(condition, case, dose, "gaussian")
        if not gaussians:
            raise KeyError("no Gaussian sweep")
        best = max(r["psnr_blurred"] for r in gaussians)
        return results.row(condition, case, dose, "dip", epoch)["psnr_blurred"] - best

    return results.per_case(condition, gain, realisation)


def best_of_sweep(results: Results, condition: str, dose: float, method: str, key: str) -> Tuple[float, float]:
    """(best mean ``key`` over the sweep's settings, its setting): the sweep's mean curve at its maximum."""
    c = results.curve(condition, dose, method, key, key)
    if not c["y"].size or np.all(np.isnan(c["y"])):
        return math.nan, math.nan
    best = int(np.nanargmax(c["y"]))
    return float(c["y"][best]), float(c["setting"][best])


def stability_contrast(results: Results, condition: str, dose: float, method: str,
                       realisation: Optional[int] = None) -> Dict[str, Summary]:
    """Mean S over mean S in white matter, per region, over the fits of one method and dose (of one realisation)."""
    fits = [f for f in results.fits if f["condition"] == condition and f["dose"] == dose and f["method"] == method
            and (realisation is None or f["realisation"] == realisation)]
    return {label: summarise((f["subject"], f[key]) for f in fits) for key, label in STABILITY_KEYS}


def error_ranking(results: Results, condition: str, dose: float, method: str) -> Summary:
    """The Spearman correlation of S with the absolute error of its output, over the fits that have it."""
    return summarise((f["subject"], f[ERROR_RANKING_KEY]) for f in results.fits
                     if f["condition"] == condition and f["dose"] == dose and f["method"] == method
                     and ERROR_RANKING_KEY in f)


# ---------------------------------------------------------------------------------------------------------------
# Targets


def _target(description: str, values: Dict[Case, float], target: float, higher_is_better: bool,
            per_case_target: Optional[Dict[Case, float]] = None, measured: Optional[float] = None,
            unit: str = "") -> dict:
    """One target line: the mean over cases against the target; a margin > 0 means it is met with room to spare.

    Args:
        values: the measured quantity per case; its mean is the measured value unless ``measured`` is given.
        per_case_target: the target per case, for counting the cases that meet it (default: ``target``).
    """
    summary = summarise_cases(values)
    measured = summary.mean if measured is None else measured
    if math.isnan(measured) or math.isnan(target):
        status, margin = "N/A", math.nan
    else:
        margin = measured - target if higher_is_better else target - measured
        status = "PASS" if margin >= 0 else "MISS"
    goals = per_case_target or {case: target for case in values}
    valid = {c: v for c, v in values.items() if not math.isnan(v) and not math.isnan(goals.get(c, math.nan))}
    meeting = sum((v >= goals[c]) if higher_is_better else (v <= goals[c]) for c, v in valid.items())
    return {"description": description, "measured": measured, "sd_realisations": summary.sd_realisations,
            "sd_subjects": summary.sd_subjects, "target": target, "comparison": ">=" if higher_is_better else "<=",
            "status": status, "margin": margin, "cases_meeting": meeting, "cases": len(valid),
            "cases_total": len(values), "unit": unit}


def roi_bias_target(description: str, biases: Dict[str, Dict[Case, float]]) -> dict:
    """Every paper ROI's mean bias within 3 %: the largest |mean| over the ROIs against 3 %; per case, the largest
    |bias|. ``biases``: per ROI, the bias against full-dose OSEM per case."""
    per_roi = {roi: summarise_cases(b).mean for roi, b in biases.items()}
    largest = max((abs(v) for v in per_roi.values() if not math.isnan(v)), default=math.nan)
    worst = {case: max(abs(b[case]) for b in biases.values()) for case in next(iter(biases.values()))}
    line = _target(description, worst, ROI_BIAS_TARGET, False, measured=largest, unit="relative")
    line["per_roi"] = per_roi
    return line


def targets(results: Results, settings: StudySettings, dose: float = TARGET_DOSE) -> dict:
    """The project's targets at ``dose`` and the blend's operating point, over every case of the main condition.

    a) blend PVR >= the same case's full-dose OSEM PVR;
    b) blend WM CoV <= 0.6 x the same dose's OSEM WM CoV;
    c) at the blend's WM CoV against the Gaussian sweep: PVR >= +10 %, lesion CR >= +0.05, hypo recovery >= 0;
    d) |ROI bias against full-dose OSEM| <= 3 % in every paper ROI;
    e) DIP at its operating (last) epoch: PSNR against the blurred truth >= the best Gaussian's + 1 dB.
    """
    condition = settings.condition
    op = settings.operating_points()
    alpha = op["blend"]
    out: Dict[str, Any] = {"condition": condition, "dose": dose, "alpha": alpha, "dip_epoch": op["dip"],
                           "cases": len(results.cases(condition)), "available": dose in settings.doses, "targets": {}}
    if not out["available"]:
        return out

    def blend_key(key: str) -> Dict[Case, float]:
        return results.per_case(condition, lambda c: results.row(condition, c, dose, "blend", alpha)[key])

    found = out["targets"]
    blend_pvr = blend_key("pvr")
    full_pvr = results.per_case(condition, lambda c: results.reference(condition, c)["pvr"])
    found["a_pvr_vs_full_dose_osem"] = _target("blend PVR >= full-dose OSEM PVR", blend_pvr,
                                               summarise_cases(full_pvr).mean, True, per_case_target=full_pvr)

    blend_cov = blend_key("wm_cov")
    osem_cov = results.per_case(condition, lambda c: 0.6 * results.row(condition, c, dose, "gaussian", 0.0)["wm_cov"])
    found["b_wm_cov_vs_osem"] = _target("blend WM CoV <= 0.6 x OSEM WM CoV at this dose", blend_cov,
                                        summarise_cases(osem_cov).mean, False, per_case_target=osem_cov)

    for number, ((key, _, relative), goal, description) in enumerate(zip(MATCHED_KEYS, (0.10, 0.05, 0.0), (
            "blend PVR >= Gaussian's + 10 % at the blend's WM CoV",
            "blend lesion CR >= Gaussian's + 0.05 at the blend's WM CoV",
            "blend hypo recovery >= Gaussian's at the blend's WM CoV")), start=1):
        gains = matched_gain(results, condition, dose, "blend", alpha, "gaussian", key, relative)
        found[f"c{number}_{key}_gain_vs_gaussian"] = _target(description, gains, goal, True,
                                                             unit="relative" if relative else "")

    found["d_roi_bias_vs_full_dose_osem"] = roi_bias_target(
        "|ROI bias vs full-dose OSEM| <= 3 % in every paper ROI (the largest |mean| over the ROIs)",
        {roi: blend_key(f"bias_fulldose_{roi}") for roi in PAPER_ROIS})

    gains = dip_psnr_gain(results, condition, dose, op["dip"])
    found["e_dip_psnr_blurred_vs_best_gaussian"] = _target(
        f"DIP (epoch {op['dip']}) PSNR vs blurred truth − best Gaussian's >= +1 dB", gains, 1.0, True, unit="dB")
    return out


def ddpm_targets(results: Results, settings: StudySettings, dose: float) -> dict:
    """The diffusion model's targets at ``dose``, over the cases of the main condition that ran it.

    f1) its mean's PSNR against the blurred truth >= the best Gaussian FWHM's + 2 dB; f2) and >= the U-Net
    baseline's (when it ran); f3) its mean's SSIM against the blurred truth >= the Gaussian sweep's best;
    f4, f5) at the mean's WM CoV against the Gaussian sweep: lesion CR and hypo recovery >= Gaussian's (where the
    mean is less noisy than every FWHM, >= the least noisy FWHM's);
    f6) |ROI bias against full-dose OSEM| <= 3 % in every paper ROI; f7) the Spearman correlation of its std with
    the absolute error of its mean (blurred truth) >= 0.6. f4 to f6 are also given for its blend at its alpha.
    """
    condition, op = settings.condition, settings.operating_points()
    samples, alpha = op["ddpm"], op["ddpm_blend"]
    out: Dict[str, Any] = {"condition": condition, "dose": dose, "samples": samples, "alpha": alpha,
                           "available": dose in settings.ddpm_doses_for(0), "targets": {}}
    if not out["available"]:
        return out

    def key_of(method: str, setting: float, key: str) -> Dict[Case, float]:
        return results.per_case(condition, lambda c: results.row(condition, c, dose, method, setting)[key])

    def best_gaussian(key: str) -> Dict[Case, float]:
        return results.per_case(condition, lambda c: max(r[key] for r in results.sweep(condition, c, dose, "gaussian"))
                                if results.at(condition, c, dose, "ddpm", samples) else math.nan)

    found = out["targets"]
    psnr, ssim = key_of("ddpm", samples, "psnr_blurred"), key_of("ddpm", samples, "ssim_blurred")
    gaussian_psnr = best_gaussian("psnr_blurred")
    found["f1_psnr_vs_best_gaussian"] = _target(
        "mean PSNR vs blurred truth − best Gaussian's >= +2 dB", {c: psnr[c] - gaussian_psnr[c] for c in psnr}, 2.0,
        True, unit="dB")
    if "unet" in op:
        unet = key_of("unet", op["unet"], "psnr_blurred")
        found["f2_psnr_vs_unet"] = _target("mean PSNR vs blurred truth − the U-Net baseline's >= 0 dB",
                                           {c: psnr[c] - unet[c] for c in psnr}, 0.0, True, unit="dB")
    gaussian_ssim = best_gaussian("ssim_blurred")
    found["f3_ssim_vs_best_gaussian"] = _target("mean SSIM vs blurred truth − the Gaussian sweep's best >= 0",
                                                {c: ssim[c] - gaussian_ssim[c] for c in ssim}, 0.0, True)
    for method, setting, label in (("ddpm", samples, "mean"), ("ddpm_blend", alpha, f"blend (alpha {alpha:g})")):
        for number, key, what in ((4, "lesion_cr", "lesion CR"), (5, "hypo_recovery", "hypo recovery")):
            gains = matched_gain(results, condition, dose, method, setting, "gaussian", key,
                                 least_noisy_fallback=True)
            found[f"f{number}_{method}_{key}_gain_vs_gaussian"] = _target(
                f"{label} {what} >= Gaussian's at its WM CoV (less noisy than every FWHM: the least noisy one's)",
                gains, 0.0, True)
        found[f"f6_{method}_roi_bias_vs_full_dose_osem"] = roi_bias_target(
            f"{label}: |ROI bias vs full-dose OSEM| <= 3 % in every paper ROI (the largest |mean|)",
            {roi: key_of(method, setting, f"bias_fulldose_{roi}") for roi in PAPER_ROIS})
    ranking = {(f["subject"], f["realisation"]): f[ERROR_RANKING_KEY] for f in results.fits
               if f["condition"] == condition and f["dose"] == dose and f["method"] == "ddpm" and ERROR_RANKING_KEY in f}
    found["f7_std_error_spearman"] = _target("Spearman(std, |mean − blurred truth|) over the head >= 0.6", ranking,
                                             0.6, True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Count sweep and stress condition


def condition_point(results: Results, settings: StudySettings, dose: float, realisation: Optional[int] = None) -> dict:
    """One condition's matched-noise numbers at ``dose``: per-case values of each comparison, and OSEM's WM CoV."""
    condition, op = settings.condition, settings.operating_points()
    point = {"condition": condition, "count_scale": settings.count_scale, "scanner": settings.scanner,
             "regime": settings.regime}
    for key, _, relative in MATCHED_KEYS:
        point[f"{key}_gain"] = matched_gain(results, condition, dose, "blend", op["blend"], "gaussian", key, relative,
                                            realisation)
    point["dip_psnr_gain"] = dip_psnr_gain(results, condition, dose, op["dip"], realisation)
    point["osem_wm_cov"] = results.per_case(
        condition, lambda c: results.row(condition, c, dose, "gaussian", 0.0)["wm_cov"], realisation)
    return point


def count_sweep(results: Results, conditions: Sequence[StudySettings], dose: float) -> List[dict]:
    """The count sweep's points in count-scale order: each sweep condition, and the main condition's realisation 0
    at the same dose (the main count scale's entry)."""
    main = conditions[0]
    sweep = [c for c in conditions[1:] if is_count_sweep(c)]
    if not sweep:
        return []
    points = [condition_point(results, c, dose) for c in sweep]
    if dose in main.doses:
        points.append(restrict(condition_point(results, main, dose, realisation=0), sweep[0].subjects))
    return sorted(points, key=lambda p: p["count_scale"])


def restrict(point: dict, subjects: Sequence[str]) -> dict:
    """``point`` with only the cases of ``subjects`` (all of them when empty), to compare like with like."""
    if not subjects:
        return point
    return {k: ({case: v for case, v in value.items() if case[0] in subjects} if isinstance(value, dict) else value)
            for k, value in point.items()}


def per_subject(values: Dict[Case, float]) -> Dict[str, float]:
    """The mean of each subject's cases (one realisation each in the sweep)."""
    by_subject: Dict[str, List[float]] = defaultdict(list)
    for (subject, _), value in values.items():
        by_subject[subject].append(value)
    return {s: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan
            for s, v in sorted(by_subject.items())}


def positive_scales(points: Sequence[dict], key: str) -> Tuple[List[float], List[float]]:
    """(count scales where the mean of ``key`` is above 0, those where it is not); scales without a value are left
    out."""
    above: List[float] = []
    below: List[float] = []
    for p in points:
        mean = summarise_cases(p[key]).mean
        if not math.isnan(mean):
            (above if mean > 0 else below).append(p["count_scale"])
    return above, below
