"""Reading and writing PET/MR volumes with their geometry, via SimpleITK.

Inputs may be NIfTI, NRRD, MetaImage or a DICOM series folder; outputs are
written in one of the single-file formats here, and as DICOM series by
``dicom.py``. Input files are only ever read.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError
from ..settings import DICOM_FORMAT, OUTPUT_FORMATS
from .nifti import check_nifti_payload
from .validation import MAX_VOXELS

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Single-file formats accepted by :func:`read_volume` (a DICOM series is given as a folder).
READABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ON_WINDOWS = os.name == "nt"


def itk_path(path: PathLike) -> str:
    """``path`` as ITK can open it: on Windows, ITK opens only paths in the active code page, so a path with
    characters outside ASCII (a user name with accents) is given by its short 8.3 form, the existing file's own or,
    for a file to be written, its folder's. Unchanged elsewhere, and where Windows keeps no short names.
    """
    text = str(path)
    if not ON_WINDOWS or text.isascii():
        return text
    target = Path(text)
    existing, name = (target, "") if target.exists() else (target.parent, target.name)
    short = _windows_short_path(str(existing))
    return str(Path(short) / name) if short else text


def non_ascii_path_advice(path: PathLike) -> str:
    """What to add to an error of ITK's on ``path``: on Windows, where the path is not ASCII even in its short form,
    why ITK could not open it and what to do; otherwise nothing."""
    if not ON_WINDOWS or itk_path(path).isascii():
        return ""
    return (" On Windows, ITK opens a path with non-ASCII characters only when Windows uses UTF-8 (the region "
            "setting 'Beta: Use Unicode UTF-8 for worldwide language support'); use a folder with a plain-ASCII path.")


def _windows_short_path(path: str) -> Union[str, None]:
    """The short (8.3) form of an existing ``path``; None where Windows gives none in ASCII."""
    import ctypes

    buffer = ctypes.create_unicode_buffer(32768)
    length = ctypes.windll.kernel32.GetShortPathNameW(path, buffer, len(buffer))  # type: ignore[attr-defined]
    return buffer.value if 0 < length < len(buffer) and buffer.value.isascii() else None


def _volume_suffix(path: Path) -> str | None:
    """Return the recognised (possibly double) suffix of ``path``, or None."""
    lower = path.name.lower()
    # Longest first so ".nii.gz" wins over a bare ".gz" lookup.
    for suffix in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return None


def read_volume(path: PathLike) -> sitk.Image:
    """Read a volume file or DICOM series folder as a float32 scalar image.

    Geometry (origin, spacing, direction) is preserved; intensities are cast
    to float32 after any DICOM rescale slope/intercept has been applied.
    Before any voxel data is read, the path must be a regular file (or a
    folder, for DICOM) and its header may not announce more than
    ``validation.MAX_VOXELS`` voxels; a NIfTI file's payload is checked for
    truncation and NaN/Inf, which ITK's reader would hide (``nifti.py``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"Input path {path} does not exist; check the spelling and that the drive or "
            "share holding it is mounted."
        )
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"{path} is not a regular file (a pipe, device or socket?); give a volume file")
        if _volume_suffix(path) is None:
            raise InputError(
                f"Unsupported file type for {path.name}; supported inputs are "
                f"{', '.join(READABLE_SUFFIXES)} files or a folder holding one DICOM series "
                "(for DICOM, pass the folder, not a single slice)."
            )
        _check_announced_size(path, [str(path)])
        if _volume_suffix(path) in (".nii", ".nii.gz"):
            check_nifti_payload(path)
        try:
            image = sitk.ReadImage(itk_path(path))
        except RuntimeError as exc:
            raise InputError(
                f"Could not read {path}: {exc}. Check that the file is complete and not "
                f"corrupted, e.g. by opening it in 3D Slicer.{non_ascii_path_advice(path)}"
            ) from exc

    n_components = image.GetNumberOfComponentsPerPixel()
    if n_components != 1:
        raise InputError(
            f"{path} holds a {n_components}-component (vector/RGB) image; provide a "
            "single-component intensity volume."
        )
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    logger.debug("Read %s: size %s, spacing %s", path, image.GetSize(), image.GetSpacing())
    return image


def dicom_series_files(folder: PathLike) -> Tuple[str, ...]:
    """The files of the DICOM series in ``folder`` that :func:`read_volume` reads, in slice order."""
    return _choose_series(Path(folder))[0]


def _choose_series(folder: Path) -> Tuple[Tuple[str, ...], str, int]:
    """The files of the series in ``folder`` with the most files, its ID, and the number of series there."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(itk_path(folder))
    if not series_ids:
        raise InputError(
            f"No DICOM series found in folder {folder}; point to the folder that directly "
            "contains the PET (or MR) DICOM files, or give a NIfTI/NRRD/MetaImage file instead."
        )
    files_per_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(itk_path(folder), sid)
                        for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_per_series[sid]))
    return tuple(files_per_series[chosen]), chosen, len(series_ids)


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the DICOM series in ``folder``; with several, the one with the most files."""
    files, chosen, n_series = _choose_series(folder)
    if n_series > 1:
        logger.warning(
            "Folder %s holds %d DICOM series; using series %s (%d files), the one with the "
            "most files. Put each series in its own folder to choose explicitly.",
            folder, n_series, chosen, len(files),
        )
    _check_announced_size(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    # Float output so that per-slice rescale slopes (common in PET) are applied
    # before the slices are stacked, instead of truncating to the first slice's type.
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(
            f"Could not read DICOM series {chosen} in {folder}: {exc}. Check that the series "
            "is complete (no missing slices) and exported uncompressed or in a standard "
            "transfer syntax."
        ) from exc


def _check_announced_size(path: Path, files: Sequence[str]) -> None:
    """Refuses a volume whose header (the first file's, times the number of files) announces too many voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_path(files[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"Could not read the header of {files[0]}: {exc}. Check that the file is a complete "
                         f"NIfTI, NRRD, MetaImage or DICOM file.{non_ascii_path_advice(files[0])}") from exc
    size = list(reader.GetSize())
    if len(files) > 1:
        size = size[:2] + [len(files)]
    voxels = int(np.prod(size, dtype=np.int64)) * reader.GetNumberOfComponents()
    if voxels > MAX_VOXELS:
        raise InputError(f"{path} announces {' x '.join(map(str, size))} voxels, more than the limit of {MAX_VOXELS}; "
                         "crop it to the head or resample it to a coarser grid first")


def write_volume(image: sitk.Image, path: PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` (compressed where the format allows, unless ``compress`` is False) and read it
    back; return the path.

    Parent folders are created as needed. OutputError when the file cannot be
    written or does not read back as written (a full disk, a read-only folder).
    """
    path = Path(path)
    if _volume_suffix(path) is None:
        raise InputError(
            f"Cannot write {path.name}: give the output file one of the suffixes "
            f"{', '.join(READABLE_SUFFIXES)}."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, itk_path(path), useCompression=compress)
        written = sitk.ReadImage(itk_path(path))  # kept in a name: a view must not outlive its image
        intact = np.array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(image))
    except (OSError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise OutputError(f"could not write {path.name}: {reason}.{non_ascii_path_advice(path)}") from None
    if not intact:
        raise OutputError(f"{path.name} reads back differently from what was written")
    logger.debug("Wrote %s", path)
    return path


def output_path(out_dir: PathLike, stem: str, fmt: str = "nii.gz") -> Path:
    """Build ``out_dir/stem.fmt`` for an output volume, or the series folder ``out_dir/stem`` for DICOM; checks ``fmt``."""
    fmt = fmt.lstrip(".").lower()
    if fmt not in OUTPUT_FORMATS:
        raise InputError(
            f"Unsupported output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}."
        )
    return Path(out_dir) / (stem if fmt == DICOM_FORMAT else f"{stem}.{fmt}")
