"""Measure the simulator's calibration: counts, noise, contrast, convergence and runtime per dose and subject.

Reproduces the tables in docs/SIMULATOR.md:

    python benchmarks/measure_simulator_noise.py                                   # brain scanner, subject 04
    python benchmarks/measure_simulator_noise.py --subjects 04 05 06 18            # from shared/data/brainweb
    python benchmarks/measure_simulator_noise.py --scanner wholebody --legacy      # the first simulator's regime
    python benchmarks/measure_simulator_noise.py --full-dose-counts 1e12 --iterations 10 --subsets 24
    python benchmarks/measure_simulator_noise.py --count-factors --subjects 04 05 50 54

Without noise (``--full-dose-counts 1e12``) the columns show how far OSEM is from convergence: the scale of
white matter and of the brain against the PSF-blurred truth, and the contrasts against the blurred truth's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PETStabilityDenoise"))

from PETStabilityDenoiseLib.engine import tomography  # noqa: E402
from PETStabilityDenoiseLib.evaluation.scoring import Scorer  # noqa: E402
from PETStabilityDenoiseLib.simulation import SimulationConfig, dose_label, simulate_case  # noqa: E402
from PETStabilityDenoiseLib.simulation import acquisition as acq  # noqa: E402
from PETStabilityDenoiseLib.simulation import phantom as ph  # noqa: E402
from PETStabilityDenoiseLib.simulation.case import index_to_ras, labels_path, scanner_settings  # noqa: E402

BRAINWEB = REPO.parent / "shared" / "data" / "brainweb"


def count_factors(subject: str, cfg: SimulationConfig) -> None:
    """Head/brain activity and attenuation survival: the two phantom factors of scanners.brain_full_dose_counts."""
    image = sitk.ReadImage(str(labels_path(subject, BRAINWEB)))
    labels = sitk.GetArrayFromImage(image).astype(np.uint8)
    affine = index_to_ras(image)
    shape, pet_affine = ph.block_grid(labels.shape, affine, (2, 2, 2))
    coords = ph.grid_coordinates(labels.shape, affine)
    activity = ph.make_activity(labels, coords, ph.make_colliculi(pet_affine), ph.Lesions((), 1.0))
    brain = np.isin(labels, [ph.Label.GM, ph.Label.WM])
    pet_activity = ph.block_average(activity, (2, 2, 2))
    head = (ph.block_average(labels != ph.Label.BACKGROUND, (2, 2, 2)) >= 0.5).astype(np.float32)
    projector = tomography.ParallelBeamProjector.build(shape[1:], 2.0, cfg.n_angles)
    line_integrals = projector.forward(pet_activity)
    survival = acq.attenuation_factors(head * np.float32(cfg.mu_per_cm / 10.0), projector)
    print(f"| {subject} | {activity.sum() / activity[brain].sum():.3f} "
          f"| {(survival * line_integrals).sum() / line_integrals.sum():.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["04"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doses", type=float, nargs="+", help="dose fractions (default 1 1/2 1/5 1/10)")
    parser.add_argument("--scanner", help="scanner preset: brain (default) or wholebody (default with --legacy)")
    parser.add_argument("--legacy", action="store_true", help="the first simulator's phantom (PET from the MR)")
    parser.add_argument("--full-dose-counts", type=float,
                        help="e.g. 1e12 for practically noise-free data (the bias and structure floor of OSEM)")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--subsets", type=int)
    parser.add_argument("--count-factors", action="store_true",
                        help="print the head/brain activity and attenuation survival of each subject, and stop")
    args = parser.parse_args()

    changes = {k: v for k, v in (("seed", args.seed), ("doses", tuple(args.doses) if args.doses else None), ("full_dose_counts", args.full_dose_counts),
                                  ("osem_iterations", args.iterations), ("osem_subsets", args.subsets))
               if v is not None}
    scanner = args.scanner or ("wholebody" if args.legacy else "brain")
    cfg = (SimulationConfig.legacy if args.legacy else SimulationConfig)(**{**scanner_settings(scanner), **changes})
    if args.count_factors:
        print("| subject | head / brain activity | attenuation survival |\n|---|---|---|")
        for subject in args.subjects:
            count_factors(subject, cfg)
        return
    print(f"scanner {scanner}{' (legacy phantom)' if args.legacy else ''}: PSF {cfg.psf_fwhm_mm} mm, "
          f"full_dose_counts {cfg.full_dose_counts:.3g}, background_fraction {cfg.background_fraction}, "
          f"OSEM {cfg.osem_iterations}x{cfg.osem_subsets}, {cfg.n_angles} angles, seed {cfg.seed}")
    print("| subject | dose | true counts | WM CoV | WM / blurred truth | brain / blurred truth | PVR | lesion CR "
          "| hypo recovery |")
    print("|---|---|---|---|---|---|---|---|---|")
    for subject in args.subjects:
        case = simulate_case(sitk.ReadImage(str(labels_path(subject, BRAINWEB))), cfg)
        score = Scorer(case)
        blurred = sitk.GetArrayFromImage(case.truth_blurred)
        for dose, osem in case.osem.items():
            s = score(sitk.GetArrayFromImage(osem))
            c = case.info["counts"][dose_label(dose)]
            wm_scale = 1 + score.bias(sitk.GetArrayFromImage(osem), blurred, "wm_eroded")
            brain_scale = 1 + score.bias(sitk.GetArrayFromImage(osem), blurred, "brain")
            print(f"| {subject} | {dose_label(dose)} | {c['expected_true_counts']:.3g} | {s['wm_cov']:.3f} "
                  f"| {wm_scale:.3f} | {brain_scale:.3f} | {s['pvr']:.2f} | {s['lesion_cr']:.2f} "
                  f"| {s['hypo_recovery']:.2f} |")
        for name, image in (("truth", score.truth), ("blurred truth", blurred)):
            s = score(image)
            print(f"| {subject} | {name} | | {s['wm_cov']:.3f} | | | {s['pvr']:.2f} | {s['lesion_cr']:.2f} "
                  f"| {s['hypo_recovery']:.2f} |")
        t = case.info["timings"]
        print(f"| {subject} | case time {t['total_s']:.1f} s (OSEM "
              f"{sum(v for k, v in t.items() if k.startswith('osem')):.1f} s), lesion true ratio "
              f"{case.lesion_true_ratio:.2f}, hypo true ratio {case.hypo_true_ratio:.2f} | | | | | | | |")


if __name__ == "__main__":
    main()
