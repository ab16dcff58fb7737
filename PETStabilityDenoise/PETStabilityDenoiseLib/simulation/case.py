"""One simulated brain FDG PET/MR case from a BrainWeb label image: truth, MR, OSEM at several doses, masks.

This is the only simulation module that knows about SimpleITK geometry; it converts the label image's
geometry to the index->RAS affines that ``phantom`` and ``acquisition`` use, and wraps their arrays back
into images (PET on a coarser grid made by block averaging the label grid, MR on the label grid).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import acquisition as acq
from . import phantom as ph

BUNDLED_LABELS = "brainweb_subject04_labels_1mm.nii.gz"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def bundled_labels_path() -> Path:
    """BrainWeb subject 04 labels (1 mm) shipped with the package for the demo."""
    return Path(__file__).resolve().parents[1] / "data" / BUNDLED_LABELS


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated case; the same config and labels give the same case."""

    doses: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1)
    seed: int = 0
    # Truth
    gm_wm_ratio: float = 4.0  # grey/white matter activity; white matter stays at the FDG_ACTIVITY value
    n_lesions: int = 3
    lesion_ratio: float = 2.5  # lesion activity / white-matter activity
    lesion_diameter_mm: tuple[float, float] = (6.0, 10.0)
    deep_nuclei_boost: float = 0.2
    colliculus_activity: float = 10.0
    tectum_activity: float = 2.0
    colliculus_separation_mm: float = 12.0
    colliculus_diameter_mm: float = 6.0
    # MR
    mr_blur_fwhm_mm: float = 1.0
    mr_noise_fraction: float = 0.03
    mr_bias_amplitude: float = 0.12
    mr_colliculus_contrast: float = 0.3
    # Acquisition and reconstruction
    psf_fwhm_mm: float = 4.5
    pet_spacing_mm: float = 2.0
    n_angles: int = 168
    full_dose_counts: float = 1.1e8  # expected true (unscattered) counts of the whole volume at full dose
    background_fraction: float = 0.25  # expected randoms + scatter, as a fraction of the true counts
    attenuation: bool = True
    mu_per_cm: float = 0.0975  # uniform soft-tissue attenuation on the head mask
    osem_iterations: int = 4
    osem_subsets: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


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
    info: dict = field(default_factory=dict)

    def write(self, out_dir: Path, fmt: str = "nii.gz") -> dict[str, Path]:
        """Write every image and ``simulation.json`` into ``out_dir``; returns name -> path."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        images = {"truth": self.truth, "truth_blurred": self.truth_blurred, "mr": self.mr}
        images.update({f"osem_{dose_label(d)}": im for d, im in self.osem.items()})
        images.update({f"mask_{k}": im for k, im in self.masks.items()})
        paths = {}
        for name, image in images.items():
            paths[name] = out_dir / f"{name}.{fmt}"
            sitk.WriteImage(image, str(paths[name]), useCompression=True)
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


def _image(array: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(direction)
    return image


def simulate_case(labels_image: sitk.Image, cfg: Optional[SimulationConfig] = None) -> SimulatedCase:
    """Simulate truth, MR and OSEM reconstructions at ``cfg.doses`` from a BrainWeb label image."""
    cfg = cfg or SimulationConfig()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    rng_layout, rng_mr, rng_counts, *rng_doses = (
        np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3 + len(cfg.doses))
    )

    labels = sitk.GetArrayFromImage(labels_image).astype(np.uint8)
    spacing_zyx = np.array(labels_image.GetSpacing()[::-1])
    factor = tuple(int(round(cfg.pet_spacing_mm / s)) for s in spacing_zyx)
    if not np.allclose(np.array(factor) * spacing_zyx, cfg.pet_spacing_mm, rtol=1e-3) or factor[1] != factor[2]:
        raise ValueError(
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
    activity = ph.make_activity(
        labels, coords, colliculi, lesions, cfg.deep_nuclei_boost, cfg.colliculus_activity, cfg.tectum_activity,
        tissue_activity,
    )
    truth = ph.block_average(activity, factor)
    head_fraction = ph.block_average(labels != ph.Label.BACKGROUND, factor)
    masks = ph.pet_masks(fractions, head_fraction, coords, labels, pet_affine, factor, colliculi, lesions)
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
    blurred = acq.gaussian_blur(activity, cfg.psf_fwhm_mm, spacing_zyx)
    truth_blurred = ph.block_average(blurred, factor)
    pet_projector = acq.ParallelBeamProjector.build(pet_shape[1:], cfg.pet_spacing_mm, cfg.n_angles)
    pad = [(0, p * f - n) for p, f, n in zip(pet_shape, factor, labels.shape)]
    fine = np.pad(blurred, pad)
    fine_projector = acq.ParallelBeamProjector.build(
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
    counts_info = {}
    for dose, rng in zip(cfg.doses, rng_doses):
        t = time.perf_counter()
        counts = acq.thin_counts(prompts, dose, rng)
        osem_images[dose] = acq.osem(
            counts, pet_projector, dose * counts_per_unit * att, dose * background, cfg.osem_iterations, cfg.osem_subsets
        )
        timings[f"osem_{dose_label(dose)}_s"] = time.perf_counter() - t
        counts_info[dose_label(dose)] = {
            "dose_fraction": dose,
            "expected_true_counts": dose * float(trues.sum()),
            "expected_background_counts": dose * float(background.sum()),
            "measured_prompts": int(counts.sum()),
        }

    lesion_mask = masks["lesions"].astype(bool)
    bg_mask = masks["lesion_background"].astype(bool)
    true_ratio = float(truth[lesion_mask].mean() / truth[bg_mask].mean()) if lesion_mask.any() else float("nan")
    timings["total_s"] = time.perf_counter() - t_start

    direction = labels_image.GetDirection()
    pet_origin = np.array(labels_image.GetOrigin()) + np.array(direction).reshape(3, 3) @ (
        (np.array(factor[::-1]) - 1) / 2.0 * np.array(labels_image.GetSpacing())
    )
    pet_spacing = np.array(factor[::-1]) * np.array(labels_image.GetSpacing())

    def pet(array: np.ndarray) -> sitk.Image:
        return _image(array, pet_spacing, pet_origin, direction)

    mr_image = sitk.GetImageFromArray(mr)
    mr_image.CopyInformation(labels_image)
    info = {
        "config": cfg.to_dict(),
        "pet_shape_zyx": list(pet_shape),
        "pet_spacing_mm": pet_spacing.tolist(),
        "sinogram_shape": [pet_shape[0], pet_projector.n_angles, pet_projector.n_bins],
        "activity_units": "SUV-like (GM 8, WM 2)",
        "counts_per_unit_activity_mm": counts_per_unit,
        "counts": counts_info,
        "background_fraction": cfg.background_fraction,
        "lesions": [{"center_ras_mm": list(s.center_mm), "diameter_mm": 2 * s.radii_mm[0]} for s in lesions.spheres],
        "lesion_nominal_ratio": cfg.lesion_ratio,
        "lesion_true_ratio": true_ratio if lesion_mask.any() else None,
        "colliculi_ras_mm": {"left": list(colliculi.left_mm), "right": list(colliculi.right_mm)},
        "timings": timings,
    }
    return SimulatedCase(
        truth=pet(truth),
        truth_blurred=pet(truth_blurred),
        mr=mr_image,
        osem={d: pet(im.astype(np.float32)) for d, im in osem_images.items()},
        masks={k: pet(m) for k, m in masks.items()},
        lesion_true_ratio=true_ratio,
        info=info,
    )
