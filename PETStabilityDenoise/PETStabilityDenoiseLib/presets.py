"""Named DIP settings. docs/DEFAULTS.md records the measurements behind them."""

from __future__ import annotations

from .config import DIPConfig

PRESETS: dict = {
    # The paper's schedule (200 epochs, M=5, m=100) with the measured defaults.
    "paper": DIPConfig(),
    # Same optimiser and network, a shorter schedule: the demo's preset.
    "fast": DIPConfig(epochs=100, interval=5, start=50),
    # For tests and smoke runs only: far too short to denoise well.
    "tiny": DIPConfig(epochs=6, interval=2, start=2, channels=(8, 16), num_res_units=1),
}


def get_preset(name: str, **overrides) -> DIPConfig:
    """The preset's config with any non-None overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**{k: v for k, v in overrides.items() if v is not None})
