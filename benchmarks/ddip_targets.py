"""Issue 14's 1/10-dose targets, per DDIP configuration, from the studies kept in docs/reconstruction.

Reads the JSON that ``benchmarks/ddip_study.py`` wrote for each configuration (every noise realisation measured)
and prints one markdown row per configuration, for the table at the top of docs/RECONSTRUCTION.md:

    python benchmarks/ddip_targets.py

The targets (issue 14): PSNR at least the best Gaussian's + 2 dB; lesion and hypometabolism recovery at least
Gaussian's at matched noise; |ROI bias| against full-dose OSEM at most 3 %, counted per case and, as the
evaluation's target d takes it, each ROI's bias averaged over the cases, then the largest; on the amyloid-like
case, PSNR above the best Gaussian's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PETStabilityDenoise"))

from PETStabilityDenoiseLib.evaluation.analysis import PAPER_ROIS  # noqa: E402

STUDIES = Path(__file__).resolve().parents[1] / "docs" / "reconstruction"
BUNDLED = ("study_data_correction.json", "study_realisation1.json", "study_realisation2.json")
SHARP = ("study_prior_sharp_second.json", "study_prior_sharp_second_realisation1.json",
         "study_prior_sharp_second_realisation2.json")
SHARP_AMYLOID = ("study_prior_sharp_second_amyloid.json",)
SHARP_OVERLAP = ("study_prior_sharp_overlap.json",)
# name -> (the study row, the FDG studies, the amyloid-like studies)
CONFIGURATIONS: Dict[str, Tuple[str, Sequence[str], Sequence[str]]] = {
    "DDIP, bundled prior (the default)": ("ddip", BUNDLED, BUNDLED[:2]),
    "DDIP, sharp prior": ("ddip", SHARP, SHARP_AMYLOID),
    "DDIP, sharp prior + PSF model": ("ddip_psf3", SHARP[:2], SHARP_AMYLOID),
    "DDIP, sharp prior, window overlap 0.5": ("ddip_overlap0.5", SHARP_OVERLAP, SHARP_OVERLAP),
    "DDPM denoiser on OSEM (not DDIP)": ("ddpm", BUNDLED, BUNDLED[:2]),
}
ROI_LIMIT = 0.03


def signed(value: float) -> str:
    """``value`` in dB with its sign, the minus as docs/RECONSTRUCTION.md writes it."""
    return f"{value:+.2f}".replace("-", "\u2212")


def cases(files: Sequence[str], row: str, regime: str) -> List[Tuple[dict, float]]:
    """Each case of ``regime`` in ``files`` that has ``row``: (the row, the best Gaussian's PSNR)."""
    found = []
    for name in files:
        for key, case in json.loads((STUDIES / name).read_text()).items():
            if not key.startswith("mean") and f"_{regime}@" in key and row in case:
                found.append((case[row], case["gaussian_best"]["psnr"]))
    return found


def table_row(name: str, row: str, fdg_files: Sequence[str], amyloid_files: Sequence[str]) -> str:
    fdg, amyloid = cases(fdg_files, row, "realistic"), cases(amyloid_files, row, "amyloid")
    gains = [scores["psnr"] - best for scores, best in fdg]
    lesions = sum(scores["lesion_cr_vs_gaussian"] >= 0 for scores, _ in fdg)
    hypo = sum(scores["hypo_recovery_vs_gaussian"] >= 0 for scores, _ in fdg)
    within = sum(scores["max_abs_bias_fulldose"] <= ROI_LIMIT for scores, _ in fdg)
    roi_means = {roi: float(np.mean([scores[f"bias_fulldose_{roi}"] for scores, _ in fdg])) for roi in PAPER_ROIS}
    worst = max(roi_means, key=lambda roi: abs(roi_means[roi]))
    amyloid_gains = [scores["psnr"] - best for scores, best in amyloid]
    n = len(fdg)
    return (f"| {name} | {signed(float(np.mean(gains)))} ({signed(min(gains))} to {signed(max(gains))}; {n}) | "
            f"{lesions} of {n} | {hypo} of {n} | {within} of {n}; {100 * roi_means[worst]:+.1f} % "
            f"({worst.replace('_', ' ')}) | {signed(float(np.mean(amyloid_gains)))}, above in "
            f"{sum(g > 0 for g in amyloid_gains)} of {len(amyloid_gains)} (lowest {signed(min(amyloid_gains))}) |")


def main() -> None:
    print("| configuration | PSNR − best Gaussian, dB (range; cases) | lesions ≥ Gaussian | hypometabolism ≥ "
          "Gaussian | ROI bias within 3 %: cases; target d | amyloid-like: PSNR − best Gaussian |")
    print("|---|---|---|---|---|---|")
    for name, (row, fdg_files, amyloid_files) in CONFIGURATIONS.items():
        print(table_row(name, row, fdg_files, amyloid_files))


if __name__ == "__main__":
    main()
