"""Settings: every choice list, default and config, and their validation. Torch-free.

``choices`` holds the lists and defaults a user picks from; ``config`` the
dataclasses an engine runs with; ``presets`` the named DIP configs and the
default one; ``engine_config`` turns user settings into a validated config.
"""

from .choices import *  # noqa: F403 - the lists and defaults, re-exported by name in __all__
from .choices import __all__ as _choices
from .config import (
           DDIPConfig,
           DDPMSamplingConfig,
           DIPConfig,
           EpochReport,
           check_alpha,
           method_alpha,
           required_multiple,
           sample_epochs,
)
from .engine_config import EngineConfig, ddpm_config, dip_config, engine_config, engine_parameters, parse_parameter
from .presets import DEFAULT_PRESET, PRESET_NAMES, PRESETS, get_preset

__all__ = [*_choices, "DDIPConfig", "DDPMSamplingConfig", "DIPConfig", "EpochReport", "check_alpha", "method_alpha", "required_multiple", "sample_epochs",
           "EngineConfig", "engine_config", "engine_parameters", "parse_parameter", "dip_config", "ddpm_config", "DEFAULT_PRESET", "PRESET_NAMES", "PRESETS",
           "get_preset"]
