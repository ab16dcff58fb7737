"""What sharpening DDIP's mean with the scanner's PSF would buy in PSNR and cost in ROI bias (docs/RECONSTRUCTION.md,
"Sharpening the mean"). A measurement, not a feature: the product does not sharpen.

Each subject is simulated as ``ddip_study.py`` simulates it (the evaluation's realisation 0) and reconstructed by
DDIP with its defaults. Its mean is then deconvolved in image space by Richardson-Lucy with the simulator's PSF
(``RL k``: k iterations, inside the head), and, in a second variant, the mean's part coarser than a Gaussian of
4 or 6 mm is put back (``RL k, coarse kept``), as the final data correction adds its change. Each image is scored
as the study scores it: PSNR against the truth, minus the best Gaussian's, and the largest |ROI bias| against
full-dose OSEM over the paper's ROIs.

    python benchmarks/ddip_sharpening.py --labels-dir ../shared/data/brainweb --subjects 50 51 52 \
        --out docs/reconstruction/sharpening.json

That run (2026-12-04) had the defaults of its day: the prior now kept in docs/reconstruction/prior_blurred, and
window overlap 0.25. Run today, the script measures today's defaults and bundled prior.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ddip_study import study_case

from PETStabilityDenoiseLib.engine.filters import gaussian_fwhm, masked_gaussian, psf_blur, sigma_voxels
from PETStabilityDenoiseLib.engine.reconstruct import ddip_image, osem_image
from PETStabilityDenoiseLib.evaluation.analysis import PAPER_ROIS
from PETStabilityDenoiseLib.evaluation.study import GAUSSIAN_FWHMS
from PETStabilityDenoiseLib.settings import DDIPConfig
from PETStabilityDenoiseLib.volumes.geometry import head_mask, resample_to_reference

ITERATIONS = (1, 2, 5, 10)
COARSE_KEPT_MM = (4.0, 6.0)


def richardson_lucy(image: np.ndarray, fwhm_mm: float, spacing_zyx, iterations: int) -> np.ndarray:
    """``iterations`` Richardson-Lucy steps that deconvolve a Gaussian PSF of ``fwhm_mm`` from ``image``."""
    observed = np.maximum(image, 1e-3)
    estimate = observed.copy()
    for _ in range(iterations):
        estimate *= psf_blur(observed / np.maximum(psf_blur(estimate, fwhm_mm, spacing_zyx), 1e-6), fwhm_mm,
                             spacing_zyx)
    return estimate


def subject_rows(subject: str, dose: float, args) -> dict:
    settings, case, scorer = study_case(subject, "realistic", 0, args.labels_dir, args.threads)
    psf_fwhm_mm = settings.simulation(0).psf_fwhm_mm
    osem = osem_image(case.sinograms[dose])
    osem_array = sitk.GetArrayFromImage(osem).astype(np.float32)
    mean = sitk.GetArrayFromImage(ddip_image(case.sinograms[dose], osem, case.mr,
                                             DDIPConfig(threads=args.threads)).network_output)
    head = head_mask(osem_array, sitk.GetArrayFromImage(resample_to_reference(case.mr, osem)).astype(np.float32))
    spacing = osem.GetSpacing()[::-1]
    best_gaussian = max(scorer(gaussian_fwhm(osem_array, f))["psnr"] for f in GAUSSIAN_FWHMS)

    def score(image: np.ndarray) -> dict:
        scores = scorer(image)
        return {"psnr_minus_gaussian_best": scores["psnr"] - best_gaussian, "psnr_blurred": scores["psnr_blurred"],
                "wm_cov": scores["wm_cov"],
                "max_abs_bias_fulldose": max(abs(scores[f"bias_fulldose_{roi}"]) for roi in PAPER_ROIS)}

    rows = {"ddip": score(mean), "truth_blurred": score(scorer.truth_blurred)}
    for k in ITERATIONS:
        sharpened = np.where(head, richardson_lucy(mean, psf_fwhm_mm, spacing, k), mean)
        rows[f"rl{k}"] = score(sharpened)
        for fwhm in COARSE_KEPT_MM:
            kept = np.where(head, sharpened + masked_gaussian(mean - sharpened, head, sigma_voxels(fwhm, spacing)),
                            mean)
            rows[f"rl{k}_coarse_kept{fwhm:g}"] = score(kept)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--subjects", nargs="+", default=["50", "51", "52"])
    parser.add_argument("--dose", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write every subject's rows as JSON here")
    args = parser.parse_args()
    table = {subject: subject_rows(subject, args.dose, args) for subject in args.subjects}
    for name in table[args.subjects[0]]:
        cells = [table[s][name] for s in args.subjects]
        print(f"{name:<22}" + " | ".join(f"{c['psnr_minus_gaussian_best']:+.2f} dB {100 * c['max_abs_bias_fulldose']:.1f} %"
                                         for c in cells)
              + f" | mean {np.mean([c['psnr_minus_gaussian_best'] for c in cells]):+.2f} dB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
