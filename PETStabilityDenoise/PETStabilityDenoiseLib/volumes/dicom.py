"""DICOM headers of an input PET series, and the derived series a run writes for each output (``--format dicom``).

A derived series copies each input slice's header (patient, study, frame of reference, geometry, the PET
modules), without its private tags, and gives it a new Series and SOP Instance UID, ImageType DERIVED\\SECONDARY,
a SeriesDescription naming the output, a reference to its source slice, and int16 pixels with a per-slice
RescaleSlope. pydicom is imported inside the functions, so that the library (and the Slicer worker) imports
without it; both pydicom 2.4 (Slicer 5.8) and 3.x work.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError, OutputError
from .geometry import grids_match
from .io import read_volume

log = logging.getLogger(__name__)

#: A derived series reads back within this fraction of the largest magnitude of its float volume.
DICOM_TOLERANCE = 1e-3
# The largest stored integer: below int16's 32767, so that rounding the slope to a DICOM decimal never overflows.
PIXEL_MAX = 32000
# The longest SeriesDescription (VR LO).
DESCRIPTION_LENGTH = 64
# Attributes of the source slice that would misdescribe the new pixels.
STALE = ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
         "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit", "WindowCenter", "WindowWidth",
         "WindowCenterWidthExplanation", "RescaleType", "RealWorldValueMappingSequence", "IconImageSequence")
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


def read_headers(files: Sequence[str]) -> List[Any]:
    """The pydicom datasets of ``files``, without their pixel data.

    Raises:
        InputError: a file cannot be read as DICOM.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(str(path), stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError) as error:
            raise InputError(f"Could not read the DICOM header of {path}: {error}") from None
    return headers


def quantise_slices(array: np.ndarray) -> Tuple[np.ndarray, List[str]]:
    """int16 pixels and a RescaleSlope per slice (a DICOM decimal string) that give back ``array``.

    Each slice's largest magnitude maps to about ``PIXEL_MAX``, so the rounding error is at most half a
    slope: 1/64000 of that slice's largest magnitude. The intercept is 0, as the PET Image module requires.

    Args:
        array: the float volume, (z, y, x).
    """
    pixels = np.zeros(array.shape, dtype=np.int16)
    slopes = []
    for k, plane in enumerate(np.asarray(array, dtype=np.float64)):
        largest = float(np.abs(plane).max())
        slope = f"{largest / PIXEL_MAX:.10g}" if largest > 0 else "1"  # at most 16 characters (VR DS)
        pixels[k] = np.clip(np.rint(plane / float(slope)), -32768, 32767)
        slopes.append(slope)
    return pixels, slopes


def write_derived_series(image: sitk.Image, folder: Path, source_files: Sequence[str], *, description: str,
                         units: Optional[str] = None, suv_type: Optional[str] = None) -> Path:
    """Writes ``image`` as a DICOM series derived from the source series, one file per slice, and reads it back.

    Args:
        image: the volume, on the source series' grid (one slice per source file, in the same order).
        folder: the series folder to make; it must not exist.
        source_files: the source series' files in slice order (``io.dicom_series_files``).
        description: what the series holds (e.g. ``denoised alpha 0.3``); the SeriesDescription is the
            source's followed by ``PETStab`` and this.
        units: the PET Units (0054,1001) of the values (e.g. GML for SUV), where the source has that attribute;
            None keeps the source's.
        suv_type: the SUV Type (0054,1006) to record, with Units GML.

    Returns:
        ``folder``.

    Raises:
        OutputError: the series cannot be written, or does not read back on the same grid and within
            :data:`DICOM_TOLERANCE` of ``image``.
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    array = sitk.GetArrayFromImage(image)
    if len(source_files) != array.shape[0]:
        raise InputError(f"the source DICOM series has {len(source_files)} files for {array.shape[0]} slices: "
                         "a DICOM output needs a PET series of one file per slice")
    pixels, slopes = quantise_slices(array)
    series_uid = generate_uid()
    try:
        folder.mkdir()
        for k, source in enumerate(source_files):
            dataset = _derived_slice(read_headers([source])[0], pixels[k], slopes[k], series_uid, description,
                                     units, suv_type)
            _save(dataset, folder / f"{k + 1:04d}.dcm")
    except OSError as error:
        raise OutputError(f"could not write the DICOM series {folder.name}: {error.strerror or error}") from None
    _check_read_back(image, folder)
    log.debug("Wrote the DICOM series %s (%d files)", folder, len(source_files))
    return folder


def _derived_slice(source: Any, pixels: np.ndarray, slope: str, series_uid: str, description: str,
                   units: Optional[str], suv_type: Optional[str]) -> Any:
    """The dataset of one derived slice: the source slice's public attributes with the new pixels and identity."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    source.remove_private_tags()  # vendors' private scale factors would misdescribe the new pixels
    dataset = Dataset()
    for element in source:
        if element.keyword not in STALE:
            dataset.add(element)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.get("SOPClassUID") or PET_IMAGE_STORAGE
    reference.ReferencedSOPInstanceUID = source.get("SOPInstanceUID", "")
    dataset.SOPClassUID = reference.ReferencedSOPClassUID
    dataset.SOPInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = series_uid
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    dataset.SeriesDescription = _series_description(str(source.get("SeriesDescription", "")), f"PETStab {description}")
    dataset.DerivationDescription = f"PETStabilityDenoise {__version__}: {description}"
    dataset.SourceImageSequence = [reference]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, "0"
    if units is not None and "Units" in dataset:
        dataset.Units = units
    if suv_type is not None:
        dataset.SUVType = suv_type
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    dataset["PixelData"].VR = "OW"

    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def _series_description(source: str, description: str) -> str:
    """``source description``, the source's part shortened to fit a DICOM LO (64 characters)."""
    source = source.strip()[: max(DESCRIPTION_LENGTH - len(description) - 1, 0)].rstrip()
    return f"{source} {description}" if source else description[:DESCRIPTION_LENGTH]


def _save(dataset: Any, path: Path) -> None:
    """Writes a DICOM file (preamble, file meta) with pydicom 3 (``enforce_file_format``) or 2 (``write_like_original``)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        dataset.save_as(str(path), enforce_file_format=True)
    else:
        dataset.is_little_endian, dataset.is_implicit_VR = True, False
        dataset.save_as(str(path), write_like_original=False)


def _check_read_back(image: sitk.Image, folder: Path) -> None:
    """Reads the written series as an input would be read: the same grid, values within DICOM_TOLERANCE."""
    try:
        written = read_volume(folder)
    except InputError as error:
        raise OutputError(f"the DICOM series {folder.name} does not read back: {error}") from None
    if not grids_match(written, image, tol=1e-4):
        raise OutputError(f"the DICOM series {folder.name} reads back on another grid than the volume written")
    expected = sitk.GetArrayViewFromImage(image)
    deviation = float(np.abs(sitk.GetArrayViewFromImage(written) - expected).max())
    largest = float(np.abs(expected).max())
    if not deviation <= DICOM_TOLERANCE * largest:
        raise OutputError(f"the DICOM series {folder.name} reads back up to {deviation:g} from the volume written "
                          f"(more than {DICOM_TOLERANCE:.1%} of its largest value, {largest:g})")
