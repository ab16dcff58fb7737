"""``petstab``: the command line of PETStabilityDenoise.

    petstab denoise --pet P --mr M --out DIR    fit DIP, write the four volumes and run.json
    petstab denoise --pet DICOMDIR --suv bw --format dicom ...
                                                denoise a PET DICOM series in SUV; write DICOM series
    petstab denoise --method ddpm --pet P --mr M --out DIR
                                                sample the diffusion model instead; the same files
    petstab blend --run DIR --alpha A           re-blend a finished run, no new fit
    petstab batch --cohort C.csv --out DIR      denoise a cohort (resumable; local or cluster Ray, or serial)
    petstab simulate --out DIR [--sinograms]    write a simulated brain PET/MR case (and its sinograms)
    petstab reconstruct --sinogram F --out DIR  reconstruct a sinogram file with OSEM
    petstab demo                                simulate, denoise and plot a low-dose case
    petstab evaluate --labels-dir D --subjects 04 05 --out DIR
                                                compare the methods on simulated cases: CSV, figures, report
    petstab train-ddpm --labels-dir D --out DIR train the diffusion model on simulated pairs (resumable)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .errors import InputError, OutputError
from .settings import (
    DDIP_ALPHA,
    DEFAULT_ALPHAS,
    DEFAULT_DEVICE,
    DEFAULT_METHOD,
    DEFAULT_OSEM_ITERATIONS,
    DEFAULT_OSEM_SUBSETS,
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_PRESET,
    DEFAULT_RECONSTRUCTION_METHOD,
    DEFAULT_TRAINING_TARGET,
    DEVICES,
    DICOM_FORMAT,
    FILE_FORMATS,
    INPUT_MODES,
    METHODS,
    NETWORKS,
    OPTIMIZERS,
    OUTPUT_FORMATS,
    PRESET_NAMES,
    PROGRESS_STYLES,
    RECONSTRUCTION_METHODS,
    SUV_TYPES,
    TRAINING_OBJECTIVES,
    TRAINING_SCHEDULES,
    TRAINING_TARGETS,
    DDIPConfig,
    DDPMSamplingConfig,
    DIPConfig,
    EngineConfig,
    ddpm_config,
    dip_config,
    method_alpha,
)
from .simulation.case import BRAINWEB_LABELS, DEFAULT_DOSES, brainweb_subjects
from .simulation.scanners import REGIMES, SCANNERS

log = logging.getLogger("petstab")
#: ``petstab batch`` finished, but some subjects failed (see summary.csv).
EXIT_SUBJECTS_FAILED = 3


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--method, --alpha, --format and --suv: what a run does with its PET, for denoise and batch."""
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=tuple(METHODS),
                        help="dip: fit the conditional DIP (default); ddpm: sample the diffusion model")
    parser.add_argument("--alpha", type=float,
                        help="blend strength (0 = network output); default: the method's, "
                             + ", ".join(f"{method} {alpha}" for method, alpha in DEFAULT_ALPHAS.items()))
    parser.add_argument("--format", default=DEFAULT_OUTPUT_FORMAT, choices=OUTPUT_FORMATS,
                        help=f"output format (default {DEFAULT_OUTPUT_FORMAT}); {DICOM_FORMAT}: a DICOM series "
                             "folder per volume, derived from the PET's DICOM series (the PET must be one)")
    parser.add_argument("--suv", choices=SUV_TYPES,
                        help="denoise a PET DICOM series in SUV: bw, body weight, from the headers' dose, weight and "
                             "times (QIBA); run.json records the factor")


def _add_dip_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DIP settings (override the preset)")
    group.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES,
                       help="full (the measured defaults), fast (quicker on a CPU) or tiny (smoke tests); "
                            f"default: {DEFAULT_PRESET}")
    group.add_argument("--epochs", type=int, help="epochs N")
    group.add_argument("--interval", type=int, help="stability sampling interval M")
    group.add_argument("--start", type=int, help="first sampled epoch m")
    group.add_argument("--optimizer", choices=OPTIMIZERS)
    group.add_argument("--learning-rate", type=float)
    group.add_argument("--input-mode", choices=INPUT_MODES,
                       help="network input: the MR (default), MR and PET as two channels, or fixed noise")
    group.add_argument("--network", choices=NETWORKS,
                       help="monai: MONAI UNet (instance norm, transposed convolutions, concatenated skips); "
                            "gong: Gong et al.'s style (batch norm, trilinear upsampling, added skips)")
    group.add_argument("--inner-iterations", type=int, help="L-BFGS iterations per epoch (PyTorch's default: 20)")
    group.add_argument("--device", choices=DEVICES, help=f"default: {DEFAULT_DEVICE} (CUDA if available)")
    group.add_argument("--seed", type=int)
    group.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def _shared_settings(args: argparse.Namespace) -> Dict[str, object]:
    """--device, --seed and --threads, which apply to both methods (None keeps the default)."""
    return {"device": args.device, "seed": args.seed, "threads": args.threads}


def _dip_settings(args: argparse.Namespace) -> Dict[str, object]:
    """The DIP settings of the command line (None keeps the preset's), as DIPConfig fields."""
    return {**_shared_settings(args), **{name: getattr(args, name) for name in DIP_ONLY_SETTINGS}}


def _ddpm_settings(args: argparse.Namespace) -> Dict[str, object]:
    """The DDPM sampling settings of the command line (None keeps the default), as DDPMSamplingConfig fields."""
    return {**_shared_settings(args), "samples": args.samples, "steps": args.steps,
            "start_fraction": args.start_fraction,
            # Absolute: a cohort's subjects may run in other folders.
            "model_dir": str(args.ddpm_model.resolve()) if args.ddpm_model else None}


def _dip_config(args: argparse.Namespace) -> DIPConfig:
    """The validated DIP config of the command line: --preset with the DIP settings given applied."""
    return dip_config(args.preset, _dip_settings(args))


def _ddpm_config(args: argparse.Namespace) -> DDPMSamplingConfig:
    """The validated DDPM sampling config of the command line."""
    return ddpm_config(_ddpm_settings(args))


DDPM_DEFAULTS = DDPMSamplingConfig()
DDIP_DEFAULTS = DDIPConfig()
# petstab reconstruct's DDIP options: argparse destinations named after the DDIPConfig fields they set.
DDIP_SETTINGS = ("samples", "steps", "start_fraction", "lora_rank", "finetune_steps", "beta", "em_updates",
                 "em_subsets", "refresh_estimate", "psf_fwhm_mm", "overlap", "data_correction_fwhm_mm", "mr_guidance",
                 "device", "seed", "threads")
# Settings that only one method has, as argparse destinations: giving them to the other is refused.
DIP_ONLY_SETTINGS = ("epochs", "interval", "start", "optimizer", "learning_rate", "input_mode", "network",
                     "inner_iterations")
DDPM_ONLY_SETTINGS = ("samples", "steps", "start_fraction", "ddpm_model")


def _add_simulation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Simulated scanner and regime (docs/SIMULATOR.md)")
    group.add_argument("--scanner", choices=tuple(SCANNERS), default="brain",
                       help="brain: VRAIN-like, 3 mm, counts from its sensitivity (default); wholebody: 4.5 mm PSF")
    group.add_argument("--regime", choices=REGIMES, default="realistic",
                       help="realistic: regional uptake, PET-only texture, lesions and hypometabolism, MR "
                            "misregistered by 1 mm and 1 degree (default); legacy: the PET is a function of the MR; "
                            "amyloid: an amyloid-negative pattern, white matter above the cortex")
    group.add_argument("--count-scale", type=float, default=1.0,
                       help="multiplies the scanner's full-dose counts (default 1)")


def _simulation_config(args: argparse.Namespace, **fields):
    """The SimulationConfig of --scanner, --regime and --count-scale, with ``fields`` set."""
    from .simulation import simulation_config

    return simulation_config(args.scanner, args.regime, args.count_scale, **fields)


def _add_ddpm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Diffusion model settings (--method ddpm)",
                                      "--device, --seed and --threads apply to both methods")
    group.add_argument("--samples", type=int, help="draws per window: their mean is the output, their std S "
                                                   f"(default {DDPM_DEFAULTS.samples})")
    group.add_argument("--steps", type=int, help=f"DDIM steps per draw (default {DDPM_DEFAULTS.steps})")
    group.add_argument("--start-fraction", type=float,
                       help=f"the chain starts from the PET noised to this fraction of the schedule "
                            f"(default {DDPM_DEFAULTS.start_fraction})")
    group.add_argument("--ddpm-model", type=Path,
                       help="a model folder (model.json, weights.pt); default: the bundled model")


def _check_method_settings(args: argparse.Namespace) -> None:
    """Refuses settings of the other method, which would otherwise be silently ignored."""
    other = DDPM_ONLY_SETTINGS if args.method == "dip" else DIP_ONLY_SETTINGS
    given = ["--" + name.replace("_", "-") for name in other if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)} do not apply to --method {args.method}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petstab", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("denoise", help="denoise a PET volume with stability-map conditional DIP "
                                            "or the diffusion model")
    p.add_argument("--pet", required=True, type=Path, help="noisy PET: NIfTI, NRRD, MHA or a DICOM series folder")
    p.add_argument("--mr", type=Path, help="the subject's MR, registered to the PET (any grid); omit for plain DIP "
                                           "(the bundled diffusion model needs it)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_run_arguments(p)
    p.add_argument("--no-overwrite", action="store_true",
                   help="refuse an --out that already holds a run (by default it is replaced as a whole)")
    p.add_argument("--progress", default="bar", choices=PROGRESS_STYLES,
                   help="bar: a progress bar on stderr; jsonl: one JSON object per epoch (DIP) or window (DDPM) "
                        "on stdout")
    _add_dip_arguments(p)
    _add_ddpm_arguments(p)

    p = commands.add_parser("batch", help="denoise every subject of a cohort file into DIR/<subject>/, with "
                                          "DIR/summary.csv; a re-run skips the complete subjects")
    p.add_argument("--cohort", required=True, type=Path,
                   help="CSV with columns subject, pet and optionally mr; other columns (method, preset, alpha, "
                        "epochs, samples, ...) override the options below for their row")
    p.add_argument("--out", required=True, type=Path, help="cohort folder")
    _add_run_arguments(p)
    group = p.add_argument_group("Scheduling (Ray: pip install \".[cohort]\")")
    group.add_argument("--workers", type=int,
                       help="subjects at once on a local Ray runtime (default: sized to this machine's CPUs and "
                            "memory, or its GPUs with --device cuda); 1 runs them one after another, without Ray")
    group.add_argument("--ray-address", help="run on an existing Ray cluster (e.g. ray://head:10001); the "
                                             "cohort's files and --out must be on storage every node sees")
    group.add_argument("--cpus-per-task", type=int,
                       help="CPUs (and torch threads) each subject reserves (default: CPUs / workers locally, 1 "
                            "on a cluster)")
    group.add_argument("--gpus-per-task", type=float, default=1.0,
                       help="GPUs each subject reserves with --device cuda (default 1)")
    _add_dip_arguments(p)
    _add_ddpm_arguments(p)

    p = commands.add_parser("blend", help="re-blend a finished run at a new alpha, with no new fit")
    p.add_argument("--run", required=True, type=Path,
                   help="a run folder written by 'petstab denoise', 'petstab batch' (one subject's folder) or "
                        "'petstab reconstruct --method ddip'")
    p.add_argument("--alpha", required=True, type=float,
                   help="the new blend strength, >= 0 (0 = the network output); rewrites denoised and "
                        "stability_norm and updates run.json")

    p = commands.add_parser("simulate", help="simulate a brain FDG PET/MR case with known truth")
    p.add_argument("--labels", type=Path, help="tissue label volume (BrainWeb labels); default: the bundled subject 04")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--doses", type=float, nargs="+", default=list(DEFAULT_DOSES),
                   help="dose fractions, each in (0, 1] (default: " + " ".join(f"{d:g}" for d in DEFAULT_DOSES)
                        + ")")
    p.add_argument("--lesions", type=int, default=3, help="PET-only hot lesions (absent from the MR)")
    p.add_argument("--seed", type=int, default=0, help="the phantom (lesions, texture, misregistration) and noise")
    p.add_argument("--noise-seed", type=int, help="another noise realisation of the same phantom")
    _add_simulation_arguments(p)
    p.add_argument("--format", default=DEFAULT_OUTPUT_FORMAT, choices=FILE_FORMATS,
                   help=f"volume file format (default {DEFAULT_OUTPUT_FORMAT})")
    p.add_argument("--sinograms", action="store_true",
                   help="also write each dose's measured data as sinogram_<dose>.npz, for 'petstab reconstruct' "
                        "(docs/RECONSTRUCTION.md)")

    p = commands.add_parser("reconstruct", help="reconstruct a sinogram file (docs/RECONSTRUCTION.md) into a run "
                                                "folder: osem.<format> and run.json")
    p.add_argument("--sinogram", required=True, type=Path, help="a .npz from 'petstab simulate --sinograms', or "
                                                                 "your scanner's data in that format")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--method", default=DEFAULT_RECONSTRUCTION_METHOD, choices=RECONSTRUCTION_METHODS,
                   help="osem: the simulator's OSEM (default); ddip: the MR-conditioned diffusion prior, started from "
                        "OSEM's image and tied to the data (needs --mr)")
    p.add_argument("--mr", type=Path, help="the subject's MR, registered to the PET (any grid); DDIP only")
    p.add_argument("--iterations", type=int, default=DEFAULT_OSEM_ITERATIONS,
                   help=f"OSEM iterations (default {DEFAULT_OSEM_ITERATIONS})")
    p.add_argument("--subsets", type=int, default=DEFAULT_OSEM_SUBSETS,
                   help=f"OSEM subsets; must divide the number of angles (default {DEFAULT_OSEM_SUBSETS})")
    p.add_argument("--alpha", type=float, default=DDIP_ALPHA,
                   help=f"DDIP: blend strength with the OSEM image (default {DDIP_ALPHA}; 0 = the DDIP mean)")
    p.add_argument("--format", default=DEFAULT_OUTPUT_FORMAT, choices=FILE_FORMATS,
                   help=f"volume file format (default {DEFAULT_OUTPUT_FORMAT})")
    p.add_argument("--no-overwrite", action="store_true", help="refuse an --out that already holds a run")
    p.add_argument("--progress", default="bar", choices=PROGRESS_STYLES,
                   help="bar: a progress bar on stderr; jsonl: one JSON object per OSEM iteration or DDIP step on "
                        "stdout")
    group = p.add_argument_group("DDIP settings (docs/RECONSTRUCTION.md)")
    group.add_argument("--ddip-model", type=Path,
                       help="the prior: a diffusion model trained with --condition-dropout (default: the bundled one)")
    group.add_argument("--samples", type=int, help=f"independent runs: mean and std (default {DDIP_DEFAULTS.samples})")
    group.add_argument("--steps", type=int, help=f"DDIM steps (default {DDIP_DEFAULTS.steps})")
    group.add_argument("--start-fraction", type=float,
                       help=f"start time T' as a fraction of T (default {DDIP_DEFAULTS.start_fraction})")
    group.add_argument("--lora-rank", type=int, help=f"rank of the LoRA adapters (default {DDIP_DEFAULTS.lora_rank})")
    group.add_argument("--finetune-steps", type=int,
                       help=f"adapter fine-tuning steps per DDIM step; 0: no fine-tuning "
                            f"(default {DDIP_DEFAULTS.finetune_steps})")
    group.add_argument("--beta", type=float, help=f"HQS weight of the network's estimate against the data, relative "
                                                  f"to the data's (default {DDIP_DEFAULTS.beta}); 0: plain EM")
    group.add_argument("--em-updates", type=int, help=f"EM updates per DDIM step (default {DDIP_DEFAULTS.em_updates})")
    group.add_argument("--em-subsets", type=int, help="subsets of angles in each EM update; must divide the angles; 1: "
                                                      "MLEM (default: --subsets)")
    group.add_argument("--refresh-estimate", action=argparse.BooleanOptionalAction,
                       help="run the adapted network again before each DDIM step (two passes per step); "
                            "--no-refresh-estimate steps from the data step's image (one pass) "
                            f"(default {'on' if DDIP_DEFAULTS.refresh_estimate else 'off'})")
    group.add_argument("--psf-fwhm", type=float, dest="psf_fwhm_mm", metavar="MM",
                       help="model the scanner's resolution in the data step: an isotropic Gaussian PSF of this "
                            f"FWHM in mm (default {DDIP_DEFAULTS.psf_fwhm_mm:g}: none)")
    group.add_argument("--overlap", type=float,
                       help="overlap of the network's sliding windows, in [0, 1); more fades the window edges in the "
                            f"std and takes longer (default {DDIP_DEFAULTS.overlap:g})")
    group.add_argument("--data-correction-fwhm", type=float, dest="data_correction_fwhm_mm", metavar="MM",
                       help="after the last step, add the part of one more data step's change coarser than a "
                            "Gaussian of this FWHM in mm, so that regional means follow the data "
                            f"(default {DDIP_DEFAULTS.data_correction_fwhm_mm:g}; 0: off)")
    group.add_argument("--mr-guidance", type=float, dest="mr_guidance", metavar="W",
                       help="weight of the MR in the prior's estimate; not 1 needs a prior trained with "
                            f"--mr-dropout, and takes two network passes (default {DDIP_DEFAULTS.mr_guidance:g})")
    group.add_argument("--device", choices=DEVICES, help=f"default: {DEFAULT_DEVICE} (CUDA if available)")
    group.add_argument("--seed", type=int)
    group.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")

    p = commands.add_parser("demo", help="simulate a low-dose brain case, denoise it and write a figure")
    p.add_argument("--out", type=Path, default=Path("petstab_demo"), help="output folder (default ./petstab_demo)")
    p.add_argument("--dose", type=float, default=0.1, help="dose fraction of the simulated case (default 1/10)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHAS["dip"],
                   help=f"blend strength (default {DEFAULT_ALPHAS['dip']})")
    p.add_argument("--progress", default="bar", choices=PROGRESS_STYLES,
                   help="bar: a progress bar on stderr (default); jsonl: JSON lines on stdout; none")
    _add_dip_arguments(p)

    p = commands.add_parser("evaluate", help="compare Gaussian, non-local means, DIP, the blend and the diffusion "
                                             "model on simulated BrainWeb cases: CSV, figures and a report")
    p.add_argument("--labels-dir", type=Path, help=f"folder of {BRAINWEB_LABELS.format('NN')} files")
    p.add_argument("--subjects", nargs="+",
                   help="subject numbers in --labels-dir, e.g. 50 51 52 53 54 (04 is bundled). Several processes "
                        "may evaluate different subjects into one --out; --replot with all of them then assembles "
                        "the report")
    p.add_argument("--labels", type=Path, nargs="+",
                   help="label volumes (BrainWeb label values) to use as subjects; default: the bundled subject 04")
    p.add_argument("--doses", type=float, nargs="+", default=list(DEFAULT_DOSES),
                   help="dose fractions (full dose, the reference of the ROI bias, is always simulated)")
    p.add_argument("--realisations", type=int, default=3,
                   help="noise realisations per subject: the same phantom with noise seeds 0..N-1 (default 3)")
    p.add_argument("--out", type=Path, default=Path("petstab_evaluation"), help="output folder")
    p.add_argument("--sim-seed", type=int, default=0, help="seed of the simulated phantom (lesions, texture, "
                                                           "misregistration); the noise seed is the realisation")
    p.add_argument("--dip-epochs", type=int, nargs="+", help="epochs at which DIP is scored (default: 10 over the stability window, e.g. 110 120 ... 200 "
                        "for 200 epochs sampled from 100)")
    p.add_argument("--nlm-h", type=float, nargs="+", help="non-local means h, as multiples of the noise estimate")
    p.add_argument("--fwhms", type=float, nargs="+",
                   help="Gaussian FWHMs in voxels, 0 (OSEM) included (default 0 0.5 ... 4)")
    p.add_argument("--alphas", type=float, nargs="+", help="blend alphas (default 0 0.1 ... 1)")
    p.add_argument("--ddpm-realisations", type=int, default=1,
                   help="run the diffusion model (about 85 s per case on 2 CPU cores) on the first N realisations "
                        "(default 1; 0: never)")
    p.add_argument("--ddpm-doses", type=float, nargs="+", default=[0.1, 0.2],
                   help="doses at which the diffusion model runs (default 0.1 0.2)")
    p.add_argument("--ddpm-model", type=Path,
                   help="the diffusion model's folder (petstab train-ddpm); default: the bundled model")
    p.add_argument("--baseline-model", type=Path,
                   help="also score a regression baseline (petstab train-ddpm --objective regression) from this "
                        "folder, wherever the diffusion model runs")
    p.add_argument("--count-sweep", type=float, nargs="+", metavar="SCALE",
                   help="also evaluate these full-dose count scales, e.g. 0.25 0.5 2 4 8, at --count-sweep-dose, "
                        "realisation 0, Gaussian, DIP and the blend only (the main condition gives its own scale)")
    p.add_argument("--count-sweep-dose", type=float, default=0.1,
                   help="dose of the count sweep and the stress condition (default 0.1)")
    p.add_argument("--count-sweep-subjects", nargs="+",
                   help="run the count sweep and the stress condition on these of --subjects only (default: all)")
    p.add_argument("--stress", action="store_true",
                   help="also evaluate the legacy regime on the wholebody scanner (PET predictable from the MR, "
                        "4.5 mm PSF) at --count-sweep-dose: where not to expect a benefit")
    p.add_argument("--replot", action="store_true", help="only redraw the figures and report from the cache")
    _add_simulation_arguments(p)
    _add_dip_arguments(p)

    p = commands.add_parser("train-ddpm", help="train the conditional diffusion model on simulated BrainWeb pairs")
    p.add_argument("--labels-dir", required=True, type=Path,
                   help=f"folder of {BRAINWEB_LABELS.format('NN')} files")
    p.add_argument("--subjects", nargs="+", help="training subjects (default: every subject in --labels-dir "
                   "except the validation subjects)")
    p.add_argument("--validation-subjects", nargs="+", help="held-out subjects (default: 50 51 52 53 54)")
    p.add_argument("--out", required=True, type=Path, help="training folder: checkpoint, loss.csv, model/")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                   help="fine-tune: start from the weights of this model folder (of the network these options "
                        "describe) instead of a fresh network, as the bundled DDIP prior was trained")
    p.add_argument("--profile", choices=sorted(TRAINING_PROFILES), default="cpu",
                   help="training budget: cpu (minutes on 2 cores) or gpu (longer, more variants); default cpu")
    p.add_argument("--doses", type=float, nargs="+", default=[0.1, 0.2, 0.5], help="low-dose fractions to train on")
    p.add_argument("--variants", type=int, help="simulated variants per subject (uptake pattern, texture, lesions, "
                                                "hypometabolism, scanner, counts, misregistration, noise)")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--time-limit-minutes", type=float,
                   help="stop after this many minutes of training, even short of --steps (a GPU lent for a fixed "
                        "time): the checkpoint, a validation and the model are written, and --resume goes on")
    p.add_argument("--batch-size", type=int, help="patches per step")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--patch-size", type=int, help="patch edge in voxels (default 32)")
    p.add_argument("--channels", type=int, nargs="+", help="U-Net channels per level (default 16 32 64)")
    p.add_argument("--no-mr", action="store_true", help="train without the MR condition")
    p.add_argument("--objective", choices=TRAINING_OBJECTIVES, default=TRAINING_OBJECTIVES[0],
                   help="diffusion: the DDPM (default); corrective: a diffusion model of the residual of the "
                        "regression model --base-model (CorrDiff); regression: the supervised baseline, the same "
                        "U-Net mapping the conditions straight to the target")
    p.add_argument("--base-model", type=Path,
                   help="corrective only: the regression model folder whose residual the model learns "
                        "(petstab train-ddpm --objective regression); it is copied into the model folder as base/")
    p.add_argument("--residual-scale", type=float,
                   help="corrective only: the residual's scale in the network's range (default: its std over the "
                        "training pairs' heads, to 3 decimals)")
    p.add_argument("--schedule", choices=TRAINING_SCHEDULES,
                   help="diffusion only: train at the 2 timesteps that the default sampling visits (matched, the "
                        "bundled denoiser's design), or at all of them (full, for any chain). Default: matched; "
                        "full with --condition-dropout, since DDIP samples a prior on its own chain")
    p.add_argument("--target", choices=TRAINING_TARGETS, default=DEFAULT_TRAINING_TARGET,
                   help="what the network learns to output: the full-dose OSEM, the PSF-blurred truth, or the "
                        "truth before the PSF (for a DDIP prior run with --psf-fwhm) "
                        f"(default {DEFAULT_TRAINING_TARGET})")
    p.add_argument("--condition-dropout", type=float,
                   help="diffusion only: drop the low-dose condition of this fraction of the patches, so that the "
                        "model is also the prior p(PET | MR) of 'petstab reconstruct --method ddip' (e.g. 0.2; 1: only that prior)")
    p.add_argument("--mr-dropout", type=float,
                   help="diffusion only: drop the MR of this fraction of the patches as well, so that a prior also "
                        "models p(PET) and 'petstab reconstruct --mr-guidance' can weigh the MR (e.g. 0.5)")
    p.add_argument("--bf16", action="store_true",
                   help="run the network in bfloat16: about 2x faster on CPUs with AMX (Xeon Sapphire Rapids "
                        "and later); dozens of times slower on CPUs without bfloat16 support, where it warns")
    p.add_argument("--device", choices=DEVICES, default=DEFAULT_DEVICE)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    return parser


# Training budgets. The network is the same in both: it is sized for sampling a brain on 2 CPU cores.
TRAINING_PROFILES = {
    "cpu": {"steps": 3000, "batch_size": 8, "variants": 2},
    "gpu": {"steps": 20000, "batch_size": 32, "variants": 6},
}


def run_denoise(args: argparse.Namespace) -> int:
    from .engine.progress import make_reporter
    from .engine.run import denoise_into_folder

    _check_method_settings(args)
    config: EngineConfig = _ddpm_config(args) if args.method == "ddpm" else _dip_config(args)
    with make_reporter(args.progress) as report:
        paths = denoise_into_folder(args.pet, args.mr, args.out, config, alpha=method_alpha(args.alpha, args.method),
                                    fmt=args.format, progress=report, overwrite=not args.no_overwrite, suv=args.suv)
    log.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


def run_batch(args: argparse.Namespace) -> int:
    from .cohort.batch import run_cohort
    from .cohort.schedulers import choose_scheduler
    from .cohort.table import read_cohort

    parameters = {**_dip_settings(args), **_ddpm_settings(args)}
    rows = read_cohort(args.cohort, method=args.method, preset=args.preset, alpha=args.alpha, parameters=parameters,
                       suv=args.suv)
    scheduler, description = choose_scheduler(rows, workers=args.workers, address=args.ray_address,
                                              cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task)
    log.info("Running %d subject(s) %s", len(rows), description)
    outcomes = run_cohort(rows, args.out, args.format, scheduler)
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in ("done", "skipped", "failed")}
    log.info("%d done, %d skipped (complete earlier), %d failed; summary: %s", counts["done"], counts["skipped"],
             counts["failed"], args.out / "summary.csv")
    return EXIT_SUBJECTS_FAILED if counts["failed"] else 0


def run_blend(args: argparse.Namespace) -> int:
    from .engine.run import reblend_run

    paths = reblend_run(args.run, args.alpha)
    log.info("Re-blended at alpha %g: %s", args.alpha, ", ".join(str(p) for p in paths.values()))
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from .simulation import bundled_labels_path, simulate_case
    from .volumes.io import read_volume

    labels = read_volume(args.labels or bundled_labels_path())
    case = simulate_case(labels, _simulation_config(args, doses=tuple(args.doses), n_lesions=args.lesions,
                                                    seed=args.seed, noise_seed=args.noise_seed),
                         keep_sinograms=args.sinograms)
    paths = case.write(args.out, fmt=args.format)
    log.info("Wrote %d files to %s", len(paths), args.out)
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    from .engine.progress import make_reporter
    from .engine.reconstruct import reconstruct

    ddip = {name: getattr(args, name) for name in DDIP_SETTINGS if getattr(args, name) is not None}
    if args.method != "ddip" and (ddip or args.mr or args.ddip_model):
        raise InputError("--mr, --ddip-model and the DDIP settings apply to --method ddip only")
    if args.ddip_model:
        ddip["model_dir"] = str(args.ddip_model.resolve())
    if args.method == "ddip":
        ddip.setdefault("em_subsets", args.subsets)  # the data step splits the angles as OSEM does
    label = ("DDIP", "step") if args.method == "ddip" else ("OSEM", "iteration")
    with make_reporter(args.progress, label=label) as report:
        paths = reconstruct(args.sinogram, args.out, method=args.method, mr_path=args.mr, iterations=args.iterations,
                            subsets=args.subsets, ddip=DDIPConfig(**ddip), alpha=args.alpha, fmt=args.format,
                            overwrite=not args.no_overwrite, progress=report)
    log.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .evaluation.demo import run_demo as demo

    demo(args.out, dose=args.dose, config=_dip_config(args), alpha=args.alpha, progress=args.progress)
    return 0


def evaluation_subjects(args: argparse.Namespace) -> list:
    from .evaluation import Subject
    from .simulation import bundled_labels_path
    from .simulation.case import BUNDLED_SUBJECT

    if args.subjects:
        paths = _labels(args.labels_dir, args.subjects)
        return [Subject(f"subject{n}", path) for n, path in zip(args.subjects, paths)]
    if args.labels:
        _check_exist(args.labels)
        return [Subject(path.name.split(".")[0], path) for path in args.labels]
    return [Subject(f"subject{BUNDLED_SUBJECT}", bundled_labels_path())]


def _sweep_subjects(args: argparse.Namespace, subjects: list) -> tuple:
    """The names of the --count-sweep-subjects, which must be among the evaluated subjects."""
    if not args.count_sweep_subjects:
        return ()
    names = tuple(f"subject{n}" for n in args.count_sweep_subjects)
    unknown = sorted(set(names) - {s.name for s in subjects})
    if unknown:
        raise InputError(f"--count-sweep-subjects {', '.join(unknown)} are not among --subjects")
    return names


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import StudySettings, run_evaluation, study_conditions

    _simulation_config(args, seed=args.sim_seed)  # refuses a bad --scanner/--regime/--count-scale before any work
    dip = _dip_config(args)
    ddpm = ddpm_config({**_shared_settings(args),  # as for 'petstab denoise', these apply to both methods
                        "model_dir": str(args.ddpm_model.resolve()) if args.ddpm_model else None})
    overrides: Dict[str, Any] = {name: tuple(value) for name, value in (("dip_epochs", args.dip_epochs), ("nlm_h_factors", args.nlm_h),
                                                        ("gaussian_fwhms", args.fwhms), ("alphas", args.alphas))
                 if value}
    main = StudySettings(doses=tuple(args.doses), dip=dip, scanner=args.scanner, regime=args.regime,
                         count_scale=args.count_scale, realisations=args.realisations, seed=args.sim_seed, ddpm=ddpm,
                         ddpm_realisations=args.ddpm_realisations, ddpm_doses=tuple(args.ddpm_doses),
                         baseline_model=str(args.baseline_model.resolve()) if args.baseline_model else None, **overrides)
    subjects = evaluation_subjects(args)
    sweep_subjects = _sweep_subjects(args, subjects)
    conditions = study_conditions(main, args.count_sweep or (), args.count_sweep_dose, args.stress, sweep_subjects)
    report = run_evaluation(subjects, conditions, args.out, replot=args.replot,
                            command=args.command_line, progress=log.info)
    log.info("Report: %s", report)
    return 0


def _check_exist(paths: Sequence[Path]) -> None:
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise InputError(f"label volume(s) not found: {', '.join(missing)}")


def _labels(labels_dir: Optional[Path], subjects: Sequence[str]) -> list:
    """The label files of BrainWeb subjects in ``labels_dir`` (04 falls back to the bundled copy)."""
    from .simulation.case import labels_path

    try:
        paths = [labels_path(n, labels_dir) for n in subjects]
    except FileNotFoundError as error:
        raise InputError(f"{error} (--labels-dir)") from None
    _check_exist(paths)
    return paths


def training_network(args: argparse.Namespace, residual_scale: Optional[float] = None) -> Any:
    """The network config that ``train-ddpm`` trains: the regression baseline, or a diffusion model on ``--schedule``.

    Args:
        residual_scale: a corrective model's, when ``--residual-scale`` is not given (:func:`residual_std`).

    Raises:
        InputError: an option that does not apply to ``--objective``.
    """
    from .engine.ddpm.model import DDPMConfig
    from .engine.ddpm.regression import RegressionConfig

    corrective = args.objective == "corrective"
    if not corrective and (args.base_model or args.residual_scale):
        raise InputError("--base-model and --residual-scale are for --objective corrective")
    if corrective and not args.base_model:
        raise InputError("--objective corrective needs --base-model: the regression model folder whose residual "
                         "it learns (train one with --objective regression)")
    if args.residual_scale is not None and not args.residual_scale > 0:
        raise InputError(f"--residual-scale must be positive; got {args.residual_scale}")
    if corrective and args.schedule == "full":
        raise InputError("a corrective model trains on its own matched chain: drop --schedule full")
    model_settings: Dict[str, Any] = {k: v for k, v in (("channels", tuple(args.channels) if args.channels else None),
                                                        ("patch_size", args.patch_size)) if v is not None}
    if args.objective == "regression":
        if args.schedule:
            raise InputError("--schedule is for a diffusion model; the regression baseline has no timesteps")
        return RegressionConfig(**model_settings, use_mr=not args.no_mr)
    sampling = DDPMSamplingConfig()  # the chain that the model will be sampled with by default
    if corrective:
        scale = args.residual_scale or residual_scale
        if scale is None:
            raise ValueError("a corrective model's residual scale is measured on its pairs: pass residual_scale")
        model_settings.update(corrective=True, residual_scale=scale, matched_steps=sampling.steps)
    elif (args.schedule or ("full" if args.condition_dropout else "matched")) == "matched":
        model_settings.update(matched_steps=sampling.steps, matched_start_fraction=sampling.start_fraction)
    return DDPMConfig(**model_settings, use_mr=not args.no_mr)


def run_train_ddpm(args: argparse.Namespace) -> int:
    import torch

    from .engine.ddpm.model import count_parameters
    from .engine.ddpm.weights import MODEL_KINDS, attach_base, load_model, model_kind
    from .engine.device import resolve_device
    from .training.corrective import pairs_with_base, residual_std
    from .training.dataset import VALIDATION_SUBJECTS, load_pairs, save_pairs, simulate_pairs
    from .training.trainer import TrainingSettings, check_training_folder, train
    from .volumes.io import read_volume

    check_training_folder(args.out, args.resume)
    # The options' errors before minutes of simulation.
    initial_weights, initial_manifest = _initial_weights(args.init_from, training_network(args, residual_scale=1.0))
    if args.time_limit_minutes is not None and not args.time_limit_minutes > 0:
        raise InputError(f"--time-limit-minutes must be positive; got {args.time_limit_minutes}")
    base_manifest = load_model(args.base_model, kind="regression")[2] if args.objective == "corrective" else {}
    profile = TRAINING_PROFILES[args.profile]
    validation_subjects = list(args.validation_subjects or VALIDATION_SUBJECTS)
    if args.subjects:
        subjects = list(args.subjects)
    else:
        found = brainweb_subjects(args.labels_dir)
        subjects = [n for n in found if n not in validation_subjects]
    overlap = sorted(set(subjects) & set(validation_subjects))
    if overlap:
        raise InputError(f"subjects {overlap} are both trained on and held out; drop them from --subjects")
    if not subjects:
        raise InputError(f"no training subjects: {args.labels_dir} has no {BRAINWEB_LABELS.format('NN')} "
                         "outside the validation subjects")
    train_paths, validation_paths = _labels(args.labels_dir, subjects), _labels(args.labels_dir, validation_subjects)

    training: Dict[str, Any] = {k: v for k, v in (("steps", args.steps or profile["steps"]),
                                                  ("batch_size", args.batch_size or profile["batch_size"]),
                                                  ("learning_rate", args.learning_rate),
                                                  ("seed", args.seed), ("target", args.target),
                                                  ("condition_dropout", args.condition_dropout),
                                                  ("mr_dropout", args.mr_dropout),
                                                  ("bf16", args.bf16)) if v is not None}
    settings = TrainingSettings(**training)
    variants = args.variants or profile["variants"]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    started = time.perf_counter()
    doses = tuple(args.doses)
    cache = {"train": args.out / "training_pairs.npz", "validation": args.out / "validation_pairs.npz"}
    if args.resume and all(path.is_file() for path in cache.values()):
        log.info("Reusing the simulated pairs in %s", args.out)
        train_pairs, validation_pairs = load_pairs(cache["train"]), load_pairs(cache["validation"])
    else:
        train_pairs = simulate_pairs(((n, read_volume(p)) for n, p in zip(subjects, train_paths)),
                                     doses, variants, args.seed, progress=log.info)
        validation_pairs = simulate_pairs(((n, read_volume(p)) for n, p in
                                           zip(validation_subjects, validation_paths)),
                                          doses, 1, args.seed + 1, progress=log.info)
        args.out.mkdir(parents=True, exist_ok=True)
        save_pairs(train_pairs, cache["train"])
        save_pairs(validation_pairs, cache["validation"])
    simulation_s = time.perf_counter() - started
    info = {"command": args.command_line, "training_subjects": subjects, "validation_subjects": validation_subjects,
            "doses": list(doses), "variants_per_subject": variants, "training_pairs": len(train_pairs),
            "simulation_s": simulation_s}
    measured_scale = None
    if args.objective == "corrective":
        train_pairs, validation_pairs = pairs_with_base((train_pairs, validation_pairs), ("training", "validation"),
                                                        args.base_model, args.out, device, progress=log.info)
        measured_scale = round(residual_std(train_pairs, settings.target), 3)
        info["base_sha256"] = base_manifest["sha256"]
    config = training_network(args, measured_scale)
    network = MODEL_KINDS[model_kind(config)][1](config)
    if initial_manifest:
        info["fine_tuned_from_sha256"] = initial_manifest["sha256"]
    log.info("Network (%s): %s, %d parameters; target %s; training on %s", args.objective, config.channels,
             count_parameters(network), settings.target, device)

    def report(row) -> None:
        validation = "" if row.validation_loss is None else f", validation {row.validation_loss:.5f}"
        log.info("step %d/%d: loss %.5f%s (%.0f s)", row.step, row.steps, row.train_loss, validation, row.elapsed_s)

    model_dir = train(config, settings, train_pairs, validation_pairs, args.out, device=device, resume=args.resume,
                      info=info, progress=report, initial_weights=initial_weights,
                      time_limit_s=None if args.time_limit_minutes is None else 60 * args.time_limit_minutes)
    if args.objective == "corrective":
        attach_base(model_dir, args.base_model)
    log.info("Model written to %s", model_dir)
    return 0


def _initial_weights(model_dir: Optional[Path], config: Any) -> Tuple[Optional[dict], dict]:
    """The weights that ``train-ddpm --init-from model_dir`` fine-tunes, and their manifest; none without it.

    Raises:
        InputError: the folder holds another network than ``config`` builds.
    """
    from .engine.ddpm.weights import MODEL_KINDS, load_model, model_kind

    if model_dir is None:
        return None, {}
    initial, initial_config, manifest = load_model(model_dir, kind=model_kind(config))
    try:
        MODEL_KINDS[model_kind(config)][1](config).load_state_dict(initial.state_dict())
    except RuntimeError:
        raise InputError(f"--init-from {model_dir} holds another network ({initial_config}) than these options "
                         f"describe ({config}): give the options it was trained with") from None
    return initial.state_dict(), manifest


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["petstab", *argv])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    command = {"denoise": run_denoise, "batch": run_batch, "blend": run_blend, "simulate": run_simulate,
               "reconstruct": run_reconstruct, "demo": run_demo, "evaluate": run_evaluate, "train-ddpm": run_train_ddpm}
    # SIGTERM (kill, a job scheduler's time limit) stops a run as Ctrl+C does, so that its staged outputs are
    # removed; left at its default it would end the process with no clean-up at all.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return command[args.command](args)
    except (InputError, FileNotFoundError, FileExistsError) as error:
        log.error("%s", error)
        return 2
    except OutputError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception:  # noqa: BLE001 - a bug, not the user's input: keep its traceback for the report
        log.exception("internal error; please report it with the lines above")
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_handler is None else previous_handler)


if __name__ == "__main__":
    sys.exit(main())
