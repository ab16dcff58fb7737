"""Denoise one PET volume: validation, MR resampling, cropping, DIP fit or DDPM sampling, blend.

Data flows one way: SimpleITK images in, numpy through the engine
(``dip.py`` or ``ddpm/``, then ``blend.py``), SimpleITK images out, every
output on the PET's exact grid. Both engines share the preparation (crop to
the head) and the finish (uncrop, blend). File I/O stays in ``run.py`` and
the Slicer logic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, cast

import numpy as np
import SimpleITK as sitk

from ..errors import Cancelled, InputError
from ..settings import DEFAULT_ALPHAS, DDPMSamplingConfig, EpochReport
from ..volumes.geometry import (
    CropPad,
    apply_crop_pad,
    array_to_image,
    grids_match,
    head_mask,
    plan_crop_pad,
    resample_to_reference,
    undo_crop_pad,
)
from ..volumes.validation import validate_volume
from .blend import blend
from .dip import DIPConfig, DIPResult, fit_dip

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
    method: str
    record: dict  # the engine's own facts for run.json (device, samples, loss, model checksum ...)
    info: dict = field(default_factory=dict)
    dip: Optional[DIPResult] = None

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


@dataclass
class _Prepared:
    """The PET and MR as arrays on the PET grid, the head mask, and their crop to the head."""

    pet: np.ndarray
    mr: Optional[np.ndarray]
    mask: np.ndarray
    plan: CropPad
    cropped_pet: np.ndarray
    cropped_mr: Optional[np.ndarray]
    cropped_mask: np.ndarray

    def to_pet_grid(self, output: np.ndarray) -> np.ndarray:
        """An engine output on the crop -> the PET grid; outside the crop there is only air, so the input."""
        full = undo_crop_pad(output, self.plan, fill=np.nan)
        np.copyto(full, self.pet, where=np.isnan(full))
        return full


def _prepare(pet: sitk.Image, mr: Optional[sitk.Image], size_multiple: int) -> _Prepared:
    validate_volume(pet, "PET")
    pet_array = sitk.GetArrayFromImage(pet).astype(np.float32)
    mr_array = None
    if mr is not None:
        validate_volume(mr, "MR", activity=False)
        mr_array = sitk.GetArrayFromImage(resample_to_reference(mr, pet, name="MR")).astype(np.float32)
    mask = head_mask(pet_array, mr_array)
    plan = plan_crop_pad(mask, CROP_MARGIN_VOXELS, size_multiple)
    cropped = [apply_crop_pad(a, plan, mode="constant") if a is not None else None for a in (pet_array, mr_array, mask)]
    cropped_pet, cropped_mask = cast(np.ndarray, cropped[0]), cast(np.ndarray, cropped[2])  # only the MR can be None
    log.info("Cropped %s to the head and padded to %s", pet_array.shape, cropped_pet.shape)
    return _Prepared(pet_array, mr_array, mask, plan, cropped_pet, cropped[1], cropped_mask.astype(bool))


def _finish(pet: sitk.Image, mr: Optional[sitk.Image], prepared: _Prepared, network_output: np.ndarray,
            stability: np.ndarray, alpha: float, method: str, n_samples: int, record: dict, timings: dict,
            dip: Optional[DIPResult] = None) -> DenoiseResult:
    """Uncrops the engine's two maps, blends at ``alpha`` and packs the result."""
    t0 = time.perf_counter()
    network_output = prepared.to_pet_grid(network_output)
    stability = undo_crop_pad(stability, prepared.plan, fill=0.0)
    # mean(S) over the head, not the field of view: alpha then means the same
    # thing whatever the crop, padding or amount of air (METHOD.md §5).
    stability_mean = float(stability[prepared.mask.astype(bool)].mean(dtype=np.float64))
    images = {name: array_to_image(a, pet) for name, a in
              (("network_output", network_output), ("stability", stability))}
    denoised, stability_norm = blend_images(pet, images["network_output"], images["stability"], alpha, stability_mean)
    info: dict[str, Any] = {
        "input_shape": list(prepared.pet.shape),
        "fit_shape": list(prepared.cropped_pet.shape),
        "head_voxels": int(prepared.mask.sum()),
        "mr_resampled": mr is not None and not grids_match(mr, pet),
        "timings": {**timings, "blend_s": time.perf_counter() - t0},
    }
    info["timings"]["total_s"] = sum(v for k, v in info["timings"].items() if k in ("prepare_s", "engine_s", "blend_s"))
    return DenoiseResult(pet, denoised, images["network_output"], images["stability"], stability_norm, alpha,
                         stability_mean, n_samples, method, record, info, dip)


def denoise(
    pet: sitk.Image,
    mr: Optional[sitk.Image],
    config: DIPConfig,
    *,
    alpha: float = DEFAULT_ALPHAS["dip"],
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
    if mr is None and config.input_mode != "noise":
        log.info("No MR given: running the original DIP from a fixed random-noise input")
        config = config.replace(input_mode="noise")
    prepared = _prepare(pet, mr, config.size_multiple)
    snapshot = None if on_output is None else (
        lambda epoch, output: on_output(epoch, prepared.to_pet_grid(output)))
    t_prep = time.perf_counter()
    dip = fit_dip(prepared.cropped_pet, prepared.cropped_mr, config, mask=prepared.cropped_mask, progress=progress,
                  should_stop=should_stop, output_epochs=output_epochs, on_output=snapshot)
    record = {"sample_epochs": dip.sample_epochs, "device": dip.device, "loss_per_epoch": dip.loss_history,
              "loss_jumps": dip.loss_jumps}
    timings = {"prepare_s": t_prep - t0, **dip.timings, "engine_s": time.perf_counter() - t_prep}
    return _finish(pet, mr, prepared, dip.network_output, dip.stability, alpha, "dip", dip.n_samples, record,
                   timings, dip)


def denoise_ddpm(
    pet: sitk.Image,
    mr: Optional[sitk.Image],
    config: DDPMSamplingConfig = DDPMSamplingConfig(),
    *,
    alpha: float = DEFAULT_ALPHAS["ddpm"],
    progress: Optional[Callable[[EpochReport], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> DenoiseResult:
    """Denoises ``pet`` with the diffusion model: the mean of ``config.samples`` draws, their std as S.

    Args:
        pet, mr: as for :func:`denoise`. The bundled model was trained with the
            MR as a condition and refuses to run without it.
        config: see :class:`DDPMSamplingConfig`.
        progress: called after each sliding window with an :class:`EpochReport`
            whose ``epoch``/``epochs`` count windows (a corrective model's base pass, then the sampling) and
            whose ``loss`` is None.
        should_stop: polled after each window; True raises :class:`Cancelled`.
    """
    import torch

    from .ddpm.regression import predict_volume
    from .ddpm.sampling import SAMPLER_VERSION, denoise_volume, window_count
    from .ddpm.weights import bundled_model_dir, load_base, load_model
    from .device import resolve_device

    t0 = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    model_dir = Path(config.model_dir) if config.model_dir else bundled_model_dir()
    model, model_config, manifest = load_model(model_dir, device)
    if model_config.use_mr and mr is None:
        raise InputError("the diffusion model was trained with the MR as a second condition: "
                         "give the subject's MR, or use the DIP method")
    prepared = _prepare(pet, mr, 1)
    t_prep = time.perf_counter()

    def windows_done(before: int, after: int) -> Callable[[int, int], None]:
        """A pass's progress as the whole run's, with ``before`` windows in passes before it and ``after`` after."""
        def report(done: int, total: int) -> None:
            done, total = before + done, before + total + after
            if progress is not None:
                elapsed = time.perf_counter() - t_prep
                progress(EpochReport(done, total, None, elapsed, elapsed / done * (total - done), config.samples))
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled by the caller")
        return report

    shape = prepared.cropped_pet.shape
    base, base_windows = None, 0
    if model_config.corrective:  # the diffusion corrects its base regression model's prediction
        base_model, base_config = load_base(model_dir, manifest, device)
        base_windows = window_count(shape, base_config.patch_size, config.overlap)
        base = predict_volume(base_model, base_config, prepared.cropped_pet, prepared.cropped_mr,
                              prepared.cropped_mask, overlap=config.overlap, device=device,
                              progress=windows_done(0, window_count(shape, model_config.patch_size, config.overlap)))
    mean, std = denoise_volume(model, model_config, prepared.cropped_pet, prepared.cropped_mr, prepared.cropped_mask,
                               base=base, samples=config.samples, steps=config.steps,
                               start_fraction=config.start_fraction, overlap=config.overlap, seed=config.seed,
                               device=device, progress=windows_done(base_windows, 0))
    record = {"device": str(device), "model_dir": str(model_dir), "model_sha256": manifest["sha256"],
              "model_config": manifest["config"], "sampler_version": SAMPLER_VERSION}
    if model_config.corrective:
        record["base_sha256"] = manifest["base_sha256"]
    timings = {"prepare_s": t_prep - t0, "engine_s": time.perf_counter() - t_prep}
    return _finish(pet, mr, prepared, mean, std, alpha, "ddpm", config.samples, record, timings)


def predict_regression(pet: sitk.Image, mr: Optional[sitk.Image], model_dir: Path, *, overlap: float = 0.25,
                       device: str = "auto", threads: Optional[int] = None,
                       windows_per_call: Optional[int] = None) -> sitk.Image:
    """The regression baseline's prediction for ``pet`` on its grid (the evaluation's U-Net row; no stability map).

    Args:
        model_dir: a folder written by ``petstab train-ddpm --objective regression``.
        overlap: of the sliding windows.
        windows_per_call: windows stacked into one network call; None: the sampler's default.
    """
    import torch

    from .ddpm.regression import predict_volume
    from .ddpm.sampling import WINDOWS_PER_CALL
    from .ddpm.weights import load_model
    from .device import resolve_device

    torch_device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    model, model_config, _ = load_model(Path(model_dir), torch_device, kind="regression")
    if model_config.use_mr and mr is None:
        raise InputError("the regression model was trained with the MR as a second condition: give the MR")
    prepared = _prepare(pet, mr, 1)
    predicted = predict_volume(model, model_config, prepared.cropped_pet, prepared.cropped_mr, prepared.cropped_mask,
                               overlap=overlap, device=torch_device,
                               windows_per_call=windows_per_call or WINDOWS_PER_CALL)
    return array_to_image(prepared.to_pet_grid(predicted), pet)
