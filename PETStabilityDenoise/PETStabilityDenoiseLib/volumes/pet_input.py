"""The PET as a run processes it, read in one place: a denoise and a later re-blend must see the same image.

A PET DICOM series may be converted to SUV here (``suv.py``), and its files are kept, in slice order, for the
DICOM outputs derived from it (``dicom.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import SimpleITK as sitk

from ..errors import InputError, setting
from ..settings import DICOM_FORMAT, FILE_FORMATS, SUV_TYPES
from ..settings.config import check_choice
from .dicom import read_headers
from .io import dicom_series_files, read_volume
from .suv import SUVFactor, suv_bw_factor

log = logging.getLogger(__name__)
# How messages name the output format, for the Python API and petstab alike.
FORMAT = setting("fmt", "--format")


@dataclass(frozen=True)
class PetInput:
    """The PET as processed, and what its outputs need from its source.

    Attributes:
        image: float32 voxels on the PET's grid; in SUV when ``suv`` is set.
        suv: the SUV conversion applied, or None.
        series_files: the DICOM series' files in slice order; empty when the PET is a single file.
    """

    image: sitk.Image
    suv: Optional[SUVFactor] = None
    series_files: Tuple[str, ...] = ()

    def dicom_source(self) -> Tuple[str, ...]:
        """The files DICOM outputs are derived from, one per slice; InputError when there are none such."""
        if not self.series_files:
            raise InputError(f"{FORMAT} {DICOM_FORMAT} needs the PET as a DICOM series folder")
        if len(self.series_files) != self.image.GetDepth():
            raise InputError(f"{FORMAT} {DICOM_FORMAT} needs a PET series of one file per slice; this one has "
                             f"{len(self.series_files)} file(s) for {self.image.GetDepth()} slices (multi-frame?): "
                             f"choose another {FORMAT} ({', '.join(FILE_FORMATS)})")
        return self.series_files


def check_pet_options(pet_path: Union[str, Path], *, suv: Optional[str], fmt: Optional[str] = None) -> None:
    """Refuses SUV and DICOM outputs for a PET that is not a DICOM series folder, before anything is read.

    Args:
        pet_path: the PET as given (a path that does not exist is left to the reader to report).
        suv: the SUV type asked for (``settings.SUV_TYPES``), or None.
        fmt: the output format, if there is one.
    """
    if suv is not None:
        check_choice("suv", suv, SUV_TYPES)
    path = Path(pet_path)
    if not path.exists() or path.is_dir():
        return
    if suv is not None:
        raise InputError(f"{setting('suv')} {suv} needs the PET as a DICOM series folder (SUV comes from its headers' dose, "
                         f"weight and times); {path} is a file")
    if fmt == DICOM_FORMAT:
        raise InputError(f"{FORMAT} {DICOM_FORMAT} needs the PET as a DICOM series folder (each output series is "
                         f"derived from it); {path} is a file: choose another {FORMAT} ({', '.join(FILE_FORMATS)})")


def read_pet(pet_path: Union[str, Path], suv: Optional[str] = None) -> PetInput:
    """Reads the PET as a run processes it: a volume file, or a DICOM series folder, in SUV if asked.

    Args:
        pet_path: a volume file or a DICOM series folder (``io.read_volume``).
        suv: None keeps the stored values; ``"bw"`` converts a BQML series to body-weight SUV.

    Raises:
        InputError: an unreadable PET, SUV asked for a file, or a tag SUV needs is missing or wrong.
    """
    check_pet_options(pet_path, suv=suv)
    image = read_volume(pet_path)
    if not Path(pet_path).is_dir():
        return PetInput(image)
    files = dicom_series_files(pet_path)
    if suv is None:
        return PetInput(image, series_files=files)
    factor = suv_bw_factor(read_headers(files))
    log.info("PET in SUVbw: %g x Bq/ml (weight %g kg, dose %g Bq decayed over %.0f s)", factor.factor,
             factor.tags["PatientWeight"], factor.tags["RadionuclideTotalDose"], factor.decay_s)
    return PetInput(image * factor.factor, factor, files)
