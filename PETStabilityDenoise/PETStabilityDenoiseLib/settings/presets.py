"""Named DIP settings. docs/DEFAULTS.md records the measurements behind them."""

from __future__ import annotations

from typing import Dict, Tuple

from ..errors import InputError
from .config import DIPConfig

PRESETS: Dict[str, DIPConfig] = {
    # The measured defaults: Gong-style network 8-64, 160 epochs, S from 80 every 5 (about 6 min on 2 CPU cores).
    "full": DIPConfig(),
    # MONAI's UNet, 120 epochs, S from 60: about 5x quicker on a CPU, and worse (docs/DEFAULTS.md).
    "fast": DIPConfig(network="monai", channels=(16, 32, 64, 128), epochs=120, interval=5, start=60),
    # For tests and smoke runs only: far too short to denoise well.
    "tiny": DIPConfig(network="monai", epochs=6, interval=2, start=2, channels=(8, 16), num_res_units=1),
}
PRESET_NAMES: Tuple[str, ...] = tuple(PRESETS)
DEFAULT_PRESET = "full"


def get_preset(name: str, **overrides) -> DIPConfig:
    """The preset's config with any non-None overrides applied."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**{k: v for k, v in overrides.items() if v is not None})
