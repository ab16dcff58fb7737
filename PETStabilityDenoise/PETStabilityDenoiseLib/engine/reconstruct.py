"""Reconstruction from a sinogram file into a run folder: ``petstab reconstruct`` and its Python API.

The data and their format are ``volumes/sinogram.py``'s (docs/RECONSTRUCTION.md); the projector and OSEM are
``tomography``'s, the simulator's own, so a simulated sinogram reconstructs to the simulator's OSEM image.
``method="ddip"`` reconstructs with the MR-conditioned diffusion prior (``ddip.py``) and blends its mean with
the OSEM image, weighted by the std of its samples, as a denoise blends with its input.
The run folder appears complete or not at all (``volumes/run_folder.py``): ``osem.<fmt>`` and ``run.json``, and
for DDIP the four volumes of a denoise, whose ``pet`` (the blend's input) is ``osem.<fmt>``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, setting
from ..settings import (
    DDIP_ALPHA,
    DEFAULT_OSEM_ITERATIONS,
    DEFAULT_OSEM_SUBSETS,
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_RECONSTRUCTION_METHOD,
    FILE_FORMATS,
    RECONSTRUCTION_METHODS,
    DDIPConfig,
    EpochReport,
    check_alpha,
)
from ..settings.config import check_choice
from ..volumes.geometry import grids_match, head_mask, resample_to_reference
from ..volumes.io import output_path, read_volume, write_volume
from ..volumes.run_folder import OSEM_VOLUME, staged_folder, write_record
from ..volumes.sinogram import SinogramData, check_sinogram, read_sinogram
from ..volumes.validation import validate_volume
from . import tomography
from .pipeline import DenoiseResult, blend_images
from .run import package_versions, write_run

log = logging.getLogger(__name__)


def check_osem_settings(sinogram: SinogramData, iterations: int, subsets: int) -> None:
    """Refuses OSEM settings that the data cannot take, before any work.

    Raises:
        InputError: fewer than one iteration or subset, or subsets that do not divide the sinogram's angles.
    """
    if iterations < 1 or subsets < 1:
        raise InputError(f"OSEM needs at least 1 iteration and 1 subset; got {iterations} and {subsets}")
    check_subsets(sinogram, subsets, "subsets")


def check_subsets(sinogram: SinogramData, subsets: int, what: str) -> None:
    """Refuses ``subsets`` (named ``what`` in the message) that do not divide the sinogram's angles."""
    n_angles = sinogram.shape[1]
    if n_angles % subsets:
        divisors = [d for d in range(1, n_angles + 1) if n_angles % d == 0]
        raise InputError(f"{subsets} {what} do not divide the sinogram's {n_angles} angles; choose one of "
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
    projector = sinogram_projector(sinogram)
    started = time.perf_counter()

    def report(done: int) -> None:
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(EpochReport(epoch=done, epochs=iterations, loss=None, elapsed_s=elapsed,
                                 eta_s=elapsed / done * (iterations - done), samples=0))

    image = tomography.osem(sinogram.prompts, projector, sinogram.multiplicative, sinogram.additive, iterations,
                            subsets, progress=report)
    return sinogram.image(image)


def sinogram_projector(sinogram: SinogramData) -> tomography.ParallelBeamProjector:
    """The projector of the acquisition's slices: its angles, bins and the PET grid's pixels."""
    nx, ny, _ = sinogram.image_size
    return tomography.ParallelBeamProjector.build((ny, nx), sinogram.spacing[0], n_bins=sinogram.shape[2],
                                                  bin_mm=sinogram.bin_mm, angles_rad=sinogram.angles_rad)


def ddip_image(sinogram: SinogramData, osem: sitk.Image, mr: sitk.Image, config: DDIPConfig = DDIPConfig(), *,
               alpha: float = DDIP_ALPHA, progress: Optional[Callable[[EpochReport], None]] = None,
               should_stop: Optional[Callable[[], bool]] = None) -> DenoiseResult:
    """DDIP on ``sinogram``, blended with its OSEM image: a :class:`DenoiseResult` whose ``pet`` is ``osem``.

    Args:
        osem: the OSEM image of ``sinogram`` (:func:`osem_image`): the chain's start and the blend's input.
        mr: the subject's MR, registered to the PET, on any grid.
        config: see :class:`DDIPConfig`; ``config.model_dir`` (None: the bundled prior) must hold a prior, a
            diffusion model trained with condition dropout.
        progress: called after each DDIM step of each sample (``loss`` None).
        should_stop: polled after each step; True raises :class:`Cancelled`.

    Raises:
        InputError: the model is not a prior, or it was trained on a matched chain other than ``config``'s.
    """
    import torch

    check_subsets(sinogram, config.em_subsets, f"DDIP EM subsets, {setting('em_subsets')},")
    from .ddip import ddip_reconstruct
    from .ddpm.sampling import check_matched_chain
    from .ddpm.weights import bundled_prior_dir, load_model
    from .device import resolve_device

    started = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model_dir = Path(config.model_dir) if config.model_dir else bundled_prior_dir()
    model, model_config, manifest = load_model(model_dir, device)
    if not manifest.get("info", {}).get("training", {}).get("condition_dropout"):
        raise InputError(f"the diffusion model in {model_dir} was trained without condition dropout, so it is no "
                         f"prior p(PET | MR): give a prior as {setting('model_dir', '--ddip-model')}, such as one "
                         "trained with 'petstab train-ddpm --condition-dropout 1', or leave it unset for the bundled "
                         "prior")
    if not model_config.use_mr:
        raise InputError(f"the diffusion model in {model_dir} does not take the MR: DDIP's prior needs it")
    if config.mr_guidance != 1 and not manifest["info"]["training"].get("mr_dropout"):
        raise InputError(f"{setting('mr_guidance')} {config.mr_guidance:g} needs a prior trained with MR dropout "
                         f"('petstab train-ddpm --mr-dropout'); the one in {model_dir} was not: leave it at 1")
    check_matched_chain(model_config, config.steps, config.start_fraction)
    validate_volume(mr, "MR", activity=False)
    mr_on_grid = sitk.GetArrayFromImage(resample_to_reference(mr, osem, name="MR")).astype(np.float32)
    osem_array = sitk.GetArrayFromImage(osem).astype(np.float32)
    head = head_mask(osem_array, mr_on_grid)
    prepared = time.perf_counter()

    def step_done(done: int, total: int, elapsed: float) -> None:
        if progress is not None:
            progress(EpochReport(done, total, None, elapsed, elapsed / done * (total - done), config.samples))

    resolution = (tomography.ResolutionModel(config.psf_fwhm_mm, sinogram.spacing[::-1], osem_array.shape[1:])
                  if config.psf_fwhm_mm > 0 else None)
    mean, std = ddip_reconstruct((sinogram.prompts, sinogram.additive, sinogram.multiplicative),
                                 sinogram_projector(sinogram), osem_array, mr_on_grid, head, model, model_config,
                                 config, device=device, progress=step_done, should_stop=should_stop,
                                 resolution=resolution, voxel_size_mm=sinogram.spacing[::-1])
    engine_done = time.perf_counter()
    stability_mean = float(std[head].mean(dtype=np.float64))
    network_output, stability = sinogram.image(mean), sinogram.image(std)
    denoised, stability_norm = blend_images(osem, network_output, stability, alpha, stability_mean)
    record = {"device": str(device), "model_dir": str(model_dir), "model_sha256": manifest["sha256"],
              "model_config": manifest["config"]}
    info = {"fit_shape": list(osem_array.shape), "mr_resampled": not grids_match(mr, osem),
            "timings": {"prepare_s": prepared - started, "engine_s": engine_done - prepared,
                        "total_s": time.perf_counter() - started}}
    return DenoiseResult(osem, denoised, network_output, stability, stability_norm, alpha, stability_mean,
                         config.samples, "ddip", record, info)


def sinogram_sha256(sinogram: SinogramData) -> str:
    """The SHA-256 of the measured data and their model (prompts, additive, multiplicative), for run.json."""
    digest = hashlib.sha256()
    for array in (sinogram.prompts, sinogram.additive, sinogram.multiplicative):
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def reconstruct(sinogram_path: Path, out_dir: Path, *, method: str = DEFAULT_RECONSTRUCTION_METHOD,
                mr_path: Optional[Path] = None, iterations: int = DEFAULT_OSEM_ITERATIONS,
                subsets: int = DEFAULT_OSEM_SUBSETS, ddip: DDIPConfig = DDIPConfig(), alpha: float = DDIP_ALPHA,
                fmt: str = DEFAULT_OUTPUT_FORMAT, overwrite: bool = True,
                progress: Optional[Callable[[EpochReport], None]] = None) -> Dict[str, Path]:
    """Reconstructs a sinogram file (docs/RECONSTRUCTION.md) into the run folder ``out_dir``.

    Args:
        sinogram_path: a ``.npz`` that ``petstab simulate --sinograms`` wrote, or one written to that format.
        out_dir: the run folder. An earlier run there is replaced as a whole; a folder holding anything else is
            refused.
        method: one of ``settings.RECONSTRUCTION_METHODS``: ``osem``, or ``ddip`` (needs ``mr_path``; its prior
            is ``ddip.model_dir``, or the bundled one).
        mr_path: the subject's MR, registered to the PET (any grid); DDIP only.
        iterations, subsets: OSEM's (default: the simulator's brain scanner, 4 x 21); DDIP starts from this image.
        ddip: DDIP's settings (:class:`DDIPConfig`).
        alpha: DDIP's blend strength with the OSEM image (0: the DDIP mean).
        fmt: one of ``settings.FILE_FORMATS``.
        overwrite: False refuses an ``out_dir`` that already holds a run.
        progress: called once per OSEM iteration (osem), or per DDIM step of each sample (ddip).

    Returns:
        name -> path in ``out_dir``: ``osem``, ``run`` (run.json) and, for DDIP, the four volumes of a denoise.
    """
    check_choice("method", method, RECONSTRUCTION_METHODS)
    check_choice("format", fmt, FILE_FORMATS)
    check_alpha(alpha)
    if method == "ddip" and mr_path is None:
        raise InputError(f"DDIP's prior is conditioned on the MR: give the subject's MR, {setting('mr_path', '--mr')}")
    started = time.perf_counter()
    sinogram = read_sinogram(sinogram_path)
    check_osem_settings(sinogram, iterations, subsets)
    mr = read_volume(mr_path) if method == "ddip" and mr_path is not None else None
    facts = {"kind": "reconstruction", "sinogram": str(Path(sinogram_path).resolve()),
             "sinogram_sha256": sinogram_sha256(sinogram), "sinogram_shape": list(sinogram.shape),
             "dose_fraction": sinogram.dose_fraction, "osem": {"iterations": iterations, "subsets": subsets}}
    with staged_folder(out_dir, overwrite=overwrite) as stage:
        osem = osem_image(sinogram, iterations, subsets, None if mr is not None else progress)
        osem_path = write_volume(osem, output_path(stage, OSEM_VOLUME, fmt))
        if mr is None:
            record = {**facts, "method": method, "format": fmt,
                      "timings": {"total_s": time.perf_counter() - started}, "versions": package_versions(),
                      "outputs": {OSEM_VOLUME: osem_path.name}}
            paths = {OSEM_VOLUME: osem_path, "run": write_record(stage, record)}
        else:
            result = ddip_image(sinogram, osem, mr, ddip, alpha=alpha, progress=progress)
            result.record.update(facts)
            paths = write_run(result, stage, fmt, config=ddip, pet_path=osem_path, mr_path=mr_path, mr=mr,
                              pet_in_folder=True, written={OSEM_VOLUME: osem_path})
    log.info("Reconstructed %s with %s in %.1f s", sinogram_path, method, time.perf_counter() - started)
    return {name: Path(out_dir) / path.name for name, path in paths.items()}
