"""Make the small PET/MR sample case that ships with the Slicer extension.

Writes, relative to the repository root:

- ``PETStabilityDenoise/PETStabilityDenoiseLib/data/sample/PETStabilitySample_PET.nrrd``: simulated 1/10 dose FDG OSEM
  of BrainWeb subject 04, 2 mm voxels, float32, SUV-like units (grey matter about 8).
- ``PETStabilityDenoise/PETStabilityDenoiseLib/data/sample/PETStabilitySample_MR.nrrd``: the subject's T1-like MR,
  resampled to 2 mm on its own grid (0.5 mm off the PET grid on each axis, larger field of view), uint16
  (intensity x 10).
- ``PETStabilityDenoise/Resources/Icons/PETStabilitySample.png``: a 128x128 thumbnail, MR and PET axial slices.

Both volumes are cropped to the brain plus a margin of scalp, so that the pair stays small enough to ship
and the module's self-test runs fast. The script is deterministic (fixed seed); regenerate with::

    python scripts/make_sample_data.py

from a Python environment with the package installed (``scripts/setup.sh``). It takes under a minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PETStabilityDenoise"))

from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case  # noqa: E402
from PETStabilityDenoiseLib.simulation.phantom import Label  # noqa: E402

SAMPLE_DIR = ROOT / "PETStabilityDenoise" / "PETStabilityDenoiseLib" / "data" / "sample"
ICON_PATH = ROOT / "PETStabilityDenoise" / "Resources" / "Icons" / "PETStabilitySample.png"
PET_NAME = "PETStabilitySample_PET.nrrd"
MR_NAME = "PETStabilitySample_MR.nrrd"

SEED = 4
DOSE = 0.1
PET_MARGIN_MM = 8.0  # scalp kept around the brain's bounding box
MR_MARGIN_MM = 12.0  # the MR field of view is usually larger than the PET's
MR_SPACING_MM = 2.0
# Scanners store PET as 16-bit integers times a rescale slope. Rounding to a power-of-two step (about 0.001
# SUV, far below the noise) does the same and lets the float32 file compress about twofold.
PET_STEP = 2.0**-10
MR_SCALE = 10.0  # MR stored as uint16 = round(intensity * MR_SCALE), as scanners store MR
THUMBNAIL_SIZE = 128


def brain_box(labels: sitk.Image, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Physical (LPS) corners of the brain's bounding box in the label image, grown by ``margin_mm``."""
    brain = np.isin(sitk.GetArrayViewFromImage(labels), (Label.CSF, Label.GM, Label.WM))
    index = np.argwhere(brain)[:, ::-1]  # (x, y, z) order, as SimpleITK indexes
    corners = [labels.TransformIndexToPhysicalPoint([int(v) for v in c]) for c in (index.min(0), index.max(0))]
    low, high = np.minimum(*corners), np.maximum(*corners)
    # The brain reaches the bottom of the label volume; never grow the box beyond the labels' field of view.
    fov = [labels.TransformIndexToPhysicalPoint(c) for c in ((0, 0, 0), [n - 1 for n in labels.GetSize()])]
    return np.maximum(low - margin_mm, np.minimum(*fov)), np.minimum(high + margin_mm, np.maximum(*fov))


def crop_to_box(image: sitk.Image, low: np.ndarray, high: np.ndarray) -> sitk.Image:
    """The part of ``image`` whose voxel centres lie inside the physical box [low, high]."""
    corners = [image.TransformPhysicalPointToContinuousIndex([float(v) for v in c]) for c in (low, high)]
    start = np.clip(np.ceil(np.minimum(*corners) - 1e-6), 0, None).astype(int)
    stop = np.minimum(np.floor(np.maximum(*corners) + 1e-6).astype(int) + 1, image.GetSize())
    return sitk.RegionOfInterest(image, [int(v) for v in stop - start], [int(v) for v in start])


def resample_mr(mr: sitk.Image, low: np.ndarray, high: np.ndarray) -> sitk.Image:
    """MR on its own ``MR_SPACING_MM`` grid over the box, anti-aliased first so that noise does not alias."""
    sigma = MR_SPACING_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # FWHM of one output voxel
    smooth = sitk.SmoothingRecursiveGaussian(mr, [sigma] * 3)
    direction = np.array(mr.GetDirection()).reshape(3, 3)
    # Corner of the box at the grid's first voxel, whatever the axis flips of the direction.
    extent = (high - low) / MR_SPACING_MM
    size = np.floor(np.abs(extent)).astype(int) + 1
    origin = np.where(np.diag(direction) < 0, high, low)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([MR_SPACING_MM] * 3)
    grid.SetDirection(mr.GetDirection())
    grid.SetOrigin([float(v) for v in origin])
    return sitk.Resample(smooth, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def quantize_pet(pet: sitk.Image) -> sitk.Image:
    array = (np.round(sitk.GetArrayFromImage(pet) / PET_STEP) * PET_STEP).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(pet)
    return out


def scale_mr(mr: sitk.Image) -> sitk.Image:
    array = np.clip(np.round(sitk.GetArrayFromImage(mr) * MR_SCALE), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(mr)
    return out


def axial_display(image: sitk.Image, z_mm: float) -> np.ndarray:
    """The axial slice nearest ``z_mm`` (LPS z), anterior up and patient right on the left (radiological)."""
    lps = sitk.DICOMOrient(image, "LPS")  # index axes point to patient left, posterior, superior
    k = int(round(lps.TransformPhysicalPointToContinuousIndex((0.0, 0.0, z_mm))[2]))
    return sitk.GetArrayFromImage(lps)[int(np.clip(k, 0, lps.GetSize()[2] - 1))].astype(np.float32)


def heat(values: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white colour map (like Slicer's PET-Heat) of values in [0, 1], as RGB in [0, 1]."""
    return np.stack([np.clip(3 * values, 0, 1), np.clip(3 * values - 1, 0, 1), np.clip(3 * values - 2, 0, 1)], -1)


def tile(rgb: np.ndarray, spacing: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """``rgb`` scaled to fit ``shape`` with square pixels in mm, centred on black."""
    height_mm, width_mm = rgb.shape[0] * spacing[0], rgb.shape[1] * spacing[1]
    scale = min(shape[0] / height_mm, shape[1] / width_mm)
    size = (max(1, int(round(height_mm * scale))), max(1, int(round(width_mm * scale))))
    zoomed = ndimage.zoom(rgb, (size[0] / rgb.shape[0], size[1] / rgb.shape[1], 1), order=1)[: shape[0], : shape[1]]
    out = np.zeros(shape + (3,), np.float32)
    top, left = (shape[0] - zoomed.shape[0]) // 2, (shape[1] - zoomed.shape[1]) // 2
    out[top : top + zoomed.shape[0], left : left + zoomed.shape[1]] = zoomed
    return out


def thumbnail(pet: sitk.Image, mr: sitk.Image, z_mm: float) -> sitk.Image:
    """MR (left) and PET (right) axial slices side by side, ``THUMBNAIL_SIZE`` square, as an RGB image."""
    half = (THUMBNAIL_SIZE, THUMBNAIL_SIZE // 2)
    mr_slice = axial_display(mr, z_mm)
    pet_slice = axial_display(pet, z_mm)
    grey = np.clip(mr_slice / np.percentile(mr_slice, 99.5), 0, 1)
    hot = heat(np.clip(pet_slice / np.percentile(pet_slice, 99.5), 0, 1))
    grey_rgb = np.repeat(grey[..., None], 3, -1)
    # GetSpacing() is (x, y, z); a slice's rows step along y and its columns along x.
    montage = np.concatenate([tile(grey_rgb, mr.GetSpacing()[1::-1], half), tile(hot, pet.GetSpacing()[1::-1], half)], 1)
    return sitk.GetImageFromArray(np.round(255 * montage).astype(np.uint8), isVector=True)


def main() -> int:
    labels = sitk.ReadImage(str(bundled_labels_path()))
    case = simulate_case(labels, SimulationConfig(doses=(DOSE,), seed=SEED, n_lesions=3))

    pet = quantize_pet(crop_to_box(case.osem[DOSE], *brain_box(labels, PET_MARGIN_MM)))
    mr = scale_mr(resample_mr(case.mr, *brain_box(labels, MR_MARGIN_MM)))

    SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    ICON_PATH.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pet, str(SAMPLE_DIR / PET_NAME), useCompression=True)
    sitk.WriteImage(mr, str(SAMPLE_DIR / MR_NAME), useCompression=True)
    # The slice through the first lesion, so that the thumbnail shows a PET-only finding.
    lesion_ras = case.info["lesions"][0]["center_ras_mm"] if case.info["lesions"] else [0.0, 0.0, 0.0]
    sitk.WriteImage(thumbnail(pet, mr, float(lesion_ras[2])), str(ICON_PATH))

    for path in (SAMPLE_DIR / PET_NAME, SAMPLE_DIR / MR_NAME, ICON_PATH):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e6:.2f} MB")
    print(f"PET {pet.GetSize()} at {pet.GetSpacing()} mm, origin {pet.GetOrigin()}")
    print(f"MR {mr.GetSize()} at {mr.GetSpacing()} mm, origin {mr.GetOrigin()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
