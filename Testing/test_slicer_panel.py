"""The module panel's Qt-free helpers: its Enum choice fields, its engine settings, durations, and Reload."""

from __future__ import annotations

import sys
import types

import pytest

from PETStabilityDenoiseLib import settings
from PETStabilityDenoiseLib.slicer import panel


@pytest.mark.parametrize("enum_type, choices", [(panel.Method, settings.METHODS), (panel.Preset, settings.PRESET_NAMES),
                                                (panel.Device, settings.DEVICES), (panel.Overlay, settings.OVERLAYS)])
def test_choice_enums_follow_the_settings(enum_type, choices):
    # parameterNodeWrapper stores a member by name: the names must be the setting values of earlier scenes.
    assert [member.name for member in enum_type] == list(choices)
    assert [member.value for member in enum_type] == list(choices)
    labels = [member.label() for member in enum_type]
    assert labels == (list(choices.values()) if isinstance(choices, dict) else list(choices))


def test_labels_are_readable():
    assert panel.Method.ddpm.label() == "Diffusion model (DDPM)"
    assert panel.Overlay.stability_norm.label() == "S_norm (normalized)"


def parameters(**changes):
    fields = dict(method=panel.Method.dip, epochs=0, interval=5, start=0, samples=8,
                  device=panel.Device.cpu, seed=3)
    return types.SimpleNamespace(**{**fields, **changes})


def test_dip_settings_turn_zero_into_the_preset_value():
    assert panel.engine_settings(parameters()) == {"epochs": None, "interval": 5, "start": None, "device": "cpu",
                                                   "seed": 3}


def test_ddpm_settings_leave_the_steps_to_the_model():
    assert panel.engine_settings(parameters(method=panel.Method.ddpm)) == {"samples": 8, "device": "cpu", "seed": 3}


def test_panel_settings_make_valid_engine_configs():
    for method in panel.Method:
        config = settings.engine_config(method.value, settings.DEFAULT_PRESET,
                                        panel.engine_settings(parameters(method=method)))
        assert config.device == "cpu" and config.seed == 3


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (45, "45 s"), (80, "1 min 20 s"), (7500, "2 h 5 min"),
                                           (-3, "0 s"), (float("inf"), "unknown"), (float("nan"), "unknown")])
def test_format_duration(seconds, text):
    assert panel.format_duration(seconds) == text


def test_forget_library_modules_drops_the_package_and_only_it(monkeypatch):
    for name in ("FakeLib", "FakeLib.engine", "FakeLib.engine.dip", "FakeLibrary"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    assert panel.forget_library_modules("FakeLib") == ["FakeLib", "FakeLib.engine", "FakeLib.engine.dip"]
    assert "FakeLib.engine" not in sys.modules and "FakeLibrary" in sys.modules
