"""Grid handling: MR-to-PET resampling, numpy/SimpleITK conversion, U-Net crop/pad.

Resampling and physical geometry use SimpleITK; cropping and padding are pure
numpy on (z, y, x) arrays and exactly invertible, so the denoised crop can be
put back into the original PET grid voxel for voxel.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Literal, Union, cast

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError

logger = logging.getLogger(__name__)

#: Tolerance for deciding that two grids are identical (mm and direction cosines).
GRID_TOLERANCE = 1e-6
#: The moving image must cover at least this fraction of the reference box.
MIN_OVERLAP_FRACTION = 0.1


def grids_match(a: sitk.Image, b: sitk.Image, tol: float = GRID_TOLERANCE) -> bool:
    """True if ``a`` and ``b`` share size, origin, spacing and direction (within ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0.0, atol=tol)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0.0, atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=tol)
    )


def physical_bounding_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical box (min corner, max corner) in mm covering all voxels.

    Uses the outer voxel edges (index -0.5 and size-0.5) of all 8 corners, mapped
    through the direction matrix, so rotated and flipped grids are handled.
    """
    size = image.GetSize()
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint(
                [n - 0.5 if upper else -0.5 for n, upper in zip(size, choice)]
            )
            for choice in itertools.product((0, 1), repeat=image.GetDimension())
        ]
    )
    return corners.min(axis=0), corners.max(axis=0)


def _describe_grid(image: sitk.Image) -> str:
    size = "x".join(str(n) for n in image.GetSize())
    spacing = "x".join(f"{s:.2f}" for s in image.GetSpacing())
    return f"{size} @ {spacing} mm"


def _describe_box(box: tuple[np.ndarray, np.ndarray]) -> str:
    lo, hi = box
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(lo, hi)) + "] mm"


def resample_to_reference(
    moving: sitk.Image,
    reference: sitk.Image,
    name: str = "MR",
    reference_name: str = "PET",
) -> sitk.Image:
    """Put ``moving`` onto the grid of ``reference`` as float32.

    Both images must already be registered (same physical space), so an
    identity transform with linear interpolation is used; voxels outside
    ``moving`` become 0. A grid that already matches is returned unresampled.
    """
    for image, label in ((moving, name), (reference, reference_name)):
        if image.GetDimension() != 3:
            raise InputError(
                f"{label} must be a 3D volume to be resampled; got {image.GetDimension()}D. "
                "Select a single 3D frame or series."
            )
    if grids_match(moving, reference):
        return moving if moving.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(moving, sitk.sitkFloat32)

    _check_overlap(moving, reference, name, reference_name)
    resampled = sitk.Resample(
        moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    logger.info(
        "Resampled %s from %s onto the %s grid %s",
        name, _describe_grid(moving), reference_name, _describe_grid(reference),
    )
    return resampled


def _check_overlap(moving: sitk.Image, reference: sitk.Image, name: str, reference_name: str) -> None:
    """Raise InputError if ``moving`` covers too little of ``reference`` in physical space."""
    ref_box = physical_bounding_box(reference)
    mov_box = physical_bounding_box(moving)
    overlap_extent = np.minimum(ref_box[1], mov_box[1]) - np.maximum(ref_box[0], mov_box[0])
    overlap_volume = float(np.prod(np.clip(overlap_extent, 0.0, None)))
    reference_volume = float(np.prod(ref_box[1] - ref_box[0]))
    if overlap_volume < MIN_OVERLAP_FRACTION * reference_volume:
        raise InputError(
            f"{name} and {reference_name} do not overlap in physical space "
            f"({reference_name} box {_describe_box(ref_box)}, {name} box {_describe_box(mov_box)}, "
            f"overlap {100.0 * overlap_volume / reference_volume:.0f}% of the {reference_name} box): "
            f"check that the {name} is registered to the {reference_name} / that both come from "
            "the same subject session."
        )


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array as a float32 image with ``reference``'s geometry."""
    expected = tuple(reversed(reference.GetSize()))
    if array.shape != expected:
        raise ValueError(
            f"Array shape {array.shape} does not match the reference grid {expected} (z, y, x)."
        )
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.CopyInformation(reference)
    return image


@dataclass(frozen=True)
class CropPad:
    """An invertible crop-then-pad of a (z, y, x) volume for the U-Net.

    ``crop_slices`` select the foreground box inside ``original_shape``;
    ``pad_width`` (np.pad convention) then grows each axis to a multiple of
    the U-Net's downsampling factor.
    """

    crop_slices: tuple[slice, slice, slice]
    pad_width: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    original_shape: tuple[int, int, int]

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.crop_slices)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return tuple(  # type: ignore[return-value]
            n + before + after for n, (before, after) in zip(self.cropped_shape, self.pad_width)
        )


def plan_crop_pad(
    foreground_mask: np.ndarray,
    margin_voxels: Union[int, tuple[int, int, int]],
    multiple: int,
) -> CropPad:
    """Plan a crop to the mask's bounding box plus ``margin_voxels`` (clipped to the
    volume), then padding (split evenly, extra voxel after) so that every axis is a
    multiple of ``multiple`` (2**k for a U-Net with k downsamplings).
    """
    mask = np.asarray(foreground_mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"foreground_mask must be 3D (z, y, x); got shape {mask.shape}.")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1; got {multiple}.")
    if np.isscalar(margin_voxels):  # its TypeGuard narrows to numpy's scalar types, not to int
        margins: tuple[int, ...] = (cast(int, margin_voxels),) * 3
    else:
        margins = tuple(cast("tuple[int, int, int]", margin_voxels))
    if len(margins) != 3 or min(margins) < 0:
        raise ValueError(f"margin_voxels must be >= 0, one value or three; got {margin_voxels}.")
    if not mask.any():
        raise InputError(
            "The foreground (head) mask is empty, so there is nothing to crop to; check that "
            "the PET volume contains activity and that the mask threshold is not too high."
        )

    crop_slices = []
    pad_width = []
    for axis, (n, margin) in enumerate(zip(mask.shape, margins)):
        other_axes = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        start = max(int(present[0]) - int(margin), 0)
        stop = min(int(present[-1]) + 1 + int(margin), n)
        total_pad = -(stop - start) % multiple
        crop_slices.append(slice(start, stop))
        pad_width.append((total_pad // 2, total_pad - total_pad // 2))
    return CropPad(tuple(crop_slices), tuple(pad_width), tuple(mask.shape))  # type: ignore[arg-type]


def apply_crop_pad(array: np.ndarray, plan: CropPad, mode: Literal["edge", "constant"] = "edge") -> np.ndarray:
    """Crop and pad the last three axes of ``array`` as planned.

    ``mode`` is ``"edge"`` (replicate border voxels, avoids an artificial step at
    the crop edge) or ``"constant"`` (zeros). Leading axes (e.g. channels) are kept.
    """
    if array.shape[-3:] != plan.original_shape:
        raise ValueError(
            f"Array spatial shape {array.shape[-3:]} does not match the planned {plan.original_shape}."
        )
    if mode not in ("edge", "constant"):
        raise ValueError(f"mode must be 'edge' or 'constant'; got {mode!r}.")
    lead = array.ndim - 3
    cropped = array[(Ellipsis,) + plan.crop_slices]
    return np.pad(cropped, ((0, 0),) * lead + plan.pad_width, mode=mode)


def undo_crop_pad(array: np.ndarray, plan: CropPad, fill: float = 0.0) -> np.ndarray:
    """Invert :func:`apply_crop_pad`: remove the padding and place the crop back into
    an array of ``original_shape`` (plus leading axes) filled with ``fill`` elsewhere.
    """
    if array.shape[-3:] != plan.padded_shape:
        raise ValueError(
            f"Array spatial shape {array.shape[-3:]} does not match the padded {plan.padded_shape}."
        )
    unpad = tuple(
        slice(before, before + n) for n, (before, _) in zip(plan.cropped_shape, plan.pad_width)
    )
    out = np.full(array.shape[:-3] + plan.original_shape, fill, dtype=array.dtype)
    out[(Ellipsis,) + plan.crop_slices] = array[(Ellipsis,) + unpad]
    return out


def head_mask(
    pet: np.ndarray,
    mr: np.ndarray | None = None,
    threshold_fraction: float = 0.05,
    mr_threshold_fraction: float = 0.1,
    sigma_voxels: float = 1.0,
) -> np.ndarray:
    """Robust boolean head (foreground) mask for cropping, on the PET (z, y, x) grid.

    Air voxels cost U-Net compute for nothing and, being near zero, drag down the
    mean of the stability map that conditions the DIP, so we crop to the head.
    Steps: light Gaussian smoothing (noise spikes in air would otherwise pass the
    threshold), threshold at ``threshold_fraction`` of the smoothed maximum (a
    percentile would shift with the amount of air in the field of view), optional
    union with the smoothed MR above ``mr_threshold_fraction`` of its maximum
    (scalp/skull have little PET uptake), largest connected component (drops the bed, head rest and stray blobs), then hole filling
    (low-uptake ventricles and sinuses are still head).
    """
    smoothed = ndimage.gaussian_filter(np.asarray(pet, dtype=np.float32), sigma=sigma_voxels)
    high = float(smoothed.max())
    if high <= 0.0:
        raise InputError(
            "PET has no positive signal, so no head mask can be "
            "found; check the intensity scaling of the PET volume."
        )
    mask = smoothed > threshold_fraction * high
    if mr is not None:
        if mr.shape != pet.shape:
            raise ValueError(
                f"MR shape {mr.shape} differs from PET shape {pet.shape}; resample the MR "
                "onto the PET grid first (resample_to_reference)."
            )
        mr_smoothed = ndimage.gaussian_filter(np.asarray(mr, dtype=np.float32), sigma=sigma_voxels)
        mr_high = float(mr_smoothed.max())
        if mr_high > 0.0:
            mask |= mr_smoothed > mr_threshold_fraction * mr_high
        else:
            logger.warning("MR has no positive signal; using the PET alone for the head mask.")

    # Never empty: the smoothed maximum passes the threshold.
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background label
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
