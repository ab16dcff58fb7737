"""Design choices of the diffusion model and its regression baseline, made by measurement (docs/DDPM.md).

Every candidate is trained for the same number of steps on the same simulated pairs (realistic simulator, the
evaluation's subjects held out), with the same patches, then scored on held-out subjects: the case that
``petstab evaluate`` simulates (realisation 0), against Gaussian filtering at its best FWHM. Scores: PSNR and
SSIM against the PSF-blurred truth over the head; for a DDPM also the Spearman correlation of its std with the
absolute error of its mean. Everything is kept in ``--work``: the pairs, each candidate's training folder
(resumable: run again with more ``--steps`` to continue) and each score, so that the script can be stopped
and run again.

    python benchmarks/ddpm_design.py --labels-dir ../shared/data/brainweb --work /tmp/ddpm_design \\
        --candidates ddpm_x0_full ddpm_x0_clean regression_clean --steps 500 --out docs/ddpm/design.json

``--export DIR`` copies each candidate's model folder (its EMA weights) into ``DIR/<candidate>``, with the
training data described in its manifest as ``petstab train-ddpm`` describes it: the folder to bundle.

A corrective candidate (``DDPMConfig.corrective``) corrects ``--base-model`` (default: the U-Net baseline that the
bundled denoiser carries, ``data/ddpm/base``). Its pairs gain that model's predictions, computed once and cached in ``--work`` beside
the pairs, its training folder is keyed by the base's checksum, and its model folders carry the base.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.engine.ddpm.model import DDPMConfig
from PETStabilityDenoiseLib.engine.ddpm.regression import RegressionConfig
from PETStabilityDenoiseLib.engine.ddpm.sampling import SAMPLER_TAG
from PETStabilityDenoiseLib.engine.ddpm.weights import (
    BASE_DIR,
    MANIFEST_FILE,
    MODEL_KINDS,
    attach_base,
    bundled_model_dir,
    bundled_prior_dir,
    load_model,
    model_kind,
    save_model,
    write_manifest,
)
from PETStabilityDenoiseLib.engine.filters import gaussian_fwhm
from PETStabilityDenoiseLib.engine.pipeline import denoise_ddpm, predict_regression
from PETStabilityDenoiseLib.evaluation.scoring import Scorer
from PETStabilityDenoiseLib.evaluation.study import FULL_DOSE, GAUSSIAN_FWHMS, StudySettings, model_manifest
from PETStabilityDenoiseLib.settings import DDIPConfig, DDPMSamplingConfig, get_preset
from PETStabilityDenoiseLib.simulation import simulate_case
from PETStabilityDenoiseLib.simulation.case import brainweb_subjects, labels_path
from PETStabilityDenoiseLib.training.corrective import pairs_with_base, residual_std
from PETStabilityDenoiseLib.training.dataset import (
    VALIDATION_SUBJECTS,
    TrainingPair,
    load_pairs,
    save_pairs,
    simulate_pairs,
)
from PETStabilityDenoiseLib.training.trainer import CHECKPOINT_FILE, MODEL_DIR, TrainingSettings, train

log = logging.getLogger("ddpm_design")
# The prior bundled until 2026-12-05 (candidate ddip_prior), kept outside the wheel: the fine-tuned candidates
# below started from it (docs/RECONSTRUCTION.md).
FORMER_PRIOR = Path(__file__).resolve().parent.parent / "docs" / "reconstruction" / "prior_blurred"
DDIP_CHAIN = DDIPConfig()

# name -> (network, training target, other training settings)
CANDIDATES: Dict[str, Tuple[Any, str, Dict[str, Any]]] = {
    "ddpm_x0_full": (DDPMConfig(), "full_dose", {}),  # the bundled model's design
    "ddpm_x0_clean": (DDPMConfig(), "truth_blurred", {}),
    "ddpm_eps_clean": (DDPMConfig(prediction_type="epsilon"), "truth_blurred", {}),
    # trained only at the sampler's default two timesteps (2 DDIM steps from 0.5 T)
    "ddpm_x0_clean_matched": (DDPMConfig(matched_steps=2, matched_start_fraction=0.5), "truth_blurred", {}),
    # Resfusion's residual forward process on the same matched 2-step chain, started at its acceleration point
    # (t = 367 against the matched chain's 333), where the noised low-dose image is exactly a training input.
    "ddpm_x0_clean_resfusion": (DDPMConfig(matched_steps=2, residual=True), "truth_blurred", {}),
    "regression_full": (RegressionConfig(), "full_dose", {}),
    "regression_clean": (RegressionConfig(), "truth_blurred", {}),
    # Does dropping the low-dose condition of 20 % of the patches (so that the model is also DDIP's prior) cost
    # the denoiser anything? Do 48^3 patches (3.4 times the voxels per step) buy more than they cost?
    "ddpm_x0_clean_dropout": (DDPMConfig(), "truth_blurred", {"condition_dropout": 0.2}),
    "ddpm_x0_clean_p48": (DDPMConfig(patch_size=48), "truth_blurred", {}),
    # Model size, within the 25 MB that the denoiser and DDIP's prior (7 MB) share: a fourth level (more context
    # per voxel, 11.6 MB, about the same time per window) or wider levels (15.8 MB, about twice the time).
    "ddpm_x0_clean_matched_deep": (DDPMConfig(channels=(16, 32, 64, 64), matched_steps=2, matched_start_fraction=0.5),
                                   "truth_blurred", {}),
    "ddpm_x0_clean_matched_wide": (DDPMConfig(channels=(24, 48, 96), norm_num_groups=8, matched_steps=2,
                                              matched_start_fraction=0.5), "truth_blurred", {}),
    # CorrDiff (Mardani et al. 2024): the diffusion of the residual of the U-Net baseline (--base-model), whose
    # prediction is a further condition; 2 DDIM steps from pure noise (t = 999, 500). The scale is the std of
    # truth_blurred - base in the network's range over the training pairs' heads, as base_pairs logs it: 0.0441
    # for the bundled U-Net baseline (0.0434 over the held-out validation pairs).
    "ddpm_corrective": (DDPMConfig(corrective=True, residual_scale=0.044, matched_steps=2), "truth_blurred", {}),
    # DDIP's first prior (FORMER_PRIOR), a separate model since dropout costs the denoiser (above): p(PET | MR)
    # only, on every timestep (DDIP's chain takes any steps from any start).
    "ddip_prior": (DDPMConfig(), "truth_blurred", {"condition_dropout": 1.0}),
    # The former prior fine-tuned on DDIP's own chain only (its default DDIM steps from its default T'), at a
    # third of the learning rate; --steps counts the fine-tuning steps. Seed 1: the run of docs/RECONSTRUCTION.md.
    "ddip_prior_matched": (DDPMConfig(matched_steps=DDIP_CHAIN.steps, matched_start_fraction=DDIP_CHAIN.start_fraction),
                           "truth_blurred", {"condition_dropout": 1.0, "learning_rate": 1e-4, "seed": 1}),
    # Its control: the same fine-tuning at every timestep. Does the gain come from DDIP's chain, or from more
    # training of the former prior?
    "ddip_prior_continued": (DDPMConfig(), "truth_blurred",
                             {"condition_dropout": 1.0, "learning_rate": 1e-4, "seed": 1}),
    # The former prior fine-tuned towards the truth before the scanner's PSF, at every timestep and at its own
    # training's learning rate (the target moves): first meant for DDIP with the PSF in its data step (--psf-fwhm);
    # bundled since 2026-12-05 (data/ddip_prior), without it and with window overlap 0.5.
    "ddip_prior_sharp": (DDPMConfig(), "truth", {"condition_dropout": 1.0, "learning_rate": 3e-4, "seed": 1}),
    # The sharp prior (data/ddip_prior) trained on with its MR dropped for half the patches, so that it also
    # models p(PET): does weighing the MR less at inference (--mr-guidance) keep the sharp
    # prior's FDG gain off another tracer?
    "ddip_prior_sharp_mr_dropout": (DDPMConfig(), "truth", {"condition_dropout": 1.0, "mr_dropout": 0.5,
                                                            "learning_rate": 3e-4, "seed": 1}),
}
# name -> the model folder whose weights a candidate starts from, instead of a fresh network
FINE_TUNED_FROM: Dict[str, Callable[[], Path]] = {"ddip_prior_matched": lambda: FORMER_PRIOR,
                                                  "ddip_prior_continued": lambda: FORMER_PRIOR,
                                                  "ddip_prior_sharp": lambda: FORMER_PRIOR,
                                                  "ddip_prior_sharp_mr_dropout": bundled_prior_dir}
SCORES = ("psnr_blurred", "ssim_blurred", "wm_cov", "lesion_cr", "hypo_recovery")


def training_pairs(args) -> Tuple[List[TrainingPair], List[TrainingPair]]:
    """The simulated pairs, from ``--work`` when they were made before."""
    paths = args.work / "training_pairs.npz", args.work / "validation_pairs.npz"
    if all(p.is_file() for p in paths):
        return load_pairs(paths[0]), load_pairs(paths[1])
    subjects = [s for s in brainweb_subjects(args.labels_dir) if s not in VALIDATION_SUBJECTS]
    started = time.perf_counter()
    train_pairs = simulate_pairs(((s, sitk.ReadImage(str(labels_path(s, args.labels_dir)))) for s in subjects),
                                 args.doses, args.variants, args.seed, progress=log.info)
    validation = simulate_pairs(((s, sitk.ReadImage(str(labels_path(s, args.labels_dir)))) for s in VALIDATION_SUBJECTS),
                                args.doses, 1, args.seed + 1, progress=log.info)
    args.work.mkdir(parents=True, exist_ok=True)
    save_pairs(train_pairs, paths[0])
    save_pairs(validation, paths[1])
    log.info("Simulated %d training pairs from %d subjects in %.0f s", len(train_pairs), len(subjects),
             time.perf_counter() - started)
    return train_pairs, validation


def base_pairs(args, pairs: tuple) -> tuple:
    """``pairs`` with the base model's (``--base-model``) predictions, cached in ``--work``."""
    started = time.perf_counter()
    done = pairs_with_base(pairs, ("training", "validation"), args.base_model, args.work, progress=log.info)
    log.info("Base predictions for %d pairs in %.0f s; the residual's std over the training heads: %.4f",
             sum(map(len, done)), time.perf_counter() - started, residual_std(done[0], "truth_blurred"))
    return done


def is_corrective(name: str) -> bool:
    return bool(getattr(CANDIDATES[name][0], "corrective", False))


def run_folder(name: str, args) -> Path:
    """A candidate's training folder; a corrective one's is keyed by its base model's checksum."""
    if is_corrective(name):
        return args.work / "runs" / f"{name}_base_{model_manifest(args.base_model)['sha256'][:12]}"
    return args.work / "runs" / name


def train_candidate(name: str, args, pairs: tuple) -> Path:
    """Trains (or continues) one candidate to ``args.steps``; returns its model folder."""
    config, target, extra = CANDIDATES[name]
    folder = run_folder(name, args)
    if is_corrective(name):
        pairs = base_pairs(args, pairs)
    settings = TrainingSettings(**{"steps": args.steps, "batch_size": args.batch_size, "target": target,
                                   "seed": args.seed, "bf16": args.bf16, **extra})
    model_dir = folder / MODEL_DIR
    if model_manifest(model_dir).get("info", {}).get("training", {}).get("steps", 0) < args.steps:
        log.info("Training %s to %d steps", name, args.steps)
        info: Dict[str, Any] = {"command": f"ddpm_design.py {name}"}
        initial_weights = None
        if name in FINE_TUNED_FROM:
            initial, _, initial_manifest = load_model(FINE_TUNED_FROM[name](), kind=model_kind(config))
            initial_weights, info["fine_tuned_from_sha256"] = initial.state_dict(), initial_manifest["sha256"]
        train_pairs, validation_pairs = pairs
        train(config, settings, train_pairs, validation_pairs, folder, resume=(folder / CHECKPOINT_FILE).is_file(), info=info,
              initial_weights=initial_weights,
              progress=lambda r: log.info("%s step %d/%d loss %.5f%s", name, r.step, r.steps, r.train_loss,
                                          "" if r.validation_loss is None else f" val {r.validation_loss:.5f}"))
    trained = model_manifest(model_dir)["info"]["training"]["steps"]
    if args.weights == "ema" and trained != args.steps:
        raise SystemExit(f"{name} was trained on to {trained} steps; its EMA weights of step {args.steps} were not "
                         f"kept (score --weights raw, or --steps {trained})")
    model_dir = model_dir if args.weights == "ema" else raw_model(folder, config, model_dir, args.steps)
    if is_corrective(name):
        attach_base(model_dir, args.base_model)
    return model_dir


def raw_model(folder: Path, config: Any, ema_dir: Path, step: int) -> Path:
    """The training's raw (not averaged) weights at ``step``, as a model folder beside the EMA's: kept from when
    training reached that step, or taken from the checkpoint when it is there.

    A short run's EMA is not yet an average of trained weights: with decay 0.995, after 500 steps 0.995^500 = 8 %
    of it is still the first step's, nearly random, weights, which shows as an offset in the output.
    """
    kept = folder / f"raw_model_step{step}"
    if (kept / MANIFEST_FILE).is_file():
        return kept
    state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    if state["step"] != step:
        raise SystemExit(f"the checkpoint in {folder} is at step {state['step']}; the raw weights of step {step} "
                         "were not kept")
    network = MODEL_KINDS[model_kind(config)][1](config)
    network.load_state_dict(state["model"])
    manifest = model_manifest(ema_dir)
    manifest["info"]["training"]["weights"] = f"raw, step {step}"
    return save_model(network, config, kept, manifest["info"]).parent


def export_model(name: str, args, pairs: tuple, destination: Path) -> None:
    """Copies candidate ``name``'s trained model into ``destination``, its training data recorded in the manifest.

    The fields are those ``petstab train-ddpm`` records (a resumed training keeps its first segment's record, which
    the design study began without them). The checksum covers the weights only, which are copied unchanged.
    """
    train_pairs, _ = pairs
    shutil.copytree(run_folder(name, args) / MODEL_DIR, destination, dirs_exist_ok=True)
    if is_corrective(name):
        attach_base(destination, args.base_model)
    manifest = model_manifest(destination)
    manifest["info"] = {**manifest["info"], "training_subjects": sorted({p.subject for p in train_pairs}),
                        "validation_subjects": list(VALIDATION_SUBJECTS), "doses": args.doses,
                        "variants_per_subject": args.variants, "training_pairs": len(train_pairs)}
    write_manifest(destination, manifest)


def score_case(subject: str, dose: float, args, models: Dict[str, Path]) -> Dict[str, dict]:
    """Gaussian's best FWHM and every candidate on one held-out case, each cached in ``--work/scores``."""
    cache = args.work / "scores" / f"subject{subject}_dose{dose:g}"
    cache.mkdir(parents=True, exist_ok=True)
    settings = StudySettings(doses=(1.0, 0.5, 0.2, 0.1), dip=get_preset("full"))  # the evaluation's case
    case = None
    results = {}
    for name in ["gaussian", *models]:
        checksum = "" if name == "gaussian" else model_manifest(models[name])["sha256"][:12]
        if name != "gaussian" and not isinstance(CANDIDATES[name][0], RegressionConfig):
            checksum += SAMPLER_TAG  # results of an older sampling chain are not this one's
        path = cache / f"{name}{'_' + checksum if checksum else ''}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            continue
        if case is None:
            case = simulate_case(sitk.ReadImage(str(labels_path(subject, args.labels_dir))), settings.simulation(0))
            scorer = Scorer(case, sitk.GetArrayFromImage(case.osem[FULL_DOSE]).astype(np.float32))
            low = sitk.GetArrayFromImage(case.osem[dose]).astype(np.float32)
        started = time.perf_counter()
        if name == "gaussian":
            sweep = [{"fwhm_voxels": f, **scorer(gaussian_fwhm(low, f))} for f in GAUSSIAN_FWHMS]
            result = max(sweep, key=lambda row: row["psnr_blurred"])
        elif isinstance(CANDIDATES[name][0], RegressionConfig):
            output = sitk.GetArrayFromImage(predict_regression(case.osem[dose], case.mr, models[name], device="cpu"))
            result = scorer(output)
        else:
            run = denoise_ddpm(case.osem[dose], case.mr, DDPMSamplingConfig(model_dir=str(models[name]), device="cpu"))
            mean, std = (sitk.GetArrayFromImage(image) for image in (run.network_output, run.stability))
            result = {**scorer(mean), **scorer.error_ranking(mean, std)}
        result["seconds"] = time.perf_counter() - started
        path.write_text(json.dumps(result, indent=1))
        results[name] = result
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="pairs, training folders and scores (resumable)")
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=sorted(CANDIDATES))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--doses", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    parser.add_argument("--score-subjects", nargs="+", default=["50", "51"])
    parser.add_argument("--score-doses", type=float, nargs="+", default=[0.1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="train in bfloat16 (see train-ddpm --bf16)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="score the EMA weights (what training saves) or the last raw weights (see raw_model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-model", type=Path, default=bundled_model_dir() / BASE_DIR,
                        help="the regression model that a corrective candidate corrects")
    parser.add_argument("--out", type=Path, help="write the scores as JSON here")
    parser.add_argument("--export", type=Path, help="copy each candidate's model folder into this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    pairs = training_pairs(args)
    models = {name: train_candidate(name, args, pairs) for name in args.candidates}
    if args.export:
        for name in models:
            export_model(name, args, pairs, args.export / name)
    # A pure prior (DDIP's) denoises nothing: benchmarks/ddip_study.py scores it.
    models = {name: folder for name, folder in models.items() if CANDIDATES[name][2].get("condition_dropout", 0) < 1}
    table = {f"{s}@{d:g}": score_case(s, d, args, models) for s in args.score_subjects for d in args.score_doses}
    print(f"{'candidate':<20}" + "".join(f"{k:>14}" for k in (*SCORES, "dPSNR vs G")))
    for name in ["gaussian", *models]:
        rows = [case[name] for case in table.values()]
        means = {k: float(np.nanmean([r[k] for r in rows])) for k in SCORES}
        gain = float(np.mean([case[name]["psnr_blurred"] - case["gaussian"]["psnr_blurred"] for case in table.values()]))
        print(f"{name:<20}" + "".join(f"{means[k]:>14.3f}" for k in SCORES) + f"{gain:>14.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        training = {name: {k: model_manifest(folder)["info"]["training"][k]
                           for k in ("elapsed_s", "final_validation_loss", "parameters")}
                    for name, folder in models.items()}
        args.out.write_text(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "variants": args.variants,
                                        "training": training,
                                        "bf16": args.bf16, "weights": args.weights,
                                        "cases": table}, indent=1))


if __name__ == "__main__":
    main()
