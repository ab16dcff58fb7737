"""The module panel's parameter-node lifecycle (PETStabilityDenoise.py), on a real MRML scene from slicer-core.

What slicer-core lacks is faked: qt, the ScriptedLoadableModule classes, slicer.i18n and parameterNodeWrapper, whose
fake keeps its values in the MRML node (so that a scene close resets them, as Slicer's does) and counts the widget
bindings that connectGui makes and disconnectGui undoes. Slicer 5.8's connectGui returns no tag, so nothing undoes
its bindings; from 5.10 it returns one. On both, the panel's widgets must stay bound to the module's node exactly
once, however often the panel is entered and left and the scene closed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from PETStabilityDenoiseLib import settings  # noqa: E402

# Slicer's VTKObservationMixin warns "does not have observer" when asked to remove one it does not hold.
pytestmark = pytest.mark.filterwarnings("error:does not have observer")

MODULE_FILE = Path(__file__).resolve().parents[1] / "PETStabilityDenoise" / "PETStabilityDenoise.py"
MODULE_NAME = "PETStabilityDenoise"


class Bindings:
    """The widget bindings made by the fake connectGui, by tag; ``live`` are those not undone."""

    def __init__(self, returns_tag: bool):
        self.returns_tag = returns_tag
        self.live: dict = {}
        self.made = 0

    def connect(self, node) -> object:
        self.made += 1
        self.live[self.made] = node
        return self.made if self.returns_tag else None

    def disconnect(self, tag) -> None:
        self.live.pop(tag, None)  # a None tag (Slicer 5.8) undoes nothing


def fake_parameter_node_wrapper(bindings: Bindings):
    """A parameterNodeWrapper whose values live in the node: a parameter the node lacks reads as its default."""
    values: dict = {}

    def wrap(cls):
        defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}

        class Wrapper:
            def __init__(self, node):
                object.__setattr__(self, "parameterNode", node)

            def __getattr__(self, name):
                if name not in defaults:
                    raise AttributeError(name)
                node = self.parameterNode
                return values[(node.GetID(), name)] if node.GetParameter(name) else defaults[name]

            def __setattr__(self, name, value):
                values[(self.parameterNode.GetID(), name)] = value
                self.parameterNode.SetParameter(name, str(value))  # fires Modified, as Slicer's does

            def AddObserver(self, event, callback, priority=0.0):  # Slicer's wrapper forwards these to the node
                return self.parameterNode.AddObserver(event, callback, priority)

            def RemoveObserver(self, tag):
                self.parameterNode.RemoveObserver(tag)

            def connectGui(self, gui):
                return bindings.connect(self.parameterNode)

            def disconnectGui(self, tag):
                bindings.disconnect(tag)

        return Wrapper

    return wrap


class ScriptedLoadableModuleLogic:
    """Slicer's logic base: the module's singleton parameter node, which a scene close resets but keeps."""

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Slicer's test base; delayDisplay's messages are kept."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = []

    def delayDisplay(self, message, msec=None):
        self.messages.append(message)


class AnyWidget:
    """Any widget of the .ui, with any property."""

    def __getattr__(self, name):
        widget = types.SimpleNamespace(value=0.0, enabled=True, toolTip="", text="")
        setattr(self, name, widget)
        return widget


@pytest.fixture(params=[False, True], ids=["slicer5.8", "slicer5.10"])
def bindings(request):
    return Bindings(returns_tag=request.param)


@pytest.fixture
def module(bindings, monkeypatch):
    """PETStabilityDenoise.py, imported with the fakes, on a fresh scene."""
    fakes = {
        "qt": types.ModuleType("qt"),
        "slicer.i18n": types.SimpleNamespace(tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": types.SimpleNamespace(
            WithinRange=lambda low, high: (low, high), parameterNodeWrapper=fake_parameter_node_wrapper(bindings)),
        "slicer.ScriptedLoadableModule": types.SimpleNamespace(
            ScriptedLoadableModule=object, ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
            __all__=["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                     "ScriptedLoadableModuleTest"]),
    }
    for name, fake in fakes.items():
        monkeypatch.setitem(sys.modules, name, fake)
        if name.startswith("slicer."):
            monkeypatch.setattr(slicer, name.split(".", 1)[1], fake, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    spec = importlib.util.spec_from_file_location("PETStabilityDenoise_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def panel(module, bindings):
    """The module's widget with a fake .ui and the real logic class, entered."""
    widget = module.PETStabilityDenoiseWidget(parent=types.SimpleNamespace(isEntered=True))
    widget.ui = AnyWidget()
    widget.logic = module.PETStabilityDenoiseLogic()
    widget.enter()
    return widget, bindings


def close_scene(widget) -> None:
    """What Slicer does on File > Close Scene, with the panel's observers of the scene's close events."""
    widget.onSceneStartClose(slicer.mrmlScene, None)
    slicer.mrmlScene.Clear(0)
    widget.onSceneEndClose(slicer.mrmlScene, None)


def test_the_widgets_are_bound_once_across_enters_and_scene_closes(panel):
    widget, bindings = panel
    node = widget._parameterNode.parameterNode
    for _ in range(3):
        widget.exit()
        widget.enter()
        close_scene(widget)
    assert len(bindings.live) == 1
    assert widget._parameterNode.parameterNode is node  # the module's node outlives the closes
    assert list(bindings.live.values()) == [node]


def test_a_scene_close_brings_back_the_defaults_and_their_alpha(panel):
    widget, _ = panel
    widget._parameterNode.method = type(widget._parameterNode.method)["ddpm"]
    assert widget._parameterNode.alpha == settings.DEFAULT_ALPHAS["ddpm"]  # a new method brings its alpha
    close_scene(widget)
    assert widget._parameterNode.method.value == settings.DEFAULT_METHOD
    assert widget._parameterNode.alpha == settings.DEFAULT_ALPHAS[settings.DEFAULT_METHOD]


def test_the_panel_reacts_to_its_node_only_while_entered(panel):
    widget, _ = panel
    node = widget._parameterNode
    widget.exit()
    node.method = type(node.method)["ddpm"]
    assert widget.ui.samplesSpinBox.enabled is False  # the DIP's settings are still the ones shown
    widget.enter()
    assert widget.ui.samplesSpinBox.enabled is True
    assert widget.ui.presetComboBox.enabled is False


def test_cleanup_undoes_the_binding_where_slicer_can(panel):
    widget, bindings = panel
    widget.cleanup()
    assert len(bindings.live) == (0 if bindings.returns_tag else 1)


def test_reload_and_test_shows_a_skip_as_a_message_not_a_failure(module, monkeypatch):
    monkeypatch.setattr(module.selftest, "denoise_the_sample", lambda test, logic, resources: test.skipTest("no torch"))
    test = module.PETStabilityDenoiseTest()
    try:
        test.runTest()  # as Reload and Test calls it, outside unittest
    except unittest.SkipTest:
        pytest.fail("the skip escaped runTest: Reload and Test would report it as a failure")
    assert test.messages == ["Test skipped: no torch"]
