"""Training data for the DDPM: simulated low-dose/full-dose pairs and random patches from them.

Each BrainWeb subject is simulated in several variants (grey/white matter
ratio, number, size and contrast of lesions, noise seed). Every variant gives
one pair per low dose: the low-dose OSEM (the condition), the full-dose OSEM
(the target) and the MR on the PET grid.

Both images of a pair are divided by the *low-dose* image's head mean, the
only scale known at inference. Patches then get two augmentations: a
left-right flip, and a random intensity factor applied to the pair, which
stands in for the head-mean shifts of real data (more or less scalp, neck or
hot spots in the mask).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, cast

import numpy as np
import SimpleITK as sitk

from ..engine.ddpm.model import to_model_space
from ..errors import InputError
from ..simulation import SimulationConfig, simulate_case
from ..volumes.geometry import apply_crop_pad, head_mask, plan_crop_pad, resample_to_reference

# Subjects never trained on: the evaluation study's and the model card's validation set.
VALIDATION_SUBJECTS = ("50", "51", "52", "53", "54")


@dataclass(frozen=True)
class TrainingPair:
    """One simulated case at one dose, cropped to the head, in units of the low-dose head mean."""

    low: np.ndarray
    full: np.ndarray
    mr: np.ndarray
    head: np.ndarray
    subject: str
    dose: float


@dataclass(frozen=True)
class AugmentationRanges:
    """What varies between simulated variants of a subject, and between patches."""

    gm_wm_ratio: Tuple[float, float] = (3.0, 5.0)
    n_lesions: Tuple[int, int] = (0, 6)
    lesion_ratio: Tuple[float, float] = (1.5, 4.0)
    lesion_diameter_mm: Tuple[float, float] = (6.0, 16.0)
    intensity_scale: Tuple[float, float] = (0.8, 1.25)


def make_pair(low: np.ndarray, full: np.ndarray, mr: np.ndarray, subject: str, dose: float,
              margin: int) -> TrainingPair:
    """Normalises and crops one pair of (z, y, x) arrays on the PET grid."""
    head = head_mask(low, mr)
    scale, mr_scale = float(low[head].mean()), float(mr[head].mean())
    plan = plan_crop_pad(head, margin, 1)
    crop = [apply_crop_pad(a, plan, mode="constant") for a in (low / scale, full / scale, mr / mr_scale, head)]
    return TrainingPair(*(a.astype(np.float32) for a in crop[:3]),  # type: ignore[call-arg, arg-type]
                        crop[3].astype(bool), subject, dose)  # mypy cannot count the three starred arrays


def variant_config(rng: np.random.Generator, ranges: AugmentationRanges, doses: Sequence[float],
                   seed: int) -> SimulationConfig:
    diameter = sorted(rng.uniform(*ranges.lesion_diameter_mm, size=2))
    return SimulationConfig(
        doses=(1.0, *doses), seed=seed, gm_wm_ratio=float(rng.uniform(*ranges.gm_wm_ratio)),
        n_lesions=int(rng.integers(ranges.n_lesions[0], ranges.n_lesions[1] + 1)),
        lesion_ratio=float(rng.uniform(*ranges.lesion_ratio)), lesion_diameter_mm=tuple(diameter))


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
    """Keeps a simulated training set, so that a resumed training does not simulate it again."""
    arrays = {f"{i}_{name}": getattr(pair, name) for i, pair in enumerate(pairs) for name in ("low", "full", "mr", "head")}
    meta = [{"subject": pair.subject, "dose": pair.dose} for pair in pairs]
    np.savez(path, meta=json.dumps(meta), **arrays)


def load_pairs(path: Path) -> List[TrainingPair]:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return [TrainingPair(  # type: ignore[call-arg]  # mypy cannot count the four starred arrays
                    *(data[f"{i}_{name}"] for name in ("low", "full", "mr", "head")), m["subject"], m["dose"])
                for i, m in enumerate(meta)]


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
            mr = sitk.GetArrayFromImage(resample_to_reference(case.mr, case.osem[1.0], name="MR")).astype(np.float32)
            for dose in doses:
                low = sitk.GetArrayFromImage(case.osem[dose]).astype(np.float32)
                pairs.append(make_pair(low, full, mr, subject, dose, margin))
            if progress is not None:
                progress(f"simulated subject {subject}, variant {variant + 1}/{variants}")
    return pairs


def random_patches(pairs: Sequence[TrainingPair], count: int, size: int, rng: np.random.Generator,
                   intensity_scale: Tuple[float, float] = AugmentationRanges.intensity_scale,
                   use_mr: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` augmented patches centred in the head: (conditions (N, C, s, s, s), targets (N, 1, s, s, s)).

    Both are in the network's range; the conditions are the low-dose PET, then the MR if ``use_mr``.
    """
    too_small = [p.subject for p in pairs if min(p.head.shape) < size]
    if too_small:
        raise InputError(f"the head crops of subjects {sorted(set(too_small))} are smaller than a {size}-voxel patch")
    conditions, targets = [], []
    for _ in range(count):
        pair = pairs[cast(int, rng.integers(len(pairs)))]  # a numpy int, which indexes like one
        inside = np.flatnonzero(pair.head)
        centre = np.unravel_index(inside[rng.integers(len(inside))], pair.head.shape)
        corner = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, pair.head.shape)]
        window = tuple(slice(c, c + size) for c in corner)
        factor = rng.uniform(*intensity_scale)
        channels = [to_model_space(pair.low[window] * factor, 1.0), to_model_space(pair.full[window] * factor, 1.0)]
        if use_mr:
            channels.append(to_model_space(pair.mr[window], 1.0))
        stack = np.stack(channels)
        if rng.random() < 0.5:
            stack = stack[..., ::-1]
        conditions.append(np.delete(stack, 1, axis=0))
        targets.append(stack[1:2])
    return np.ascontiguousarray(conditions), np.ascontiguousarray(targets)
