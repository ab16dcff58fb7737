"""The conditional 3D DDPM of METHOD.md §2: network, noise schedule and intensity normalisation.

The network sees the noisy full-dose patch with the low-dose PET (and
optionally the MR) as extra input channels. It predicts the clean patch
itself (``prediction_type="sample"``) rather than the noise: at high t the
network is then a plain supervised denoiser of the low-dose image, which is
what a model trained for minutes on a CPU learns first, and what the mean of
a few DDIM samples needs to be good.
It is built from MONAI's generative components and kept small: the product
bundles its weights, and it must sample a brain on 2 CPU cores in minutes.

Intensities: a volume is divided by its mean over the head (a robust scale
that does not depend on the scanner's units or the injected dose), then
mapped linearly so that 0 and ``NORMALISED_RANGE`` times the head mean land
on -1 and +1, the range the schedule was designed for. Hot spots above that
range are not clipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple, TypeVar, cast

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

# Head-mean multiples mapped onto [-1, 1]: brain FDG grey matter sits at about 2 to 3 times the head mean.
NORMALISED_RANGE = 8.0
# The low-dose channel of a model trained with condition dropout, when it is dropped: zero activity, a value the
# low-dose PET never takes over a whole patch. Such a model is also a prior p(PET | MR) (engine/ddip.py).
DROPPED_CONDITION = -1.0
# The MR channel of a prior trained with MR dropout, when it is dropped: a value above any MR's range (air -1,
# the head mean -0.75, 8 times it +1), so that the network cannot take it for anatomy. With it, such a prior
# also models p(PET), which DDIP's MR guidance mixes with p(PET | MR).
DROPPED_MR = 1.0


ConfigT = TypeVar("ConfigT", bound="UNetConfig")


@dataclass(frozen=True)
class UNetConfig:
    """The U-Net that the DDPM and its regression baseline share; stored with the weights."""

    channels: Tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    use_mr: bool = True
    patch_size: int = 32

    def __post_init__(self) -> None:
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be a multiple of {self.norm_num_groups}")
        if self.patch_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of {2 ** (len(self.channels) - 1)}")

    @property
    def condition_channels(self) -> int:
        return 2 if self.use_mr else 1

    def replace(self: ConfigT, **changes) -> ConfigT:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DDPMConfig(UNetConfig):
    """The diffusion model: its U-Net and its noise schedule."""

    prediction_type: str = "sample"  # what the network outputs: "sample" (clean patch), "epsilon" or "v_prediction"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # 0: trained at every step of the schedule, sampled with any DDIM steps. N: a short schedule matched in
    # training and sampling (as Fast-DDPM): trained only at the N timesteps that N DDIM steps from
    # ``matched_start_fraction`` x T visit, and sampled with exactly those.
    matched_steps: int = 0
    matched_start_fraction: float = 1.0
    # Resfusion's forward process (Shi et al., NeurIPS 2024), see ``add_residual_noise``: the chain starts at the
    # acceleration point from the low-dose image, exactly as the model was trained there, which the truncated
    # DDIM start is not. Such a model runs ``matched_steps`` steps from there (``matched_start_fraction`` unused)
    # and predicts x0.
    residual: bool = False
    # A corrective model (CorrDiff, Mardani et al. 2024): the diffusion of the residual target - base, where base
    # is a regression U-Net's prediction (``engine/ddpm/regression.py``, kept in the model folder's ``base/``),
    # divided by ``residual_scale`` (about its std in the network's range, so that the chain sees unit-scale
    # values). The base is a further condition after the low-dose PET, and the samples' mean is the base plus the
    # mean residual. Its chain runs ``matched_steps`` steps from pure noise at T - 1 (``sampling.matched_timesteps``).
    corrective: bool = False
    residual_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prediction_type not in ("sample", "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be sample, epsilon or v_prediction; got {self.prediction_type!r}")
        if self.matched_steps < 0 or not 0 < self.matched_start_fraction <= 1:
            raise ValueError(f"matched_steps must be >= 0 and matched_start_fraction in (0, 1]; got "
                             f"{self.matched_steps}, {self.matched_start_fraction}")
        if self.residual and (not self.matched_steps or self.prediction_type != "sample"):
            raise ValueError("a residual (Resfusion) model needs matched_steps >= 1 and prediction_type 'sample'")
        if self.corrective and (not self.matched_steps or self.residual or not self.residual_scale > 0):
            raise ValueError("a corrective model needs matched_steps >= 1, no Resfusion process and a positive "
                             "residual_scale")

    @property
    def condition_channels(self) -> int:
        """The low-dose PET, the base prediction for a corrective model, then the MR."""
        return super().condition_channels + int(self.corrective)


def build_model(config: DDPMConfig) -> DiffusionModelUNet:
    """The U-Net: input = noisy PET + conditions, output = ``config.prediction_type``. No attention."""
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=1 + config.condition_channels,
        out_channels=1,
        channels=config.channels,
        attention_levels=(False,) * len(config.channels),
        num_res_blocks=config.num_res_blocks,
        norm_num_groups=config.norm_num_groups,
    )


def memory_format_for(device: torch.device) -> torch.memory_format:
    """The networks' weight layout on ``device``: channels-last 3D on the CPU, torch's default elsewhere.

    On a 2-core AVX2 CPU, channels-last took 18 % less time per whole sampling run of the bundled model
    (docs/DDPM.md, "Speed") and about 20 % less per training step, to within 2e-5 of the same output. On a GPU
    it was never measured.
    """
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode, in :func:`memory_format_for` ``device``."""
    return model.to(device, memory_format=memory_format_for(device)).eval()


def training_scheduler(config: DDPMConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, schedule="linear_beta",
                         beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False,
                         prediction_type=config.prediction_type)


def sampling_scheduler(config: DDPMConfig) -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=config.num_train_timesteps, schedule="linear_beta",
                         beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False,
                         prediction_type=config.prediction_type)


def acceleration_point(config: DDPMConfig) -> int:
    """The timestep where sqrt(alpha_bar) is nearest 1/2: where a residual model's chain starts (Resfusion)."""
    roots = training_scheduler(config).alphas_cumprod.sqrt()
    return int((roots - 0.5).abs().argmin())


def add_residual_noise(alphas_cumprod: torch.Tensor, clean: torch.Tensor, low_dose: torch.Tensor,
                       noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Resfusion's x_t = sqrt(a) x0 + (1 - sqrt(a)) (y - x0) + sqrt(1 - a) noise, a = alpha_bar at each timestep.

    At the acceleration point (sqrt(a) = 1/2) its mean is y / 2: the low-dose image ``y`` noised by the plain
    forward process, which is where sampling starts.

    Args:
        alphas_cumprod: the schedule's alpha_bar, (T,).
        clean, low_dose, noise: (N, 1, D, H, W) in the model's range.
        timesteps: (N,) integer steps.
    """
    root = alphas_cumprod.to(clean.device)[timesteps].sqrt().view(-1, *(1,) * (clean.dim() - 1))
    return root * clean + (1 - root) * (low_dose - clean) + (1 - root ** 2).sqrt() * noise


def ddim_step(alphas_cumprod: torch.Tensor, prediction: torch.Tensor, prediction_type: str, x: torch.Tensor,
              timestep: int, previous: int) -> torch.Tensor:
    """One deterministic (DDIM, eta 0) reverse step from ``timestep`` to ``previous`` (< 0: to x0).

    It lands exactly on ``previous``: given the true x0 (or noise), it maps the forward process at ``timestep`` onto
    the forward process at ``previous`` with the same noise. MONAI's ``DDIMScheduler.step`` (1.6) does not: it
    steps back by T // N whatever the spacing of the N timesteps that its ``set_timesteps`` lists, so that a chain
    over [333, 0] went from 333 to 83 and then called the network at t = 0 on an image with t = 83's noise (the
    same bug as diffusers' DDIM with linspace spacing, huggingface/diffusers#12633).

    Args:
        alphas_cumprod: the schedule's alpha_bar, (T,).
        prediction: the network's output at ``timestep``, of ``prediction_type`` ("sample", "epsilon" or
            "v_prediction").
        x: the chain's current image.
    """
    now = alphas_cumprod[timestep]
    before = alphas_cumprod[previous] if previous >= 0 else torch.ones((), device=x.device)
    if prediction_type == "sample":
        clean, noise = prediction, (x - now.sqrt() * prediction) / (1 - now).sqrt()
    elif prediction_type == "epsilon":
        clean, noise = (x - (1 - now).sqrt() * prediction) / now.sqrt(), prediction
    else:
        clean = now.sqrt() * x - (1 - now).sqrt() * prediction
        noise = now.sqrt() * prediction + (1 - now).sqrt() * x
    return before.sqrt() * clean + (1 - before).sqrt() * noise


def residual_ddim_step(alphas_cumprod: torch.Tensor, predicted_clean: torch.Tensor, low_dose: torch.Tensor,
                       x: torch.Tensor, timestep: int, previous: int) -> torch.Tensor:
    """One deterministic (DDIM, eta 0) reverse step of the residual process, from ``timestep`` to ``previous``.

    x_t - R follows the plain forward process from x0 - R (R = y - x0), so this is :func:`ddim_step` on that shifted
    variable, with R estimated from the network's x0. It is exact: given the true x0, it maps ``add_residual_noise``
    at ``timestep`` onto ``add_residual_noise`` at ``previous`` with the same noise. ``previous`` < 0 returns x0.
    """
    residual = low_dose - predicted_clean
    return residual + ddim_step(alphas_cumprod, predicted_clean - residual, "sample", x - residual, timestep, previous)


def to_model_space(volume: np.ndarray, scale: float) -> np.ndarray:
    """Activity (any units) -> the network's range, given the volume's head mean ``scale``."""
    if not scale > 0:
        raise ValueError(f"the normalisation scale must be positive; got {scale}")
    return (volume / (scale * NORMALISED_RANGE) * 2.0 - 1.0).astype(np.float32)


def conditions_in_model_space(low_dose: np.ndarray, mr: Optional[np.ndarray], head: np.ndarray, use_mr: bool,
                              device: torch.device, base: Optional[np.ndarray] = None) -> Tuple[torch.Tensor, float]:
    """A network's conditions for a (z, y, x) volume, (1, C, z, y, x) in its range, and the PET's scale.

    The PET and the MR are each normalised by their own mean over ``head``; ``base`` (a corrective model's base
    prediction, in the PET's units) by the PET's, as the next channel after it. The MR comes last, when ``use_mr``.

    Raises:
        ValueError: ``use_mr`` without an MR.
    """
    if use_mr and mr is None:
        raise ValueError("this model was trained with the MR as a condition: give the MR")
    scale = float(low_dose[head].mean())
    channels = [to_model_space(low_dose, scale)]
    if base is not None:
        channels.append(to_model_space(base, scale))
    if use_mr:
        mr_array = cast(np.ndarray, mr)  # not None: checked above
        channels.append(to_model_space(mr_array, float(mr_array[head].mean())))
    return torch.from_numpy(np.stack(channels)[None]).to(device), scale


def from_model_space(values: np.ndarray, scale: float) -> np.ndarray:
    """The inverse of :func:`to_model_space`."""
    return ((values + 1.0) / 2.0 * (scale * NORMALISED_RANGE)).astype(np.float32)


def std_from_model_space(std: np.ndarray, scale: float) -> np.ndarray:
    """A standard deviation in the network's range -> activity units (the offset drops out)."""
    return (std / 2.0 * (scale * NORMALISED_RANGE)).astype(np.float32)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
