import pathlib
import unittest
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

# The library's settings and panel helpers are torch-free: the panel opens before anything is installed.
from PETStabilityDenoiseLib import settings
from PETStabilityDenoiseLib.errors import InputError
from PETStabilityDenoiseLib.slicer import application, install, panel, selftest

# Resources sit beside this file both in a source checkout and in an installed extension.
RESOURCES_PATH = pathlib.Path(__file__).resolve().parent / "Resources"
REQUIREMENTS_PATH = RESOURCES_PATH / "requirements.txt"
DDPM_DEFAULTS = settings.DDPMSamplingConfig()
# The alpha slider re-blends at most once per this interval while it is dragged.
ALPHA_UPDATE_DELAY_MS = 30
POLL_INTERVAL_MS = 100
README_URL = "https://github.com/petstabilitydenoise/SlicerPETStabilityDenoise#using-it-in-3d-slicer"


class PETStabilityDenoise(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PET Stability Denoise")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering.Denoising")]
        self.parent.dependencies = []
        self.parent.contributors = ["PETStabilityDenoise developers"]
        # Untranslated for now: the texts live in the library, where Slicer's string extraction does not look.
        self.parent.helpText = panel.HELP_TEXT.format(readme=README_URL)
        self.parent.acknowledgementText = panel.ACKNOWLEDGEMENT_TEXT
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Adds the bundled simulated PET/MR case (1/10 dose) to the Sample Data module."""
    application.register_sample_data(RESOURCES_PATH)


@parameterNodeWrapper
class PETStabilityDenoiseParameterNode:
    """The module's parameters, saved with the scene; the choices and defaults are PETStabilityDenoiseLib.settings'.

    inputMR None runs the plain DIP (the diffusion model needs the MR). epochs, interval, start: 0 is the preset's
    value. seed: of the DIP's initial weights or of the DDPM's sampling noise. (The bundled DDPM samples only with
    the steps it was trained for, so the panel offers no DDIM steps; the API and petstab take them for other models.)
    """

    inputPET: vtkMRMLScalarVolumeNode
    inputMR: vtkMRMLScalarVolumeNode
    method: panel.Method = panel.Method[settings.DEFAULT_METHOD]
    preset: panel.Preset = panel.Preset[settings.DEFAULT_PRESET]
    epochs: Annotated[int, WithinRange(0, 10000)] = 0
    interval: Annotated[int, WithinRange(0, 10000)] = 0
    start: Annotated[int, WithinRange(0, 10000)] = 0
    samples: Annotated[int, WithinRange(2, 32)] = DDPM_DEFAULTS.samples
    device: panel.Device = panel.Device[settings.DEFAULT_DEVICE]
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    alpha: Annotated[float, WithinRange(0, 3)] = settings.DEFAULT_ALPHA
    stabilityMap: panel.Overlay = panel.Overlay[settings.DEFAULT_OVERLAY]
    overlayOpacity: Annotated[float, WithinRange(0, 1)] = 0.4


class PETStabilityDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, Apply/Cancel with progress, and live display controls."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._boundParameterNode = None  # the node the widgets are bound to; it outlives a scene close
        self._parameterNodeGuiTag = None
        self._result = None
        self._shownOverlay = None
        self._shownMethod = None
        self._alphaTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PETStabilityDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level qMRMLWidget's mrmlSceneChanged to each MRML widget's setMRMLScene.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PETStabilityDenoiseLogic()

        self._alphaTimer = qt.QTimer()
        self._alphaTimer.setSingleShot(True)
        self._alphaTimer.setInterval(ALPHA_UPDATE_DELAY_MS)
        self._alphaTimer.connect("timeout()", self._applyAlpha)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadRunButton.connect("clicked(bool)", self.onLoadRunButton)
        self.ui.alphaSliderWidget.connect("valueChanged(double)", self._onAlphaChanged)
        self.ui.overlayOpacitySliderWidget.connect("valueChanged(double)", self._updateOverlay)

        self._setRunning(False)
        self.initializeParameterNode()

    def onReload(self) -> None:
        """Developer mode's Reload: the library is imported afresh too, so that edits to it take effect."""
        if self.logic is not None and self.logic.isRunning:
            self.logic.cancel()
        panel.forget_library_modules()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning:
            self.logic.cancel()
        self.removeObservers()
        if self._boundParameterNode:  # a Reload discards these widgets (from Slicer 5.10; 5.8 gives no tag)
            self._boundParameterNode.disconnectGui(self._parameterNodeGuiTag)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # The widgets stay bound to the node (see setParameterNode); only stop reacting to its changes.
        self._stopObservingParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        # The inputs and the result nodes are going away: a run could only fail.
        if self.logic.isRunning:
            self.logic.cancel()
        self._result = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed; select the first volume as the PET."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputPET:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputPET = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[PETStabilityDenoiseParameterNode]) -> None:
        """Set and observe the parameter node.

        The .ui's SlicerParameterName properties bind the widgets to a node once: Slicer 5.8's connectGui returns
        no tag, so disconnectGui cannot undo a binding, and the module's node outlives a scene close (it is reset,
        not removed). So the node already bound keeps its binding, on each enter() and after a scene close.
        """
        self._stopObservingParameterNode()
        bound = self._boundParameterNode
        if inputParameterNode and bound and inputParameterNode.parameterNode is bound.parameterNode:
            inputParameterNode = bound
        elif inputParameterNode:
            if bound:
                bound.disconnectGui(self._parameterNodeGuiTag)
            self._shownMethod = inputParameterNode.method
            self._parameterNodeGuiTag = inputParameterNode.connectGui(self.ui)
            self._boundParameterNode = inputParameterNode
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _stopObservingParameterNode(self) -> None:
        node = self._parameterNode
        if node and self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified):
            self.removeObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Enables the chosen method's settings and Apply; a newly chosen method brings its default alpha; shows a
        newly chosen stability map."""
        if self._parameterNode is not None and self._parameterNode.method != self._shownMethod:
            self._shownMethod = self._parameterNode.method
            self._parameterNode.alpha = settings.DEFAULT_ALPHAS[self._shownMethod.value]
        isDDPM = self._isDDPM()
        for widget in (self.ui.presetComboBox, self.ui.epochsSpinBox, self.ui.intervalSpinBox, self.ui.startSpinBox):
            widget.enabled = not isDDPM
        self.ui.samplesSpinBox.enabled = isDDPM
        if self._parameterNode is not None and self._parameterNode.stabilityMap != self._shownOverlay:
            self._updateOverlay()
        self._checkCanApply()

    def _isDDPM(self) -> bool:
        return self._parameterNode is not None and self._parameterNode.method == panel.Method.ddpm

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.logic.isRunning:
            self.ui.applyButton.toolTip = _("Stop the denoising; nothing is added to the scene.")
            self.ui.applyButton.enabled = True
        elif not (self._parameterNode and self._parameterNode.inputPET):
            self.ui.applyButton.toolTip = _("Select a PET volume.")
            self.ui.applyButton.enabled = False
        elif self._isDDPM() and not self._parameterNode.inputMR:
            self.ui.applyButton.toolTip = _("Select the MR volume: the diffusion model needs it.")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Denoise the PET volume in the background.")
            self.ui.applyButton.enabled = True

    def _setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.advancedCollapsibleButton.enabled = not running
        self.ui.loadRunButton.enabled = not running
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
        self._checkCanApply()

    def onApplyButton(self) -> None:
        """Starts the denoising, or cancels the run under way."""
        if self.logic.isRunning:
            self.logic.cancel()
            return
        # No wait cursor here: the user may have to answer a confirmation dialog.
        dependenciesReady = False
        with slicer.util.tryWithErrorDisplay(_("Failed to install the Python packages that denoising needs.")):
            dependenciesReady = self.logic.ensureDependencies(askConfirmation=True)
        if not dependenciesReady:
            self.ui.statusLabel.text = _("Not started: the required Python packages are not installed.")
            return
        handle = None
        with slicer.util.tryWithErrorDisplay(_("Failed to start denoising."), waitCursor=True):
            parameters = self._parameterNode
            handle = self.logic.process(parameters.inputPET, parameters.inputMR, method=parameters.method.value,
                                        alpha=parameters.alpha, preset=parameters.preset.value, wait=False,
                                        progress=self.onProgress, finished=self.onFinished,
                                        **panel.engine_settings(parameters))
            self._setRunning(True)
            self.ui.statusLabel.text = _("Starting the worker...")
        for warning in handle.warnings if handle is not None else ():  # after the block: no wait cursor on the dialog
            slicer.util.warningDisplay(warning, windowTitle=_("PET Stability Denoise"))

    def onProgress(self, report) -> None:
        """Shows one progress report and the time left: the epoch and loss (DIP), or the window (DDPM, no loss)."""
        self.ui.progressBar.maximum = report.epochs
        self.ui.progressBar.value = report.epoch
        if report.loss is None:
            self.ui.statusLabel.text = _("Window {window}/{windows} · ETA {eta}").format(
                window=report.epoch, windows=report.epochs, eta=panel.format_duration(report.eta_s))
        else:
            self.ui.statusLabel.text = _("Epoch {epoch}/{epochs} · loss {loss:.4g} · ETA {eta}").format(
                epoch=report.epoch, epochs=report.epochs, loss=report.loss, eta=panel.format_duration(report.eta_s))

    def onFinished(self, handle) -> None:
        """Shows the result of a run that ended, or why it did not give one."""
        self._setRunning(False)
        if handle.state == "succeeded":
            self._showNewResult(handle.result)
        elif handle.state == "failed":
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Denoising failed: {error}").format(error=handle.error),
                                     detailedText="\n".join(handle.log_tail))
        else:
            self.ui.statusLabel.text = _("Cancelled.")

    def onLoadRunButton(self) -> None:
        """Shows a finished run folder as the four result volumes: on the selected PET if it is the run's input,
        otherwise on the PET that run.json records."""
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                     _("Choose a run folder (it holds run.json)"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the run folder."), waitCursor=True):
            petNode = self._parameterNode.inputPET if self._parameterNode else None
            try:
                result = self.logic.loadRunFolder(folder, petNode)
            except InputError:
                if petNode is None:
                    raise
                result = self.logic.loadRunFolder(folder)
            self._showNewResult(result)

    def _showNewResult(self, result) -> None:
        """Makes ``result`` the one the alpha slider and the overlay act on, blended at the slider's value."""
        self._result = result
        # The slider may have moved during the run; the result was blended at the run's value.
        if result.alpha != self.ui.alphaSliderWidget.value:
            self.logic.setAlpha(result, self.ui.alphaSliderWidget.value)
        self._updateOverlay()
        self.ui.statusLabel.text = _("Done: {name}.").format(name=result.denoisedNode.GetName())

    def _currentResult(self):
        """The last result, or None once its nodes have been removed from the scene."""
        if self._result is not None and self._result.denoisedNode.GetScene() is None:
            self._result = None
        return self._result

    def _onAlphaChanged(self, value: float) -> None:
        # At most one re-blend per interval while dragging, at the slider's value when the timer fires.
        if not self._alphaTimer.isActive():
            self._alphaTimer.start()

    def _applyAlpha(self) -> None:
        result = self._currentResult()
        if result is not None:
            self.logic.setAlpha(result, self.ui.alphaSliderWidget.value)

    def _updateOverlay(self, value=None) -> None:
        result = self._currentResult()
        if result is not None and self._parameterNode is not None:
            self._shownOverlay = self._parameterNode.stabilityMap
            self.logic.showResult(result, overlay=self._shownOverlay.value,
                                  opacity=self.ui.overlayOpacitySliderWidget.value)


def confirmInstall(names: list) -> bool:
    return slicer.util.confirmOkCancelDisplay(
        _("Denoising needs these Python packages, which will now be downloaded and installed into Slicer's Python. "
          "This can take several minutes. These stay as they are: {pinned}.").format(
            pinned=", ".join(install.pinned_packages()) or _("none that pip can see"))
        + "\n\n" + "\n".join(f"• {name}" for name in names),
        windowTitle=_("PET Stability Denoise: install Python packages"))


class PETStabilityDenoiseLogic(ScriptedLoadableModuleLogic):
    """The module's logic, usable from the Python console and in batch mode.

    A thin layer over ``PETStabilityDenoiseLib.slicer.logic.PETStabilityDenoiseLogic``:
    it supplies what only Slicer has (PythonSlicer, its process launcher, a QTimer
    to poll the worker on the main thread) and installs the packages the worker needs.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._engine = None

    def getParameterNode(self):
        return PETStabilityDenoiseParameterNode(super().getParameterNode())

    @property
    def engine(self):
        """The library logic, created on first use: building it needs PythonSlicer and the worker's packages."""
        if self._engine is None:
            from PETStabilityDenoiseLib.slicer.logic import PETStabilityDenoiseLogic as EngineLogic

            self._engine = EngineLogic(scene=None, python_executable=application.find_python_slicer(),
                                       launcher=application.launch_worker,
                                       scheduler=application.TimerScheduler(POLL_INTERVAL_MS))
        return self._engine

    @property
    def isRunning(self) -> bool:
        return self._engine is not None and self._engine.isRunning

    def process(self, petNode, mrNode=None, method=settings.DEFAULT_METHOD, alpha=None,
                preset=settings.DEFAULT_PRESET, wait=True, progress=None, finished=None, **engineParameters):
        """Denoises ``petNode`` (guided by ``mrNode``) into four new volume nodes; see the library logic's ``process``."""
        return self.engine.process(petNode, mrNode, method=method, alpha=alpha, preset=preset, wait=wait,
                                   progress=progress, finished=finished, **engineParameters)

    def loadRunFolder(self, runFolder, petNode=None):
        """Loads a finished run folder as four result nodes; see the library logic's ``loadRunFolder``."""
        return self.engine.loadRunFolder(runFolder, petNode)

    def setAlpha(self, result, alpha: float) -> None:
        """Re-blends the result's denoised volume (and S_norm) at ``alpha``, in place, with no new fit."""
        self.engine.setAlpha(result, alpha)

    def showResult(self, result, overlay: str = settings.DEFAULT_OVERLAY, opacity: float = 0.4) -> None:
        """Shows the denoised PET in the slice views with a stability map over it."""
        self.engine.showResult(result, overlay=overlay, opacity=opacity)

    def cancel(self) -> None:
        """Stops the run under way, if any; nothing is added to the scene."""
        if self._engine is not None:
            self._engine.cancel()

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Makes torch and requirements.txt importable (asks first); False if declined; in batch mode, raises."""
        steps = install.InstallSteps(batch_mode=application.is_batch_mode, confirm=confirmInstall,
                                     install_torch=application.torch_installer(), pip_install=application.pip_install,
                                     constraints_path=application.constraints_path())
        return install.ensure_dependencies(REQUIREMENTS_PATH, steps, ask_confirmation=askConfirmation)


class PETStabilityDenoiseTest(ScriptedLoadableModuleTest):
    """Denoises the bundled sample with the tiny preset and checks the outputs and the live re-blend."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # Reload and Test calls this outside unittest, which would show a skip (packages missing) as a failure.
        self.setUp()
        try:
            self.test_PETStabilityDenoise1()
        except unittest.SkipTest as reason:
            self.delayDisplay(_("Test skipped: {reason}").format(reason=reason))

    def test_PETStabilityDenoise1(self):
        selftest.denoise_the_sample(self, PETStabilityDenoiseLogic(), RESOURCES_PATH)
