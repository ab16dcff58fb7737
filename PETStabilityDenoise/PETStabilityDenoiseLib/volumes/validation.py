"""Input checks for PET/MR volumes, run before any expensive denoising.

Every failure raises :class:`InputError` with a message that names the problem
and says what to do about it, because the typical user is a clinician or
researcher who handed us a file export, not a developer reading a traceback.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .geometry import grids_match

logger = logging.getLogger(__name__)

ArrayOrImage = Union[np.ndarray, sitk.Image]

#: The most voxels a volume may have: a 512^3 float32 volume is 0.5 GB, and the fit needs several copies.
MAX_VOXELS = 512**3
#: Volumes below this size per dimension cannot pass through the U-Net's
#: downsampling path without collapsing to nothing.
MIN_DIMENSION = 8
#: Brain PET is reconstructed at 1-4 mm; beyond this the header is almost
#: certainly wrong (e.g. cm stored as mm) or the image is not a PET volume.
MAX_SPACING_MM = 20.0
#: OSEM and other unconstrained reconstructions produce small negative values
#: in low-count regions; below this fraction of the maximum they are expected.
SMALL_NEGATIVE_FRACTION = 0.05
#: A minimum below this fraction of the maximum means the image is not an
#: activity map (difference image, signed residual, or broken rescaling).
STRONG_NEGATIVE_FRACTION = 0.5


def validate_volume(
    array_or_image: ArrayOrImage,
    name: str = "PET",
    max_voxels: int = MAX_VOXELS,
    min_dimension: int = MIN_DIMENSION,
    max_spacing_mm: float = MAX_SPACING_MM,
    activity: bool = True,
) -> None:
    """Check that ``array_or_image`` is a plausible single 3D activity volume.

    Accepts a ``SimpleITK.Image`` (dimension, components, spacing and values
    are checked) or a numpy array in (z, y, x) order (shape and values only).
    ``activity=False`` is for the MR: its intensities have no sign
    convention (a z-scored MR is mostly negative), so only finiteness and
    non-constancy are checked. Returns quietly on success; raises
    :class:`InputError` otherwise.
    """
    if isinstance(array_or_image, sitk.Image):
        _check_image_header(array_or_image, name, max_spacing_mm)
        # A view avoids copying volumes that may be hundreds of MB.
        array = sitk.GetArrayViewFromImage(array_or_image)
    elif isinstance(array_or_image, np.ndarray):
        array = array_or_image
    else:
        raise InputError(
            f"{name} must be a SimpleITK image or a numpy array; got "
            f"{type(array_or_image).__name__}. Load the file with "
            "volumes.io.read_volume first."
        )

    _check_shape(array.shape, name, max_voxels, min_dimension)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(
            f"{name} has pixel type {array.dtype}, which is not a real-valued intensity; "
            "export the volume as integer or floating-point activity values."
        )
    _check_values(array, name, activity)


def same_volume_warning(pet: sitk.Image, mr: sitk.Image, same_source: bool = False) -> Optional[str]:
    """The warning to give when the MR is the PET itself; None when it is not.

    Args:
        pet: the PET as read.
        mr: the MR as read.
        same_source: True when both came from one file or one scene node.

    Returns:
        The message, or None. The same voxels on the same grid count as the same image, since a
        copy of the PET selected as the MR guides the network by the noisy PET just the same.
    """
    same_voxels = grids_match(pet, mr, tol=0.0) and np.array_equal(sitk.GetArrayViewFromImage(pet),
                                                                    sitk.GetArrayViewFromImage(mr))
    if not (same_source or same_voxels):
        return None
    return ("The MR is the same image as the PET: the network would be guided by the noisy PET itself. "
            "Select the subject's MR, registered to the PET (or, for the DIP, no MR: the plain DIP runs from noise).")


def _check_image_header(image: sitk.Image, name: str, max_spacing_mm: float) -> None:
    """Checks that only the SimpleITK header can answer (components, spacing)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(vector or RGB image); provide a single-component (scalar) activity volume."
        )
    if image.GetDimension() != 3:
        # Reuse the shape message so 2D and 4D inputs read the same whatever their type.
        _check_ndim(tuple(reversed(image.GetSize())), name)
    spacing = image.GetSpacing()
    if not all(0.0 < s <= max_spacing_mm for s in spacing):
        spacing_text = "x".join(f"{s:g}" for s in spacing)
        raise InputError(
            f"{name} has voxel spacing {spacing_text} mm, outside (0, {max_spacing_mm:g}] mm; "
            "check the header units (cm vs mm) or the export settings of the scanner software."
        )


def _check_ndim(shape: tuple[int, ...], name: str) -> None:
    if len(shape) == 3:
        return
    if len(shape) == 4:
        hint = "pick one frame (or sum the frames of interest) before denoising"
    elif len(shape) < 3:
        hint = "provide the whole 3D volume, not a single slice or projection"
    else:
        hint = "provide a single 3D volume"
    raise InputError(
        f"{name} must be a single 3D volume; got {len(shape)}D with shape {shape}; {hint}."
    )


def _check_shape(shape: tuple[int, ...], name: str, max_voxels: int, min_dimension: int) -> None:
    _check_ndim(shape, name)
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if n_voxels > max_voxels:
        raise InputError(
            f"{name} has {n_voxels} voxels (shape {shape}), more than the limit of "
            f"{max_voxels}; crop it to the head or resample it to a coarser grid "
            "(e.g. 2 mm) before denoising."
        )
    if min(shape) < min_dimension:
        raise InputError(
            f"{name} has shape {shape}: at least one dimension is below {min_dimension} voxels, "
            "too small for the 3D U-Net; provide the full volume rather than a thin slab."
        )


def _check_values(array: np.ndarray, name: str, activity: bool) -> None:
    finite = np.isfinite(array)
    n_bad = int(array.size - np.count_nonzero(finite))
    if n_bad:
        raise InputError(
            f"{name} volume contains {n_bad} NaN/Inf voxels; check the reconstruction "
            "export or mask those voxels before denoising."
        )
    vmin = float(array.min())
    vmax = float(array.max())
    if vmin == vmax:
        what = "all zero" if vmax == 0.0 else f"constant ({vmax:g})"
        raise InputError(
            f"{name} volume is {what}; check that the right file or series was selected "
            "and that the export did not drop the pixel data."
        )
    if not activity:
        return
    if vmax <= 0.0:
        raise InputError(
            f"{name} volume has no positive values (range [{vmin:g}, {vmax:g}]); "
            "check the intensity scaling (rescale slope/intercept) of the export."
        )
    if vmin < -STRONG_NEGATIVE_FRACTION * vmax:
        raise InputError(
            f"{name} volume has minimum {vmin:g} against maximum {vmax:g}: it looks like a "
            "difference image or wrong scaling; provide the reconstructed activity "
            "(or SUV) volume."
        )
    if vmin < -SMALL_NEGATIVE_FRACTION * vmax:
        logger.warning(
            "%s has unusually large negative values (min %g, max %g); continuing, but check "
            "the reconstruction settings.", name, vmin, vmax,
        )
    elif vmin < 0.0:
        logger.debug("%s has small negative values (min %g), as OSEM produces.", name, vmin)
