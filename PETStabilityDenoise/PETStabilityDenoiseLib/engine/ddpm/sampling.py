"""Sampling the conditional DDPM: DDIM with an optional truncated start, K samples, sliding windows.

The mean of K samples is the network output and their per-voxel std the
stability map, so that the blend of METHOD.md §1 applies unchanged.

A truncated start (``start_fraction`` < 1) noises the low-dose image to step
t' = start_fraction x T and runs the reverse chain from there, instead of from
pure noise at T: fewer steps, and a chain that starts near the answer. A
residual model (``DDPMConfig.residual``, Resfusion) starts the same way at its
acceleration point, where that start is exactly what it was trained on.

Full volumes go through overlapping cubic windows blended with Gaussian
weights (MONAI's ``sliding_window_inference``). Each window returns the mean
and the std of its own K samples, and those two maps are what is blended:
blending the samples themselves would average independent draws in the
overlaps and show the window grid as dips in the std map. Outside the head
(dilated by ``HEAD_MARGIN_VOXELS``) the output is the input and the std 0, as
outside DIP's crop: windows that see only air disagree slightly, and showed
the window grid there.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, cast

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from ...errors import InputError, setting
from ...settings import DDPMSamplingConfig
from .model import (
    DDPMConfig,
    acceleration_point,
    conditions_in_model_space,
    ddim_step,
    for_inference,
    from_model_space,
    residual_ddim_step,
    sampling_scheduler,
    std_from_model_space,
)

# One place for the sampling defaults: the config's (settings/config.py).
SAMPLING_DEFAULTS = DDPMSamplingConfig()
# The sampler's revision, which caches of DDPM results are keyed by beside the weights' checksum. 2: each DDIM
# step lands on the next listed timestep (ddim_step); 1 (before 2026-12-01): MONAI's step, which did not.
SAMPLER_VERSION = 2
# The suffix that names a cached DDPM result of this revision (benchmarks' file caches).
SAMPLER_TAG = f"_sampler{SAMPLER_VERSION}"
# The network's output is kept this far beyond the head mask, so that the switch to the input lies in air.
HEAD_MARGIN_VOXELS = 2
# Windows per predictor call. On a 2-core AVX2 CPU the bundled network took 0.49 to 0.54 s per 32^3 window one at
# a time, against 0.11 to 0.13 s two to four at a time (torch's 3D convolutions at batch 1); the DDPM's predictor
# still samples its windows one by one.
WINDOWS_PER_CALL = 4
# Network inputs per call on the CPU when sampling. On the same CPU, with channels-last weights (for_inference),
# whole default runs of the bundled model took 146 to 156 s two inputs at a time against 166 to 179 s with each
# window's 8 samples at once (docs/DDPM.md, "Speed"). A GPU takes them all at once.
CPU_INPUTS_PER_CALL = 2


def matched_timesteps(config: DDPMConfig) -> List[int]:
    """The timesteps of a model trained on a matched short schedule (``config.matched_steps`` > 0), else []."""
    if not config.matched_steps:
        return []
    if config.residual:  # evenly spaced from the acceleration point down to 0
        return [round(t) for t in np.linspace(acceleration_point(config), 0, config.matched_steps)]
    if config.corrective:  # evenly spaced from T - 1, where the chain starts from pure noise, stopping short of 0
        last = config.num_train_timesteps - 1
        return [round(t) for t in np.linspace(last, 0, config.matched_steps + 1)[:-1]]
    return sampling_timesteps(sampling_scheduler(config), config.matched_steps, config.matched_start_fraction)


def check_matched_chain(config: DDPMConfig, steps: int, start_fraction: float) -> None:
    """Refuses a DDIM chain other than the one that a model trained on a matched short schedule
    (``config.matched_steps`` > 0) was trained for: it has never seen the other timesteps.

    Raises:
        InputError: ``steps`` or ``start_fraction`` differ from the model's own.
    """
    if config.matched_steps and (steps, start_fraction) != (config.matched_steps, config.matched_start_fraction):
        raise InputError(f"this model was trained for {config.matched_steps} DDIM steps from "
                         f"{config.matched_start_fraction:g} T only: sample with {setting('steps')} "
                         f"{config.matched_steps} and {setting('start_fraction')} {config.matched_start_fraction:g}")


def sampling_timesteps(scheduler, steps: int, start_fraction: float) -> List[int]:
    """The descending DDIM timesteps: ``steps`` of them, none above ``start_fraction`` x T.

    Lists them with the scheduler's own spacing (its ``set_timesteps``); :func:`~.model.ddim_step` walks them.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if not 0 < start_fraction <= 1:
        raise ValueError(f"start_fraction must be in (0, 1]; got {start_fraction}")
    total = scheduler.num_train_timesteps
    scheduler.set_timesteps(min(total, max(steps, round(steps / start_fraction))))
    highest = start_fraction * (total - 1)
    return [int(t) for t in scheduler.timesteps if t <= highest][:steps]


def predict(model: torch.nn.Module, inputs: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``model(inputs, timesteps=timesteps)``, ``CPU_INPUTS_PER_CALL`` inputs at a time on the CPU."""
    if inputs.device.type != "cpu":
        return cast(torch.Tensor, model(inputs, timesteps=timesteps))
    return torch.cat([model(chunk, timesteps=steps) for chunk, steps in
                      zip(inputs.split(CPU_INPUTS_PER_CALL), timesteps.split(CPU_INPUTS_PER_CALL))])


def reverse_chain(model: torch.nn.Module, scheduler, conditions: torch.Tensor, x: torch.Tensor,
                  timesteps: List[int], step: Optional[Callable[..., torch.Tensor]] = None) -> torch.Tensor:
    """DDIM (eta 0) from ``x`` at ``timesteps[0]`` through each listed timestep to x0, given ``conditions``.

    Args:
        step: ``step(alphas_cumprod, prediction, x, timestep, previous)``, one reverse step; None: :func:`ddim_step`
            for the scheduler's prediction type.
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(x.device)
    for t, previous in zip(timesteps, [*timesteps[1:], -1]):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        prediction = predict(model, torch.cat([x, conditions], dim=1), t_batch)
        if step is None:
            x = ddim_step(alphas_cumprod, prediction, scheduler.prediction_type, x, t, previous)
        else:
            x = step(alphas_cumprod, prediction, x, t, previous)
    return x


@torch.no_grad()
def sample(model: torch.nn.Module, scheduler, condition: torch.Tensor, *, samples: int, steps: int,
           start_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``samples`` draws for one condition (1, C, D, H, W) in the model's range; returns (samples, 1, D, H, W).

    The first condition channel is the low-dose PET, from which a truncated chain starts.
    """
    timesteps = sampling_timesteps(scheduler, steps, start_fraction)
    conditions = condition.expand(samples, *condition.shape[1:])
    shape = (samples, 1, *condition.shape[2:])
    x = torch.randn(shape, generator=generator, device=generator.device).to(condition.device)
    if start_fraction < 1:
        start = torch.full((samples,), timesteps[0], dtype=torch.long, device=condition.device)
        x = scheduler.add_noise(conditions[:, :1], x, start)
    return reverse_chain(model, scheduler, conditions, x, timesteps)


@torch.no_grad()
def sample_corrective(model: torch.nn.Module, config: DDPMConfig, condition: torch.Tensor, *, samples: int,
                      generator: torch.Generator) -> torch.Tensor:
    """``samples`` draws of a corrective model (``config.corrective``) for one condition, as :func:`sample`: the
    base prediction (the second condition channel) plus ``config.residual_scale`` times the sampled residual."""
    conditions = condition.expand(samples, *condition.shape[1:])
    noise = torch.randn((samples, 1, *condition.shape[2:]), generator=generator, device=generator.device)
    residual = reverse_chain(model, sampling_scheduler(config), conditions, noise.to(condition.device),
                             matched_timesteps(config))
    return conditions[:, 1:2] + config.residual_scale * residual


@torch.no_grad()
def sample_residual(model: torch.nn.Module, config: DDPMConfig, condition: torch.Tensor, *, samples: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``samples`` draws of a residual model (``config.residual``) for one condition; as :func:`sample`."""
    timesteps = matched_timesteps(config)
    scheduler = sampling_scheduler(config)
    conditions = condition.expand(samples, *condition.shape[1:])
    low_dose = conditions[:, :1]
    noise = torch.randn(low_dose.shape, generator=generator, device=generator.device).to(condition.device)
    start = torch.full((samples,), timesteps[0], dtype=torch.long, device=condition.device)
    x = scheduler.add_noise(low_dose, noise, start)  # the plain forward process: equal here to the residual one

    def step(alphas_cumprod, predicted_clean, x, t, previous):
        return residual_ddim_step(alphas_cumprod, predicted_clean, low_dose, x, t, previous)

    return reverse_chain(model, scheduler, conditions, x, timesteps, step)


def window_count(shape: Tuple[int, ...], window: int, overlap: float) -> int:
    """How many windows ``sliding_window_inference`` visits (for progress reports)."""
    step = max(int(window * (1 - overlap)), 1)
    return math.prod(1 if size <= window else math.ceil((size - window) / step) + 1 for size in shape)


def blend_windows(inputs: torch.Tensor, predictor: Callable[[torch.Tensor], torch.Tensor], window: int,
                  overlap: float, windows_per_call: int = WINDOWS_PER_CALL) -> torch.Tensor:
    """Runs ``predictor`` on overlapping cubic windows, ``windows_per_call`` at a time (stacked on the batch axis),
    and blends the outputs with Gaussian weights.

    Volumes smaller than a window are padded by edge replication, not zeros, which would
    read as activity in the model's range.
    """
    blended = sliding_window_inference(inputs, roi_size=(window,) * 3, sw_batch_size=windows_per_call,
                                       predictor=predictor, overlap=overlap, mode="gaussian",
                                       padding_mode="replicate")
    return cast(torch.Tensor, blended)  # a tensor, as the predictor returns one


def keep_input_outside_head(output: np.ndarray, low_dose: np.ndarray, head: np.ndarray) -> np.ndarray:
    """``output`` within ``HEAD_MARGIN_VOXELS`` of the head, ``low_dose`` beyond."""
    near_head = ndimage.binary_dilation(head, iterations=HEAD_MARGIN_VOXELS)
    return np.where(near_head, output, low_dose).astype(np.float32)


def denoise_volume(
    model: torch.nn.Module,
    config: DDPMConfig,
    low_dose: np.ndarray,
    mr: Optional[np.ndarray],
    head: np.ndarray,
    *,
    base: Optional[np.ndarray] = None,
    samples: int = SAMPLING_DEFAULTS.samples,
    steps: int = SAMPLING_DEFAULTS.steps,
    start_fraction: float = SAMPLING_DEFAULTS.start_fraction,
    overlap: float = SAMPLING_DEFAULTS.overlap,
    seed: int = SAMPLING_DEFAULTS.seed,
    device: torch.device = torch.device("cpu"),
    progress: Optional[Callable[[int, int], None]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """The mean and the std of ``samples`` DDPM draws for a (z, y, x) volume, in the PET's units.

    Outside the head the mean is the input and the std 0.

    Args:
        low_dose: the PET to denoise; ``head`` is its head mask, over which the
            normalisation scale (the mean) is taken.
        mr: the MR on the PET grid, needed when ``config.use_mr``.
        base: a corrective model's base prediction for ``low_dose`` (:func:`~.regression.predict_volume` of the
            regression model in its folder), in the PET's units; needed when ``config.corrective``.
        steps, start_fraction: the chain; a model trained on a matched schedule takes only its own, a residual
            model starts at its acceleration point whatever ``start_fraction`` says, and a corrective one from pure
            noise (it refuses a ``start_fraction`` other than the default or 1).
        progress: ``progress(windows_done, windows_total)`` after each window.
    """
    if samples < 2:
        raise ValueError(f"at least 2 samples are needed for a std map; got {samples}")
    if (config.residual or config.corrective) and steps != config.matched_steps:
        raise InputError(f"this model was trained for {config.matched_steps} steps from its chain's start only: "
                         f"sample with {setting('steps')} {config.matched_steps}")
    if config.corrective != (base is not None):
        raise ValueError("a corrective model needs its base prediction, and only such a model takes one")
    if config.corrective and start_fraction not in (SAMPLING_DEFAULTS.start_fraction, 1.0):
        raise InputError(f"this model's chain starts from pure noise, not from the low-dose image: "
                         f"{setting('start_fraction')} does not apply to it (got {start_fraction:g})")
    if not (config.residual or config.corrective):
        check_matched_chain(config, steps, start_fraction)
    inputs, scale = conditions_in_model_space(low_dose, mr, head, config.use_mr, device, base)

    model = for_inference(model, device)
    scheduler = sampling_scheduler(config)
    generator = torch.Generator(device=device).manual_seed(seed)
    total, done = window_count(low_dose.shape, config.patch_size, overlap), 0

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        stats = []
        for condition in windows.split(1):
            if config.residual:
                draws = sample_residual(model, config, condition, samples=samples, generator=generator)
            elif config.corrective:
                draws = sample_corrective(model, config, condition, samples=samples, generator=generator)
            else:
                draws = sample(model, scheduler, condition, samples=samples, steps=steps,
                               start_fraction=start_fraction, generator=generator)
            stats.append(torch.cat([draws.mean(0, keepdim=True), draws.std(0, keepdim=True)], dim=1))
            done += 1
            if progress is not None:
                progress(done, total)
        return torch.cat(stats)

    blended = blend_windows(inputs, predictor, config.patch_size, overlap)[0].cpu().numpy()
    mean = keep_input_outside_head(from_model_space(blended[0], scale), low_dose, head)
    std = keep_input_outside_head(std_from_model_space(blended[1], scale), np.zeros_like(low_dose), head)
    return mean, std
