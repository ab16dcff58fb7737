"""Reconstruction from a sinogram file into a run folder: ``petstab reconstruct`` and its Python API.

The data and their format are ``volumes/sinogram.py``'s (docs/RECONSTRUCTION.md); the projector and OSEM are
``tomography``'s, the simulator's own, so a simulated sinogram reconstructs to the simulator's OSEM image.
The run folder appears complete or not at all (``volumes/run_folder.py``): ``osem.<fmt>`` and ``run.json``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..settings import (
    DEFAULT_OSEM_ITERATIONS,
    DEFAULT_OSEM_SUBSETS,
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_RECONSTRUCTION_METHOD,
    FILE_FORMATS,
    RECONSTRUCTION_METHODS,
    EpochReport,
)
from ..settings.config import check_choice
from ..volumes.io import output_path, write_volume
from ..volumes.run_folder import OSEM_VOLUME, staged_folder, write_record
from ..volumes.sinogram import SinogramData, check_sinogram, read_sinogram
from . import tomography
from .run import package_versions

log = logging.getLogger(__name__)


def check_osem_settings(sinogram: SinogramData, iterations: int, subsets: int) -> None:
    """Refuses OSEM settings that the data cannot take, before any work.

    Raises:
        InputError: fewer than one iteration or subset, or subsets that do not divide the sinogram's angles.
    """
    if iterations < 1 or subsets < 1:
        raise InputError(f"OSEM needs at least 1 iteration and 1 subset; got {iterations} and {subsets}")
    n_angles = sinogram.shape[1]
    if n_angles % subsets:
        divisors = [d for d in range(1, n_angles + 1) if n_angles % d == 0]
        raise InputError(f"{subsets} subsets do not divide the sinogram's {n_angles} angles; choose one of "
                         f"{', '.join(str(d) for d in divisors)}")


def osem_image(sinogram: SinogramData, iterations: int = DEFAULT_OSEM_ITERATIONS,
               subsets: int = DEFAULT_OSEM_SUBSETS,
               progress: Optional[Callable[[EpochReport], None]] = None) -> sitk.Image:
    """The OSEM reconstruction of ``sinogram`` on its PET grid, in the activity units of its multiplicative factors.

    Args:
        sinogram: checked data (``read_sinogram`` gives them; :func:`check_sinogram` is run again here).
        iterations: OSEM iterations.
        subsets: subsets of interleaved angles; must divide the number of angles.
        progress: called after each iteration with an :class:`EpochReport` (``loss`` None).
    """
    check_sinogram(sinogram)
    check_osem_settings(sinogram, iterations, subsets)
    nx, ny, _ = sinogram.image_size
    projector = tomography.ParallelBeamProjector.build((ny, nx), sinogram.spacing[0], n_bins=sinogram.shape[2],
                                                       bin_mm=sinogram.bin_mm, angles_rad=sinogram.angles_rad)
    started = time.perf_counter()

    def report(done: int) -> None:
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(EpochReport(epoch=done, epochs=iterations, loss=None, elapsed_s=elapsed,
                                 eta_s=elapsed / done * (iterations - done), samples=0))

    image = tomography.osem(sinogram.prompts, projector, sinogram.multiplicative, sinogram.additive, iterations,
                            subsets, progress=report)
    return sinogram.image(image)


def sinogram_sha256(sinogram: SinogramData) -> str:
    """The SHA-256 of the measured data and their model (prompts, additive, multiplicative), for run.json."""
    digest = hashlib.sha256()
    for array in (sinogram.prompts, sinogram.additive, sinogram.multiplicative):
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def reconstruct(sinogram_path: Path, out_dir: Path, *, method: str = DEFAULT_RECONSTRUCTION_METHOD,
                iterations: int = DEFAULT_OSEM_ITERATIONS, subsets: int = DEFAULT_OSEM_SUBSETS,
                fmt: str = DEFAULT_OUTPUT_FORMAT, overwrite: bool = True,
                progress: Optional[Callable[[EpochReport], None]] = None) -> Dict[str, Path]:
    """Reconstructs a sinogram file (docs/RECONSTRUCTION.md) into the run folder ``out_dir``.

    Args:
        sinogram_path: a ``.npz`` that ``petstab simulate --sinograms`` wrote, or one written to that format.
        out_dir: the run folder. An earlier run there is replaced as a whole; a folder holding anything else is
            refused.
        method: one of ``settings.RECONSTRUCTION_METHODS``: ``osem``.
        iterations, subsets: OSEM's (default: the simulator's brain scanner, 4 x 21).
        fmt: one of ``settings.FILE_FORMATS``.
        overwrite: False refuses an ``out_dir`` that already holds a run.
        progress: called once per OSEM iteration.

    Returns:
        ``osem`` -> the image and ``run`` -> run.json, in ``out_dir``.
    """
    check_choice("method", method, RECONSTRUCTION_METHODS)
    check_choice("format", fmt, FILE_FORMATS)
    started = time.perf_counter()
    sinogram = read_sinogram(sinogram_path)
    check_osem_settings(sinogram, iterations, subsets)
    with staged_folder(out_dir, overwrite=overwrite) as stage:
        osem = osem_image(sinogram, iterations, subsets, progress)
        path = write_volume(osem, output_path(stage, OSEM_VOLUME, fmt))
        record = {
            "kind": "reconstruction",
            "method": method,
            "sinogram": str(Path(sinogram_path).resolve()),
            "sinogram_sha256": sinogram_sha256(sinogram),
            "sinogram_shape": list(sinogram.shape),
            "dose_fraction": sinogram.dose_fraction,
            "format": fmt,
            "osem": {"iterations": iterations, "subsets": subsets},
            "timings": {"total_s": time.perf_counter() - started},
            "versions": package_versions(),
            "outputs": {OSEM_VOLUME: path.name},
        }
        record_path = write_record(stage, record)
    log.info("Reconstructed %s with OSEM (%d x %d) in %.1f s", sinogram_path, iterations, subsets,
             record["timings"]["total_s"])
    return {OSEM_VOLUME: Path(out_dir) / path.name, "run": Path(out_dir) / record_path.name}
