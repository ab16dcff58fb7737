"""DICOM headers of an input PET series.

pydicom is imported inside the functions, so that the library (and the Slicer worker) imports without it; both
pydicom 2.4 (Slicer 5.8) and 3.x work.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from ..errors import InputError


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
