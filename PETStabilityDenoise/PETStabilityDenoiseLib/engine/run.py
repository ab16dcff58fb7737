"""A denoise into a run folder, and a re-blend of one: files in, the engine, files out.

:func:`denoise_into_folder` is the one place a run goes from input files to a
complete run folder (``volumes/run_folder.py``); ``petstab denoise``, the
Slicer worker and the headless batch script all call it.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, Optional

import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..settings import DDPMSamplingConfig, EngineConfig, EpochReport
from ..volumes.geometry import grids_match
from ..volumes.io import output_path, read_volume, write_volume
from ..volumes.run_folder import VOLUME_NAMES, read_record, write_record
from .pipeline import DenoiseResult, blend_images, denoise, denoise_ddpm

log = logging.getLogger(__name__)


def package_versions() -> dict:
    """The versions that a run's result depends on, for run.json."""
    import monai
    import numpy
    import torch

    try:
        numba_version: Optional[str] = metadata.version("numba")
    except metadata.PackageNotFoundError:
        numba_version = None
    return {"petstabilitydenoise": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "monai": monai.__version__, "numpy": numpy.__version__, "SimpleITK": sitk.Version_VersionString(),
            "numba": numba_version, "cuda": torch.version.cuda}


def write_run(result: DenoiseResult, out_dir: Path, fmt: str, *, config: EngineConfig, pet_path: Path,
              mr_path: Optional[Path]) -> Dict[str, Path]:
    """Writes the four volumes and run.json into ``out_dir``; returns name -> path (``run`` for run.json)."""
    out_dir = Path(out_dir)
    volumes = {"denoised": result.denoised, "network_output": result.network_output,
               "stability": result.stability, "stability_norm": result.stability_norm}
    paths = {name: write_volume(volumes[name], output_path(out_dir, name, fmt)) for name in VOLUME_NAMES}
    record = {
        "pet": str(Path(pet_path).resolve()),
        "mr": str(Path(mr_path).resolve()) if mr_path else None,
        "format": fmt,
        "alpha": result.alpha,
        "stability_mean": result.stability_mean,
        "stability_mean_region": "head mask",
        "method": result.method,
        "n_samples": result.n_samples,
        "config": dataclasses.asdict(config),
        **result.record,
        "timings": result.info["timings"],
        "fit_shape": result.info["fit_shape"],
        "mr_resampled": result.info["mr_resampled"],
        "versions": package_versions(),
        "outputs": {name: path.name for name, path in paths.items()},
    }
    paths["run"] = write_record(out_dir, record)
    return paths


def denoise_into_folder(pet_path: Path, mr_path: Optional[Path], out_dir: Path, config: EngineConfig, *,
                        alpha: float, fmt: str, progress: Optional[Callable[[EpochReport], None]] = None
                        ) -> Dict[str, Path]:
    """Reads the PET (and MR), denoises with the engine ``config`` belongs to, and writes the run folder.

    Args:
        pet_path: the noisy PET (NIfTI, NRRD, MHA or a DICOM series folder).
        mr_path: the subject's MR, registered to the PET; None runs the plain DIP from noise.
        out_dir: the run folder, created if missing.
        config: a DIPConfig fits the DIP; a DDPMSamplingConfig samples the diffusion model.
        alpha: blend strength (0: the network output).
        fmt: one of ``settings.OUTPUT_FORMATS``.
        progress: called once per epoch (DIP) or sliding window (DDPM).

    Returns:
        name -> path of the four volumes, and ``run`` -> run.json.
    """
    pet = read_volume(pet_path)
    mr = read_volume(mr_path) if mr_path else None
    if isinstance(config, DDPMSamplingConfig):
        result = denoise_ddpm(pet, mr, config, alpha=alpha, progress=progress)
    else:
        if mr is None:
            log.warning("No MR given: running the original (unconditional) DIP from random noise")
        result = denoise(pet, mr, config, alpha=alpha, progress=progress)
    return write_run(result, out_dir, fmt, config=config, pet_path=pet_path, mr_path=mr_path)


def reblend_run(run_dir: Path, alpha: float) -> Dict[str, Path]:
    """Re-blends a finished run at ``alpha``: rewrites denoised and stability_norm, updates run.json.

    The original PET is read from the path that run.json records.
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    fmt = record["format"]
    pet = read_volume(record["pet"])
    network_output = read_volume(output_path(run_dir, "network_output", fmt))
    stability = read_volume(output_path(run_dir, "stability", fmt))
    if not grids_match(pet, network_output, tol=1e-4):
        raise InputError(f"the PET at {record['pet']} no longer matches this run's grid; "
                         "it was moved or changed since the run: re-run 'petstab denoise'")
    denoised, stability_norm = blend_images(pet, network_output, stability, alpha, record["stability_mean"])
    paths = {"denoised": write_volume(denoised, output_path(run_dir, "denoised", fmt)),
             "stability_norm": write_volume(stability_norm, output_path(run_dir, "stability_norm", fmt))}
    record["alpha"] = alpha
    write_record(run_dir, record)
    return paths
