"""Denoise one PET volume: validation, MR resampling, cropping, DIP fit, blend.

Data flows one way: SimpleITK images in, numpy through the engine
(``dip.py``, ``blend.py``), SimpleITK images out, every output on the PET's
exact grid. File I/O stays in the callers (``cli.py``, the Slicer logic).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .blend import blend
from .config import EpochReport
from .dip import DIPConfig, DIPResult, fit_dip
from .geometry import (apply_crop_pad, array_to_image, grids_match, head_mask, plan_crop_pad,
                       resample_to_reference, undo_crop_pad)
from .validation import validate_volume

log = logging.getLogger(__name__)

# Air margin kept around the head's bounding box, in voxels: enough for the
# U-Net's receptive field at the edge of the scalp, small enough to stay cheap.
CROP_MARGIN_VOXELS = 4


@dataclass
class DenoiseResult:
    """The volumes and bookkeeping of one run, all on the PET grid."""

    pet: sitk.Image
    denoised: sitk.Image
    network_output: sitk.Image
    stability: sitk.Image
    stability_norm: sitk.Image
    alpha: float
    stability_mean: float
    n_samples: int
    dip: DIPResult
    info: dict = field(default_factory=dict)

    def reblend(self, alpha: float) -> None:
        """Recomputes ``denoised`` and ``stability_norm`` at a new alpha, with no new fit."""
        denoised, stability_norm = blend_images(self.pet, self.network_output, self.stability, alpha, self.stability_mean)
        self.denoised, self.stability_norm, self.alpha = denoised, stability_norm, alpha


def blend_images(
    pet: sitk.Image, network_output: sitk.Image, stability: sitk.Image, alpha: float, stability_mean: float
) -> tuple:
    """The blend on images: returns ``(denoised, stability_norm)`` on the PET grid."""
    x, s_norm = blend(
        sitk.GetArrayFromImage(pet).astype(np.float32, copy=False),
        sitk.GetArrayFromImage(network_output).astype(np.float32, copy=False),
        sitk.GetArrayFromImage(stability).astype(np.float32, copy=False),
        alpha,
        stability_mean=stability_mean,
    )
    return array_to_image(x, pet), array_to_image(s_norm, pet)


def denoise(
    pet: sitk.Image,
    mr: Optional[sitk.Image],
    config: DIPConfig,
    *,
    alpha: float = 0.6,
    progress: Optional[Callable[[EpochReport], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    output_epochs: Sequence[int] = (),
    on_output: Optional[Callable[[int, np.ndarray], None]] = None,
) -> DenoiseResult:
    """Runs stability-map conditional DIP on ``pet``, guided by ``mr``.

    Args:
        pet: the noisy PET (OSEM); its grid is the output grid.
        mr: the subject's MR in the same physical space (registered); any
            grid. None runs the original DIP from a fixed noise input.
        config: see :class:`DIPConfig`. With ``mr=None`` its input mode is
            forced to ``'noise'``.
        alpha: blending strength of the returned ``denoised`` image.
        progress, should_stop: forwarded to :func:`fit_dip`.
        output_epochs, on_output: ``on_output(epoch, array)`` receives the network
            output at each of these epochs, as a (z, y, x) array on the PET grid
            (the input outside the head crop, as for the final output).
    """
    t0 = time.perf_counter()
    validate_volume(pet, "PET")
    pet_array = sitk.GetArrayFromImage(pet).astype(np.float32)
    mr_array = None
    if mr is None:
        if config.input_mode != "noise":
            log.info("No MR given: running the original DIP from a fixed random-noise input")
            config = config.replace(input_mode="noise")
    else:
        validate_volume(mr, "MR", activity=False)
        mr_array = sitk.GetArrayFromImage(resample_to_reference(mr, pet, name="MR")).astype(np.float32)

    mask = head_mask(pet_array, mr_array)
    plan = plan_crop_pad(mask, CROP_MARGIN_VOXELS, config.size_multiple)
    cropped = [apply_crop_pad(a, plan, mode="constant") if a is not None else None
               for a in (pet_array, mr_array, mask)]
    log.info("Cropped %s to the head and padded to %s", pet_array.shape, cropped[0].shape)

    def to_pet_grid(output: np.ndarray) -> np.ndarray:
        # Outside the crop there is only air: the output there is the input (and S = 0).
        full = undo_crop_pad(output, plan, fill=np.nan)
        np.copyto(full, pet_array, where=np.isnan(full))
        return full

    snapshot = None if on_output is None else (lambda epoch, output: on_output(epoch, to_pet_grid(output)))
    t_prep = time.perf_counter()
    dip = fit_dip(cropped[0], cropped[1], config, mask=cropped[2].astype(bool), progress=progress,
                  should_stop=should_stop, output_epochs=output_epochs, on_output=snapshot)

    network_output = to_pet_grid(dip.network_output)
    stability = undo_crop_pad(dip.stability, plan, fill=0.0)
    # mean(S) over the head, not the field of view: alpha then means the same
    # thing whatever the crop, padding or amount of air (METHOD.md §5).
    stability_mean = float(stability[mask.astype(bool)].mean(dtype=np.float64))

    images = {name: array_to_image(a, pet) for name, a in
              (("network_output", network_output), ("stability", stability))}
    denoised, stability_norm = blend_images(pet, images["network_output"], images["stability"], alpha, stability_mean)
    t_end = time.perf_counter()
    info = {
        "input_shape": list(pet_array.shape),
        "fit_shape": list(cropped[0].shape),
        "head_voxels": int(mask.sum()),
        "mr_resampled": mr is not None and not grids_match(mr, pet),
        "timings": {"prepare_s": t_prep - t0, **dip.timings, "total_s": t_end - t0},
    }
    return DenoiseResult(pet, denoised, images["network_output"], images["stability"], stability_norm,
                         alpha, stability_mean, dip.n_samples, dip, info)

