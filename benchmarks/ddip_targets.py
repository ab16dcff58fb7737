"""Issue 14's 1/10-dose targets, per DDIP configuration, from the studies kept in docs/reconstruction.

Reads the JSON that ``benchmarks/ddip_study.py`` wrote for each configuration (the noise realisations it was
measured on) and prints one markdown row per configuration, for the table at the top of docs/RECONSTRUCTION.md:

    python benchmarks/ddip_targets.py

The targets (issue 14): PSNR at least the best Gaussian's + 2 dB; lesion and hypometabolism recovery at least
Gaussian's at matched noise; |ROI bias| against full-dose OSEM at most 3 %, counted per case and, as the
evaluation's target d takes it, each ROI's bias averaged over the cases, then the largest; on the amyloid-like
case, PSNR above the best Gaussian's. The ROI bias is also given, the same two ways, against the PSF-blurred truth
(not a target: the ideal image at the scanner's resolution), and a last row scores that ideal image itself against
full-dose OSEM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PETStabilityDenoise"))

from ddip_study import roi_bias_against  # noqa: E402

from PETStabilityDenoiseLib.evaluation.analysis import PAPER_ROIS, ROI_BIAS_TARGET  # noqa: E402

STUDIES = Path(__file__).resolve().parents[1] / "docs" / "reconstruction"
FORMER = ("study_data_correction.json", "study_realisation1.json", "study_realisation2.json")
SHARP = ("study_prior_sharp_second.json", "study_prior_sharp_second_realisation1.json",
         "study_prior_sharp_second_realisation2.json")
SHARP_AMYLOID = ("study_prior_sharp_second_amyloid.json",)
SHARP_OVERLAP = ("study_prior_sharp_overlap.json", "study_prior_sharp_overlap_realisation1.json",
                 "study_prior_sharp_overlap_realisation2.json")
SHARP_OVERLAP_AMYLOID = ("study_prior_sharp_overlap.json", "study_prior_sharp_overlap_realisation1_amyloid.json")
# T' 0.6 T (measured, not adopted): realisation 0 on every subject, realisation 1 on subject 53 only.
START_LATER = ("study_start0.6.json", "study_start0.6_realisation1.json")
# The default's mean smoothed within the head (measured, not adopted): realisations 0 to 2, amyloid-like on 0.
SMOOTHED = ("study_smoothing.json", "study_smoothing_realisation1.json", "study_smoothing_realisation2.json")
# name -> (the study row, the FDG studies, the amyloid-like studies)
CONFIGURATIONS: Dict[str, Tuple[str, Sequence[str], Sequence[str]]] = {
    "DDIP, bundled (sharp) prior, window overlap 0.5: the default since 2026-12-05": (
        "ddip_overlap0.5", SHARP_OVERLAP, SHARP_OVERLAP_AMYLOID),
    "DDIP, the default with T' 0.6 T (measured, not adopted)": ("ddip", START_LATER, START_LATER[:1]),
    "DDIP, the default's mean smoothed by a 2 mm Gaussian (measured, not adopted)": (
        "ddip_smoothed2mm", SMOOTHED, SMOOTHED[:1]),
    "DDIP, sharp prior, window overlap 0.25": ("ddip", SHARP, SHARP_AMYLOID),
    "DDIP, sharp prior, overlap 0.25 + PSF model": ("ddip_psf3", SHARP[:2], SHARP_AMYLOID),
    "DDIP, former prior (of the blurred truth), overlap 0.25: the default until 2026-12-05": (
        "ddip", FORMER, FORMER[:2]),
    "DDPM denoiser on OSEM (not DDIP)": ("ddpm", FORMER, FORMER[:2]),
}


def typographic(text: str) -> str:
    """``text`` with its minus signs as docs/RECONSTRUCTION.md writes them."""
    return text.replace("-", "\u2212")


def signed(value: float) -> str:
    """``value`` in dB with its sign."""
    return typographic(f"{value:+.2f}")


def cases(files: Sequence[str], row: str, regime: str) -> List[Tuple[dict, dict]]:
    """Each case of ``regime`` in ``files`` that has ``row``: (the row, the whole case)."""
    found = []
    for name in files:
        for key, case in json.loads((STUDIES / name).read_text()).items():
            if not key.startswith("mean") and f"_{regime}@" in key and row in case:
                found.append((case[row], case))
    return found


def roi_bias_cell(biases: np.ndarray) -> str:
    """Cases within the limit, and target d: the largest of the ROI biases averaged over the cases.

    Args:
        biases: one row per case, one column per ROI of ``PAPER_ROIS``.
    """
    within = int(np.sum(np.abs(biases).max(axis=1) <= ROI_BIAS_TARGET))
    roi_means = biases.mean(axis=0)
    worst = int(np.argmax(np.abs(roi_means)))
    return f"{within} of {len(biases)}; {typographic(f'{100 * roi_means[worst]:+.1f}')} % " \
           f"({PAPER_ROIS[worst].replace('_', ' ')})"


def fulldose_biases(fdg: List[Tuple[dict, dict]]) -> np.ndarray:
    """Each case's bias per ROI of ``PAPER_ROIS`` against full-dose OSEM."""
    return np.array([[scores[f"bias_fulldose_{roi}"] for roi in PAPER_ROIS] for scores, _ in fdg])


def table_row(name: str, row: str, fdg_files: Sequence[str], amyloid_files: Sequence[str]) -> str:
    fdg, amyloid = cases(fdg_files, row, "realistic"), cases(amyloid_files, row, "amyloid")
    gains = [scores["psnr"] - case["gaussian_best"]["psnr"] for scores, case in fdg]
    lesions = sum(scores["lesion_cr_vs_gaussian"] >= 0 for scores, _ in fdg)
    hypo = sum(scores["hypo_recovery_vs_gaussian"] >= 0 for scores, _ in fdg)
    blurred = np.array([roi_bias_against(scores, case["truth_blurred"]) for scores, case in fdg])
    amyloid_gains = [scores["psnr"] - case["gaussian_best"]["psnr"] for scores, case in amyloid]
    n = len(fdg)
    return (f"| {name} | {signed(float(np.mean(gains)))} ({signed(min(gains))} to {signed(max(gains))}; {n}) | "
            f"{lesions} of {n} | {hypo} of {n} | {roi_bias_cell(fulldose_biases(fdg))} | "
            f"{signed(float(np.mean(amyloid_gains)))}, above in {sum(g > 0 for g in amyloid_gains)} of "
            f"{len(amyloid_gains)} (lowest {signed(min(amyloid_gains))}) | {roi_bias_cell(blurred)} |")


def ideal_row() -> str:
    """The PSF-blurred truth of every FDG case above (each subject and noise realisation once), against full-dose
    OSEM."""
    files = {name for _, fdg_files, _ in CONFIGURATIONS.values() for name in fdg_files}
    # A case's blurred truth is in every study of its subject and realisation; its biases tell the cases apart.
    biases = np.unique(np.concatenate([fulldose_biases(cases([name], "truth_blurred", "realistic"))
                                       for name in sorted(files)]), axis=0)
    return f"| the PSF-blurred truth itself (not a method) | | | | {roi_bias_cell(biases)} | | |"


def main() -> None:
    print("| configuration | PSNR − best Gaussian, dB (range; cases) | lesions ≥ Gaussian | hypometabolism ≥ "
          "Gaussian | ROI bias within 3 %: cases; target d | amyloid-like: PSNR − best Gaussian | not a target: "
          "ROI bias against the PSF-blurred truth, within 3 %: cases; the largest mean |")
    print("|---|---|---|---|---|---|---|")
    for name, (row, fdg_files, amyloid_files) in CONFIGURATIONS.items():
        print(table_row(name, row, fdg_files, amyloid_files))
    print(ideal_row())


if __name__ == "__main__":
    main()
