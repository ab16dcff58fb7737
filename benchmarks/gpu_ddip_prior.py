"""DDIP on a GPU: its run time, and DDIP's prior trained on there for a fixed number of minutes.

The GPU machine that the project is sometimes lent has no SimpleITK and takes at most 64 MiB of files, so the
work is split:

1. ``pack``, here: the prior's training pairs (those of ``benchmarks/ddpm_design.py``, simulated into its
   ``--work`` unless they are there: the bundled prior's 90 pairs) and one simulated case (``petstab simulate
   --sinograms``) become two small files of arrays. A pair's three doses differ only in the low-dose image,
   which the prior never sees (condition dropout 1), so one pair per simulated variant is kept; the PSF-blurred
   truth is quantised to 0.002 of the head mean and the MR to 0.01 of its own, far below the prior's
   validation error (an RMS of 0.07 in the network's range, 0.28 of the head mean).
2. ``run``, there: DDIP with its defaults on the case, timed, then the bundled prior (or ``--initial-model``)
   trained on by each of ``--candidates``, side by side on the GPU, until the time budget is spent
   (``train(time_limit_s=...)``). Each candidate's model folder and loss log, and ``timings.json``, are written
   to ``--out``.
3. ``engine``, there: ``benchmarks/bench_engine.py``'s quick report (the DIP fit's epoch, on the CPU and CUDA).

The runs of 2026-12-04 (docs/RECONSTRUCTION.md, "A prior trained on a GPU"; SUBJECT50_LABELS is BrainWeb subject
50's label file in ../shared/data/brainweb). "The bundled prior" was then the one now kept in
docs/reconstruction/prior_blurred, and DDIP's window overlap 0.25: to repeat them, give that folder as
``--initial-model`` (and ``--models``) and copy it to the GPU machine with the data.

    petstab simulate --labels SUBJECT50_LABELS --out CASE \
        --doses 0.1 --sinograms
    python benchmarks/gpu_ddip_prior.py pack --labels-dir ../shared/data/brainweb --work WORK --case CASE \
        --out gpu_data
    # on the GPU machine, with MONAI installed and PETStabilityDenoise on PYTHONPATH:
    python3 benchmarks/gpu_ddip_prior.py run --data gpu_data --out $OUT --budget-s 450
    # a second lease, gpu_data/initial holding the first run's batch32_lr1e-4 model folder:
    python3 benchmarks/gpu_ddip_prior.py engine > $OUT/engine.json
    python3 benchmarks/gpu_ddip_prior.py run --data gpu_data --out $OUT --budget-s 200 --skip-ddip \
        --candidates batch32_lr1e-4_more --threads 8 --initial-model gpu_data/initial

On the GPU machine SimpleITK is replaced by placeholders before the library is imported
(:func:`stand_in_for_simpleitk`): none of the code that these commands run there uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import lzma
import pickle
import runpy
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

log = logging.getLogger("gpu_ddip_prior")

CLEAN_STEP = 0.002  # quantisation of the PSF-blurred truth, in units of the head mean
MR_STEP = 0.01  # quantisation of the MR, in units of its head mean
PACKED_DOSE = 0.1  # the pair kept per variant; the others differ only in the low-dose image
# name -> the settings that differ from the bundled prior's training; every candidate starts from the bundled prior
# (or --initial-model) and trains at every timestep with the condition always dropped, as the bundled prior did.
CANDIDATES: Dict[str, Dict[str, Any]] = {
    "batch32_lr1e-4": {"batch_size": 32, "learning_rate": 1e-4, "ema_decay": 0.999, "seed": 1},
    "batch64_lr2e-4": {"batch_size": 64, "learning_rate": 2e-4, "ema_decay": 0.999, "seed": 2},
    # batch32_lr1e-4 trained on (its model folder as --initial-model), on new patches
    "batch32_lr1e-4_more": {"batch_size": 32, "learning_rate": 1e-4, "ema_decay": 0.999, "seed": 3},
}
FIRST_RUN = ("batch32_lr1e-4", "batch64_lr2e-4")
EXPORT_MARGIN_S = 45  # for the last checkpoint, validation, model and copies after the time limit
PAIRS_FILE = "pairs.pickle.xz"  # our own file, so pickle is safe


def quantise(volume: np.ndarray, step: float) -> np.ndarray:
    """``volume`` / ``step`` rounded, delta-coded along the last axis (smooth images then compress well)."""
    levels = np.round(volume / step).astype(np.int32)
    return np.diff(levels, axis=-1, prepend=0).astype(np.int16)


def dequantise(coded: np.ndarray, step: float) -> np.ndarray:
    return (np.cumsum(coded.astype(np.int32), axis=-1) * step).astype(np.float32)


def pack(args: argparse.Namespace) -> None:
    import SimpleITK as sitk
    from ddpm_design import training_pairs  # beside this script

    from PETStabilityDenoiseLib.training.dataset import load_pairs
    from PETStabilityDenoiseLib.volumes.geometry import resample_to_reference
    from PETStabilityDenoiseLib.volumes.sinogram import read_sinogram

    args.out.mkdir(parents=True, exist_ok=True)
    arrays: Dict[str, np.ndarray] = {}
    meta: Dict[str, List[str]] = {}
    training_pairs(argparse.Namespace(work=args.work, labels_dir=args.labels_dir, doses=[0.1, 0.2, 0.5], variants=2,
                                      seed=0))  # ddpm_design.py's defaults: the bundled prior's pairs
    for split in ("training", "validation"):
        pairs = [p for p in load_pairs(args.work / f"{split}_pairs.npz") if p.dose == PACKED_DOSE]
        meta[split] = [p.subject for p in pairs]
        for index, pair in enumerate(pairs):
            arrays[f"{split}_{index}_clean"] = quantise(pair.clean, CLEAN_STEP)
            arrays[f"{split}_{index}_mr"] = quantise(pair.mr, MR_STEP)
            arrays[f"{split}_{index}_head"] = pair.head
    with lzma.open(args.out / PAIRS_FILE, "wb", preset=9) as handle:  # a third smaller than np.savez_compressed
        pickle.dump({"meta": meta, **arrays}, handle)

    sinogram_path = next(args.case.glob("sinogram_*.npz"))
    sinogram = read_sinogram(sinogram_path)
    osem = sitk.ReadImage(str(next(args.case.glob("osem_*.nii.gz"))))
    mr = sitk.GetArrayFromImage(resample_to_reference(sitk.ReadImage(str(args.case / "mr.nii.gz")), osem,
                                                      name="MR")).astype(np.float32)
    head = sitk.GetArrayFromImage(sitk.ReadImage(str(args.case / "mask_head.nii.gz"))) > 0
    with np.load(sinogram_path) as raw:
        geometry = {k: raw[k] for k in raw.files if k not in ("prompts", "additive", "multiplicative")}
    np.savez_compressed(args.out / "case.npz", prompts=sinogram.prompts.astype(np.uint16),
                        additive=sinogram.additive.astype(np.float16),
                        multiplicative=sinogram.multiplicative.astype(np.float16),
                        mr=quantise(mr / mr[head].mean(), MR_STEP), name=sinogram_path.name, **geometry)
    for path in sorted(args.out.iterdir()):
        log.info("%s: %.1f MB", path, path.stat().st_size / 1e6)


def load_packed_pairs(path: Path) -> tuple:
    """(training pairs, validation pairs) from ``pack``'s ``PAIRS_FILE``."""
    from PETStabilityDenoiseLib.training.dataset import TrainingPair

    with lzma.open(path, "rb") as handle:
        data = pickle.load(handle)
    meta = data["meta"]

    def pair(split: str, index: int, subject: str) -> TrainingPair:
        clean = dequantise(data[f"{split}_{index}_clean"], CLEAN_STEP)
        # The prior never sees the low-dose image or the full dose (condition dropout 1): clean stands in.
        return TrainingPair(low=clean, full=clean, clean=clean, mr=dequantise(data[f"{split}_{index}_mr"], MR_STEP),
                            head=data[f"{split}_{index}_head"], subject=subject, dose=PACKED_DOSE)

    return tuple([pair(split, i, s) for i, s in enumerate(meta[split])] for split in ("training", "validation"))


def time_ddip(data: Path, device_name: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """DDIP with its defaults and the bundled prior on the packed case; its timings and peak GPU memory."""
    import torch

    from PETStabilityDenoiseLib.engine import tomography
    from PETStabilityDenoiseLib.engine.ddip import ddip_reconstruct
    from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_prior_dir, load_model
    from PETStabilityDenoiseLib.settings import DEFAULT_OSEM_ITERATIONS, DEFAULT_OSEM_SUBSETS, DDIPConfig
    from PETStabilityDenoiseLib.volumes.geometry import head_mask

    with np.load(data / "case.npz") as case:
        prompts, additive, multiplicative = (case[k].astype(np.float32)
                                             for k in ("prompts", "additive", "multiplicative"))
        mr = dequantise(case["mr"], MR_STEP)
        angles, bin_mm, spacing = case["angles_rad"], float(case["bin_mm"]), case["spacing"]
        nx, ny, _ = case["image_size"]
    device = torch.device(device_name)
    config = DDIPConfig(device=device_name, **overrides)
    projector = tomography.ParallelBeamProjector.build((int(ny), int(nx)), float(spacing[0]), n_bins=prompts.shape[2],
                                                       bin_mm=bin_mm, angles_rad=angles)
    started = time.perf_counter()
    osem = tomography.osem(prompts, projector, multiplicative, additive, DEFAULT_OSEM_ITERATIONS, DEFAULT_OSEM_SUBSETS)
    osem_s = time.perf_counter() - started
    head = head_mask(osem, mr)
    model, model_config, _ = load_model(bundled_prior_dir(), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps: List[float] = []
    started = time.perf_counter()
    mean, std = ddip_reconstruct((prompts, additive, multiplicative), projector, osem, mr, head, model, model_config,
                                 config, device=device, progress=lambda done, total, elapsed: steps.append(elapsed),
                                 voxel_size_mm=tuple(float(s) for s in spacing[::-1]))
    ddip_s = time.perf_counter() - started
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "grid_zyx": list(osem.shape), "sinogram": list(prompts.shape),
            "osem_s": osem_s, "ddip_engine_s": ddip_s, "ddip_step_elapsed_s": steps,
            "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None),
            "finite": bool(np.isfinite(mean).all() and np.isfinite(std).all()),
            "mean_over_head": float(mean[head].mean()), "osem_mean_over_head": float(osem[head].mean()),
            "config": dataclasses.asdict(config)}


def train_candidate(args: argparse.Namespace) -> None:
    """One candidate, in its own process: the bundled prior (or ``--initial-model``) trained until ``--time-limit-s``."""
    import torch

    from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_prior_dir, load_model
    from PETStabilityDenoiseLib.training.trainer import TrainingSettings, train

    torch.set_num_threads(args.threads)
    initial, config, manifest = load_model(args.initial_model or bundled_prior_dir())
    bundled = TrainingSettings(**{k: v for k, v in manifest["info"]["training"].items()
                                  if k in {f.name for f in dataclasses.fields(TrainingSettings)}})
    settings = dataclasses.replace(bundled, steps=10**6, checkpoint_every=500, validate_every=500, log_every=50,
                                   **CANDIDATES[args.name])
    train_pairs, validation_pairs = load_packed_pairs(args.data / PAIRS_FILE)
    info = {"command": f"gpu_ddip_prior.py {args.name}", "fine_tuned_from_sha256": manifest["sha256"],
            "training_subjects": sorted({p.subject for p in train_pairs}),
            "validation_subjects": sorted({p.subject for p in validation_pairs}),
            "training_pairs": len(train_pairs), "pairs_note": "one pair per simulated variant of the bundled prior's "
            "90 (benchmarks/gpu_ddip_prior.py pack), truth quantised to 0.002 of the head mean"}
    train(config, settings, train_pairs, validation_pairs, args.folder, device=torch.device(args.device), info=info,
          initial_weights=initial.state_dict(), time_limit_s=args.time_limit_s,
          progress=lambda r: log.info("%s step %d loss %.5f%s %.0f s", args.name, r.step, r.train_loss,
                                      "" if r.validation_loss is None else f" val {r.validation_loss:.5f}",
                                      r.elapsed_s))


def validate(args: argparse.Namespace) -> None:
    """Each of ``--models``' validation loss on the same held-out patches: those a training with ``--seed`` and
    ``--batch-size`` validates on (training losses of different runs are on different patches)."""
    from PETStabilityDenoiseLib.engine.ddpm.model import training_scheduler
    from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_prior_dir, load_model
    from PETStabilityDenoiseLib.training.trainer import TrainingSettings, validation_loss, validation_patches

    # The settings of the candidates' training that choose their validation patches (CANDIDATES, train_candidate).
    settings = TrainingSettings(seed=args.seed, target="truth_blurred", condition_dropout=1.0)
    _, validation_pairs = load_packed_pairs(args.data / PAIRS_FILE)
    for folder in args.models or [bundled_prior_dir()]:
        model, config, manifest = load_model(folder)
        loss = validation_loss(model, config, training_scheduler(config), *validation_patches(
            config, settings, validation_pairs), args.seed, args.batch_size)
        print(f"{manifest['sha256'][:12]} {folder}: {loss:.6f}")


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    work = Path(args.work)
    for folder in (args.out, work):
        folder.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, Any] = {}
    ddip_file = work / "ddip.json"
    try:
        if args.skip_ddip:
            raise SystemExit("skipped (--skip-ddip)")  # in a process of its own, so that a DDIP slower than expected cannot take the training's time
        subprocess.run([sys.executable, __file__, "time-ddip", "--data", str(args.data), "--out", str(ddip_file),
                        "--device", args.device, "--ddip-overrides", args.ddip_overrides],
                       timeout=args.ddip_timeout_s, check=True)
        timings["ddip"] = json.loads(ddip_file.read_text())
        log.info("DDIP: %s", {k: v for k, v in timings["ddip"].items() if k != "ddip_step_elapsed_s"})
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError, SystemExit) as error:  # the training is worth having
        log.error("DDIP timing failed: %s", error)
        timings["ddip_error"] = str(error)
    (args.out / "timings.json").write_text(json.dumps(timings, indent=1, default=str))

    time_limit = args.budget_s - (time.perf_counter() - started) - EXPORT_MARGIN_S
    log.info("Training %s for %.0f s each, side by side", ", ".join(args.candidates), time_limit)
    initial = ["--initial-model", str(args.initial_model)] if args.initial_model else []
    processes = {name: subprocess.Popen([sys.executable, __file__, "train", "--name", name, "--data", str(args.data),
                                         "--folder", str(work / name), "--device", args.device,
                                         "--time-limit-s", str(time_limit), "--threads", str(args.threads), *initial])
                 for name in args.candidates}
    for name, process in processes.items():
        timings[f"train_{name}_exit"] = process.wait()
        folder, kept = work / name, args.out / name
        kept.mkdir(exist_ok=True)
        for source in (folder / "model" / "weights.pt", folder / "model" / "model.json", folder / "loss.csv"):
            if source.is_file():
                (kept / source.name).write_bytes(source.read_bytes())
    timings["total_s"] = time.perf_counter() - started
    (args.out / "timings.json").write_text(json.dumps(timings, indent=1, default=str))
    log.info("Done in %.0f s", timings["total_s"])


def stand_in_for_simpleitk() -> types.ModuleType:
    """An empty SimpleITK whose attributes are placeholder classes: enough for the library's imports and
    annotations (``Union[np.ndarray, sitk.Image]``), which is all that this script's code on the GPU machine needs."""
    module = types.ModuleType("SimpleITK")

    def placeholder(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})

    module.__getattr__ = placeholder  # type: ignore[method-assign]
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="here: the pairs and a case as small array files")
    packing.add_argument("--labels-dir", type=Path, required=True, help="the BrainWeb label volumes")
    packing.add_argument("--work", type=Path, required=True, help="ddpm_design.py's --work: its pairs, or where to "
                         "simulate them")
    packing.add_argument("--case", type=Path, required=True, help="a 'petstab simulate --sinograms' folder")
    packing.add_argument("--out", type=Path, required=True)
    running = commands.add_parser("run", help="on the GPU: time DDIP, then train every candidate")
    running.add_argument("--data", type=Path, required=True, help="pack's --out")
    running.add_argument("--out", type=Path, required=True)
    running.add_argument("--work", type=Path, default=Path("/tmp/gpu_ddip_prior"), help="training folders")
    running.add_argument("--budget-s", type=float, required=True, help="seconds for the whole run")
    running.add_argument("--device", default="cuda")
    running.add_argument("--threads", type=int, default=4, help="CPU threads per training process")
    running.add_argument("--ddip-timeout-s", type=float, default=150)
    running.add_argument("--skip-ddip", action="store_true")
    running.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(FIRST_RUN))
    running.add_argument("--initial-model", type=Path, help="start every candidate here (default: the bundled prior)")
    running.add_argument("--ddip-overrides", default="{}", help='DDIPConfig fields as JSON (a CPU check: \'{"steps": 1}\')')
    timing = commands.add_parser("time-ddip", help="DDIP on the packed case (run starts this)")
    timing.add_argument("--data", type=Path, required=True)
    timing.add_argument("--out", type=Path, required=True, help="the timings, as JSON")
    timing.add_argument("--device", default="cuda")
    timing.add_argument("--ddip-overrides", default="{}")
    commands.add_parser("engine", help="benchmarks/bench_engine.py's quick report, without SimpleITK")
    validating = commands.add_parser("validate", help="models' validation loss on the same packed patches")
    validating.add_argument("--data", type=Path, required=True)
    validating.add_argument("--models", type=Path, nargs="*", help="model folders (default: the bundled prior)")
    validating.add_argument("--seed", type=int, default=1, help="the training seed whose patches to use")
    validating.add_argument("--batch-size", type=int, default=32)
    training = commands.add_parser("train", help="one candidate (run starts these)")
    training.add_argument("--name", choices=sorted(CANDIDATES), required=True)
    training.add_argument("--data", type=Path, required=True)
    training.add_argument("--folder", type=Path, required=True)
    training.add_argument("--device", default="cuda")
    training.add_argument("--time-limit-s", type=float, required=True)
    training.add_argument("--threads", type=int, default=4)
    training.add_argument("--initial-model", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        if args.command == "pack":
            raise
        sys.modules["SimpleITK"] = stand_in_for_simpleitk()
    if args.command == "engine":  # benchmarks/bench_engine.py's quick report (no --full, which simulates)
        sys.argv = [str(Path(__file__).with_name("bench_engine.py"))]
        runpy.run_path(sys.argv[0], run_name="__main__")
    elif args.command == "time-ddip":
        args.out.write_text(json.dumps(time_ddip(args.data, args.device, json.loads(args.ddip_overrides)), indent=1))
    else:
        {"pack": pack, "run": run, "train": train_candidate, "validate": validate}[args.command](args)


if __name__ == "__main__":
    main()
