"""The 3D U-Nets that conditional DIP fits: MONAI's UNet, or a network in the style of Gong et al."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn

from ..settings import NETWORKS
from ..settings.config import check_choice


def build_unet(
    in_channels: int,
    channels: Sequence[int],
    num_res_units: int,
    network: str = "monai",
) -> torch.nn.Module:
    """A 3D U-Net with one output channel and stride-2 downsampling per level.

    Args:
        in_channels: channels of the network input (1 for MR or noise, 2 for MR+PET).
        channels: feature channels per level, one level per entry.
        num_res_units: residual units per MONAI block; ignored by ``'gong'``.
        network: ``'monai'``, MONAI's UNet, whose instance norm keeps it
            independent of the absolute intensity scale of its input; or
            ``'gong'``, see :class:`GongUNet`.
    """
    if len(channels) < 2:
        raise ValueError(f"the U-Net needs at least 2 levels of channels; got {tuple(channels)}")
    check_choice("network", network, NETWORKS)
    if network != "monai":
        return GongUNet(in_channels, channels, half_resolution=network == "gong_halfres")
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=1,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
    )


def _conv_bn_lrelu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    # No conv bias: batch norm subtracts the mean right after, which would cancel it.
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.2),
    )


class GongUNet(nn.Module):
    """A 3D U-Net in the style of Gong et al.'s conditional-DIP network (IEEE TMI 2019).

    Per level two 3x3x3 Conv -> BatchNorm -> LeakyReLU(0.2) blocks; a stride-2
    block downsamples; trilinear upsampling then a block upsamples; skips are
    added, not concatenated; a 1x1x1 convolution gives the output. The
    fixed trilinear upsampler, unlike MONAI's transposed convolutions, changes
    how soon the fit reaches high frequencies. With a batch of one in train
    mode, batch norm normalises each channel over space, as instance norm does.
    Downsampling is isotropic here; Gong's halves only the in-plane sizes.

    With ``half_resolution`` a stride-2 block first halves the input, so even
    the first level works at half resolution, and a trilinear upsampling and a
    3x3x3 convolution to one channel make the full-resolution output. On a CPU
    the full-resolution 16-channel convolutions are most of the cost, and the
    fixed upsampler bounds how much voxel-scale detail (noise) the output holds.

    Args:
        in_channels: channels of the network input.
        channels: feature channels per level; each spatial size of the input
            must be a multiple of ``2 ** (len(channels) - 1)`` (one more
            halving with ``half_resolution``).
        half_resolution: start with a stride-2 block, end with an upsampling.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], half_resolution: bool = False) -> None:
        super().__init__()
        channels = tuple(channels)
        self.stem = _conv_bn_lrelu(in_channels, channels[0], stride=2) if half_resolution else None
        if half_resolution:
            in_channels = channels[0]
        # As in Gong's code, the stride-2 block keeps the channels of its level
        # and the next level's first block widens them.
        self.downs = nn.ModuleList(_conv_bn_lrelu(c, c, stride=2) for c in channels[:-1])
        self.encoders = nn.ModuleList(
            nn.Sequential(_conv_bn_lrelu(c_in, c_out), _conv_bn_lrelu(c_out, c_out))
            for c_in, c_out in zip((in_channels,) + channels[:-1], channels)
        )
        self.ups = nn.ModuleList(_conv_bn_lrelu(deep, c) for c, deep in zip(channels[:-1], channels[1:]))
        self.decoders = nn.ModuleList(
            nn.Sequential(_conv_bn_lrelu(c, c), _conv_bn_lrelu(c, c)) for c in channels[:-1]
        )
        # No output activation, unlike Gong's ReLU: negative values must stay
        # possible for the mean-normalised PET target, and a ReLU passes no
        # gradient wherever it outputs zero.
        self.head = nn.Conv3d(channels[0], 1, 3 if half_resolution else 1, padding=1 if half_resolution else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level:
                x = self.downs[level - 1](x)
            x = encoder(x)
            skips.append(x)
        skips.pop()  # the deepest level has no skip: it is the bottleneck
        for level in reversed(range(len(self.ups))):
            x = self.ups[level](nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False))
            x = self.decoders[level](x + skips.pop())
        if self.stem is not None:
            x = nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        return self.head(x)
