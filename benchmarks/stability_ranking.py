"""How well can any stability map rank a diffusion model's error? The ceiling of issue 13's Spearman target.

For each model (``--models``: model folders; ``bundled`` for the bundled denoiser) on the evaluation's case of
each subject (realisation 0) at ``--dose``, it runs ``denoise_ddpm`` once and reports the Spearman correlation
over the head with |mean - reference| (the PSF-blurred truth, and the truth) of:

- the std of the samples, as sampled (what the evaluation scores) and smoothed by a Gaussian of ``--sigmas``;
- the mean itself (the error grows with the activity);
- an oracle that knows the error: its local RMS, sqrt(Gaussian(|error|^2)), at the same sigmas. No map that is
  smooth at that scale ranks the error better than this one does, by much.

Each run's mean and std are cached in ``--work`` under the model's checksum and the sampler's revision.

    python benchmarks/stability_ranking.py --labels-dir ../shared/data/brainweb --work WORK \\
        --models bundled MODEL_DIR --subjects 50 [--out docs/ddpm/stability_ranking.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage, stats

from PETStabilityDenoiseLib.engine.ddpm.sampling import SAMPLER_TAG
from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_model_dir
from PETStabilityDenoiseLib.engine.pipeline import denoise_ddpm
from PETStabilityDenoiseLib.evaluation.scoring import Scorer
from PETStabilityDenoiseLib.evaluation.study import FULL_DOSE, StudySettings, model_manifest
from PETStabilityDenoiseLib.settings import DDPMSamplingConfig, get_preset
from PETStabilityDenoiseLib.simulation import simulate_case
from PETStabilityDenoiseLib.simulation.case import labels_path


def sampled(case, subject: str, dose: float, model_dir: Path, work: Path) -> Dict[str, np.ndarray]:
    """The model's mean and std for ``case`` (of ``subject``) at ``dose``, from ``work`` when sampled before."""
    path = work / f"{model_manifest(model_dir)['sha256'][:12]}{SAMPLER_TAG}_subject{subject}_dose{dose:g}.npz"
    if not path.is_file():
        run = denoise_ddpm(case.osem[dose], case.mr, DDPMSamplingConfig(model_dir=str(model_dir), device="cpu"))
        mean, std = (sitk.GetArrayFromImage(image) for image in (run.network_output, run.stability))
        work.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, mean=mean, std=std)
    with np.load(path) as data:
        return {"mean": data["mean"], "std": data["std"]}


def rankings(scorer: Scorer, mean: np.ndarray, std: np.ndarray, sigmas, reference: np.ndarray) -> Dict[str, float]:
    head = scorer.masks["head"]
    error = np.abs(mean - reference)

    def spearman(ranking: np.ndarray) -> float:
        return round(float(stats.spearmanr(ranking[head], error[head])[0]), 4)

    scores = {"std": spearman(std), "mean": spearman(mean)}
    for sigma in sigmas:
        scores[f"std smoothed {sigma:g}"] = spearman(ndimage.gaussian_filter(std, sigma))
        scores[f"oracle local RMS error {sigma:g}"] = spearman(np.sqrt(ndimage.gaussian_filter(error ** 2, sigma)))
    return scores


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="cache of the sampled means and stds")
    parser.add_argument("--models", nargs="+", default=["bundled"], help="model folders, or 'bundled'")
    parser.add_argument("--subjects", nargs="+", default=["50"])
    parser.add_argument("--dose", type=float, default=0.1)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="in voxels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    settings = StudySettings(doses=(1.0, 0.5, 0.2, 0.1), dip=get_preset("full"))  # the evaluation's case
    table: Dict[str, dict] = {}
    for subject in args.subjects:
        case = simulate_case(sitk.ReadImage(str(labels_path(subject, args.labels_dir))), settings.simulation(0))
        scorer = Scorer(case, sitk.GetArrayFromImage(case.osem[FULL_DOSE]).astype(np.float32))
        for name in args.models:
            model_dir = bundled_model_dir() if name == "bundled" else Path(name)
            run = sampled(case, subject, args.dose, model_dir, args.work)
            table[f"{name} @ {subject}"] = {
                reference: rankings(scorer, run["mean"], run["std"], args.sigmas, image)
                for reference, image in (("blurred_truth", scorer.truth_blurred), ("truth", scorer.truth))}
            print(f"{name} @ {subject}: {json.dumps(table[f'{name} @ {subject}'])}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"dose": args.dose, "sigmas": args.sigmas, "rankings": table}, indent=1))


if __name__ == "__main__":
    main()
