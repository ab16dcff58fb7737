"""Measure the simulator's calibration: counts, white-matter CoV, PVR, scale and runtime per dose and subject.

Reproduces the tables in docs/SIMULATOR.md:

    python benchmarks/measure_simulator_noise.py                      # bundled subject 04
    python benchmarks/measure_simulator_noise.py --subjects 04 05 06 18  # BrainWeb subjects from shared/data/brainweb
    python benchmarks/measure_simulator_noise.py --full-dose-counts 1e12 --iterations 10 --subsets 24
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PETStabilityDenoise"))

from PETStabilityDenoiseLib import metrics  # noqa: E402
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, dose_label, simulate_case  # noqa: E402

BRAINWEB = REPO.parent / "shared" / "data" / "brainweb"


def labels_path(subject: str) -> Path:
    if subject == "04" and not (BRAINWEB / f"brainweb_subject{subject}_labels_1mm.nii.gz").exists():
        return bundled_labels_path()
    return BRAINWEB / f"brainweb_subject{subject}_labels_1mm.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["04"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-dose-counts", type=float, default=SimulationConfig.full_dose_counts,
                        help="e.g. 1e12 for practically noise-free data (the bias and structure floor of OSEM)")
    parser.add_argument("--iterations", type=int, default=SimulationConfig.osem_iterations)
    parser.add_argument("--subsets", type=int, default=SimulationConfig.osem_subsets)
    args = parser.parse_args()

    cfg = SimulationConfig(seed=args.seed, full_dose_counts=args.full_dose_counts,
                           osem_iterations=args.iterations, osem_subsets=args.subsets)
    print(f"full_dose_counts {cfg.full_dose_counts:.3g}, background_fraction {cfg.background_fraction}, "
          f"OSEM {cfg.osem_iterations}x{cfg.osem_subsets}, {cfg.n_angles} angles, seed {cfg.seed}")
    print("| subject | dose | true counts | prompts | WM CoV | WM mean / blurred truth | brain mean / blurred truth | PVR |")
    print("|---|---|---|---|---|---|---|---|")
    for subject in args.subjects:
        case = simulate_case(sitk.ReadImage(str(labels_path(subject))), cfg)
        arr = {k: sitk.GetArrayFromImage(v).astype(bool) for k, v in case.masks.items()}
        blurred = sitk.GetArrayFromImage(case.truth_blurred)
        truth = sitk.GetArrayFromImage(case.truth)
        peaks = [arr["peak_left"], arr["peak_right"]]
        for dose, image in case.osem.items():
            x = sitk.GetArrayFromImage(image)
            c = case.info["counts"][dose_label(dose)]
            _, cov = metrics.wm_noise(x, arr["wm_eroded"])
            wm_scale = 1 + metrics.roi_bias(x, blurred, arr["wm_eroded"])
            brain_scale = 1 + metrics.roi_bias(x, blurred, arr["brain"])
            pvr = metrics.peak_to_valley_ratio(x, peaks, arr["valley"])
            print(f"| {subject} | {dose_label(dose)} | {c['expected_true_counts']:.3g} | {c['measured_prompts']:.3g} "
                  f"| {cov:.3f} | {wm_scale:.3f} | {brain_scale:.3f} | {pvr:.2f} |")
        pvr_truth = metrics.peak_to_valley_ratio(truth, peaks, arr["valley"])
        pvr_blurred = metrics.peak_to_valley_ratio(blurred, peaks, arr["valley"])
        t = case.info["timings"]
        print(f"| {subject} | truth PVR {pvr_truth:.2f}, blurred truth PVR {pvr_blurred:.2f}, lesion true ratio "
              f"{case.lesion_true_ratio:.2f}, case time {t['total_s']:.1f} s "
              f"(OSEM {sum(v for k, v in t.items() if k.startswith('osem')):.1f} s) | | | | | | |")


if __name__ == "__main__":
    main()
