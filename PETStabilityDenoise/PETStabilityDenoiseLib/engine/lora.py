"""Low-rank adapters (LoRA) on the 3D convolutions of a trained network, for DDIP's fine-tuning.

Each adapted ``Conv3d`` W computes W x + B(A(x)) (Hu et al., ICLR 2022): A is a convolution with W's kernel,
stride, padding and dilation from W's input channels to ``rank`` channels, and B a 1x1x1 convolution from
``rank`` channels to W's outputs. B starts at zero, so the adapted network starts equal to the original, and
only A and B train: the original weights are frozen.

A small module of our own rather than peft: peft brings transformers and accelerate into Slicer's Python, and
DDIP needs adapters on ``Conv3d`` layers only.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn


class LoRAConv3d(nn.Module):
    """A frozen ``Conv3d`` plus a trainable low-rank update of the same shape of output."""

    def __init__(self, base: nn.Conv3d, rank: int) -> None:
        super().__init__()
        if base.groups != 1:
            raise ValueError("LoRA adapters need an ungrouped convolution")
        self.base = base
        self.down = nn.Conv3d(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                              dilation=base.dilation, bias=False, padding_mode=base.padding_mode)
        self.up = nn.Conv3d(rank, base.out_channels, 1, bias=False)
        nn.init.zeros_(self.up.weight)
        self.to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def add_lora(model: nn.Module, rank: int) -> List[nn.Parameter]:
    """Puts an adapter on every ``Conv3d`` of ``model``, in place, and freezes the rest; returns the adapters' weights.

    Raises:
        ValueError: a rank below 1, or a model without 3D convolutions.
    """
    if rank < 1:
        raise ValueError(f"the LoRA rank must be >= 1; got {rank}")
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Conv3d)]
    if not targets:
        raise ValueError("the model has no Conv3d layer to adapt")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = []
    for parent, name, child in targets:
        adapted = LoRAConv3d(child, rank)
        setattr(parent, name, adapted)
        adapters += [adapted.down.weight, adapted.up.weight]
    return adapters
