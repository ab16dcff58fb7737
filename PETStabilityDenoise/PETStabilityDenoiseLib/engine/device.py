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
        # The panel, the console and petstab all show this, so it names the setting, not a command-line flag.
        if torch.version.cuda is None:
            why = (f"this PyTorch ({torch.__version__}) is a CPU-only build; on a computer with an NVIDIA GPU, "
                   "install a CUDA build of PyTorch (in Slicer, with the PyTorch extension)")
        else:
            why = "PyTorch finds no CUDA GPU: check that the NVIDIA driver is installed and recent enough"
        raise InputError(f"the device 'cuda' was requested, but {why}. Otherwise, choose the device 'auto' or 'cpu'")
    return torch.device(name)
