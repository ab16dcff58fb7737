"""Where the networks run: the one translation from a device setting to a ``torch.device``."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..settings import DEVICES


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when there is one and the CPU otherwise; 'cuda' without a GPU is refused."""
    if name not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)
