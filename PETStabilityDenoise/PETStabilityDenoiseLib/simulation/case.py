"""One simulated brain FDG PET/MR case from a BrainWeb label image: truth, MR, OSEM at several doses, masks.

This is the only simulation module that knows about SimpleITK geometry; it converts the label image's
geometry to the index->RAS affines that ``phantom`` and ``acquisition`` use, and wraps their arrays back
into images (PET on a coarser grid made by block averaging the label grid, MR on the label grid).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .. import DATA_DIR
from ..engine import tomography
from ..engine.filters import psf_blur
from ..errors import InputError
from ..volumes.io import itk_path
from ..volumes.sinogram import SinogramData, write_sinogram
from . import acquisition as acq
from . import phantom as ph
from .scanners import REGIMES, SCANNERS

BRAINWEB_LABELS = "brainweb_subject{}_labels_1mm.nii.gz"  # the file name of a BrainWeb subject's labels
BUNDLED_SUBJECT = "04"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def bundled_labels_path() -> Path:
    """BrainWeb subject 04 labels (1 mm) shipped with the package for the demo."""
    return DATA_DIR / BRAINWEB_LABELS.format(BUNDLED_SUBJECT)


def labels_path(subject: str, labels_dir: Optional[Path] = None) -> Path:
    """The label file of BrainWeb subject ``subject`` (e.g. '04') in ``labels_dir``.

    Subject 04 falls back to the bundled copy when ``labels_dir`` is None or lacks it.
    """
    if labels_dir is not None and (Path(labels_dir) / BRAINWEB_LABELS.format(subject)).is_file():
        return Path(labels_dir) / BRAINWEB_LABELS.format(subject)
    if subject == BUNDLED_SUBJECT:
        return bundled_labels_path()
    if labels_dir is None:
        raise FileNotFoundError(f"BrainWeb subject {subject} is not bundled: give the folder of its labels")
    return Path(labels_dir) / BRAINWEB_LABELS.format(subject)


def brainweb_subjects(labels_dir: Path) -> list:
    """The subject numbers of the BrainWeb label files in ``labels_dir``, sorted."""
    prefix, suffix = BRAINWEB_LABELS.split("{}")
    return sorted(p.name[len(prefix):-len(suffix)] for p in Path(labels_dir).glob(BRAINWEB_LABELS.format("*")))


BRAIN = SCANNERS["brain"]

# The doses simulated by default, full dose first. Each dose's noise stream is chosen by its position in the
# tuple, so the same tuple gives the same noise (``petstab simulate`` and ``petstab evaluate`` share it).
DEFAULT_DOSES = (1.0, 0.5, 0.2, 0.1)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated case; the same config and labels give the same case.

    The defaults are the realistic regime (docs/SIMULATOR.md): regional grey-matter uptake, PET-only texture,
    lesions and hypometabolism, a slightly misregistered MR and the ``brain`` scanner. ``legacy()`` gives the
    first simulator's regime, where the PET is a function of the MR; ``for_scanner()`` switches scanner.
    """

    doses: tuple[float, ...] = DEFAULT_DOSES
    seed: int = 0  # the phantom: lesion layout, texture, misregistration, MR noise (and the PET noise by default)
    noise_seed: Optional[int] = None  # the PET counts alone, so that noise realisations share one phantom
    # Truth
    gm_wm_ratio: float = 4.0  # reference (frontal) grey/white matter activity; white matter stays at 2.0
    gm_uptake: tuple = ph.REGIONAL_GM_UPTAKE  # (region, multiplier of grey-matter uptake) pairs
    uptake_transition_mm: float = 8.0  # FWHM over which regional uptake changes at region borders
    texture_amplitude: float = 0.10  # std of the PET-only multiplicative texture in grey matter (0: none)
    texture_fwhm_mm: float = 4.0
    n_lesions: int = 3
    lesion_ratio: float = 4.0  # lesion activity / white-matter activity
    lesion_diameter_mm: tuple[float, float] = (8.0, 14.0)
    hypo_depth: float = 0.35  # fractional uptake loss in the hypometabolic region (0: none)
    hypo_center_mm: tuple[float, float, float] = (-52.0, -50.0, 18.0)  # left temporo-parietal cortex
    hypo_radii_mm: tuple[float, float, float] = (16.0, 22.0, 20.0)
    colliculus_activity: float = 10.0
    tectum_activity: float = 2.0
    colliculus_separation_mm: float = 14.0
    colliculus_diameter_mm: float = 8.0
    peak_radius_mm: float = 3.0  # PVR masks: peak voxels within this of each centre ...
    valley_radius_mm: float = 4.0  # ... valley voxels in the mid-plane within this of the axis
    # MR
    mr_blur_fwhm_mm: float = 1.0
    mr_noise_fraction: float = 0.03
    mr_bias_amplitude: float = 0.12
    mr_colliculus_contrast: float = 0.3
    misregistration_mm: float = 1.0  # rigid PET/MR misregistration: a shift of this length ...
    misregistration_deg: float = 1.0  # ... and a rotation by this angle, in random directions
    # Acquisition and reconstruction (the scanner preset)
    psf_fwhm_mm: float = BRAIN.psf_fwhm_mm
    pet_spacing_mm: float = 2.0
    n_angles: int = 168
    full_dose_counts: float = BRAIN.full_dose_counts  # expected true (unscattered) counts of the whole volume
    background_fraction: float = BRAIN.background_fraction  # expected randoms + scatter, as a fraction of trues
    attenuation: bool = True
    mu_per_cm: float = 0.0975  # uniform soft-tissue attenuation on the head mask
    osem_iterations: int = BRAIN.osem_iterations
    osem_subsets: int = BRAIN.osem_subsets

    def __post_init__(self) -> None:
        for name in ("seed", "n_lesions", "texture_amplitude", "hypo_depth", "misregistration_mm",
                     "misregistration_deg"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.noise_seed is not None and self.noise_seed < 0:
            raise InputError(f"noise_seed must be >= 0; got {self.noise_seed}")
        if not self.hypo_depth < 1:
            raise InputError(f"hypo_depth must be below 1; got {self.hypo_depth}")
        unknown = sorted({name for name, _ in self.gm_uptake} - set(ph.UPTAKE_REGIONS))
        if unknown:
            raise InputError(f"unknown uptake regions {unknown}; choose from {sorted(ph.UPTAKE_REGIONS)}")

    @classmethod
    def for_scanner(cls, name: str, **changes) -> "SimulationConfig":
        """The default case with the resolution, counts and reconstruction of scanner ``name``."""
        return cls(**{**scanner_settings(name), **changes})

    @classmethod
    def legacy(cls, **changes) -> "SimulationConfig":
        """The first simulator's regime: the PET is a function of the MR, on the ``wholebody`` scanner.

        One grey-matter value (deep nuclei +20 %), no texture or hypometabolism, faint 6-10 mm lesions, 2-voxel
        PVR peaks and an exactly registered MR. The evaluation keeps it as a stress case.
        """
        return cls.for_scanner("wholebody", **{**LEGACY_PHANTOM, **changes})

    def replace(self, **changes) -> "SimulationConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def simulation_config(scanner: str = "brain", regime: str = "realistic", count_scale: float = 1.0,
                      **fields) -> SimulationConfig:
    """The case of a scanner preset and a regime (see ``scanners``), its full-dose counts times ``count_scale``."""
    if regime not in REGIMES:
        raise InputError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
    if not count_scale > 0:
        raise InputError(f"count_scale must be > 0; got {count_scale}")
    settings = scanner_settings(scanner)
    settings["full_dose_counts"] *= count_scale
    return SimulationConfig(**{**REGIME_PHANTOMS[regime], **settings, **fields})


def scanner_settings(name: str) -> dict:
    """The SimulationConfig fields that scanner preset ``name`` sets."""
    if name not in SCANNERS:
        raise InputError(f"unknown scanner {name!r}; choose one of {', '.join(SCANNERS)}")
    return asdict(SCANNERS[name])


LEGACY_PHANTOM = dict(
    gm_uptake=ph.LEGACY_GM_UPTAKE, uptake_transition_mm=0.0, texture_amplitude=0.0, lesion_ratio=2.5,
    lesion_diameter_mm=(6.0, 10.0), hypo_depth=0.0, colliculus_separation_mm=12.0, colliculus_diameter_mm=6.0,
    peak_radius_mm=2.0, valley_radius_mm=2.0, misregistration_mm=0.0, misregistration_deg=0.0,
)
# An amyloid-negative scan (as with florbetapir): white matter above the cortex (cortex / WM 0.6), no regional
# pattern, hot spots or hypometabolism, faint texture; the MR and the scanner as in the realistic regime.
AMYLOID_PHANTOM = dict(
    gm_wm_ratio=0.6, gm_uptake=(), texture_amplitude=0.05, n_lesions=0, hypo_depth=0.0, colliculus_activity=2.0,
    tectum_activity=2.0,
)
# Regime -> the SimulationConfig fields it sets (scanners.REGIMES).
REGIME_PHANTOMS = {"realistic": {}, "legacy": LEGACY_PHANTOM, "amyloid": AMYLOID_PHANTOM}


def dose_label(fraction: float) -> str:
    """File-name tag of a dose fraction: 1 -> 'full', 0.5 -> '1-2', 0.1 -> '1-10', 0.3 -> '3-10'."""
    if fraction == 1.0:
        return "full"
    f = Fraction(fraction).limit_denominator(1000)
    return f"{f.numerator}-{f.denominator}"


@dataclass
class SimulatedCase:
    """A simulated case. PET images and masks share the PET grid; ``mr`` is on the label grid."""

    truth: sitk.Image
    truth_blurred: sitk.Image  # truth after the scanner PSF: what an unbiased reconstruction converges to
    mr: sitk.Image
    osem: dict[float, sitk.Image]
    masks: dict[str, sitk.Image]
    lesion_true_ratio: float
    hypo_true_ratio: float  # hypometabolic region mean / mirror mean in the 2 mm truth; NaN without one
    info: dict = field(default_factory=dict)
    sinograms: dict[float, SinogramData] = field(default_factory=dict)  # dose -> its data, when kept

    def write(self, out_dir: Path, fmt: str = "nii.gz") -> dict[str, Path]:
        """Write every image, each kept sinogram and ``simulation.json`` into ``out_dir``; returns name -> path."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        images = {"truth": self.truth, "truth_blurred": self.truth_blurred, "mr": self.mr}
        images.update({f"osem_{dose_label(d)}": im for d, im in self.osem.items()})
        images.update({f"mask_{k}": im for k, im in self.masks.items()})
        paths = {}
        for name, image in images.items():
            paths[name] = out_dir / f"{name}.{fmt}"
            sitk.WriteImage(image, itk_path(paths[name]), useCompression=True)
        for dose, data in self.sinograms.items():
            name = f"sinogram_{dose_label(dose)}"
            paths[name] = write_sinogram(data, out_dir / f"{name}.npz")
        paths["simulation"] = out_dir / "simulation.json"
        paths["simulation"].write_text(json.dumps(self.info, indent=2))
        return paths


def index_to_ras(image: sitk.Image) -> np.ndarray:
    """4x4 affine from a (k, j, i) array index of ``image`` to RAS mm (SimpleITK geometry is LPS)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    columns = direction * np.array(image.GetSpacing())  # column a: LPS step of index axis a (x, y, z order)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ columns[:, ::-1]  # array order is (k, j, i)
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return affine


def misregister(image: sitk.Image, shift_mm: float, rotation_deg: float,
                rng: np.random.Generator) -> tuple[sitk.Image, dict]:
    """The image resampled on its own grid through a rigid transform: a rotation by ``rotation_deg`` about a random
    axis through the image centre, and a shift of ``shift_mm`` in a random direction (linear interpolation)."""
    axis, direction = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 3)))
    record = {"shift_mm": shift_mm, "rotation_deg": rotation_deg, "rotation_axis_lps": axis.tolist(),
              "shift_direction_lps": direction.tolist()}
    if shift_mm == 0 and rotation_deg == 0:
        return image, record
    transform = sitk.VersorRigid3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))
    transform.SetRotation(tuple(float(a) for a in axis), float(np.radians(rotation_deg)))
    transform.SetTranslation(tuple(float(d) for d in shift_mm * direction))
    return sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0), record


def _image(array: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(direction)
    return image


def brainweb_labels(labels_image: sitk.Image) -> np.ndarray:
    """The label image's voxels as uint8, once they are checked to be BrainWeb tissue labels.

    Raises:
        InputError: values that are not whole numbers in BrainWeb's label range, or no grey or white matter.
    """
    values = sitk.GetArrayViewFromImage(labels_image)
    valid = np.isfinite(values) & (values == np.round(values)) & (values >= 0) & (values <= max(ph.Label))
    if not valid.all():
        raise InputError(f"the label image has {int((~valid).sum())} voxels that are not BrainWeb tissue labels "
                         f"(whole numbers 0 to {int(max(ph.Label))}); give a BrainWeb label volume, not an image")
    labels = values.astype(np.uint8)
    for tissue in (ph.Label.GM, ph.Label.WM):
        if not (labels == tissue).any():
            raise InputError(f"the label image has no {tissue.name} voxels (label {int(tissue)}); "
                             "give a BrainWeb label volume")
    return labels


def simulate_case(labels_image: sitk.Image, cfg: Optional[SimulationConfig] = None, *,
                  keep_sinograms: bool = False) -> SimulatedCase:
    """Simulate truth, MR and OSEM reconstructions at ``cfg.doses`` from a BrainWeb label image.

    ``keep_sinograms`` also keeps each dose's measured data (``SimulatedCase.sinograms``), for reconstruction.
    """
    cfg = cfg or SimulationConfig()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rng_layout, rng_mr = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))
    noise_seed = cfg.seed if cfg.noise_seed is None else cfg.noise_seed
    # Children 2, 3, ... of the noise seed, as before the noise seed existed, so old cases stay bit-identical.
    rng_counts, *rng_doses = (np.random.default_rng(s)
                              for s in np.random.SeedSequence(noise_seed).spawn(3 + len(cfg.doses))[2:])
    rng_texture, rng_misregistration = (np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(k,)))
                                        for k in (100, 101))

    labels = brainweb_labels(labels_image)
    spacing_zyx = np.array(labels_image.GetSpacing()[::-1])
    factor = tuple(int(round(cfg.pet_spacing_mm / s)) for s in spacing_zyx)
    if not np.allclose(np.array(factor) * spacing_zyx, cfg.pet_spacing_mm, rtol=1e-3) or factor[1] != factor[2]:
        raise InputError(
            f"PET spacing {cfg.pet_spacing_mm} mm must be an integer multiple of the isotropic in-plane label spacing "
            f"{tuple(spacing_zyx[::-1])} mm"
        )
    affine = index_to_ras(labels_image)
    pet_shape, pet_affine = ph.block_grid(labels.shape, affine, factor)
    coords = ph.grid_coordinates(labels.shape, affine)

    # Truth on the label grid, then partial-volume averaged onto the PET grid.
    fractions = {t: ph.block_average(labels == t, factor) for t in (ph.Label.GM, ph.Label.WM)}
    colliculi = ph.make_colliculi(pet_affine, separation_mm=cfg.colliculus_separation_mm, diameter_mm=cfg.colliculus_diameter_mm)
    lesions = ph.place_lesions(
        fractions[ph.Label.WM], pet_affine, rng_layout, cfg.n_lesions, cfg.lesion_ratio, cfg.lesion_diameter_mm,
        keep_away=(colliculi.tectum, *ph.STRIATUM, *ph.THALAMUS),
    )
    tissue_activity = {**ph.FDG_ACTIVITY, ph.Label.GM: cfg.gm_wm_ratio * ph.FDG_ACTIVITY[ph.Label.WM]}
    gm_1mm = labels == ph.Label.GM
    texture = None
    if cfg.texture_amplitude > 0:
        texture = ph.texture_field(labels.shape, spacing_zyx, rng_texture, cfg.texture_fwhm_mm,
                                   cfg.texture_amplitude, gm_1mm)
    hypometabolism = ph.Hypometabolism(ph.Ellipsoid(cfg.hypo_center_mm, cfg.hypo_radii_mm), cfg.hypo_depth)
    activity = ph.make_activity(
        labels, coords, colliculi, lesions,
        gm_uptake_field=ph.regional_uptake_field(coords, cfg.gm_uptake, cfg.uptake_transition_mm, spacing_zyx),
        gm_texture=texture, hypometabolism=hypometabolism, colliculus_activity=cfg.colliculus_activity,
        tectum_activity=cfg.tectum_activity, tissue_activity=tissue_activity,
    )
    del texture
    truth = ph.block_average(activity, factor)
    head_fraction = ph.block_average(labels != ph.Label.BACKGROUND, factor)
    masks = ph.pet_masks(fractions, head_fraction, coords, labels, pet_affine, factor, colliculi, lesions,
                         hypometabolism, cfg.peak_radius_mm, cfg.valley_radius_mm)
    timings["phantom_s"] = time.perf_counter() - t_start

    t = time.perf_counter()
    mr = ph.make_t1(
        labels, spacing_zyx, rng_mr, coords, colliculi, cfg.mr_colliculus_contrast,
        cfg.mr_blur_fwhm_mm, cfg.mr_noise_fraction, cfg.mr_bias_amplitude,
    )
    del coords
    timings["mr_s"] = time.perf_counter() - t

    # Data: blurred activity projected on the fine label grid, then binned to the PET grid's slices and detector
    # bins, so that the data do not come from the reconstruction's own discrete model.
    t = time.perf_counter()
    blurred = psf_blur(activity, cfg.psf_fwhm_mm, spacing_zyx)
    truth_blurred = ph.block_average(blurred, factor)
    pet_projector = tomography.ParallelBeamProjector.build(pet_shape[1:], cfg.pet_spacing_mm, cfg.n_angles)
    pad = [(0, p * f - n) for p, f, n in zip(pet_shape, factor, labels.shape)]
    fine = np.pad(blurred, pad)
    fine_projector = tomography.ParallelBeamProjector.build(
        fine.shape[1:], spacing_zyx[2], cfg.n_angles, pet_projector.n_bins * factor[2], spacing_zyx[2]
    )
    line_integrals = ph.block_average(fine_projector.forward(fine), (factor[0], 1, factor[2]))
    del fine, blurred
    if cfg.attenuation:
        mu = masks["head"].astype(np.float32) * np.float32(cfg.mu_per_cm / 10.0)
        att = acq.attenuation_factors(mu, pet_projector)
    else:
        att = np.ones_like(line_integrals)
    trues_per_activity = att * line_integrals
    counts_per_unit = cfg.full_dose_counts / float(trues_per_activity.sum())
    trues = counts_per_unit * trues_per_activity
    background = acq.background_sinogram(trues, cfg.background_fraction, pet_projector.bin_mm)
    prompts = acq.poisson_counts(trues + background, rng_counts)
    timings["acquisition_s"] = time.perf_counter() - t

    osem_images: dict[float, np.ndarray] = {}
    measured: dict[float, tuple] = {}
    counts_info = {}
    for dose, rng in zip(cfg.doses, rng_doses):
        t = time.perf_counter()
        counts = acq.thin_counts(prompts, dose, rng)
        multiplicative, additive = dose * counts_per_unit * att, dose * background
        osem_images[dose] = tomography.osem(counts, pet_projector, multiplicative, additive, cfg.osem_iterations,
                                            cfg.osem_subsets)
        if keep_sinograms:
            measured[dose] = counts, additive, multiplicative
        timings[f"osem_{dose_label(dose)}_s"] = time.perf_counter() - t
        counts_info[dose_label(dose)] = {
            "dose_fraction": dose,
            "expected_true_counts": dose * float(trues.sum()),
            "expected_background_counts": dose * float(background.sum()),
            "measured_prompts": int(counts.sum()),
        }

    lesion_mask: np.ndarray = masks["lesions"].astype(bool)
    bg_mask: np.ndarray = masks["lesion_background"].astype(bool)
    true_ratio = float(truth[lesion_mask].mean() / truth[bg_mask].mean()) if lesion_mask.any() else float("nan")
    hypo_ratio = float("nan")
    if "hypo" in masks:
        hypo_ratio = float(truth[masks["hypo"].astype(bool)].mean() / truth[masks["hypo_mirror"].astype(bool)].mean())

    direction = labels_image.GetDirection()
    pet_origin = np.array(labels_image.GetOrigin()) + np.array(direction).reshape(3, 3) @ (
        (np.array(factor[::-1]) - 1) / 2.0 * np.array(labels_image.GetSpacing())
    )
    pet_spacing = np.array(factor[::-1]) * np.array(labels_image.GetSpacing())

    def pet(array: np.ndarray) -> sitk.Image:
        return _image(array, pet_spacing, pet_origin, direction)

    sinograms = {dose: SinogramData(
        prompts=counts, additive=additive, multiplicative=multiplicative,
        angles_rad=np.asarray(pet_projector.angles_rad), bin_mm=pet_projector.bin_mm,
        image_size=tuple(int(n) for n in pet_shape[::-1]), origin=tuple(float(v) for v in pet_origin),
        spacing=tuple(float(v) for v in pet_spacing), direction=tuple(direction), dose_fraction=dose,
        description=f"petstab simulate: BrainWeb phantom, seed {cfg.seed}, dose {dose_label(dose)}",
    ) for dose, (counts, additive, multiplicative) in measured.items()}

    mr_image = sitk.GetImageFromArray(mr)
    mr_image.CopyInformation(labels_image)
    mr_image, misregistration = misregister(mr_image, cfg.misregistration_mm, cfg.misregistration_deg,
                                            rng_misregistration)
    timings["total_s"] = time.perf_counter() - t_start
    info = {
        "config": cfg.to_dict(),
        "pet_shape_zyx": list(pet_shape),
        "pet_spacing_mm": pet_spacing.tolist(),
        "sinogram_shape": [pet_shape[0], pet_projector.n_angles, pet_projector.n_bins],
        "activity_units": f"SUV-like (WM {ph.FDG_ACTIVITY[ph.Label.WM]:g}, frontal GM {tissue_activity[ph.Label.GM]:g})",
        "counts_per_unit_activity_mm": counts_per_unit,
        "counts": counts_info,
        "background_fraction": cfg.background_fraction,
        "lesions": [{"center_ras_mm": list(s.center_mm), "diameter_mm": 2 * s.radii_mm[0]} for s in lesions.spheres],
        "lesion_nominal_ratio": cfg.lesion_ratio,
        "lesion_true_ratio": true_ratio if lesion_mask.any() else None,
        "colliculi_ras_mm": {"left": list(colliculi.left_mm), "right": list(colliculi.right_mm)},
        "hypometabolism": None if "hypo" not in masks else {
            "center_ras_mm": list(cfg.hypo_center_mm), "radii_mm": list(cfg.hypo_radii_mm), "depth": cfg.hypo_depth,
            "true_ratio_to_mirror": hypo_ratio},
        "mr_misregistration": misregistration,
        "timings": timings,
    }
    return SimulatedCase(
        truth=pet(truth),
        truth_blurred=pet(truth_blurred),
        mr=mr_image,
        osem={d: pet(im.astype(np.float32)) for d, im in osem_images.items()},
        masks={k: pet(m) for k, m in masks.items()},
        lesion_true_ratio=true_ratio,
        hypo_true_ratio=hypo_ratio,
        info=info,
        sinograms=sinograms,
    )
