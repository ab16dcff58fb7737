"""DDIP against the OSEM-based pipelines, with its ablations, on held-out simulated brains (docs/RECONSTRUCTION.md).

Each case is a held-out BrainWeb subject simulated as ``petstab evaluate`` does (realisation 0, brain scanner),
at a low dose, with its sinogram kept; ``--amyloid`` adds each subject at the first dose in the amyloid-negative
regime, where the FDG-trained prior is out of its distribution. Rows per case:

- ``osem``; ``gaussian``: OSEM filtered at every FWHM of the evaluation (the sweep gives the matched-noise curve,
  and its best PSNR against the truth is the row ``gaussian_best``);
- ``dip_blend`` (``--dip``): OSEM denoised by the conditional DIP (preset full) and blended at the default alpha;
- ``ddpm`` (``--ddpm``): OSEM denoised by the diffusion model (the bundled one, or ``--ddpm-model``);
- ``ddip``, and with ``--ablations`` its variants: no fine-tuning, beta 0 (plain MLEM in the data step), LoRA rank
  1 and 8, T' 0.2 and 0.6, beta 0.3 and 3. DDIP rows score the mean (``network_output``) and the blend.

Scores are ``Scorer``'s (PSNR and SSIM against the truth and its PSF-blurred version, PVR, WM CoV, lesion and
hypometabolism recovery, ROI bias against full-dose OSEM), plus lesion and hypometabolism recovery minus
Gaussian's at the same WM CoV, and the seconds each row took. Every row is cached in ``--work``, so that the
script can be stopped and run again.

    python benchmarks/ddip_study.py --labels-dir ../shared/data/brainweb --prior prior/model --work /tmp/ddip \\
        --subjects 50 51 --doses 0.1 0.2 --amyloid --ablations --ddpm --out docs/reconstruction/study.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.engine.filters import gaussian_fwhm
from PETStabilityDenoiseLib.engine.pipeline import denoise, denoise_ddpm
from PETStabilityDenoiseLib.engine.reconstruct import ddip_image, osem_image
from PETStabilityDenoiseLib.evaluation.scoring import Scorer, at_matched_noise
from PETStabilityDenoiseLib.evaluation.study import FULL_DOSE, GAUSSIAN_FWHMS, StudySettings
from PETStabilityDenoiseLib.settings import DDIPConfig, DDPMSamplingConfig, get_preset
from PETStabilityDenoiseLib.simulation import simulate_case
from PETStabilityDenoiseLib.simulation.case import labels_path

log = logging.getLogger("ddip_study")

ABLATIONS = {
    "ddip_no_finetune": {"finetune_steps": 0},
    "ddip_one_pass": {"refresh_estimate": False},
    "ddip_beta0": {"beta": 0.0},
    "ddip_rank1": {"lora_rank": 1},
    "ddip_rank8": {"lora_rank": 8},
    "ddip_start0.2": {"start_fraction": 0.2},
    "ddip_start0.6": {"start_fraction": 0.6},
    "ddip_beta0.3": {"beta": 0.3},
    "ddip_beta3": {"beta": 3.0},
}
MATCHED_KEYS = ("lesion_cr", "hypo_recovery")


def case_rows(subject: str, dose: float, regime: str, args) -> Dict[str, dict]:
    """Every row of one case, each computed once and cached in ``--work``."""
    cache = args.work / f"subject{subject}_{regime}_dose{dose:g}"
    cache.mkdir(parents=True, exist_ok=True)
    settings = StudySettings(doses=(FULL_DOSE, dose), dip=get_preset("full", threads=args.threads), regime=regime)
    case = simulate_case(sitk.ReadImage(str(labels_path(subject, args.labels_dir))), settings.simulation(0),
                         keep_sinograms=True)
    scorer = Scorer(case, sitk.GetArrayFromImage(case.osem[FULL_DOSE]).astype(np.float32))
    sinogram = case.sinograms[dose]
    osem = osem_image(sinogram)  # the simulator's own OSEM of these data
    osem_array = sitk.GetArrayFromImage(osem)
    prior = DDIPConfig(model_dir=str(args.prior), device=args.device, threads=args.threads)

    def ddip_row(config: DDIPConfig) -> dict:
        result = ddip_image(sinogram, osem, case.mr, config)
        mean, blended = (sitk.GetArrayFromImage(image) for image in (result.network_output, result.denoised))
        return {**scorer(mean), "blend": scorer(blended),
                **scorer.error_ranking(mean, sitk.GetArrayFromImage(result.stability))}

    def dip_row() -> dict:
        return scorer(sitk.GetArrayFromImage(denoise(osem, case.mr, settings.dip).denoised))

    def ddpm_row() -> dict:
        config = DDPMSamplingConfig(model_dir=str(args.ddpm_model) if args.ddpm_model else None, threads=args.threads)
        return scorer(sitk.GetArrayFromImage(denoise_ddpm(osem, case.mr, config).network_output))

    rows: Dict[str, Callable[[], object]] = {
        "osem": lambda: scorer(osem_array),
        "gaussian": lambda: [{"fwhm_voxels": f, **scorer(gaussian_fwhm(osem_array, f))} for f in GAUSSIAN_FWHMS],
        "ddip": lambda: ddip_row(prior),
    }
    if args.dip:
        rows["dip_blend"] = dip_row
    if args.ddpm:
        rows["ddpm"] = ddpm_row
    if args.ablations and regime == "realistic":
        rows.update({name: (lambda c=changes: ddip_row(dataclasses.replace(prior, **c)))
                     for name, changes in ABLATIONS.items()})
    results = {}
    for name, compute in rows.items():
        path = cache / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            continue
        log.info("subject %s, %s, dose %g: %s", subject, regime, dose, name)
        started = time.perf_counter()
        value = compute()
        record = {"rows": value, "seconds": time.perf_counter() - started}
        path.write_text(json.dumps(record, indent=1))
        results[name] = record
    sweep = results["gaussian"]["rows"]
    summary = {"gaussian_best": max(sweep, key=lambda row: row["psnr"])}
    for name, record in results.items():
        if name == "gaussian":
            continue
        row = dict(record["rows"], seconds=record["seconds"])
        for key in MATCHED_KEYS:
            row[f"{key}_vs_gaussian"] = row[key] - at_matched_noise(sweep, row["wm_cov"], key)
        summary[name] = row
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--prior", type=Path, required=True, help="a model trained with --condition-dropout")
    parser.add_argument("--work", type=Path, required=True, help="the cache of every row (resumable)")
    parser.add_argument("--subjects", nargs="+", default=["50", "51"])
    parser.add_argument("--doses", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--amyloid", action="store_true", help="also each subject at the first dose, amyloid-like")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--dip", action="store_true", help="also OSEM + the DIP blend (about 7 minutes a case)")
    parser.add_argument("--ddpm", action="store_true", help="also OSEM + the diffusion model")
    parser.add_argument("--ddpm-model", type=Path, help="the diffusion model of --ddpm (default: the bundled one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write every case's rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    cases = [(s, d, "realistic") for s in args.subjects for d in args.doses]
    if args.amyloid:
        cases += [(s, args.doses[0], "amyloid") for s in args.subjects]
    table = {f"{s}_{regime}@{d:g}": case_rows(s, d, regime, args) for s, d, regime in cases}
    columns = ("psnr", "ssim", "wm_cov", "lesion_cr_vs_gaussian", "hypo_recovery_vs_gaussian", "seconds")
    for key, rows in table.items():
        print(f"\n{key}\n{'row':<18}" + "".join(f"{c:>16}" for c in columns))
        for name, row in rows.items():
            print(f"{name:<18}" + "".join(f"{row.get(c, float('nan')):>16.3f}" for c in columns))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
