"""Quality of the diffusion model on held-out BrainWeb subjects, against Gaussian-filtered OSEM.

For each subject and dose it simulates the same case as ``petstab evaluate``
(same seed, lesions and dose list, so the OSEM images are identical), then scores:
- Gaussian-filtered OSEM at every FWHM of the evaluation study;
- the DDPM mean (the network output) and the blend at alpha 0.6, with the
  default sampling settings;
- how well the DDPM std predicts the absolute error of the mean: Pearson and
  Spearman correlation over the head, against the truth and the PSF-blurred truth.

On one subject and dose it also sweeps the DDIM steps and the truncated start,
on an axial slab through the colliculi (a third of the brain, to keep the sweep
within minutes on a CPU), scoring PSNR and SSIM over the slab's head voxels.

Each result is cached in ``<out>/cache`` as soon as it exists, so the run can
be stopped and continued. Usage (about 4 minutes per subject and dose on 2 CPU cores):

    python benchmarks/evaluate_ddpm.py --labels-dir ../shared/data/brainweb \\
        --subjects 50 51 52 53 54 --doses 0.1 0.2 --out docs/ddpm
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import stats

from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.ddpm.weights import MANIFEST_FILE, bundled_model_dir
from PETStabilityDenoiseLib.engine.filters import gaussian_fwhm
from PETStabilityDenoiseLib.engine.pipeline import denoise_ddpm
from PETStabilityDenoiseLib.evaluation import metrics
from PETStabilityDenoiseLib.evaluation.scoring import Scorer
from PETStabilityDenoiseLib.evaluation.study import FULL_DOSE, GAUSSIAN_FWHMS, panel_slice_index
from PETStabilityDenoiseLib.settings import DDPMSamplingConfig
from PETStabilityDenoiseLib.simulation import SimulationConfig, simulate_case
from PETStabilityDenoiseLib.simulation.case import labels_path

log = logging.getLogger("evaluate_ddpm")
EVALUATION_DOSES = (1.0, 0.5, 0.2, 0.1)  # the dose list of docs/evaluation: it seeds the noise of each dose
ALPHA = 0.6
SLAB_HALF_THICKNESS = 16


def cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
    return value


def cache_dir(out: Path, config: DDPMSamplingConfig) -> Path:
    """Results are kept per model (by its checksum) and sampling settings, so a new model never reads old results."""
    model_dir = Path(config.model_dir) if config.model_dir else bundled_model_dir()
    checksum = json.loads((model_dir / MANIFEST_FILE).read_text())["sha256"][:12]
    return out / "cache" / f"model{checksum}_k{config.samples}_overlap{config.overlap:g}_seed{config.seed}"


def evaluate_case(labels: Path, subject: str, doses, config: DDPMSamplingConfig, out: Path, panels: dict) -> list:
    case = simulate_case(sitk.ReadImage(str(labels)), SimulationConfig(doses=EVALUATION_DOSES, seed=0, n_lesions=3))
    score = Scorer(case, sitk.GetArrayFromImage(case.osem[FULL_DOSE]).astype(np.float32))
    head = score.masks["head"]
    cache = cache_dir(out, config)
    rows = []
    for dose in doses:
        x0 = sitk.GetArrayFromImage(case.osem[dose]).astype(np.float32)

        def run_ddpm() -> dict:
            t = time.perf_counter()
            result = denoise_ddpm(case.osem[dose], case.mr, config, alpha=ALPHA)
            seconds = time.perf_counter() - t
            mean = sitk.GetArrayFromImage(result.network_output).astype(np.float32)
            std = sitk.GetArrayFromImage(result.stability).astype(np.float32)
            blended, _ = blend(x0, mean, std, ALPHA, stability_mean=result.stability_mean)
            z = panel_slice_index(case)
            np.savez_compressed(cache / f"subject{subject}_dose{dose}_panels.npz", truth=score.truth[z],
                                osem=x0[z], mean=mean[z], std=std[z], blend=blended[z],
                                gaussian=gaussian_fwhm(x0, 1.5)[z])
            return {"seconds": seconds, "mean": score(mean), "blend": score(blended),
                    "uncertainty": score.error_ranking(mean, std),
                    "std_head_mean": float(std[head].mean())}

        log.info("subject %s, dose %g: sampling the DDPM", subject, dose)
        ddpm = cached(cache / f"subject{subject}_dose{dose}_steps{config.steps}_start{config.start_fraction:g}.json",
                      run_ddpm)
        base = {"subject": subject, "dose": dose}
        for fwhm in GAUSSIAN_FWHMS:
            rows.append({**base, "method": "gaussian", "setting": fwhm, **score(gaussian_fwhm(x0, fwhm))})
        rows.append({**base, "method": "ddpm_mean", "setting": config.steps, **ddpm["mean"], **ddpm["uncertainty"],
                     "seconds": ddpm["seconds"]})
        rows.append({**base, "method": "ddpm_blend", "setting": ALPHA, **ddpm["blend"]})
        panels[(subject, dose)] = cache / f"subject{subject}_dose{dose}_panels.npz"
    return rows


def sweep(labels: Path, subject: str, dose: float, config: DDPMSamplingConfig, steps_list, starts, out: Path) -> list:
    """PSNR/SSIM of the DDPM mean on a slab, against DDIM steps and the truncated start."""
    case = simulate_case(sitk.ReadImage(str(labels)), SimulationConfig(doses=EVALUATION_DOSES, seed=0, n_lesions=3))
    z = panel_slice_index(case)
    z0, z1 = max(z - SLAB_HALF_THICKNESS, 0), z + SLAB_HALF_THICKNESS
    pet = case.osem[dose][:, :, z0:z1]
    truth = sitk.GetArrayFromImage(case.truth)[z0:z1].astype(np.float32)
    head = sitk.GetArrayFromImage(case.masks["head"])[z0:z1].astype(bool)
    x0 = sitk.GetArrayFromImage(pet).astype(np.float32)
    rows = [{"kind": "gaussian", "steps": "", "start_fraction": "", "fwhm": f,
             "psnr": metrics.psnr(gaussian_fwhm(x0, f), truth, head),
             "ssim": metrics.ssim(gaussian_fwhm(x0, f), truth, head), "seconds": ""} for f in GAUSSIAN_FWHMS]
    settings = [(s, config.start_fraction) for s in steps_list] + [(config.steps, f) for f in starts]
    for steps, start in dict.fromkeys(settings):
        def run() -> dict:
            t = time.perf_counter()
            result = denoise_ddpm(pet, case.mr, config.replace(steps=steps, start_fraction=start))
            mean = sitk.GetArrayFromImage(result.network_output).astype(np.float32)
            std = sitk.GetArrayFromImage(result.stability).astype(np.float32)
            return {"psnr": metrics.psnr(mean, truth, head), "ssim": metrics.ssim(mean, truth, head),
                    "std_head_mean": float(std[head].mean()),
                    "std_error_pearson_truth": float(stats.pearsonr(std[head], np.abs(mean - truth)[head])[0]),
                    "seconds": time.perf_counter() - t}

        log.info("sweep: %d steps from %g T", steps, start)
        rows.append({"kind": "ddpm", "steps": steps, "start_fraction": start, "fwhm": "",
                     **cached(cache_dir(out, config) / f"sweep_subject{subject}_dose{dose}_steps{steps}_start{start:g}.json",
                        run)})
    return rows


def write_csv(rows: list, path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def summarise(rows: list, doses) -> str:
    """The markdown tables of docs/DDPM.md: DDPM against Gaussian at its best FWHM, per dose."""
    lines = []
    for dose in doses:
        at_dose = [r for r in rows if r["dose"] == dose]
        subjects = sorted({r["subject"] for r in at_dose})
        best = {s: max((r for r in at_dose if r["subject"] == s and r["method"] == "gaussian"), key=lambda r: r["psnr"])
                for s in subjects}
        ddpm = {s: next(r for r in at_dose if r["subject"] == s and r["method"] == "ddpm_mean") for s in subjects}
        blend_rows = {s: next(r for r in at_dose if r["subject"] == s and r["method"] == "ddpm_blend") for s in subjects}
        gauss15 = {s: next(r for r in at_dose if r["subject"] == s and r["method"] == "gaussian" and r["setting"] == 1.5)
                   for s in subjects}
        wins = sum(ddpm[s]["psnr"] > best[s]["psnr"] for s in subjects)
        lines += [f"### Dose {dose:g}", "",
                  f"DDPM mean beats Gaussian at its best FWHM (per subject) in PSNR on {wins}/{len(subjects)} subjects; "
                  f"PSNR difference {np.mean([ddpm[s]['psnr'] - best[s]['psnr'] for s in subjects]):+.2f} "
                  f"± {np.std([ddpm[s]['psnr'] - best[s]['psnr'] for s in subjects]):.2f} dB.", "",
                  "| metric (mean ± sd over subjects) | Gaussian, best FWHM | Gaussian 1.5 | DDPM mean | DDPM blend (alpha 0.6) |",
                  "|---|---|---|---|---|"]
        roi_keys = [k for k in ddpm[subjects[0]] if k.startswith("bias_fulldose_")]

        def cell(table, key, scale=1.0, fmt="{:.3f}"):
            values = [scale * table[s][key] for s in subjects]
            return f"{fmt.format(np.mean(values))} ± {fmt.replace('+', '').format(np.std(values))}"

        for label, key, scale, fmt in (("PSNR (dB)", "psnr", 1, "{:.2f}"), ("SSIM", "ssim", 1, "{:.3f}"),
                                       ("WM CoV", "wm_cov", 1, "{:.3f}"), ("PVR", "pvr", 1, "{:.2f}"),
                                       ("lesion CR", "lesion_cr", 1, "{:.2f}")):
            lines.append(f"| {label} | {cell(best, key, scale, fmt)} | {cell(gauss15, key, scale, fmt)} | "
                         f"{cell(ddpm, key, scale, fmt)} | {cell(blend_rows, key, scale, fmt)} |")
        for table in (best, gauss15, ddpm, blend_rows):
            for s in subjects:
                table[s]["roi_bias_mean"] = float(np.mean([table[s][k] for k in roi_keys]))
        lines.append(f"| ROI bias vs full-dose OSEM (%) | {cell(best, 'roi_bias_mean', 100, '{:+.1f}')} | "
                     f"{cell(gauss15, 'roi_bias_mean', 100, '{:+.1f}')} | {cell(ddpm, 'roi_bias_mean', 100, '{:+.1f}')} | "
                     f"{cell(blend_rows, 'roi_bias_mean', 100, '{:+.1f}')} |")
        lines += ["", "Best Gaussian FWHM per subject (voxels): "
                  + ", ".join(f"{s}: {best[s]['setting']:g}" for s in subjects), "",
                  "Std map against the absolute error of the mean (over the head): Pearson r "
                  f"{cell(ddpm, 'std_error_pearson_truth', 1, '{:.2f}')} (truth), "
                  f"{cell(ddpm, 'std_error_pearson_blurred_truth', 1, '{:.2f}')} (PSF-blurred truth); Spearman "
                  f"{cell(ddpm, 'std_error_spearman_truth', 1, '{:.2f}')} (truth).", "",
                  f"Sampling time per volume: {cell(ddpm, 'seconds', 1, '{:.0f}')} s.", ""]
    return "\n".join(lines)


def plot(panel_files: dict, sweep_rows: list, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for (subject, dose), path in panel_files.items():
        with np.load(path) as p:
            names = ("truth", "osem", "gaussian", "mean", "blend", "std")
            titles = ("truth", f"OSEM, dose {dose:g}", "Gaussian 1.5 voxels", "DDPM mean", "DDPM blend 0.6", "DDPM std")
            fig, axes = plt.subplots(1, 7, figsize=(21, 3.4))
            vmax = float(np.percentile(p["truth"], 99.5))
            for ax, name, title in zip(axes, names, titles):
                image = p[name]
                ax.imshow(image[::-1], cmap="magma" if name == "std" else "gray_r", vmin=0,
                          vmax=float(image.max()) if name == "std" else vmax)
                ax.set_title(title)
                ax.axis("off")
            axes[6].imshow(np.abs(p["mean"] - p["truth"])[::-1], cmap="magma", vmin=0)
            axes[6].set_title("|DDPM mean - truth|")
            axes[6].axis("off")
            fig.tight_layout()
            fig.savefig(out / f"panel_subject{subject}_dose{dose:g}.png", dpi=80)
            plt.close(fig)
    ddpm = [r for r in sweep_rows if r["kind"] == "ddpm"]
    if not ddpm:
        return
    best_gaussian = max(r["psnr"] for r in sweep_rows if r["kind"] == "gaussian")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, fixed, label in ((axes[0], "steps", "start_fraction", "DDIM steps"),
                                  (axes[1], "start_fraction", "steps", "start t' / T")):
        fixed_value = max({r[fixed] for r in ddpm}, key=lambda v: sum(r[fixed] == v for r in ddpm))
        chosen = sorted((r for r in ddpm if r[fixed] == fixed_value), key=lambda r: r[key])
        ax.plot([r[key] for r in chosen], [r["psnr"] for r in chosen], "o-", label="DDPM mean")
        ax.axhline(best_gaussian, color="gray", ls="--", label="Gaussian, best FWHM")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB), slab")
        ax.set_title(f"{fixed.replace('_', ' ')} = {fixed_value}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sweep_steps_start.png", dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--subjects", nargs="*", default=["50", "51", "52", "53", "54"])
    parser.add_argument("--doses", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--out", type=Path, default=Path("docs/ddpm"))
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--sweep-subject", default="50")
    parser.add_argument("--sweep-dose", type=float, default=0.1)
    parser.add_argument("--sweep-steps", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--sweep-starts", type=float, nargs="*", default=[0.2, 0.35, 0.5, 0.75, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = DDPMSamplingConfig(model_dir=args.model, threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    def labels(subject: str) -> Path:
        return labels_path(subject, args.labels_dir)

    rows, panels = [], {}
    for subject in args.subjects:
        rows += evaluate_case(labels(subject), subject, args.doses, config, args.out, panels)
    if rows:
        write_csv(rows, args.out / "results.csv")
        (args.out / "summary.md").write_text(
            f"Defaults: {config.samples} samples, {config.steps} DDIM steps from {config.start_fraction:g} T.\n\n"
            + summarise(rows, args.doses))
    sweep_rows = []
    if args.sweep_steps or args.sweep_starts:
        sweep_rows = sweep(labels(args.sweep_subject), args.sweep_subject, args.sweep_dose, config, args.sweep_steps,
                           args.sweep_starts, args.out)
        write_csv(sweep_rows, args.out / "sweep.csv")
    plot(panels, sweep_rows, args.out)
    log.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
