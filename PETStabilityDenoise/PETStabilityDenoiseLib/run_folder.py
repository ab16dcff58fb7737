"""The output folder of one denoising run: fixed file names plus ``run.json``.

Scripts and the Slicer worker rely on these names:
``denoised``, ``network_output``, ``stability``, ``stability_norm`` (each
``.<fmt>``) and ``run.json`` (parameters, versions, device, timings, loss per
epoch, number of stability samples).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import SimpleITK as sitk

from . import __version__
from .config import DDPMSamplingConfig, DIPConfig
from .geometry import grids_match
from .validation import InputError
from .volume_io import output_path, read_volume, write_volume

if TYPE_CHECKING:
    from .pipeline import DenoiseResult

RUN_FILE = "run.json"
VOLUME_NAMES = ("denoised", "network_output", "stability", "stability_norm")


def strict_json(value):
    """``value`` with every non-finite float replaced by None, recursively, so that ``json.dumps`` writes strict
    JSON (a rejected DIP step's loss may be NaN or infinite)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_record(path: Path, record: dict) -> None:
    path.write_text(json.dumps(strict_json(record), indent=2, allow_nan=False))


def package_versions() -> dict:
    import monai
    import numpy
    import torch

    from .blend import numba

    return {"petstabilitydenoise": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "monai": monai.__version__, "numpy": numpy.__version__, "SimpleITK": sitk.Version_VersionString(),
            "numba": numba.__version__ if numba else None, "cuda": torch.version.cuda}


def write_run(
    result: "DenoiseResult",
    out_dir: Path,
    fmt: str,
    *,
    config: Union[DIPConfig, DDPMSamplingConfig],
    pet_path: Path,
    mr_path: Optional[Path],
) -> dict:
    """Writes the four volumes and run.json into ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    volumes = {"denoised": result.denoised, "network_output": result.network_output,
               "stability": result.stability, "stability_norm": result.stability_norm}
    paths = {name: write_volume(image, output_path(out_dir, name, fmt)) for name, image in volumes.items()}
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
    paths["run"] = out_dir / RUN_FILE
    _write_record(paths["run"], record)
    return paths


def reblend_run(run_dir: Path, alpha: float) -> dict:
    """Re-blends a finished run at ``alpha``: rewrites denoised and stability_norm, updates run.json.

    The original PET is read from the path that run.json records.
    """
    from .pipeline import blend_images

    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise InputError(f"{run_file} not found: --run must be a folder written by 'petstab denoise'")
    record = json.loads(run_file.read_text())
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
    _write_record(run_file, record)
    return paths
