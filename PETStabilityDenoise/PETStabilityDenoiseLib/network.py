"""The 3D U-Net that conditional DIP fits, built from MONAI."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import UNet


def build_unet(
    in_channels: int,
    channels: Sequence[int],
    num_res_units: int,
) -> torch.nn.Module:
    """A MONAI 3D U-Net with one output channel and stride-2 downsampling per level.

    Instance norm (MONAI's default) keeps the network independent of the
    absolute intensity scale of its input.
    """
    if len(channels) < 2:
        raise ValueError(f"the U-Net needs at least 2 levels of channels; got {tuple(channels)}")
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=1,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
    )
