"""The supervised baseline of the diffusion model: the same U-Net, trained to map the conditions to the target.

A diffusion model has to beat plain supervised regression trained on the same pairs, with the same patches and
budget, before its extra cost is worth paying (issue 13; Yu, Gong et al., EJNMMI 2025, compare theirs with a 3D
U-Net). The fairest such baseline is the diffusion model's own network: MONAI's ``DiffusionModelUNet`` with the
same levels and blocks, minus the noisy-image input, always at timestep 0. It outputs one image and no
stability map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, cast

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet

from .model import UNetConfig, conditions_in_model_space, for_inference, from_model_space
from .sampling import WINDOWS_PER_CALL, blend_windows, keep_input_outside_head, window_count


@dataclass(frozen=True)
class RegressionConfig(UNetConfig):
    """The baseline's network: the diffusion model's U-Net, with no schedule."""


class RegressionUNet(torch.nn.Module):
    """The conditions (N, C, D, H, W) -> the target (N, 1, D, H, W), through a U-Net held at timestep 0."""

    def __init__(self, config: RegressionConfig) -> None:
        super().__init__()
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=config.condition_channels, out_channels=1, channels=config.channels,
            attention_levels=(False,) * len(config.channels), num_res_blocks=config.num_res_blocks,
            norm_num_groups=config.norm_num_groups)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        timesteps = torch.zeros(conditions.shape[0], dtype=torch.long, device=conditions.device)
        return cast(torch.Tensor, self.unet(conditions, timesteps=timesteps))


def build_regression_model(config: RegressionConfig) -> RegressionUNet:
    return RegressionUNet(config)


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    config: RegressionConfig,
    low_dose: np.ndarray,
    mr: Optional[np.ndarray],
    head: np.ndarray,
    *,
    overlap: float,
    device: torch.device = torch.device("cpu"),
    progress: Optional[Callable[[int, int], None]] = None,
    windows_per_call: int = WINDOWS_PER_CALL,
) -> np.ndarray:
    """The baseline's prediction for a (z, y, x) volume in the PET's units; outside the head, the input.

    Args:
        low_dose, mr, head: as for :func:`~.sampling.denoise_volume`.
        overlap: of the sliding windows, which are blended with Gaussian weights.
        progress: ``progress(windows_done, windows_total)`` after each window.
        windows_per_call: windows stacked into one network call (see :func:`~.sampling.blend_windows`).
    """
    inputs, scale = conditions_in_model_space(low_dose, mr, head, config.use_mr, device)
    model = for_inference(model, device)
    total, done = window_count(low_dose.shape, config.patch_size, overlap), 0

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        outputs = model(windows)
        done += windows.shape[0]
        if progress is not None:
            progress(done, total)
        return outputs

    blended = blend_windows(inputs, predictor, config.patch_size, overlap, windows_per_call)
    predicted = from_model_space(blended[0, 0].cpu().numpy(), scale)
    return keep_input_outside_head(predicted, low_dose, head)
