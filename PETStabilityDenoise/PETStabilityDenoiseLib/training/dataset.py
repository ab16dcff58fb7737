"""Training data for the DDPM and its U-Net baseline: simulated low-dose/target pairs and random patches.

Each BrainWeb subject is simulated in several variants of the realistic
simulator (docs/SIMULATOR.md). A variant draws what varies between patients
and scanners: the grey/white matter ratio, the regional uptake pattern, the
PET-only texture, hot lesions, a hypometabolic region in either hemisphere,
the scanner preset and its count level, and the PET/MR misregistration.
Every variant gives one pair per low dose: the low-dose OSEM (the
condition), the MR on the PET grid, and three possible targets, the full-dose
OSEM, the PSF-blurred truth (which only a simulator has, and which carries
no noise of its own) and the truth itself, before the scanner's PSF.

All images of a pair are divided by the *low-dose* image's head mean, the
only scale known at inference. Patches then get two augmentations: a
left-right flip, and a random intensity factor applied to the pair, which
stands in for the head-mean shifts of real data (more or less scalp, neck or
hot spots in the mask).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, cast

import numpy as np
import SimpleITK as sitk

from ..engine.ddpm.model import to_model_space
from ..errors import InputError
from ..settings import DEFAULT_TRAINING_TARGET, TRAINING_TARGETS
from ..simulation import SimulationConfig, simulate_case
from ..simulation.case import simulation_config
from ..volumes.files import write_atomically
from ..volumes.geometry import apply_crop_pad, head_mask, plan_crop_pad, resample_to_reference

# Subjects never trained on: the evaluation study's and the model card's validation set.
VALIDATION_SUBJECTS = ("50", "51", "52", "53", "54")
PAIR_ARRAYS = ("low", "full", "clean", "mr", "head")
# Arrays that pairs simulated before them lack: such pairs still serve every other target.
OPTIONAL_PAIR_ARRAYS = ("truth",)


@dataclass(frozen=True)
class TrainingPair:
    """One simulated case at one dose, cropped to the head, in units of the low-dose head mean.

    ``full`` is the full-dose OSEM, ``clean`` the PSF-blurred truth and ``truth`` the truth before the PSF, the
    possible targets (``truth`` is None in pairs simulated before it was kept). ``base`` is a regression model's
    prediction from ``low`` (:func:`with_base_predictions`), which a corrective diffusion model is trained to correct.
    """

    low: np.ndarray
    full: np.ndarray
    clean: np.ndarray
    mr: np.ndarray
    head: np.ndarray
    subject: str
    dose: float
    base: Optional[np.ndarray] = None
    truth: Optional[np.ndarray] = None

    @cached_property
    def head_indices(self) -> np.ndarray:
        """The flat indices of the head's voxels, where patches are centred; found once, not for every patch (it
        was 40 % of the time to cut a batch)."""
        return np.flatnonzero(self.head)

    def target(self, name: str) -> np.ndarray:
        if name not in TRAINING_TARGETS:
            raise InputError(f"unknown training target {name!r}; choose one of {', '.join(TRAINING_TARGETS)}")
        if name == "truth":
            if self.truth is None:
                raise InputError("these training pairs were simulated before the unblurred truth was kept, so they "
                                 "cannot train towards it: simulate them again in a new training folder")
            return self.truth
        return self.full if name == "full_dose" else self.clean


@dataclass(frozen=True)
class AugmentationRanges:
    """What varies between simulated variants of a subject, and between patches.

    Each range is drawn uniformly, except ``count_scale`` (log-uniform) and the scanner (``brain_fraction``).
    The ranges are centred on the simulator's realistic defaults, which the evaluation uses.
    """

    gm_wm_ratio: Tuple[float, float] = (3.0, 5.0)
    uptake_jitter: float = 0.08  # each regional grey-matter multiplier is scaled by U(1 - j, 1 + j)
    texture_amplitude: Tuple[float, float] = (0.05, 0.15)
    texture_fwhm_mm: Tuple[float, float] = (3.0, 6.0)
    n_lesions: Tuple[int, int] = (0, 5)
    lesion_ratio: Tuple[float, float] = (2.0, 6.0)
    lesion_diameter_mm: Tuple[float, float] = (6.0, 16.0)
    hypo_probability: float = 0.5  # a variant has a hypometabolic region this often ...
    hypo_depth: Tuple[float, float] = (0.2, 0.45)
    hypo_shift_mm: float = 10.0  # ... moved up to this far along each axis, in either hemisphere
    brain_fraction: float = 0.75  # variants on the ``brain`` scanner; the rest on ``wholebody``
    count_scale: Tuple[float, float] = (0.5, 2.0)  # full-dose counts times this (the preset's are estimates)
    misregistration_mm: Tuple[float, float] = (0.0, 2.0)
    misregistration_deg: Tuple[float, float] = (0.0, 2.0)
    intensity_scale: Tuple[float, float] = (0.8, 1.25)


def make_pair(low: np.ndarray, full: np.ndarray, clean: np.ndarray, mr: np.ndarray, subject: str, dose: float,
              margin: int, truth: Optional[np.ndarray] = None) -> TrainingPair:
    """Normalises and crops one case at one dose, (z, y, x) arrays on the PET grid."""
    head = head_mask(low, mr)
    scale, mr_scale = float(low[head].mean()), float(mr[head].mean())
    plan = plan_crop_pad(head, margin, 1)
    pet = {name: apply_crop_pad(a / scale, plan, mode="constant").astype(np.float32)
           for name, a in (("low", low), ("full", full), ("clean", clean), ("truth", truth)) if a is not None}
    return TrainingPair(**pet, mr=apply_crop_pad(mr / mr_scale, plan, mode="constant").astype(np.float32),
                        head=apply_crop_pad(head, plan, mode="constant").astype(bool), subject=subject, dose=dose)


def variant_config(rng: np.random.Generator, ranges: AugmentationRanges, doses: Sequence[float],
                   seed: int) -> SimulationConfig:
    """One draw of the simulator's settings within ``ranges``; ``seed`` seeds the phantom and its noise."""
    default = SimulationConfig()
    uptake = tuple((region, float(value * rng.uniform(1 - ranges.uptake_jitter, 1 + ranges.uptake_jitter)))
                   for region, value in default.gm_uptake)
    hypo: Dict[str, Any] = {"hypo_depth": 0.0}
    if rng.random() < ranges.hypo_probability:
        side = rng.choice([-1.0, 1.0])
        x, y, z = np.asarray(default.hypo_center_mm) + rng.uniform(-ranges.hypo_shift_mm, ranges.hypo_shift_mm, 3)
        hypo = {"hypo_depth": float(rng.uniform(*ranges.hypo_depth)),
                "hypo_center_mm": (float(side * abs(x)), float(y), float(z))}
    low_scale, high_scale = (math.log(v) for v in ranges.count_scale)
    return simulation_config(
        scanner="brain" if rng.random() < ranges.brain_fraction else "wholebody",
        count_scale=float(math.exp(rng.uniform(low_scale, high_scale))),
        doses=(1.0, *doses), seed=seed, gm_wm_ratio=float(rng.uniform(*ranges.gm_wm_ratio)), gm_uptake=uptake,
        texture_amplitude=float(rng.uniform(*ranges.texture_amplitude)),
        texture_fwhm_mm=float(rng.uniform(*ranges.texture_fwhm_mm)),
        n_lesions=int(rng.integers(ranges.n_lesions[0], ranges.n_lesions[1] + 1)),
        lesion_ratio=float(rng.uniform(*ranges.lesion_ratio)),
        lesion_diameter_mm=tuple(sorted(float(d) for d in rng.uniform(*ranges.lesion_diameter_mm, size=2))),
        misregistration_mm=float(rng.uniform(*ranges.misregistration_mm)),
        misregistration_deg=float(rng.uniform(*ranges.misregistration_deg)), **hypo)


def _simulate_with_room_for_lesions(label_image: sitk.Image, config: SimulationConfig):
    """Simulates ``config``, dropping lesions while a small brain has no room for them all."""
    while True:
        try:
            return simulate_case(label_image, config)
        except ValueError as error:
            if "no room for lesion" not in str(error) or config.n_lesions == 0:
                raise
            config = dataclasses.replace(config, n_lesions=config.n_lesions - 1)


def save_pairs(pairs: Sequence[TrainingPair], path: Path) -> None:
    """Keeps a simulated training set, so that a resumed training does not simulate it again; written whole, as a
    resume takes any file that is there."""
    arrays = {f"{i}_{name}": getattr(pair, name) for i, pair in enumerate(pairs) for name in PAIR_ARRAYS}
    arrays.update({f"{i}_{name}": getattr(pair, name) for i, pair in enumerate(pairs)
                   for name in ("base", *OPTIONAL_PAIR_ARRAYS) if getattr(pair, name) is not None})
    meta = [{"subject": pair.subject, "dose": pair.dose} for pair in pairs]
    write_atomically(path, lambda handle: np.savez(handle, meta=json.dumps(meta), **arrays), binary=True)


def load_pairs(path: Path) -> List[TrainingPair]:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        missing = [name for name in PAIR_ARRAYS if f"0_{name}" not in data]
        if meta and missing:
            raise InputError(f"{path} holds training pairs of an older format (no {', '.join(missing)}): "
                             "simulate them again in a new training folder")

        def optional(name: str) -> Optional[np.ndarray]:
            return data[name] if name in data else None

        return [TrainingPair(**{name: data[f"{i}_{name}"] for name in PAIR_ARRAYS}, subject=m["subject"],
                             dose=m["dose"], base=optional(f"{i}_base"), truth=optional(f"{i}_truth"))
                for i, m in enumerate(meta)]


def with_base_predictions(pairs: Sequence[TrainingPair], predict: Callable[[TrainingPair], np.ndarray],
                          progress: Optional[Callable[[str], None]] = None) -> List[TrainingPair]:
    """``pairs`` with ``base`` set to ``predict(pair)``: a regression model's prediction from the pair's low-dose
    image and MR, in the pair's units (for example :func:`~..engine.ddpm.regression.predict_volume`)."""
    done = []
    for index, pair in enumerate(pairs):
        done.append(dataclasses.replace(pair, base=predict(pair).astype(np.float32)))
        if progress is not None:
            progress(f"base prediction {index + 1}/{len(pairs)}")
    return done


def simulate_pairs(labels: Iterable[Tuple[str, sitk.Image]], doses: Sequence[float], variants: int, seed: int,
                   ranges: AugmentationRanges = AugmentationRanges(), margin: int = 4,
                   progress: Optional[Callable[[str], None]] = None) -> List[TrainingPair]:
    """Simulates ``variants`` cases per labelled subject and returns one pair per case and low dose."""
    pairs = []
    for subject_index, (subject, label_image) in enumerate(labels):
        for variant in range(variants):
            variant_seed = seed * 100_000 + subject_index * 100 + variant
            config = variant_config(np.random.default_rng(variant_seed), ranges, doses, variant_seed)
            case = _simulate_with_room_for_lesions(label_image, config)
            full = sitk.GetArrayFromImage(case.osem[1.0]).astype(np.float32)
            clean = sitk.GetArrayFromImage(case.truth_blurred).astype(np.float32)
            truth = sitk.GetArrayFromImage(case.truth).astype(np.float32)
            mr = sitk.GetArrayFromImage(resample_to_reference(case.mr, case.osem[1.0], name="MR")).astype(np.float32)
            for dose in doses:
                low = sitk.GetArrayFromImage(case.osem[dose]).astype(np.float32)
                pairs.append(make_pair(low, full, clean, mr, subject, dose, margin, truth))
            if progress is not None:
                progress(f"simulated subject {subject}, variant {variant + 1}/{variants}")
    return pairs


def random_patches(pairs: Sequence[TrainingPair], count: int, size: int, rng: np.random.Generator,
                   intensity_scale: Tuple[float, float] = AugmentationRanges.intensity_scale,
                   use_mr: bool = True, target: str = DEFAULT_TRAINING_TARGET,
                   residual_scale: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` augmented patches centred in the head: (conditions (N, C, s, s, s), targets (N, 1, s, s, s)).

    Both are in the network's range; the conditions are the low-dose PET, then the MR if ``use_mr``.
    ``target`` is one of ``settings.TRAINING_TARGETS``.

    Args:
        residual_scale: for a corrective model (``DDPMConfig.corrective``): the pairs' base prediction is a
            condition after the low-dose PET, and the target is (target - base) / ``residual_scale``.
    """
    too_small = [p.subject for p in pairs if min(p.head.shape) < size]
    if too_small:
        raise InputError(f"the head crops of subjects {sorted(set(too_small))} are smaller than a {size}-voxel patch")
    if residual_scale is not None and any(p.base is None for p in pairs):
        raise InputError("a corrective model trains on pairs with base predictions (with_base_predictions)")
    conditions, targets = [], []
    for _ in range(count):
        pair = pairs[cast(int, rng.integers(len(pairs)))]  # a numpy int, which indexes like one
        inside = pair.head_indices
        centre = np.unravel_index(inside[rng.integers(len(inside))], pair.head.shape)
        corner = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, pair.head.shape)]
        window = tuple(slice(c, c + size) for c in corner)
        factor = rng.uniform(*intensity_scale)
        channels = [to_model_space(pair.low[window] * factor, 1.0),
                    to_model_space(pair.target(target)[window] * factor, 1.0)]
        if residual_scale is not None:
            base = to_model_space(cast(np.ndarray, pair.base)[window] * factor, 1.0)
            channels = [channels[0], (channels[1] - base) / residual_scale, base]
        if use_mr:
            channels.append(to_model_space(pair.mr[window], 1.0))
        stack = np.stack(channels)
        if rng.random() < 0.5:
            stack = stack[..., ::-1]
        conditions.append(np.delete(stack, 1, axis=0))
        targets.append(stack[1:2])
    return np.ascontiguousarray(conditions), np.ascontiguousarray(targets)
