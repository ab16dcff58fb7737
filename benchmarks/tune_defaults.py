"""The measurement behind the DIP defaults (docs/DEFAULTS.md).

For each candidate setting it fits DIP to a simulated low-dose brain case and
asks the question of METHOD.md §5: at the paper's operating point (alpha 0.6,
200 epochs), does the blend beat Gaussian post-filtering at matched white-
matter noise, in peak-to-valley ratio (PVR) and in the contrast recovery (CR)
of PET-only lesions? Gaussian PVR and CR at the blend's noise are read off the
Gaussian FWHM sweep (0 to 4 voxels) by linear interpolation.

    python benchmarks/tune_defaults.py --out docs/tuning             # all candidates
    python benchmarks/tune_defaults.py --only lbfgs_lr0.5 --out /tmp/t

It writes results.json and results.md into --out. Slow: one 200-epoch fit per
candidate, 1 to 4 minutes each on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PETStabilityDenoiseLib import metrics
from PETStabilityDenoiseLib.blend import blend
from PETStabilityDenoiseLib.dip import DIPConfig
from PETStabilityDenoiseLib.filters import gaussian_fwhm
from PETStabilityDenoiseLib.pipeline import denoise
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case

CANDIDATES = {
    "lbfgs_lr0.1": DIPConfig(learning_rate=0.1),
    "lbfgs_lr0.5": DIPConfig(learning_rate=0.5),
    "lbfgs_lr1": DIPConfig(learning_rate=1.0),
    "lbfgs_lr0.5_small": DIPConfig(learning_rate=0.5, channels=(8, 16, 32, 64)),
    "lbfgs_lr1_small": DIPConfig(learning_rate=1.0, channels=(8, 16, 32, 64)),
    "lbfgs_lr0.5_inner2": DIPConfig(learning_rate=0.5, inner_iterations=2),
    "adam_lr1e-2": DIPConfig(optimizer="adam", learning_rate=1e-2),
    "adam_lr3e-3": DIPConfig(optimizer="adam", learning_rate=3e-3),
    "mrpet_lbfgs_lr0.5_small": DIPConfig(learning_rate=0.5, channels=(8, 16, 32, 64), input_mode="mr+pet"),
}
ALPHAS = np.round(np.arange(0.0, 1.01, 0.1), 2)
FWHMS = np.arange(0.0, 4.01, 0.5)


class Scorer:
    """Metrics of METHOD.md §4 on one simulated case."""

    def __init__(self, case) -> None:
        m = {k: sitk.GetArrayFromImage(v).astype(bool) for k, v in case.masks.items()}
        self.masks, self.ratio = m, case.lesion_true_ratio
        self.rois = [k for k in m if k.startswith("roi_")]
        self.truth = sitk.GetArrayFromImage(case.truth)

    def __call__(self, image: np.ndarray) -> dict:
        m = self.masks
        std, cov = metrics.wm_noise(image, m["wm_eroded"])
        out = {"wm_std": std, "wm_cov": cov,
               "pvr": metrics.peak_to_valley_ratio(image, [m["peak_left"], m["peak_right"]], m["valley"]),
               "lesion_cr": metrics.contrast_recovery(image, m["lesions"], m["lesion_background"], self.ratio)}
        out["roi_bias"] = {k[4:]: metrics.roi_bias(image, self.truth, m[k]) for k in self.rois}
        return out


def at_matched_noise(curve: list, wm_cov: float, key: str) -> float:
    """The Gaussian curve's ``key`` at white-matter CoV ``wm_cov`` (linear interpolation)."""
    cov = np.array([p["wm_cov"] for p in curve])
    val = np.array([p[key] for p in curve])
    order = np.argsort(cov)
    return float(np.interp(wm_cov, cov[order], val[order]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
    parser.add_argument("--dose", type=float, default=0.1)
    parser.add_argument("--labels", type=Path, default=None, help="default: bundled BrainWeb subject 04")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    case = simulate_case(sitk.ReadImage(str(args.labels or bundled_labels_path())),
                         SimulationConfig(doses=(args.dose,), seed=args.seed))
    print(f"simulated in {time.perf_counter() - t0:.0f} s", flush=True)
    pet = case.osem[args.dose]
    x0 = sitk.GetArrayFromImage(pet).astype(np.float32)
    score = Scorer(case)
    gauss = [{"fwhm_voxels": float(f), **score(gaussian_fwhm(x0, f))} for f in FWHMS]
    results = {"dose": args.dose, "gaussian": gauss, "candidates": {}}

    names = args.only or list(CANDIDATES)
    for name in names:
        config = CANDIDATES[name]
        t = time.perf_counter()
        res = denoise(pet, case.mr, config)
        fit_s = time.perf_counter() - t
        net = sitk.GetArrayFromImage(res.network_output)
        s = sitk.GetArrayFromImage(res.stability)
        s_ratio = {region: float(s[score.masks[key]].mean() / res.stability_mean)
                   for region, key in (("wm", "wm_eroded"), ("gm", "gm"), ("lesions", "lesions"),
                                       ("peaks", "peak_left"))}
        blends = []
        for alpha in ALPHAS:
            x, _ = blend(x0, net, s, float(alpha), stability_mean=res.stability_mean)
            point = {"alpha": float(alpha), **score(x)}
            point["gauss_pvr_same_noise"] = at_matched_noise(gauss, point["wm_cov"], "pvr")
            point["gauss_cr_same_noise"] = at_matched_noise(gauss, point["wm_cov"], "lesion_cr")
            blends.append(point)
        # The paper's whole-field-of-view mean(S), for comparison with the head mean.
        x_fov, _ = blend(x0, net, s, 0.6)
        results["candidates"][name] = {
            "config": {k: v for k, v in vars(config).items()}, "fit_s": fit_s, "final_loss": res.dip.loss_history[-1],
            "stability_mean_head": res.stability_mean, "stability_mean_fov": float(s.mean()),
            "s_over_mean": s_ratio, "blend": blends, "blend_fov_mean_alpha0.6": score(x_fov),
            "head_voxels": int(score.masks["head"].sum()),
        }
        op = blends[6]
        print(f"{name}: {fit_s:.0f} s | DIP cov {blends[0]['wm_cov']:.3f} pvr {blends[0]['pvr']:.3f} "
              f"cr {blends[0]['lesion_cr']:.3f} | blend0.6 cov {op['wm_cov']:.3f} pvr {op['pvr']:.3f} "
              f"(gauss {op['gauss_pvr_same_noise']:.3f}) cr {op['lesion_cr']:.3f} "
              f"(gauss {op['gauss_cr_same_noise']:.3f}) | S/mean {s_ratio}", flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_markdown(results, args.out / "results.md")


def write_markdown(results: dict, path: Path) -> None:
    lines = [f"# DIP defaults study, dose {results['dose']}", "",
             "Gaussian post-filter sweep (FWHM in voxels):", "",
             "| FWHM | WM CoV | PVR | lesion CR |", "|---|---|---|---|"]
    lines += [f"| {g['fwhm_voxels']:.1f} | {g['wm_cov']:.3f} | {g['pvr']:.3f} | {g['lesion_cr']:.3f} |"
              for g in results["gaussian"]]
    lines += ["", "Candidates: DIP alone (alpha 0) and the blend at alpha 0.6 (mean(S) over the head), with "
              "Gaussian's PVR and CR at the blend's white-matter noise.", "",
              "| candidate | fit s | DIP CoV | DIP PVR | DIP CR | blend CoV | blend PVR | Gauss PVR | blend CR | "
              "Gauss CR | S/mean WM, GM, lesions, peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in results["candidates"].items():
        d, b, r = c["blend"][0], c["blend"][6], c["s_over_mean"]
        lines.append(f"| {name} | {c['fit_s']:.0f} | {d['wm_cov']:.3f} | {d['pvr']:.3f} | {d['lesion_cr']:.3f} | "
                     f"{b['wm_cov']:.3f} | {b['pvr']:.3f} | {b['gauss_pvr_same_noise']:.3f} | {b['lesion_cr']:.3f} | "
                     f"{b['gauss_cr_same_noise']:.3f} | {r['wm']:.2f}, {r['gm']:.2f}, {r['lesions']:.2f}, "
                     f"{r['peaks']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
