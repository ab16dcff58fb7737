"""User settings -> the config an engine runs with. The one translation, used by every way in.

The CLI, the worker, the Slicer logic (and through it the module panel and the
batch script) all call :func:`engine_config`, so a setting is checked the same
way, and before any work starts, wherever it comes from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from ..errors import InputError
from .config import DDPMSamplingConfig, DIPConfig, check_method
from .presets import get_preset

EngineConfig = Union[DIPConfig, DDPMSamplingConfig]


def config_class(method: str) -> type:
    """The config dataclass of ``method``: DIPConfig or DDPMSamplingConfig."""
    check_method(method)
    return DDPMSamplingConfig if method == "ddpm" else DIPConfig


def engine_parameters(method: str) -> Tuple[str, ...]:
    """The setting names ``method`` accepts: the fields of its config."""
    return tuple(f.name for f in dataclasses.fields(config_class(method)))


def engine_config(method: str, preset: str, parameters: Mapping[str, object]) -> EngineConfig:
    """The settings an engine runs with: the DIP preset with ``parameters`` applied, or DDPM sampling settings.

    A None value keeps the default; DDPM has no presets. Every value is validated
    here (choices, ranges, device, threads, channels). Raises InputError for an
    unknown method or parameter, or a bad value.
    """
    return ddpm_config(parameters) if config_class(method) is DDPMSamplingConfig else dip_config(preset, parameters)


def dip_config(preset: str, parameters: Mapping[str, object]) -> DIPConfig:
    """The DIP preset with ``parameters`` (DIPConfig fields) applied; see :func:`engine_config`."""
    values = _checked_values("dip", parameters)
    try:
        return get_preset(preset, **values)
    except (TypeError, ValueError) as error:  # TypeError: a value of the wrong type, e.g. a string for a number
        raise InputError(f"bad engine parameter value: {error}") from None


def ddpm_config(parameters: Mapping[str, object]) -> DDPMSamplingConfig:
    """DDPM sampling settings from ``parameters`` (DDPMSamplingConfig fields); see :func:`engine_config`."""
    values = _checked_values("ddpm", parameters)
    try:
        return DDPMSamplingConfig(**values)
    except (TypeError, ValueError) as error:
        raise InputError(f"bad engine parameter value: {error}") from None


def _checked_values(method: str, parameters: Mapping[str, object]) -> Dict[str, Any]:
    """The non-None ``parameters``, refused unless they are fields of ``method``'s config."""
    accepted = engine_parameters(method)
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise InputError(f"unknown engine parameter {', '.join(unknown)} for method {method!r}; "
                         f"it accepts {', '.join(accepted)}")
    values: Dict[str, Any] = {name: value for name, value in parameters.items() if value is not None}
    if isinstance(values.get("channels"), list):  # JSON has no tuples
        values["channels"] = tuple(values["channels"])
    return values


def parse_parameter(method: str, name: str, text: str) -> Optional[object]:
    """The value of setting ``name`` of ``method`` written as text (a CSV cell); an empty text is None.

    Numbers are parsed by the field's type; ``channels`` is whole numbers separated by spaces or
    semicolons. Raises InputError for an unknown setting or text that is not of the field's type.
    """
    text = text.strip()
    fields = {f.name: str(f.type) for f in dataclasses.fields(config_class(method))}
    if name not in fields:
        raise InputError(f"unknown engine parameter {name} for method {method!r}; it accepts {', '.join(fields)}")
    if not text:
        return None
    kind = fields[name]
    parsers: Dict[str, Tuple[Callable[[str], object], str]] = {"Tuple[int, ...]": (lambda t: tuple(int(part) for part in t.replace(";", " ").split()),
                                   "whole numbers separated by spaces"),
               "int": (int, "a whole number"), "Optional[int]": (int, "a whole number"),
               "float": (float, "a number"), "Optional[float]": (float, "a number")}
    if kind not in parsers:
        return text
    parse, expected = parsers[kind]
    try:
        return parse(text)
    except ValueError:
        raise InputError(f"{name} must be {expected}; got {text!r}") from None
