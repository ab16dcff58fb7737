"""DDIP: PET reconstruction from a sinogram with an MR-conditioned diffusion prior (METHOD.md §3, seed 3).

The prior is a DDPM trained with condition dropout (``TrainingSettings.condition_dropout``): with its low-dose
channel set to ``DROPPED_CONDITION`` it models p(PET | MR). Each of ``config.samples`` runs:

1. starts from the OSEM image, in the network's range, noised to t' = ``start_fraction`` x T;
2. at each of ``steps`` DDIM steps, on the whole volume:
   - the network estimates the clean image x0 from x_t (Tweedie, through sliding windows), with the MR weighed
     by ``mr_guidance`` (:func:`guided_estimate`; 1, the default: as trained);
   - the data step: ``em_updates`` EM updates over ``em_subsets`` ordered subsets, tied to that estimate by
     ``beta`` (half-quadratic splitting, ``tomography.penalized_em``), on the full PET grid, slice by slice,
     with the scanner's PSF in the system model if one is given;
   - LoRA adapters (``lora.py``) are fine-tuned for ``finetune_steps`` steps so that the network's estimate on
     random patches moves towards the data step's image; with ``config.refresh_estimate`` the network
     estimates x0 again, adapted; otherwise the data step's image is the estimate of this step, and the adapted
     network's first use is the next step's;
   - a deterministic DDIM step (eta 0) to the next timestep, from that estimate; after the last step, the
     adapted network's estimate is the run's image;
3. with ``data_correction_fwhm_mm``, the data step runs once more on the run's image, and the part of its change
   coarser than a Gaussian of that FWHM, within the head, is added (:func:`low_frequency_data_correction`).
   The network alone pulls regional means towards the FDG pattern it was trained on (striatum and thalamus
   high, occipital cortex low, by about 3 to 6 % on held-out brains); the data know those means well, and their
   noise is fine-grained.

The mean of the runs is the network output and their std the stability map, as for the DDPM denoiser; as there,
they are the OSEM image and 0 beyond ``HEAD_MARGIN_VOXELS`` of the head, where the network's air showed its
windows.

Differences from the authors' 2D code: the network and its adapters are 3D; the data step runs once per
sampling step, on the estimate before fine-tuning, instead of inside every fine-tuning iteration (the
fine-tuning then sees patches, and the data step whole slices); and the start is the OSEM image, not 20 MLEM
iterations from a uniform image. With ``finetune_steps`` 0 the data step's image replaces the estimate instead
(the ablation without fine-tuning).
"""

from __future__ import annotations

import copy
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import Cancelled
from ..settings import DDIPConfig
from . import tomography
from .ddpm.model import (
    DROPPED_CONDITION,
    DROPPED_MR,
    DDPMConfig,
    ddim_step,
    from_model_space,
    memory_format_for,
    sampling_scheduler,
    to_model_space,
)
from .ddpm.sampling import blend_windows, keep_input_outside_head, sampling_timesteps
from .filters import masked_gaussian, sigma_voxels
from .lora import add_lora

# progress(step_done, steps_total, elapsed_s) after each DDIM step of each sample.
Progress = Callable[[int, int, float], None]


def estimate_clean(model: torch.nn.Module, config: DDPMConfig, x_t: torch.Tensor, conditions: torch.Tensor,
                   timestep: int, alpha_bar: float) -> torch.Tensor:
    """The network's estimate of the clean image x0 from ``x_t`` at ``timestep``, whatever it predicts."""
    t = torch.full((x_t.shape[0],), timestep, dtype=torch.long, device=x_t.device)
    prediction = model(torch.cat([x_t, conditions], dim=1), timesteps=t)
    if config.prediction_type == "sample":
        return prediction
    a, b = alpha_bar ** 0.5, (1.0 - alpha_bar) ** 0.5
    if config.prediction_type == "epsilon":
        return (x_t - b * prediction) / a
    return a * x_t - b * prediction  # v-prediction


def guided_estimate(model: torch.nn.Module, config: DDPMConfig, x_t: torch.Tensor, conditions: torch.Tensor,
                    timestep: int, alpha_bar: float, mr_guidance: float) -> torch.Tensor:
    """x0 with the MR weighed by ``mr_guidance`` (w): x0(no MR) + w (x0(MR) - x0(no MR)), as classifier-free
    guidance mixes its two estimates; 1: the MR-conditioned estimate alone, one network pass. Other weights need
    a prior trained with MR dropout (``TrainingSettings.mr_dropout``), which knows what the dropped MR means."""
    with_mr = estimate_clean(model, config, x_t, conditions, timestep, alpha_bar)
    if mr_guidance == 1:
        return with_mr
    without_mr = conditions.clone()
    without_mr[:, -1] = DROPPED_MR
    return torch.lerp(estimate_clean(model, config, x_t, without_mr, timestep, alpha_bar), with_mr, mr_guidance)


def prior_conditions(mr: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The prior's conditions for a volume: the dropped low-dose channel and the MR, (2, z, y, x) in model space."""
    return np.stack([np.full(mr.shape, DROPPED_CONDITION, dtype=np.float32),
                     to_model_space(mr, float(mr[head].mean()))])


def patch_origins(head: np.ndarray, patch: int, count: int, rng: np.random.Generator) -> List[Tuple[int, ...]]:
    """``count`` corners of ``patch``-sided cubes centred on random head voxels, inside the volume."""
    centres = np.argwhere(head)[rng.integers(0, int(head.sum()), count)]
    return [tuple(int(np.clip(c - patch // 2, 0, n - patch)) for c, n in zip(centre, head.shape))
            for centre in centres]


class _Run:
    """One DDIP sample: its own copy of the network with fresh adapters, and its chain."""

    def __init__(self, model: torch.nn.Module, model_config: DDPMConfig, config: DDIPConfig, device: torch.device):
        self.model = copy.deepcopy(model).to(device).eval()
        self.model_config, self.config = model_config, config
        self.adapters = add_lora(self.model, config.lora_rank) if config.finetune_steps else []
        self.model.to(memory_format=memory_format_for(device))  # the adapters' weights too; the same Parameters
        self.optimiser = torch.optim.AdamW(self.adapters, lr=config.learning_rate) if self.adapters else None

    @torch.no_grad()
    def estimate(self, x_t: torch.Tensor, conditions: torch.Tensor, timestep: int, alpha_bar: float) -> torch.Tensor:
        """x0 over the whole volume, through Gaussian-blended sliding windows.

        The window grid is the same at every step: moved at random at each step, it cost 0.28 dB of PSNR and
        gave 3.6 times the std in the head on a held-out brain (docs/RECONSTRUCTION.md).
        """
        inputs = torch.cat([x_t, conditions], dim=1)
        channels = x_t.shape[1]

        def predictor(windows: torch.Tensor) -> torch.Tensor:
            return guided_estimate(self.model, self.model_config, windows[:, :channels], windows[:, channels:],
                                   timestep, alpha_bar, self.config.mr_guidance)

        return blend_windows(inputs, predictor, self.model_config.patch_size, self.config.overlap)

    def finetune(self, x_t: torch.Tensor, conditions: torch.Tensor, target: torch.Tensor, head: np.ndarray,
                 timestep: int, alpha_bar: float, rng: np.random.Generator) -> None:
        """``finetune_steps`` AdamW steps of the adapters: the estimate on random head patches towards ``target``."""
        assert self.optimiser is not None
        patch = self.model_config.patch_size
        self.model.train()
        for _ in range(self.config.finetune_steps):
            corners = patch_origins(head, patch, self.config.finetune_batch, rng)
            region = [tuple(slice(c, c + patch) for c in corner) for corner in corners]
            batch = [torch.cat([v[(slice(None), slice(None), *r)] for r in region]) for v in (x_t, conditions, target)]
            estimate = guided_estimate(self.model, self.model_config, batch[0], batch[1], timestep, alpha_bar,
                                       self.config.mr_guidance)
            loss = torch.nn.functional.mse_loss(estimate, batch[2])
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.adapters, max_norm=1.0)
            self.optimiser.step()
        self.model.eval()


def low_frequency_data_correction(image: np.ndarray, data_image: np.ndarray, head: np.ndarray,
                                  sigma: Union[Sequence[float], np.ndarray]) -> np.ndarray:
    """``image`` plus the coarse part of ``data_image - image``: smoothed by a Gaussian of per-axis ``sigma``
    (voxels) within ``head``; unchanged outside it."""
    return image + masked_gaussian(data_image - image, head, sigma)


def ddip_reconstruct(
    sinogram: Tuple[np.ndarray, np.ndarray, np.ndarray],
    projector: tomography.ParallelBeamProjector,
    osem: np.ndarray,
    mr: np.ndarray,
    head: np.ndarray,
    model: torch.nn.Module,
    model_config: DDPMConfig,
    config: DDIPConfig = DDIPConfig(),
    *,
    device: torch.device = torch.device("cpu"),
    progress: Optional[Progress] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    resolution: Optional[tomography.ResolutionModel] = None,
    voxel_size_mm: Sequence[float],
) -> Tuple[np.ndarray, np.ndarray]:
    """The mean and the std of ``config.samples`` DDIP reconstructions, (z, y, x) in the OSEM image's units;
    outside the head, the OSEM image and 0.

    Args:
        sinogram: (prompts, additive, multiplicative), each (z, angles, bins), as in ``volumes/sinogram.py``.
        projector: the projector of the PET grid's slices.
        osem: the OSEM image of the same data: the start, and the normalisation scale (its head mean).
        mr: the MR on the PET grid.
        head: the head mask on the PET grid.
        model: a DDPM that models p(PET | MR) (trained with condition dropout); it is not modified.
        progress: called after each DDIM step of each sample.
        should_stop: polled after each step; True raises :class:`Cancelled`.
        resolution: the scanner's PSF, modelled in the data step (``config.psf_fwhm_mm``); None: none.
        voxel_size_mm: the PET grid's (z, y, x) spacing, for ``config.data_correction_fwhm_mm``.
    """
    counts, additive, multiplicative = sinogram
    patch = model_config.patch_size
    # The network side runs on a grid at least one patch wide; the data step on the PET grid itself.
    shape = osem.shape
    padding = [(0, max(0, patch - n)) for n in shape]

    def to_network(array: np.ndarray) -> torch.Tensor:
        padded = np.pad(array, [(0, 0)] * (array.ndim - 3) + padding, mode="edge")
        return torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None].to(device)

    def to_grid(tensor: torch.Tensor) -> np.ndarray:
        return tensor[0, 0, :shape[0], :shape[1], :shape[2]].detach().cpu().numpy()

    scale = float(osem[head].mean())
    conditions = to_network(prior_conditions(mr, head))
    start = to_network(to_model_space(osem, scale)[None])
    head_network = np.pad(head, padding)
    # beta relative to the data's curvature at the head-mean activity (DDIPConfig); penalized_em takes it absolute.
    beta = config.beta * float(projector.back(multiplicative)[head].mean()) / scale

    def data_step(estimate: np.ndarray) -> np.ndarray:
        """HQS's data step: EM updates from ``estimate``, tied to it by beta."""
        return tomography.penalized_em(counts, projector, multiplicative, additive, estimate, beta,
                                       config.em_updates, config.em_subsets, resolution=resolution)

    scheduler = sampling_scheduler(model_config)
    timesteps = sampling_timesteps(scheduler, config.steps, config.start_fraction)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    total, done, started = config.samples * len(timesteps), 0, time.perf_counter()

    images = []
    for _ in range(config.samples):
        run = _Run(model, model_config, config, device)
        noise = torch.randn(start.shape, generator=generator).to(device)
        first = float(alphas_cumprod[timesteps[0]])
        x_t = first ** 0.5 * start + (1.0 - first) ** 0.5 * noise
        for step, t in enumerate(timesteps):
            alpha_bar = float(alphas_cumprod[t])
            estimate = run.estimate(x_t, conditions, t, alpha_bar)
            data_image = data_step(from_model_space(to_grid(estimate), scale))
            target = to_network(to_model_space(data_image, scale)[None])
            last = step + 1 == len(timesteps)
            if run.adapters:
                run.finetune(x_t, conditions, target, head_network, t, alpha_bar, rng)
            # Without adapters the data step's image is the estimate (the ablation without fine-tuning).
            adapted = run.adapters and (config.refresh_estimate or last)
            estimate = run.estimate(x_t, conditions, t, alpha_bar) if adapted else target
            if not last:
                x_t = ddim_step(alphas_cumprod, estimate, "sample", x_t, t, timesteps[step + 1])
            done += 1
            if progress is not None:
                progress(done, total, time.perf_counter() - started)
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled by the caller")
        image = from_model_space(to_grid(estimate), scale)
        if config.data_correction_fwhm_mm > 0:
            image = low_frequency_data_correction(image, data_step(image), head,
                                                  sigma_voxels(config.data_correction_fwhm_mm, voxel_size_mm))
        images.append(image)
    stack = np.stack(images)
    return (keep_input_outside_head(stack.mean(0), osem, head),
            keep_input_outside_head(stack.std(0, ddof=1), np.zeros_like(osem), head))
