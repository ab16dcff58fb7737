"""The sinogram file of ``petstab simulate --sinograms`` and ``petstab reconstruct``: one acquisition as a ``.npz``.

The data model is the simulator's: prompts ~ Poisson(multiplicative * A x + additive), where A is the 2D
parallel-beam projector of ``engine/tomography.py`` applied to each axial slice of the image x on the PET grid.
docs/RECONSTRUCTION.md documents every array and field, so that a user can write their own scanner's data.
Reading checks the shapes, the value ranges and the geometry before anything uses them; writing is atomic.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError
from .files import write_atomically

SINOGRAM_FORMAT_VERSION = 1
SINOGRAM_SUFFIX = ".npz"
# The sinogram-shaped arrays, each (slices, angles, bins).
SINOGRAM_ARRAYS = ("prompts", "additive", "multiplicative")
GEOMETRY_FIELDS = ("angles_rad", "bin_mm", "image_size", "origin", "spacing", "direction")
OPTIONAL_FIELDS = ("dose_fraction", "description")
PathLike = Union[str, Path]


@dataclass(frozen=True)
class SinogramData:
    """One acquisition: the measured counts, the data model's factors and the PET grid to reconstruct on.

    Arrays are (slices, angles, bins), slice k of the sinograms being slice k of the image. The image grid is
    described as SimpleITK does (x, y, z order; LPS mm). At angle theta, a voxel centre at (x, y) mm from the
    slice centre, along the grid's first two axes, falls on detector coordinate x cos(theta) + y sin(theta), and
    the middle bin ``(bins - 1) / 2`` is 0.

    Attributes:
        prompts: measured counts, whole numbers >= 0.
        additive: expected randoms + scatter counts, >= 0.
        multiplicative: expected counts per unit activity and mm of path, >= 0: attenuation x sensitivity x
            scan time (x dose fraction). The image comes out in the activity units these imply.
        angles_rad: the projection angle of each sinogram row, in radians.
        bin_mm: the detector bin width.
        image_size: (nx, ny, nz) of the PET grid; nz is the number of slices.
        origin, spacing, direction: the PET grid's geometry, as SimpleITK gives it.
        dose_fraction: the fraction of the full dose these counts are (simulations record it), or None.
        description: free text: scanner, protocol, where the data came from.
    """

    prompts: np.ndarray
    additive: np.ndarray
    multiplicative: np.ndarray
    angles_rad: np.ndarray
    bin_mm: float
    image_size: Tuple[int, ...]
    origin: Tuple[float, ...]
    spacing: Tuple[float, ...]
    direction: Tuple[float, ...]
    dose_fraction: Optional[float] = None
    description: str = ""

    @property
    def shape(self) -> Tuple[int, ...]:
        """(slices, angles, bins)."""
        return tuple(self.prompts.shape)

    def image(self, array: np.ndarray) -> sitk.Image:
        """A (z, y, x) array on this acquisition's PET grid as a SimpleITK image."""
        image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


def check_sinogram(data: SinogramData, source: str = "the sinogram") -> None:
    """Refuses data that the reconstruction cannot use, naming the problem.

    Raises:
        InputError: mismatched shapes, counts that are not whole non-negative numbers, negative or non-finite
            factors, angles spanning more than a full turn (degrees, not radians), a grid that is not
            square-pixelled, or a detector too narrow for the slice.
    """
    shapes = {name: np.shape(getattr(data, name)) for name in SINOGRAM_ARRAYS}
    if len(shapes["prompts"]) != 3:
        raise InputError(f"{source}: prompts must be a (slices, angles, bins) array; got shape {shapes['prompts']}")
    if len(set(shapes.values())) != 1:
        raise InputError(f"{source}: prompts, additive and multiplicative must have one shape; got "
                         + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    slices, n_angles, n_bins = shapes["prompts"]
    if np.shape(data.angles_rad) != (n_angles,):
        raise InputError(f"{source}: angles_rad has shape {np.shape(data.angles_rad)}; the sinograms have "
                         f"{n_angles} angles")
    if not np.all(np.isfinite(data.angles_rad)):
        raise InputError(f"{source}: angles_rad holds non-finite values")
    # No scanner's angles span more than a full turn; angles in degrees nearly always do.
    angle_span = float(np.ptp(data.angles_rad)) if n_angles else 0.0
    if angle_span > 2 * np.pi + 1e-6:
        raise InputError(f"{source}: angles_rad spans {angle_span:.4g}, more than a full turn (2 pi): are they in "
                         "degrees? Give them in radians (numpy.deg2rad)")
    if len(data.image_size) != 3 or len(data.origin) != 3 or len(data.spacing) != 3 or len(data.direction) != 9:
        raise InputError(f"{source}: image_size, origin and spacing need 3 values and direction 9")
    nx, ny, nz = data.image_size
    if nz != slices:
        raise InputError(f"{source}: the sinograms have {slices} slices but the image grid {nz}")
    if min(data.image_size) < 1 or not all(np.isfinite(v) and v > 0 for v in (*data.spacing, data.bin_mm)):
        raise InputError(f"{source}: image_size, spacing and bin_mm must be positive")
    if not np.isclose(data.spacing[0], data.spacing[1], rtol=1e-4):
        raise InputError(f"{source}: the projector needs square pixels; spacing is {tuple(data.spacing)}")
    direction: np.ndarray = np.reshape(data.direction, (3, 3))
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise InputError(f"{source}: direction is not an orthonormal 3x3 matrix: {tuple(data.direction)}")
    half_diagonal_mm = np.hypot(nx - 1, ny - 1) / 2.0 * data.spacing[0]
    if half_diagonal_mm / data.bin_mm >= (n_bins - 1) / 2.0:
        raise InputError(f"{source}: {n_bins} bins of {data.bin_mm:g} mm do not cover the {nx}x{ny} slice of "
                         f"{data.spacing[0]:g} mm pixels (diagonal {2 * half_diagonal_mm:.0f} mm); "
                         "give a wider detector or a smaller image grid")
    prompts = np.asarray(data.prompts)
    if not (np.all(np.isfinite(prompts)) and np.all(prompts >= 0) and np.all(prompts == np.round(prompts))):
        raise InputError(f"{source}: prompts must be measured counts: whole numbers >= 0")
    for name in ("additive", "multiplicative"):
        values = np.asarray(getattr(data, name))
        if not (np.all(np.isfinite(values)) and np.all(values >= 0)):
            raise InputError(f"{source}: {name} must be finite and >= 0")
    if not np.any(np.asarray(data.multiplicative) > 0):
        raise InputError(f"{source}: multiplicative is zero everywhere, so no line of response sees the image")
    if not prompts.any():
        raise InputError(f"{source}: prompts hold no counts")
    if data.dose_fraction is not None and not 0 < data.dose_fraction <= 1:
        raise InputError(f"{source}: dose_fraction must be in (0, 1]; got {data.dose_fraction}")


def write_sinogram(data: SinogramData, path: PathLike) -> Path:
    """Writes ``data`` to ``path`` (a ``.npz``) all at once: a failure leaves no file, and never half a file."""
    path = Path(path)
    if not path.name.endswith(SINOGRAM_SUFFIX):
        raise InputError(f"a sinogram file's name ends in {SINOGRAM_SUFFIX}; got {path.name}")
    fields = {
        "format_version": np.int32(SINOGRAM_FORMAT_VERSION),
        "prompts": np.asarray(data.prompts, dtype=np.int32),
        "additive": np.asarray(data.additive, dtype=np.float32),
        "multiplicative": np.asarray(data.multiplicative, dtype=np.float32),
        "angles_rad": np.asarray(data.angles_rad, dtype=np.float64),
        "bin_mm": np.float64(data.bin_mm),
        "image_size": np.asarray(data.image_size, dtype=np.int64),
        "origin": np.asarray(data.origin, dtype=np.float64),
        "spacing": np.asarray(data.spacing, dtype=np.float64),
        "direction": np.asarray(data.direction, dtype=np.float64),
        "dose_fraction": np.float64(np.nan if data.dose_fraction is None else data.dose_fraction),
        "description": np.str_(data.description),
    }
    if not path.parent.is_dir():  # a mistyped folder is an error, not a new folder
        raise OutputError(f"could not write {path}: there is no folder {path.parent}")
    try:
        write_atomically(path, lambda handle: np.savez_compressed(handle, **fields), binary=True)
    except OSError as error:
        raise OutputError(f"could not write {path}: {error.strerror or error}") from None
    return path


def read_sinogram(path: PathLike) -> SinogramData:
    """Reads and checks a sinogram file (docs/RECONSTRUCTION.md).

    Raises:
        InputError: a missing or unreadable file, a missing field, another format version, or data that
            :func:`check_sinogram` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sinogram file {path} not found")
    source = f"sinogram file {path}"
    # np.load reads other formats too (.npy, pickles), each failing in its own way; a .npz is a zip archive.
    if not zipfile.is_zipfile(path):
        raise InputError(f"{source} is not a .npz archive (a zip of named arrays) or is cut short; write it "
                         "with numpy.savez as docs/RECONSTRUCTION.md describes")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(f"{source} cannot be read as a .npz ({error}); write it with numpy.savez "
                         "as docs/RECONSTRUCTION.md describes") from None
    missing = [name for name in ("format_version", *SINOGRAM_ARRAYS, *GEOMETRY_FIELDS) if name not in stored]
    if missing:
        raise InputError(f"{source} lacks {', '.join(missing)} (see docs/RECONSTRUCTION.md)")
    if int(stored["format_version"]) != SINOGRAM_FORMAT_VERSION:
        raise InputError(f"{source} has format version {int(stored['format_version'])}; this version of "
                         f"PETStabilityDenoise reads version {SINOGRAM_FORMAT_VERSION}")
    try:
        dose = float(stored["dose_fraction"]) if "dose_fraction" in stored else float("nan")
        data = SinogramData(
            prompts=stored["prompts"], additive=stored["additive"], multiplicative=stored["multiplicative"],
            angles_rad=np.asarray(stored["angles_rad"], dtype=np.float64).ravel(),
            bin_mm=float(stored["bin_mm"]),
            image_size=tuple(int(v) for v in np.ravel(stored["image_size"])),
            origin=tuple(float(v) for v in np.ravel(stored["origin"])),
            spacing=tuple(float(v) for v in np.ravel(stored["spacing"])),
            direction=tuple(float(v) for v in np.ravel(stored["direction"])),
            dose_fraction=None if np.isnan(dose) else dose,
            description=str(stored.get("description", "")),
        )
    except (TypeError, ValueError) as error:
        raise InputError(f"{source} has a field of the wrong type or size ({error}); "
                         "see docs/RECONSTRUCTION.md") from None
    check_sinogram(data, source)
    return data
