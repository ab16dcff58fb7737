"""A denoise into a run folder, and a re-blend of one: files in, the engine, files out.

:func:`denoise_into_folder` is the one place a run goes from input files to a
complete run folder (``volumes/run_folder.py``); ``petstab denoise``, the
Slicer worker and the headless batch script all call it.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..settings import (
    DICOM_FORMAT,
    OUTPUT_FORMATS,
    DDIPConfig,
    DDPMSamplingConfig,
    EngineConfig,
    EpochReport,
    check_alpha,
)
from ..settings.config import check_choice
from ..volumes.dicom import write_derived_series
from ..volumes.geometry import grids_match
from ..volumes.io import output_path, read_volume, write_volume
from ..volumes.pet_input import FORMAT, PetInput, check_pet_options, read_pet
from ..volumes.run_folder import (
    VOLUME_NAMES,
    image_sha256,
    read_record,
    recorded_pet_path,
    staged_folder,
    write_record,
)
from ..volumes.validation import same_volume_warning
from .device import resolve_device
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


# How each output's DICOM series is described; the alpha is named where the output depends on it.
SERIES_LABELS = {"denoised": "denoised", "network_output": "network output", "stability": "stability S",
                 "stability_norm": "S_norm"}
BLENDED = ("denoised", "stability_norm")


def write_output(image: sitk.Image, folder: Path, name: str, fmt: str, *, alpha: float,
                 pet: Optional[PetInput]) -> Path:
    """Writes one output volume of a run into ``folder`` and reads it back: a file, or a DICOM series folder.

    Args:
        image: the volume, on the PET's grid.
        folder: the (staged) run folder.
        name: one of ``run_folder.VOLUME_NAMES``.
        fmt: one of ``settings.OUTPUT_FORMATS``.
        alpha: the run's blend strength, named in the DICOM SeriesDescription of the blended outputs.
        pet: the PET as read; DICOM outputs are derived from its series, in its SUV units.
    """
    path = output_path(folder, name, fmt)
    if fmt != DICOM_FORMAT:
        return write_volume(image, path)
    if pet is None:
        raise InputError(f"{FORMAT} {DICOM_FORMAT} needs the PET as a DICOM series folder")
    description = SERIES_LABELS[name] + (f" alpha {alpha:g}" if name in BLENDED else "")
    # S_norm is a fraction; the other outputs share the PET's units.
    units = "NONE" if name == "stability_norm" else "GML" if pet.suv else None
    return write_derived_series(image, path, pet.dicom_source(), description=description, units=units,
                                suv_type="BW" if units == "GML" else None)


def write_run(result: DenoiseResult, folder: Path, fmt: str, *, config: Union[EngineConfig, DDIPConfig],
              pet_path: Path, mr_path: Optional[Path], mr: Optional[sitk.Image] = None,
              pet: Optional[PetInput] = None, pet_in_folder: bool = False,
              written: Optional[Dict[str, Path]] = None) -> Dict[str, Path]:
    """Writes the four volumes and run.json into ``folder``, each read back; returns name -> path (``run``: run.json).

    ``mr`` (the MR as read) gives run.json its SHA-256; the PET's comes from ``result.pet``. ``pet`` (the PET as
    read by :func:`read_pet`) gives run.json its SUV conversion and DICOM outputs their source series.
    ``pet_in_folder``: the PET is ``pet_path``, a file of the run folder (a reconstruction's OSEM image), and is
    recorded by its name, so that the folder can move. ``written``: name -> path of other volumes already in
    ``folder`` (a reconstruction's ``osem``), which run.json lists among the outputs too.
    """
    folder = Path(folder)
    volumes = {"denoised": result.denoised, "network_output": result.network_output,
               "stability": result.stability, "stability_norm": result.stability_norm}
    paths = {**(written or {}), **{name: write_output(volumes[name], folder, name, fmt, alpha=result.alpha, pet=pet)
                                   for name in VOLUME_NAMES}}
    record = {
        "pet": Path(pet_path).name if pet_in_folder else str(Path(pet_path).resolve()),
        "pet_sha256": image_sha256(result.pet),
        "suv": pet.suv.record() if pet is not None and pet.suv is not None else None,
        "mr": str(Path(mr_path).resolve()) if mr_path else None,
        "mr_sha256": image_sha256(mr) if mr is not None else None,
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
    paths["run"] = write_record(folder, record)
    return paths


def denoise_into_folder(pet_path: Path, mr_path: Optional[Path], out_dir: Path, config: EngineConfig, *,
                        alpha: float, fmt: str, progress: Optional[Callable[[EpochReport], None]] = None,
                        overwrite: bool = True, suv: Optional[str] = None) -> Dict[str, Path]:
    """Reads the PET (and MR), denoises with the engine ``config`` belongs to, and writes the run folder.

    The folder appears complete or not at all: the run is written beside ``out_dir``
    and takes its place only when every file has been read back (``volumes/run_folder.py``).
    ``out_dir``, ``alpha``, ``fmt`` and ``suv`` are checked before the inputs are read, and the PET's DICOM
    tags before the fit.

    Args:
        pet_path: the noisy PET (NIfTI, NRRD, MHA or a DICOM series folder).
        mr_path: the subject's MR, registered to the PET; None runs the plain DIP from noise.
        out_dir: the run folder. An earlier run there is replaced as a whole; a folder
            holding anything else is refused.
        config: a DIPConfig fits the DIP; a DDPMSamplingConfig samples the diffusion model.
        alpha: blend strength (0: the network output).
        fmt: one of ``settings.OUTPUT_FORMATS``; ``dicom`` needs a DICOM series as the PET.
        progress: called once per epoch (DIP) or sliding window (DDPM).
        overwrite: False refuses an ``out_dir`` that already holds a run.
        suv: None, or ``"bw"`` to denoise a DICOM series in body-weight SUV (``volumes/suv.py``).

    Returns:
        name -> path of the four volumes, and ``run`` -> run.json, in ``out_dir``.
    """
    check_alpha(alpha)
    check_choice("format", fmt, OUTPUT_FORMATS)
    check_pet_options(pet_path, suv=suv, fmt=fmt)
    resolve_device(config.device)  # refuses 'cuda' without a GPU before any work
    with staged_folder(out_dir, overwrite=overwrite) as stage:
        pet = read_pet(pet_path, suv)
        if fmt == DICOM_FORMAT:
            pet.dicom_source()  # refuses a multi-frame series before the fit
        mr = read_volume(mr_path) if mr_path else None
        if mr is not None:
            same_file = mr_path is not None and Path(pet_path).resolve() == Path(mr_path).resolve()
            warning = same_volume_warning(pet.image, mr, same_source=same_file)
            if warning:
                log.warning("%s (PET %s, MR %s)", warning, pet_path, mr_path)
        if isinstance(config, DDPMSamplingConfig):
            result = denoise_ddpm(pet.image, mr, config, alpha=alpha, progress=progress)
        else:
            if mr is None:
                log.warning("No MR given: running the original (unconditional) DIP from random noise")
            result = denoise(pet.image, mr, config, alpha=alpha, progress=progress)
        staged = write_run(result, stage, fmt, config=config, pet_path=pet_path, mr_path=mr_path, mr=mr, pet=pet)
    return {name: Path(out_dir) / path.name for name, path in staged.items()}


def reblend_run(run_dir: Path, alpha: float) -> Dict[str, Path]:
    """Re-blends a finished run at ``alpha``: a new denoised and stability_norm, and run.json's alpha.

    The original PET is read from the path that run.json records, as the run read it (in SUV if it was), and
    must be the image the run processed (its SHA-256). The folder is replaced as a whole, as by a run.
    """
    check_alpha(alpha)
    run_dir = Path(run_dir)
    record = read_record(run_dir, "format", "pet", "pet_sha256", "stability_mean", "outputs")
    fmt = record["format"]
    pet_path = recorded_pet_path(run_dir, record)
    pet = read_pet(pet_path, (record.get("suv") or {}).get("type"))
    if image_sha256(pet.image) != record["pet_sha256"]:
        raise InputError(f"the PET at {pet_path} is not the image this run processed (its SHA-256 differs "
                         "from run.json's): it was changed since; make the run again")
    network_output = read_volume(output_path(run_dir, "network_output", fmt))
    stability = read_volume(output_path(run_dir, "stability", fmt))
    if not grids_match(pet.image, network_output, tol=1e-4):
        raise InputError(f"the PET at {pet_path} does not match this run's grid: make the run again")
    denoised, stability_norm = blend_images(pet.image, network_output, stability, alpha, record["stability_mean"])
    with staged_folder(run_dir) as stage:
        for name in set(record["outputs"]) - set(BLENDED):  # everything the new alpha leaves as it was
            source, target = run_dir / record["outputs"][name], stage / record["outputs"][name]
            if source.is_dir():  # a DICOM series
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        paths = {name: write_output(image, stage, name, fmt, alpha=alpha, pet=pet)
                 for name, image in (("denoised", denoised), ("stability_norm", stability_norm))}
        write_record(stage, {**record, "alpha": alpha})
    return {name: run_dir / path.name for name, path in paths.items()}
