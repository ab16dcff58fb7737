"""DDIP against the OSEM-based pipelines, with its ablations, on held-out simulated brains (docs/RECONSTRUCTION.md).

Each case is a held-out BrainWeb subject simulated exactly as ``petstab evaluate`` simulates its noise realisation
``--realisation`` (0 unless given; the same doses, so the same noise), at one low dose, with its sinogram kept.
``--amyloid`` adds each subject at the first dose in the amyloid-negative regime, where the FDG-trained prior is out
of its distribution. Rows per case:

- ``osem``; ``gaussian``: OSEM filtered at every FWHM of the evaluation (the sweep gives the matched-noise curve;
  its best PSNR against the truth is the row ``gaussian_best``);
- with ``--evaluation RESULTS_CSV`` (realistic cases): the evaluation's own rows of the same case, after checking
  that its Gaussian sweep equals this one: ``dip_blend`` (OSEM + the DIP blend at DIP's default alpha),
  ``ddpm`` (OSEM + the diffusion model's mean), ``ddpm_blend`` (at the DDPM's alpha) and ``unet`` (its baseline);
- ``ddpm`` (``--ddpm``, where not imported): OSEM denoised by the bundled diffusion model;
- ``ddip`` with the default settings (the bundled prior, or ``--prior``; ``--overlap`` and ``--start-fraction``
  change its own), and the ``--ablations`` chosen from ``ABLATIONS`` (at the first dose only, on the realistic
  cases unless ``--ablation-regimes`` says otherwise, of ``--ablation-subjects``). DDIP rows score the mean
  (``network_output``) and the blend at ``DDIP_ALPHA`` (row ``<name>_blend_alpha<a>``, with the alpha that was
  the default when the row was computed); the default row also its blend at each of the evaluation's alphas,
  and (rows run since 2026-12-06) its mean smoothed within the head by a Gaussian of each FWHM in
  ``SMOOTHING_FWHMS_MM`` (row ``<name>_smoothed<f>mm``: a measurement of trading resolution for ROI bias against
  full-dose OSEM, not a product setting);
- ``truth_blurred``: the PSF-blurred truth itself, the denoiser's target (the bundled prior's is the truth).

Scores are ``Scorer``'s (PSNR and SSIM against the truth and its PSF-blurred version, PVR, WM CoV, lesion and
hypometabolism recovery, ROI bias against full-dose OSEM and, from the ``truth_blurred`` row, against the blurred
truth), plus lesion and hypometabolism recovery minus
Gaussian's at the same WM CoV (``scoring.at_matched_noise``; where a row is less noisy than every FWHM, minus
the least noisy FWHM's, flagged ``*_vs_gaussian_least_noisy``), and the seconds each row took. Every computed
row is cached in ``--work``, so that the script can be stopped and run again, a few rows at a time.

    python benchmarks/ddip_study.py --labels-dir ../shared/data/brainweb --work /tmp/ddip --subjects 50 \
        --doses 0.1 0.2 --amyloid --ddpm --evaluation docs/evaluation/results.csv \
        --ablations ddip_no_finetune ddip_beta0 --out docs/reconstruction/study.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.ddpm.sampling import SAMPLER_TAG
from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_prior_dir
from PETStabilityDenoiseLib.engine.filters import gaussian_fwhm, masked_gaussian, sigma_voxels
from PETStabilityDenoiseLib.engine.pipeline import denoise, denoise_ddpm
from PETStabilityDenoiseLib.engine.reconstruct import ddip_image, osem_image
from PETStabilityDenoiseLib.evaluation.analysis import PAPER_ROIS, with_mean_bias
from PETStabilityDenoiseLib.evaluation.plots import image_panel
from PETStabilityDenoiseLib.evaluation.scoring import Scorer, at_matched_noise, below_least_noisy
from PETStabilityDenoiseLib.evaluation.study import (
    ALPHAS,
    FULL_DOSE,
    GAUSSIAN_FWHMS,
    MAIN_CONDITION,
    StudySettings,
    ddpm_model_checksum,
    model_manifest,
    panel_slice_index,
)
from PETStabilityDenoiseLib.settings import DDIP_ALPHA, DEFAULT_ALPHAS, DDIPConfig, DDPMSamplingConfig, get_preset
from PETStabilityDenoiseLib.simulation import DEFAULT_DOSES, simulate_case
from PETStabilityDenoiseLib.simulation.case import SimulatedCase, labels_path
from PETStabilityDenoiseLib.volumes.geometry import head_mask, resample_to_reference

log = logging.getLogger("ddip_study")

# Variants of the default: the changes to DDIPConfig's defaults. The ``ddip_beta1*`` rows are the first defaults
# (beta 1), and two ablations of them.
ABLATIONS: Dict[str, Dict[str, Any]] = {
    "ddip_beta1": {"beta": 1.0},
    "ddip_beta1_mlem": {"beta": 1.0, "em_subsets": 1},
    "ddip_beta1_no_finetune": {"beta": 1.0, "finetune_steps": 0},
    "ddip_beta0.3": {"beta": 0.3},
    "ddip_beta3": {"beta": 3.0},
    "ddip_no_finetune": {"finetune_steps": 0},
    "ddip_refresh": {"refresh_estimate": True},
    "ddip_rank1": {"lora_rank": 1},
    "ddip_rank8": {"lora_rank": 8},
    "ddip_start0.2": {"start_fraction": 0.2},
    "ddip_start0.6": {"start_fraction": 0.6},
    "ddip_start0.8": {"start_fraction": 0.8},  # T' 0.6 T beat 0.4 T with the sharp prior: does the trend go on?
    "ddip_finetune4": {"finetune_steps": 4},
    "ddip_lr3e-3": {"learning_rate": 3e-3},
    "ddip_psf3": {"psf_fwhm_mm": 3.0},  # the brain scanner's PSF (simulation/scanners.py), modelled in the data step
    "ddip_psf1.5": {"psf_fwhm_mm": 1.5},  # half of it: between a sharp prior's two trades (docs/RECONSTRUCTION.md)
    # With the PSF, the adapters fitted harder: can they keep a sharp prior's FDG detail off another tracer?
    "ddip_psf3_finetune4": {"psf_fwhm_mm": 3.0, "finetune_steps": 4},
    "ddip_psf3_lr3e-3": {"psf_fwhm_mm": 3.0, "learning_rate": 3e-3},
    # A prior trained with MR dropout, with the MR weighed less: less of the FDG pattern the MR stands for?
    "ddip_psf3_mr0.5": {"psf_fwhm_mm": 3.0, "mr_guidance": 0.5},
    "ddip_samples4": {"samples": 4},
    "ddip_overlap0.5": {"overlap": 0.5},  # the sliding windows' overlap (the default since 2026-12-05; 0.25 before)
    "ddip_steps5": {"steps": 5},  # DDIM steps (10)
    "ddip_steps20": {"steps": 20},
    "ddip_em1": {"em_updates": 1},  # EM updates per data step (2)
    "ddip_em4": {"em_updates": 4},
    "ddip_no_data_correction": {"data_correction_fwhm_mm": 0.0},  # the final data correction (6 mm) off
    "ddip_data_correction4": {"data_correction_fwhm_mm": 4.0},
    "ddip_data_correction8": {"data_correction_fwhm_mm": 8.0},
}
MATCHED_KEYS = ("lesion_cr", "hypo_recovery")
# The default row's mean, smoothed within the head: how much PSNR against the truth does it cost to bring the ROI
# means down to full-dose OSEM's, whose resolution is coarser than the sharp prior's estimate?
SMOOTHING_FWHMS_MM = (1.5, 1.75, 2.0, 2.25, 2.5, 3.0)
# The evaluation's rows imported by --evaluation: name here -> (method, setting) in its results.csv.
EVALUATION_ROWS = {"dip_blend": ("blend", DEFAULT_ALPHAS["dip"]), "ddpm": ("ddpm", None),
                   "ddpm_blend": ("ddpm_blend", DEFAULT_ALPHAS["ddpm"]), "unet": ("unet", None)}


def evaluation_rows(results_csv: Path, subject: str, dose: float, realisation: int,
                    sweep: List[dict]) -> Dict[str, dict]:
    """The evaluation's rows of ``realisation`` of ``subject`` at ``dose`` (EVALUATION_ROWS), after checking that
    the evaluation scored the same images: its Gaussian sweep must equal ``sweep``."""
    with open(results_csv, newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if row["condition"] == MAIN_CONDITION
                and row["subject"] == f"subject{subject}" and row["realisation"] == str(realisation)
                and float(row["dose"]) == dose]

    def numbers(row: dict) -> dict:
        return {k: float(v) for k, v in row.items() if k not in ("condition", "scanner", "regime", "subject",
                                                                   "method", "setting_name") and v != ""}

    theirs = sorted((numbers(r) for r in rows if r["method"] == "gaussian"), key=lambda r: r["setting"])
    if [round(r["psnr"], 6) for r in theirs] != [round(r["psnr"], 6) for r in sweep]:
        raise SystemExit(f"{results_csv} scored other images of subject {subject} at dose {dose:g}: its Gaussian "
                         "sweep differs from this simulation's")
    found = {}
    for name, (method, setting) in EVALUATION_ROWS.items():
        match = [numbers(r) for r in rows if r["method"] == method and (setting is None or
                                                                       float(r["setting"]) == setting)]
        if match:
            found[name] = {"rows": match[0], "seconds": None, "source": str(results_csv)}
    return found


def case_cache(work: Path, subject: str, regime: str, dose: float, realisation: int) -> Path:
    """One case's folder in ``--work``; realisation 0 keeps the name it had before ``--realisation`` existed."""
    return work / (f"subject{subject}_{regime}_dose{dose:g}" + (f"_realisation{realisation}" if realisation else ""))


def study_case(subject: str, regime: str, realisation: int, labels_dir: Path,
               threads: int) -> Tuple[StudySettings, SimulatedCase, Scorer]:
    """One held-out case as ``petstab evaluate`` simulates its noise ``realisation``, with its sinograms kept: the
    study's settings, the case, and its scorer (the ROI-bias reference is the case's full-dose OSEM)."""
    # The evaluation's doses, so that each dose's noise is the evaluation's in this realisation.
    settings = StudySettings(doses=DEFAULT_DOSES, dip=get_preset("full", threads=threads), regime=regime)
    case = simulate_case(sitk.ReadImage(str(labels_path(subject, labels_dir))), settings.simulation(realisation),
                         keep_sinograms=True)
    return settings, case, Scorer(case, sitk.GetArrayFromImage(case.osem[FULL_DOSE]).astype(np.float32))


def roi_bias_against(row: dict, reference: dict) -> np.ndarray:
    """A row's bias per paper ROI against another row of the same case, from both ROI means' ratios to full-dose
    OSEM (``bias_fulldose_*``)."""
    return np.array([(1 + row[f"bias_fulldose_{roi}"]) / (1 + reference[f"bias_fulldose_{roi}"]) - 1
                     for roi in PAPER_ROIS])


def case_rows(subject: str, dose: float, regime: str, args) -> Dict[str, dict]:
    """Every row of one case, each computed once and cached in ``--work``."""
    cache = case_cache(args.work, subject, regime, dose, args.realisation)
    cache.mkdir(parents=True, exist_ok=True)
    settings, case, scorer = study_case(subject, regime, args.realisation, args.labels_dir, args.threads)
    sinogram = case.sinograms[dose]
    osem = osem_image(sinogram)  # the simulator's own OSEM of these data
    osem_array = sitk.GetArrayFromImage(osem)
    z = panel_slice_index(case)
    panels_path = cache / "panels.npz"  # one axial slice of each image, for --figures
    panels = dict(np.load(panels_path)) if panels_path.is_file() else {
        "truth": sitk.GetArrayFromImage(case.truth)[z], "osem_full": sitk.GetArrayFromImage(case.osem[FULL_DOSE])[z],
        f"osem_dose{dose}": osem_array[z]}
    prior = DDIPConfig(model_dir=str(args.prior) if args.prior else None, overlap=args.overlap,
                       start_fraction=args.start_fraction, device=args.device, threads=args.threads)

    def ddip_row(config: DDIPConfig, name: str = "ddip") -> dict:
        default = name == "ddip"
        result = ddip_image(sinogram, osem, case.mr, config, alpha=DDIP_ALPHA)
        mean, blended, std = (sitk.GetArrayFromImage(image) for image in
                              (result.network_output, result.denoised, result.stability))
        row = {**scorer(mean), "blend": {"alpha": DDIP_ALPHA, **scorer(blended)}, **scorer.error_ranking(mean, std),
               **scorer.stability_steps(std)}
        if not default:
            panels[f"{name}_std_dose{dose}"] = std[z]
            return row
        panels.update({f"ddip_dose{dose}": mean[z], f"ddip_blend_dose{dose}": blended[z],
                       f"ddip_std_dose{dose}": std[z]})
        # The blend at each of the evaluation's alphas, from this run's own mean and std.
        row["blend_sweep"] = [{"alpha": alpha, **scorer(blend(osem_array, mean, std, alpha,
                                                              stability_mean=result.stability_mean)[0])}
                              for alpha in ALPHAS]
        head = head_mask(osem_array, sitk.GetArrayFromImage(resample_to_reference(case.mr, osem)).astype(np.float32))
        spacing = osem.GetSpacing()[::-1]
        row["smoothed"] = [{"fwhm_mm": fwhm, **scorer(np.where(head, masked_gaussian(
                               mean, head, sigma_voxels(fwhm, spacing)), mean))} for fwhm in SMOOTHING_FWHMS_MM]
        return row

    def dip_row() -> dict:
        return scorer(sitk.GetArrayFromImage(denoise(osem, case.mr, settings.dip).denoised))

    def ddpm_row() -> dict:
        config = DDPMSamplingConfig(model_dir=str(args.ddpm_model) if args.ddpm_model else None, threads=args.threads)
        mean = sitk.GetArrayFromImage(denoise_ddpm(osem, case.mr, config).network_output)
        panels[f"ddpm_dose{dose}"] = mean[z]
        return scorer(mean)

    rows: Dict[str, Callable[[], object]] = {
        "osem": lambda: scorer(osem_array),
        "gaussian": lambda: [{"fwhm_voxels": f, **scorer(gaussian_fwhm(osem_array, f))} for f in GAUSSIAN_FWHMS],
        "ddip": lambda: ddip_row(prior),
        # The denoiser's target, the truth at the scanner's resolution: a perfect estimate of it, scored as the
        # methods are.
        "truth_blurred": lambda: scorer(scorer.truth_blurred),
    }
    if args.dip:
        rows["dip_blend"] = dip_row
    if args.ddpm:
        rows["ddpm"] = ddpm_row
    if regime in args.ablation_regimes and dose == args.doses[0] and subject in (args.ablation_subjects or [subject]):
        rows.update({name: functools.partial(ddip_row, dataclasses.replace(prior, **ABLATIONS[name]), name)
                     for name in args.ablations})
    results: Dict[str, dict] = {}

    # A row of another model, or of an older DDPM sampling chain (docs/DDPM.md, the sampling chain), is not this
    # one's: the rows of a model are keyed by its checksum.
    # So are a DDIP row's settings, so that a changed default is not read from an older run's cache.
    prior_tag = "_" + model_manifest(args.prior or bundled_prior_dir()).get("sha256", "missing")[:12]
    ddpm_tag = "_" + ddpm_model_checksum(DDPMSamplingConfig(
        model_dir=str(args.ddpm_model) if args.ddpm_model else None))[:12] + SAMPLER_TAG
    tags = {"ddip": f"{prior_tag}_{prior.settings_hash()}", "ddpm": ddpm_tag,
            **{name: f"{prior_tag}_{prior.replace(**ABLATIONS[name]).settings_hash()}" for name in ABLATIONS}}

    def run(name: str) -> None:
        path = cache / f"{name}{tags.get(name, '')}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            return
        log.info("subject %s, %s, dose %g: %s", subject, regime, dose, name)
        started = time.perf_counter()
        value = rows[name]()
        record = {"rows": value, "seconds": time.perf_counter() - started}
        path.write_text(json.dumps(record, indent=1))
        np.savez_compressed(panels_path, **panels)
        results[name] = record

    run("osem")
    run("gaussian")
    sweep = results["gaussian"]["rows"]
    best = max(sweep, key=lambda row: row["psnr_blurred"])["fwhm_voxels"]
    panels[f"gaussian_dose{dose}"] = gaussian_fwhm(osem_array, best)[z]
    np.savez_compressed(panels_path, **panels)
    # Checked before the long rows run: the imported rows must be of these very images.
    imported = (evaluation_rows(args.evaluation, subject, dose, args.realisation, sweep)
                if args.evaluation and regime == "realistic" else {})
    for name in rows:
        if name not in imported:
            run(name)
    results.update({name: record for name, record in imported.items() if name not in results})
    summary = {"gaussian_best": max(sweep, key=lambda row: row["psnr"]),
               "gaussian_best_blurred": max(sweep, key=lambda row: row["psnr_blurred"])}
    blurred = results["truth_blurred"]["rows"]

    def summarised(scores: dict, seconds) -> dict:
        row = dict(with_mean_bias(scores), seconds=seconds)
        row["max_abs_bias_fulldose"] = max(abs(row[f"bias_fulldose_{roi}"]) for roi in PAPER_ROIS)
        # Against the blurred truth, from the two ratios to full-dose OSEM over the same ROI.
        row["max_abs_bias_blurred_truth"] = float(np.abs(roi_bias_against(row, blurred)).max())
        for key in MATCHED_KEYS:
            matched = at_matched_noise(sweep, row["wm_cov"], key)
            row[f"{key}_vs_gaussian_least_noisy"] = math.isnan(matched)
            if math.isnan(matched):
                matched = below_least_noisy(sweep, row["wm_cov"], key)
            row[f"{key}_vs_gaussian"] = row[key] - matched
        return row

    for name, record in results.items():
        if name == "gaussian":
            continue
        scores = dict(record["rows"])
        blended = scores.pop("blend", None)  # a DDIP row's blend at the default alpha of its day: a row of its own
        sweep_rows = scores.pop("blend_sweep", [])
        smoothed_rows = scores.pop("smoothed", [])
        summary[name] = summarised(scores, record["seconds"])
        if blended is not None:
            summary[f"{name}_blend_alpha{blended.pop('alpha'):g}"] = summarised(blended, None)
        for row in sweep_rows:
            summary[f"{name}_blend_alpha{row.pop('alpha'):g}"] = summarised(row, None)
        for row in smoothed_rows:
            summary[f"{name}_smoothed{row.pop('fwhm_mm'):g}mm"] = summarised(row, None)
    return summary


def mean_over_subjects(table: Dict[str, Dict[str, dict]]) -> Dict[str, Dict[str, dict]]:
    """Per regime and dose, ``mean_<regime>@<dose>``: each row's numeric scores averaged over the subjects that
    have it, with ``subjects`` their count, and ``psnr_minus_gaussian_best``: each row's mean PSNR gain over the
    best Gaussian of its own case (against the truth)."""
    groups: Dict[str, List[Dict[str, dict]]] = {}
    for key, rows in table.items():
        groups.setdefault(f"mean_{key.split('_', 1)[1]}", []).append(rows)
    means = {}
    for key, cases in groups.items():
        names = [name for name in cases[0] if all(name in case for case in cases)]
        summary: Dict[str, dict] = {}
        for name in names:
            numbers = [{k: v for k, v in case[name].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and not math.isnan(v)} for case in cases]
            summary[name] = {k: float(np.mean([n[k] for n in numbers])) for k in numbers[0]
                             if all(k in n for n in numbers)}
        summary["psnr_minus_gaussian_best"] = {
            "subjects": len(cases),
            **{name: float(np.mean([case[name]["psnr"] - case["gaussian_best"]["psnr"] for case in cases]))
               for name in names if "psnr" in cases[0][name]}}
        means[key] = summary
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--prior", type=Path, help="a model trained with --condition-dropout (default: the bundled prior)")
    parser.add_argument("--overlap", type=float, default=DDIPConfig.overlap,
                        help="the default row's window overlap, which the ablations change from (default "
                             f"{DDIPConfig.overlap:g}; 0.25 with --prior docs/reconstruction/prior_blurred repeats "
                             "the studies run before 2026-12-05)")
    parser.add_argument("--start-fraction", type=float, default=DDIPConfig.start_fraction,
                        help=f"the default row's start time T' as a fraction of T (default "
                             f"{DDIPConfig.start_fraction:g})")
    parser.add_argument("--work", type=Path, required=True, help="the cache of every row (resumable)")
    parser.add_argument("--subjects", nargs="+", default=["50", "51"])
    parser.add_argument("--doses", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--realisation", type=int, default=0,
                        help="the evaluation's noise realisation to simulate (default 0)")
    parser.add_argument("--amyloid", action="store_true", help="also each subject at the first dose, amyloid-like")
    parser.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS),
                        help="DDIP variants to run on the cases of --ablation-regimes at the first dose")
    parser.add_argument("--ablation-regimes", nargs="+", default=["realistic"], choices=["realistic", "amyloid"],
                        help="run the ablations on these cases (default: the realistic ones; amyloid needs --amyloid)")
    parser.add_argument("--ablation-subjects", nargs="+", help="run the ablations on these subjects only (default: all)")
    parser.add_argument("--evaluation", type=Path, help="the evaluation's results.csv: import its rows of each case")
    parser.add_argument("--dip", action="store_true", help="also OSEM + the DIP blend (about 7 minutes a case)")
    parser.add_argument("--ddpm", action="store_true", help="also OSEM + the diffusion model")
    parser.add_argument("--ddpm-model", type=Path, help="the diffusion model of --ddpm (default: the bundled one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write every case's rows as JSON here")
    parser.add_argument("--figures", type=Path, help="draw each case's image panel into this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    cases = [(s, d, "realistic") for s in args.subjects for d in args.doses]
    if args.amyloid:
        cases += [(s, args.doses[0], "amyloid") for s in args.subjects]
    table = {f"{s}_{regime}@{d:g}": case_rows(s, d, regime, args) for s, d, regime in cases}
    columns = ("psnr", "psnr_blurred", "ssim", "wm_cov", "lesion_cr_vs_gaussian", "hypo_recovery_vs_gaussian",
               "max_abs_bias_fulldose", "max_abs_bias_blurred_truth", "seconds")
    for key, rows in table.items():
        print(f"\n{key}\n{'row':<18}" + "".join(f"{c:>16}" for c in columns))
        for name, row in rows.items():
            print(f"{name:<18}" + "".join(f"{row.get(c) if row.get(c) is not None else math.nan:>16.3f}"
                                          for c in columns))
    means = mean_over_subjects(table)
    for key, rows in means.items():
        print(f"\n{key}: {rows['psnr_minus_gaussian_best']['subjects']} subjects\n{'row':<18}"
              + "".join(f"{c:>16}" for c in (*columns[:-1], "psnr - gaussian")))
        for name, row in rows.items():
            if name != "psnr_minus_gaussian_best":
                gain = rows["psnr_minus_gaussian_best"].get(name, math.nan)
                print(f"{name:<18}" + "".join(f"{row.get(c, math.nan):>16.3f}" for c in columns[:-1]) + f"{gain:>16.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**table, **means}, indent=1))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        for subject, dose, regime in cases:
            cache = case_cache(args.work, subject, regime, dose, args.realisation)
            image_panel(dict(np.load(cache / "panels.npz")), dose, f"subject {subject} ({regime})",
                        args.figures / f"panel_{cache.name}.png", realisation=args.realisation)


if __name__ == "__main__":
    main()
