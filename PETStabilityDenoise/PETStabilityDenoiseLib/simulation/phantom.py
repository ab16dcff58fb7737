"""Digital brain phantom from BrainWeb tissue labels: FDG activity truth, T1-like MR and ROI masks.

Pure numpy/scipy. Arrays are in SimpleITK's (z, y, x) order. Anatomical landmarks are given in MNI/RAS
millimetres and mapped to voxels through ``index_to_ras``, a 4x4 affine that takes a homogeneous array
index (k, j, i, 1) to (x, y, z, 1) in RAS mm, so that the same landmarks work on the 1 mm label grid and
on the 2 mm PET grid. The deep-nuclei and cortical regions are boxes and ellipsoids on the MNI grid:
approximations of the AAL regions, good enough for ROI bias, not an atlas.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Mapping, Optional, Sequence, Union, cast

import numpy as np
from scipy import ndimage

from ..engine.filters import sigma_voxels
from ..errors import InputError

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]
Point = tuple[float, float, float]
VoxelSize = Union[Sequence[float], np.ndarray]  # (z, y, x) mm


class Label(IntEnum):
    """BrainWeb tissue label values."""

    BACKGROUND = 0
    CSF = 1
    GM = 2
    WM = 3
    FAT = 4
    MUSCLE = 5
    SKIN = 6
    SKULL = 7
    VESSELS = 8
    CONNECTIVE = 9
    DURA = 10
    MARROW = 11


# SUV-like FDG uptake per tissue (GM:WM 4:1 as in the BrainWeb literature, scaled so that cortex ~ SUV 8).
FDG_ACTIVITY: Mapping[Label, float] = {
    Label.BACKGROUND: 0.0,
    Label.CSF: 0.05,
    Label.GM: 8.0,
    Label.WM: 2.0,
    Label.FAT: 0.3,
    Label.MUSCLE: 1.0,
    Label.SKIN: 1.0,
    Label.SKULL: 0.3,
    Label.VESSELS: 1.5,
    Label.CONNECTIVE: 0.5,
    Label.DURA: 1.0,
    Label.MARROW: 1.0,
}

# T1-weighted intensities (BrainWeb literature values where they exist; the rest plausible for a T1 MPRAGE).
T1_INTENSITY: Mapping[Label, float] = {
    Label.BACKGROUND: 0.0,
    Label.CSF: 48.0,
    Label.GM: 106.0,
    Label.WM: 154.0,
    Label.FAT: 220.0,
    Label.MUSCLE: 90.0,
    Label.SKIN: 100.0,
    Label.SKULL: 48.0,
    Label.VESSELS: 120.0,
    Label.CONNECTIVE: 180.0,
    Label.DURA: 80.0,
    Label.MARROW: 180.0,
}


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid in RAS mm."""

    center_mm: Point
    radii_mm: Point

    def mask(self, coords: Coords) -> np.ndarray:
        d2 = cast(np.ndarray, sum(((c - c0) / r) ** 2 for c, c0, r in zip(coords, self.center_mm, self.radii_mm)))
        return d2 <= 1.0


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in RAS mm, bounds inclusive."""

    low_mm: Point
    high_mm: Point

    def mask(self, coords: Coords) -> np.ndarray:
        inside = np.ones(np.broadcast_shapes(*(c.shape for c in coords)), dtype=bool)
        for c, lo, hi in zip(coords, self.low_mm, self.high_mm):
            inside &= (c >= lo) & (c <= hi)
        return inside


def sphere(center_mm: Point, radius_mm: float) -> Ellipsoid:
    return Ellipsoid(cast(Point, tuple(center_mm)), (radius_mm,) * 3)


Region = Sequence[Union[Ellipsoid, Box]]

# Deep grey nuclei, approximate MNI ellipsoids (BrainWeb labels them as GM, or partly WM, with no own label).
STRIATUM: Region = (
    Ellipsoid((-13.0, 12.0, 10.0), (5.0, 12.0, 10.0)),  # caudate
    Ellipsoid((13.0, 12.0, 10.0), (5.0, 12.0, 10.0)),
    Ellipsoid((-25.0, 2.0, 0.0), (6.0, 14.0, 9.0)),  # putamen
    Ellipsoid((25.0, 2.0, 0.0), (6.0, 14.0, 9.0)),
)
THALAMUS: Region = (
    Ellipsoid((-11.0, -18.0, 7.0), (7.0, 11.0, 8.0)),
    Ellipsoid((11.0, -18.0, 7.0), (7.0, 11.0, 8.0)),
)

# Cortical ROIs: MNI boxes intersected with GM; approximations of the AAL regions used in METHOD.md section 1.
CORTICAL_ROIS: Mapping[str, Region] = {
    "cerebellar_cortex": (Box((-55.0, -95.0, -65.0), (55.0, -42.0, -28.0)),),
    "frontal": (Box((-70.0, 22.0, -10.0), (70.0, 75.0, 80.0)),),
    "parietal": (Box((-70.0, -80.0, 35.0), (70.0, -25.0, 80.0)),),
    "medial_temporal": (
        Box((-40.0, -40.0, -35.0), (-15.0, -5.0, -10.0)),
        Box((15.0, -40.0, -35.0), (40.0, -5.0, -10.0)),
    ),
    "posterior_cingulate_precuneus": (Box((-12.0, -75.0, 10.0), (12.0, -30.0, 55.0)),),
    "occipital": (Box((-60.0, -110.0, -10.0), (60.0, -80.0, 40.0)),),
}


# Lateral temporal cortex (superior, middle and inferior temporal gyri), outside the medial temporal boxes.
LATERAL_TEMPORAL: Region = (
    Box((-72.0, -70.0, -35.0), (-42.0, 10.0, 5.0)),
    Box((42.0, -70.0, -35.0), (72.0, 10.0, 5.0)),
)

# The regions that regional uptake can scale; the cortical ones double as evaluation ROIs.
UPTAKE_REGIONS: Mapping[str, Region] = {
    **CORTICAL_ROIS, "lateral_temporal": LATERAL_TEMPORAL, "striatum": STRIATUM, "thalamus": THALAMUS,
}

# Grey-matter FDG uptake of each region relative to frontal cortex (1.0), for a healthy adult at rest.
# Ranking: primary visual cortex highest, medial and lateral temporal cortex lower (Guo et al., J Nucl Med
# 2019;60(suppl 1):3032, 114 normal PET/MR scans, 26 regions); precuneus at the top of the range, 6.2 against a
# hemispheric grey-matter mean of 5.2-5.3 mg/100 g/min, so about 1.18 (Duara et al., Brain 1983;106:761-775).
# The values in between are rounded choices within those bounds, not measurements: docs/SIMULATOR.md.
# Later entries win where regions overlap (the precuneus box lies inside the parietal one).
REGIONAL_GM_UPTAKE: tuple = (
    ("cerebellar_cortex", 0.85),
    ("lateral_temporal", 0.92),
    ("parietal", 1.05),
    ("occipital", 1.15),
    ("posterior_cingulate_precuneus", 1.15),
    ("medial_temporal", 0.80),
    ("striatum", 1.10),
    ("thalamus", 1.05),
)
# The first simulator's regime: one GM value, deep nuclei +20 %, hard edges.
LEGACY_GM_UPTAKE: tuple = (("striatum", 1.2), ("thalamus", 1.2))


def region_mask(region: Region, coords: Coords) -> np.ndarray:
    """Union of the shapes of a region, evaluated at the given voxel coordinates."""
    out = np.zeros(np.broadcast_shapes(*(c.shape for c in coords)), dtype=bool)
    for shape in region:
        out |= shape.mask(coords)
    return out


def grid_coordinates(shape: Sequence[int], index_to_ras: np.ndarray) -> Coords:
    """RAS mm coordinates (x, y, z) of every voxel centre of a grid, each a float32 array of ``shape``."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    idx = (k[:, None, None], j[None, :, None], i[None, None, :])
    return tuple(
        (sum(np.float32(index_to_ras[row, a]) * idx[a] for a in range(3)) + np.float32(index_to_ras[row, 3]))
        .astype(np.float32)
        for row in range(3)
    )


def block_average(volume: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean over factor-sized blocks (partial volume), zero-padding the end of each axis to a multiple."""
    factor = tuple(int(f) for f in factor)
    pad = [(0, (-n) % f) for n, f in zip(volume.shape, factor)]
    v = np.pad(volume.astype(np.float32, copy=False), pad)
    shp = []
    for n, f in zip(v.shape, factor):
        shp += [n // f, f]
    return v.reshape(shp).mean(axis=(1, 3, 5), dtype=np.float32)


def block_grid(shape: Sequence[int], index_to_ras: np.ndarray, factor: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the grid that ``block_average`` produces: each new voxel centre is its block's centre."""
    new_shape = tuple(-(-n // f) for n, f in zip(shape, factor))
    scale = np.eye(4)
    for a, f in enumerate(factor):
        scale[a, a] = f
        scale[a, 3] = (f - 1) / 2.0
    return new_shape, index_to_ras @ scale


def snap_to_grid(point_mm: Point, index_to_ras: np.ndarray) -> Point:
    """The voxel centre of a grid nearest to a point, so that small ROIs sit symmetrically on voxels."""
    ras_to_index = np.linalg.inv(index_to_ras)
    idx = np.rint(ras_to_index @ np.array([*point_mm, 1.0]))
    return cast(Point, tuple(float(v) for v in (index_to_ras @ idx)[:3]))


@dataclass(frozen=True)
class Colliculi:
    """Two hot bumps with a cooler valley between them, after the inferior colliculi (for peak-to-valley ratio)."""

    left_mm: Point
    right_mm: Point
    radius_mm: float
    tectum: Ellipsoid  # region set to the valley activity, so the valley does not depend on each subject's labels

    @property
    def valley_mm(self) -> Point:
        return cast(Point, tuple((a + b) / 2.0 for a, b in zip(self.left_mm, self.right_mm)))

    @property
    def bumps(self) -> Region:
        return sphere(self.left_mm, self.radius_mm), sphere(self.right_mm, self.radius_mm)


def make_colliculi(
    pet_index_to_ras: np.ndarray,
    center_mm: Point = (0.0, -35.0, -10.0),
    separation_mm: float = 12.0,
    diameter_mm: float = 6.0,
) -> Colliculi:
    """Place the two bumps along x around ``center_mm``, each centred on a PET voxel."""
    spacing_x = float(np.linalg.norm(pet_index_to_ras[:3, 2]))
    left = snap_to_grid((center_mm[0] - separation_mm / 2.0, center_mm[1], center_mm[2]), pet_index_to_ras)
    n_vox = max(1, int(round(separation_mm / spacing_x)))
    right = (left[0] + n_vox * spacing_x, left[1], left[2])
    mid = cast(Point, tuple((a + b) / 2.0 for a, b in zip(left, right)))
    tectum = Ellipsoid(mid, (n_vox * spacing_x / 2.0 + diameter_mm, diameter_mm, diameter_mm))
    return Colliculi(left, right, diameter_mm / 2.0, tectum)


@dataclass(frozen=True)
class Lesions:
    """Hot spheres present in PET only (PET/MR mismatch)."""

    spheres: tuple[Ellipsoid, ...]
    ratio: float  # lesion activity / white-matter activity in the 1 mm truth

    def mask(self, coords: Coords) -> np.ndarray:
        return region_mask(self.spheres, coords)


def place_lesions(
    wm_fraction_pet: np.ndarray,
    pet_index_to_ras: np.ndarray,
    rng: np.random.Generator,
    n: int,
    ratio: float,
    diameter_range_mm: tuple[float, float] = (6.0, 10.0),
    keep_away: Region = (),
    margin_mm: float = 2.0,
    shell_mm: float = 6.0,
) -> Lesions:
    """Random white-matter lesions on PET voxel centres.

    A lesion is placed only where white matter extends ``margin_mm`` beyond its edge, at least ``shell_mm``
    beyond its edge from ``keep_away``, and far enough from the other lesions that background shells
    (``shell_mm`` wide) do not touch another lesion.
    """
    spacing = np.array([np.linalg.norm(pet_index_to_ras[:3, a]) for a in range(3)])
    wm = wm_fraction_pet >= 0.5
    depth = ndimage.distance_transform_edt(wm, sampling=spacing)
    coords = grid_coordinates(wm.shape, pet_index_to_ras)
    far = ~region_mask(keep_away, coords) if keep_away else np.ones(wm.shape, bool)
    far = ndimage.distance_transform_edt(far, sampling=spacing)
    spheres: list[Ellipsoid] = []
    for _ in range(n):
        r = rng.uniform(*diameter_range_mm) / 2.0
        ok = (depth >= r + margin_mm) & (far >= r + shell_mm)
        for s in spheres:
            d2 = sum((c - c0) ** 2 for c, c0 in zip(coords, s.center_mm))
            ok &= d2 >= (r + s.radii_mm[0] + 2 * shell_mm) ** 2
        candidates = np.flatnonzero(ok)
        if candidates.size == 0:
            raise InputError(f"no room for lesion {len(spheres) + 1} of {n} (radius {r:.1f} mm) in white matter: "
                             "ask for fewer or smaller lesions")
        flat = candidates[rng.integers(candidates.size)]
        centre = cast(Point, tuple(float(c.ravel()[flat]) for c in coords))
        spheres.append(sphere(centre, r))
    return Lesions(tuple(spheres), ratio)


@dataclass(frozen=True)
class Hypometabolism:
    """A cortical region with reduced uptake (present in PET only) and its contralateral mirror, the reference."""

    region: Ellipsoid
    depth: float  # fractional reduction of the region's grey-matter uptake

    @property
    def mirror(self) -> Ellipsoid:
        (x, y, z), radii = self.region.center_mm, self.region.radii_mm
        return Ellipsoid((-x, y, z), radii)


def regional_uptake_field(
    coords: Coords, uptake: Sequence[tuple], transition_fwhm_mm: float, voxel_size_mm: VoxelSize
) -> np.ndarray:
    """Multiplier of grey-matter uptake at every voxel: 1 outside the named regions, their value inside.

    ``uptake`` holds (region name in ``UPTAKE_REGIONS``, multiplier) pairs; later ones win where regions overlap.
    A Gaussian of ``transition_fwhm_mm`` softens the box edges into gradients, as in real metabolism
    (0 keeps hard edges).
    """
    field = np.ones(coords[0].shape, dtype=np.float32)
    for name, multiplier in uptake:
        field[region_mask(UPTAKE_REGIONS[name], coords)] = multiplier
    if transition_fwhm_mm > 0:
        sigma = sigma_voxels(transition_fwhm_mm, voxel_size_mm)
        field = ndimage.gaussian_filter(field, sigma, mode="nearest")
    return field


def texture_field(
    shape: Sequence[int], voxel_size_mm: VoxelSize, rng: np.random.Generator, fwhm_mm: float,
    amplitude: float, mask: np.ndarray,
) -> np.ndarray:
    """Smooth multiplicative texture 1 + amplitude * g: g Gaussian white noise smoothed to ``fwhm_mm``, std 1 in ``mask``."""
    sigma = sigma_voxels(fwhm_mm, voxel_size_mm)
    g = ndimage.gaussian_filter(rng.standard_normal(tuple(shape), dtype=np.float32), sigma, mode="wrap")
    g /= g[mask].std()
    # Clipping only guards the far tails (beyond 5 sigma at 10 %), so that no voxel loses all its uptake.
    return np.clip(1.0 + amplitude * g, 0.5, 1.5).astype(np.float32)


def make_activity(
    labels: np.ndarray,
    coords: Coords,
    colliculi: Colliculi,
    lesions: Lesions,
    *,
    gm_uptake_field: Optional[np.ndarray] = None,
    gm_texture: Optional[np.ndarray] = None,
    hypometabolism: Optional[Hypometabolism] = None,
    colliculus_activity: float = 10.0,
    tectum_activity: float = 2.0,
    tissue_activity: Mapping[Label, float] = FDG_ACTIVITY,
) -> np.ndarray:
    """FDG activity truth (SUV-like units) on the label grid.

    Grey matter gets its tissue value times ``gm_uptake_field`` (regional uptake; default: the legacy deep-nuclei
    boost), times ``gm_texture`` when given, and times ``1 - depth`` inside the hypometabolic region. The tectum
    is set to ``tectum_activity`` with two bumps at ``colliculus_activity``; lesions are ``lesions.ratio`` times
    white matter. Texture, hypometabolism and lesions are PET-only: ``make_t1`` does not see them.
    """
    lut = np.zeros(256, dtype=np.float32)
    for label, value in tissue_activity.items():
        lut[int(label)] = value
    act = lut[labels]
    gm = labels == Label.GM
    if gm_uptake_field is None:
        gm_uptake_field = regional_uptake_field(coords, LEGACY_GM_UPTAKE, 0.0, (1.0, 1.0, 1.0))
    act[gm] *= gm_uptake_field[gm]
    if gm_texture is not None:
        act[gm] *= gm_texture[gm]
    if hypometabolism is not None and hypometabolism.depth > 0:
        act[gm & hypometabolism.region.mask(coords)] *= np.float32(1.0 - hypometabolism.depth)
    act[colliculi.tectum.mask(coords)] = tectum_activity
    act[region_mask(colliculi.bumps, coords)] = colliculus_activity
    if lesions.spheres:
        act[lesions.mask(coords)] = lesions.ratio * tissue_activity[Label.WM]
    return act


def make_t1(
    labels: np.ndarray,
    voxel_size_mm: VoxelSize,
    rng: np.random.Generator,
    coords: Coords,
    colliculi: Colliculi,
    colliculus_contrast: float = 0.3,
    blur_fwhm_mm: float = 1.0,
    noise_fraction: float = 0.03,
    bias_amplitude: float = 0.12,
    tissue_intensity: Mapping[Label, float] = T1_INTENSITY,
) -> np.ndarray:
    """T1-like MR on the label grid: tissue intensities, partial-volume blur, smooth bias field, Rician noise.

    The colliculi show only mildly (``colliculus_contrast`` of the way to GM intensity) and lesions not at all,
    as in a real T1 where PET findings need not be visible.
    """
    lut = np.zeros(256, dtype=np.float32)
    for label, value in tissue_intensity.items():
        lut[int(label)] = value
    t1 = lut[labels]
    bumps = region_mask(colliculi.bumps, coords)
    t1[bumps] += colliculus_contrast * (tissue_intensity[Label.GM] - t1[bumps])
    sigma = sigma_voxels(blur_fwhm_mm, voxel_size_mm)
    t1 = ndimage.gaussian_filter(t1, sigma)
    t1 *= smooth_bias_field(labels.shape, rng, bias_amplitude)
    # Magnitude of a complex signal with Gaussian noise on each channel: Rician, as in real MR.
    s = noise_fraction * tissue_intensity[Label.WM]
    real = t1 + rng.normal(0.0, s, t1.shape).astype(np.float32)
    imag = rng.normal(0.0, s, t1.shape).astype(np.float32)
    return np.hypot(real, imag).astype(np.float32)


def smooth_bias_field(shape: Sequence[int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Multiplicative field 1 + a*p, p a random quadratic polynomial of position scaled to max |p| = 1."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    terms = [z, y, x, z * y, z * x, y * x, z * z - 1 / 3, y * y - 1 / 3, x * x - 1 / 3]
    coef = rng.normal(size=len(terms)).astype(np.float32)
    p = sum(c * t for c, t in zip(coef, terms))
    p = np.broadcast_to(p, tuple(shape))
    return (1.0 + amplitude * p / np.abs(p).max()).astype(np.float32)


def pet_masks(
    fractions: Mapping[Label, np.ndarray],
    head_fraction: np.ndarray,
    coords_1mm: Coords,
    labels: np.ndarray,
    pet_index_to_ras: np.ndarray,
    factor: Sequence[int],
    colliculi: Colliculi,
    lesions: Lesions,
    hypometabolism: Optional[Hypometabolism] = None,
    peak_radius_mm: float = 2.0,
    valley_radius_mm: float = 2.0,
    lesion_shell_mm: tuple[float, float] = (2.0, 6.0),
) -> dict[str, np.ndarray]:
    """Evaluation masks (uint8) on the PET grid.

    Tissue masks take the PET voxels that are at least half that tissue. ``wm_eroded`` is pure white matter,
    eroded by one voxel and away from lesions and colliculi, for the white-matter noise. ``peak_*`` are the
    voxels within ``peak_radius_mm`` of each bump centre; ``valley`` the voxels in the mid-plane between them
    (along x) within ``valley_radius_mm`` of the bump axis. ``lesion_background`` is a white-matter shell around
    each lesion. With a hypometabolic region, ``hypo`` and ``hypo_mirror`` are the grey-matter voxels of the
    region and of its contralateral mirror.
    """
    eps = 1e-3
    pet_coords = grid_coordinates(head_fraction.shape, pet_index_to_ras)
    gm = fractions[Label.GM] >= 0.5
    wm = fractions[Label.WM] >= 0.5
    brain = ndimage.binary_fill_holes(gm | wm)
    head = ndimage.binary_fill_holes(head_fraction >= 0.5)

    lesion_1mm = lesions.mask(coords_1mm) if lesions.spheres else np.zeros(labels.shape, bool)
    lesion = block_average(lesion_1mm, factor) >= 0.5
    near_lesion = np.zeros(gm.shape, bool)
    shell = np.zeros(gm.shape, bool)
    for s in lesions.spheres:
        r = s.radii_mm[0]
        d = np.sqrt(sum((c - c0) ** 2 for c, c0 in zip(pet_coords, s.center_mm)))
        shell |= (d >= r + lesion_shell_mm[0]) & (d <= r + lesion_shell_mm[1])
        near_lesion |= d <= r + lesion_shell_mm[1]
    shell &= wm & ~lesion

    peaks = []
    for c in (colliculi.left_mm, colliculi.right_mm):
        d2 = sum((p - c0) ** 2 for p, c0 in zip(pet_coords, c))
        peaks.append(d2 <= peak_radius_mm**2 + eps)
    spacing_x = float(np.abs(pet_index_to_ras[0, :3]).max())
    v = colliculi.valley_mm
    radial2 = (pet_coords[1] - v[1]) ** 2 + (pet_coords[2] - v[2]) ** 2
    valley = (np.abs(pet_coords[0] - v[0]) <= spacing_x / 2.0 + eps) & (radial2 <= valley_radius_mm**2 + eps)

    pure_wm = ndimage.binary_erosion(fractions[Label.WM] >= 0.999)
    wm_eroded = pure_wm & ~near_lesion & ~colliculi.tectum.mask(pet_coords)

    masks = {
        "head": head,
        "brain": brain,
        "gm": gm,
        "wm": wm,
        "wm_eroded": wm_eroded,
        "peak_left": peaks[0],
        "peak_right": peaks[1],
        "valley": valley,
        "lesions": lesion,
        "lesion_background": shell,
    }
    gm_1mm = labels == Label.GM
    deep = {"striatum": STRIATUM, "thalamus": THALAMUS}
    deep_1mm = region_mask((*STRIATUM, *THALAMUS), coords_1mm)
    for name, region in deep.items():
        masks[f"roi_{name}"] = block_average(gm_1mm & region_mask(region, coords_1mm), factor) >= 0.5
    for name, region in CORTICAL_ROIS.items():
        masks[f"roi_{name}"] = block_average(gm_1mm & ~deep_1mm & region_mask(region, coords_1mm), factor) >= 0.5
    masks["roi_colliculi"] = masks["peak_left"] | masks["peak_right"]
    if hypometabolism is not None and hypometabolism.depth > 0:
        for name, ellipsoid in (("hypo", hypometabolism.region), ("hypo_mirror", hypometabolism.mirror)):
            masks[name] = block_average(gm_1mm & ellipsoid.mask(coords_1mm), factor) >= 0.5
    return {k: np.ascontiguousarray(m, dtype=np.uint8) for k, m in masks.items()}
