import hashlib
import importlib
import math
import pathlib
import shutil
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

# Resources sit beside this file both in a source checkout and in an installed extension.
RESOURCES_PATH = pathlib.Path(__file__).resolve().parent / "Resources"
REQUIREMENTS_PATH = RESOURCES_PATH / "requirements.txt"
# torch comes from the PyTorch extension, which picks the build that matches the GPU driver.
TORCH_VERSION_REQUIREMENT = ">=2.3"
TORCH_REQUIREMENT = "torch" + TORCH_VERSION_REQUIREMENT
SAMPLE_NAME = "PETStabilitySample"
# Labels of the stability maps that can be overlaid on the denoised PET (library names -> shown text).
STABILITY_MAP_LABELS = {"stability": "S (stability)", "stability_norm": "S_norm (normalized)"}
# The alpha slider re-blends at most once per this interval while it is dragged.
ALPHA_UPDATE_DELAY_MS = 30
POLL_INTERVAL_MS = 100
README_URL = "https://github.com/petstabilitydenoise/SlicerPETStabilityDenoise#using-it-in-3d-slicer"


#
# PETStabilityDenoise
#


class PETStabilityDenoise(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PET Stability Denoise")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering.Denoising")]
        self.parent.dependencies = []
        self.parent.contributors = ["PETStabilityDenoise developers"]
        self.parent.helpText = _("""
Denoises a PET volume with a <b>stability-map conditional deep image prior (DIP)</b>.
A 3D U-Net that takes the subject's MR (registered to the PET) is fitted to the noisy PET.
The spread of its outputs over the late epochs, the <i>stability map</i>, marks where the fit is unreliable;
the denoised image blends the network output and the original PET voxel by voxel, weighted by that map.
The <b>alpha</b> slider sets the blend and updates the image at once, with no new fit.
No training data is needed. Research software, not for clinical use.
The other method, <b>Diffusion model (DDPM)</b>, samples a bundled conditional 3D diffusion model several
times: the mean of the samples is the network output and their spread the stability map; it needs the MR.
See the <a href="{readme}">documentation</a>.
<p>Methods:</p>
<ul>
<li>Stability-map conditional DIP: "a method for making a deep learning solution more reliable", applied to the
conditional deep image prior for brain [18F]FDG PET denoising (stability map from intermediate network outputs,
blend weighted by the map; default alpha 0.3, the paper's operating point is 0.6).</li>
<li>Conditional DIP: K. Gong, C. Catana, J. Qi, Q. Li, "PET image reconstruction using deep image prior",
IEEE Transactions on Medical Imaging 38(7):1655-1665, 2019.</li>
<li>Deep image prior: D. Ulyanov, A. Vedaldi, V. Lempitsky, "Deep image prior", International Journal of
Computer Vision 128:1867-1888, 2020.</li>
<li>3D diffusion model for PET denoising: B. Yu, S. Ozdemir, Y. Dong, W. Shao, T. Pan, K. Shi, K. Gong,
"Robust whole-body PET image denoising using 3D diffusion models: evaluation across various scanners, tracers,
and dose levels", European Journal of Nuclear Medicine and Molecular Imaging, 2025. Sampled with DDIM:
J. Song, C. Meng, S. Ermon, "Denoising diffusion implicit models", ICLR 2021.</li>
</ul>
""").format(readme=README_URL)
        self.parent.acknowledgementText = _("""
The sample data and the simulator use the BrainWeb anatomical model of subject 04:
B. Aubert-Broche, A. C. Evans, L. Collins, "A new improved version of the realistic digital brain phantom",
NeuroImage 32(1):138-145, 2006. The networks are MONAI's 3D U-Net and DiffusionModelUNet (Project MONAI),
run with PyTorch.
""")

        # Additional initialization step after application startup is complete
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def registerSampleData():
    """Adds the bundled simulated PET/MR case (1/10 dose) to the Sample Data module.

    The files ship with the module, so the "download" is a local copy. The
    checksums are computed from the bundled files, because Sample Data reuses a
    cached file of the same name without a checksum: an updated sample would
    otherwise be shadowed by the copy cached from an older version.
    """
    import SampleData

    files = [RESOURCES_PATH / "SampleData" / f"{SAMPLE_NAME}_{kind}.nrrd" for kind in ("PET", "MR")]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="PETStabilityDenoise",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(RESOURCES_PATH / "Icons" / f"{SAMPLE_NAME}.png"),
        uris=[path.as_uri() for path in files],
        fileNames=[path.name for path in files],
        checksums=[f"SHA256:{_sha256(path)}" for path in files],
        nodeNames=[path.stem for path in files],
    )


#
# PETStabilityDenoiseParameterNode
#


@parameterNodeWrapper
class PETStabilityDenoiseParameterNode:
    """
    The parameters of the module, saved with the scene.

    inputPET - The noisy PET to denoise.
    inputMR - The subject's MR on any grid, registered to the PET; None runs the plain DIP (DDPM needs it).
    method - Key of PETStabilityDenoiseLib.logic.METHODS: "dip" or "ddpm".
    preset - Key of PETStabilityDenoiseLib.presets.PRESETS (DIP only).
    epochs, interval, start - DIP fit schedule; 0 means the preset's value.
    samples, ddimSteps - DDPM draws per window and DDIM steps per draw (DDPMSamplingConfig's defaults).
    device - Where the network runs.
    seed - Seed of the DIP network's initial weights, or of the DDPM's sampling noise.
    alpha - Blend strength (0: the network output).
    stabilityMap - Which map is overlaid on the denoised PET.
    overlayOpacity - Opacity of that overlay.
    """

    inputPET: vtkMRMLScalarVolumeNode
    inputMR: vtkMRMLScalarVolumeNode
    method: str = "dip"
    preset: str = "fast"
    epochs: Annotated[int, WithinRange(0, 10000)] = 0
    interval: Annotated[int, WithinRange(0, 10000)] = 0
    start: Annotated[int, WithinRange(0, 10000)] = 0
    samples: Annotated[int, WithinRange(2, 32)] = 8
    ddimSteps: Annotated[int, WithinRange(1, 100)] = 2
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    alpha: Annotated[float, WithinRange(0, 3)] = 0.3  # PETStabilityDenoiseLib.config.DEFAULT_ALPHA (this file imports the library lazily)
    stabilityMap: Annotated[str, Choice(list(STABILITY_MAP_LABELS))] = "stability"
    overlayOpacity: Annotated[float, WithinRange(0, 1)] = 0.4


def formatDuration(seconds: float) -> str:
    """A duration for people: "45 s", "1 min 20 s", "2 h 5 min"."""
    if not math.isfinite(seconds):
        return _("unknown")
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


#
# PETStabilityDenoiseWidget
#


class PETStabilityDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, Apply/Cancel with progress, and live display controls."""

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._result = None
        self._alphaTimer = None
        # Combo boxes whose items carry the parameter value as item data, so that they can show
        # readable labels; the parameter node wrapper would bind them by item text.
        self._dataComboBoxes = {}

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PETStabilityDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. In the .ui file the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal is connected to each MRML widget's
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PETStabilityDenoiseLogic()

        # Both imports are torch-free, so the panel opens before the dependencies are installed.
        from PETStabilityDenoiseLib.logic import METHODS
        from PETStabilityDenoiseLib.presets import PRESETS

        for name, label in METHODS.items():
            self.ui.methodComboBox.addItem(label, name)
        for name in PRESETS:
            self.ui.presetComboBox.addItem(name, name)
        for name, label in STABILITY_MAP_LABELS.items():
            self.ui.stabilityMapComboBox.addItem(label, name)
        self._dataComboBoxes = {
            "method": self.ui.methodComboBox,
            "preset": self.ui.presetComboBox,
            "stabilityMap": self.ui.stabilityMapComboBox,
        }
        for parameterName, comboBox in self._dataComboBoxes.items():
            comboBox.connect("currentIndexChanged(int)",
                             lambda index, name=parameterName: self._onDataComboBoxChanged(name))

        self._alphaTimer = qt.QTimer()
        self._alphaTimer.setSingleShot(True)
        self._alphaTimer.setInterval(ALPHA_UPDATE_DELAY_MS)
        self._alphaTimer.connect("timeout()", self._applyAlpha)

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons and display controls
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.alphaSliderWidget.connect("valueChanged(double)", self._onAlphaChanged)
        self.ui.overlayOpacitySliderWidget.connect("valueChanged(double)", self._updateOverlay)

        self._setRunning(False)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.logic is not None and self.logic.isRunning:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # The inputs and the result nodes are going away: a run could only fail.
        if self.logic.isRunning:
            self.logic.cancel()
        self._result = None
        # Parameter node will be reset, do not use it anymore
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.
        self.setParameterNode(self.logic.getParameterNode())

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputPET:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputPET = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[PETStabilityDenoiseParameterNode]) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Shows the parameter node's values in the combo boxes it is not bound to, the method's settings, and Apply."""
        if self._parameterNode:
            for parameterName, comboBox in self._dataComboBoxes.items():
                index = comboBox.findData(getattr(self._parameterNode, parameterName))
                if index >= 0:
                    comboBox.currentIndex = index
                else:
                    # A value this version does not offer (a scene saved by another version): use the shown one.
                    setattr(self._parameterNode, parameterName, comboBox.currentData)
        self._updateMethodControls()
        self._checkCanApply()

    def _isDDPM(self) -> bool:
        """True when the chosen method is the diffusion model."""
        return self._parameterNode is not None and self._parameterNode.method == "ddpm"

    def _updateMethodControls(self) -> None:
        """Enables the settings of the chosen method only: preset and schedule for DIP, samples and steps for DDPM."""
        isDDPM = self._isDDPM()
        for widget in (self.ui.presetComboBox, self.ui.epochsSpinBox, self.ui.intervalSpinBox, self.ui.startSpinBox):
            widget.enabled = not isDDPM
        for widget in (self.ui.samplesSpinBox, self.ui.ddimStepsSpinBox):
            widget.enabled = isDDPM

    def _onDataComboBoxChanged(self, parameterName: str) -> None:
        if self._parameterNode is None:
            return
        value = self._dataComboBoxes[parameterName].currentData
        if getattr(self._parameterNode, parameterName) != value:
            setattr(self._parameterNode, parameterName, value)
        if parameterName == "stabilityMap":
            self._updateOverlay()

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
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
        self._checkCanApply()

    def _engineParameters(self) -> dict:
        """The Advanced settings of the chosen method; DIP's 0 (shown as "preset") becomes None: the preset's value."""
        parameters = self._parameterNode
        if self._isDDPM():
            return {
                "samples": parameters.samples,
                "steps": parameters.ddimSteps,
                "device": parameters.device,
                "seed": parameters.seed,
            }
        return {
            "epochs": parameters.epochs or None,
            "interval": parameters.interval or None,
            "start": parameters.start or None,
            "device": parameters.device,
            "seed": parameters.seed,
        }

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

        with slicer.util.tryWithErrorDisplay(_("Failed to start denoising."), waitCursor=True):
            parameters = self._parameterNode
            self.logic.process(
                parameters.inputPET,
                parameters.inputMR,
                method=parameters.method,
                alpha=parameters.alpha,
                preset=parameters.preset,
                wait=False,
                progress=self.onProgress,
                finished=self.onFinished,
                **self._engineParameters(),
            )
            self._setRunning(True)
            self.ui.statusLabel.text = _("Starting the worker...")

    def onProgress(self, report) -> None:
        """Shows one progress report and the time left: the epoch and loss (DIP), or the window (DDPM, no loss)."""
        self.ui.progressBar.maximum = report.epochs
        self.ui.progressBar.value = report.epoch
        if report.loss is None:
            self.ui.statusLabel.text = _("Window {window}/{windows} · ETA {eta}").format(
                window=report.epoch, windows=report.epochs, eta=formatDuration(report.eta_s))
        else:
            self.ui.statusLabel.text = _("Epoch {epoch}/{epochs} · loss {loss:.4g} · ETA {eta}").format(
                epoch=report.epoch, epochs=report.epochs, loss=report.loss, eta=formatDuration(report.eta_s))

    def onFinished(self, handle) -> None:
        """Shows the result of a run that ended, or why it did not give one."""
        self._setRunning(False)
        if handle.state == "succeeded":
            self._result = handle.result
            # The slider may have moved during the run; the result was blended at the starting value.
            if self._result.alpha != self.ui.alphaSliderWidget.value:
                self.logic.setAlpha(self._result, self.ui.alphaSliderWidget.value)
            self.logic.showResult(self._result, overlay=self._parameterNode.stabilityMap,
                                  opacity=self._parameterNode.overlayOpacity)
            self.ui.statusLabel.text = _("Done: {name}.").format(name=self._result.denoisedNode.GetName())
        elif handle.state == "failed":
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Denoising failed: {error}").format(error=handle.error),
                                     detailedText="\n".join(handle.log_tail))
        else:
            self.ui.statusLabel.text = _("Cancelled.")

    def _currentResult(self):
        """The last result, or None once its nodes have been removed from the scene."""
        if self._result is not None and self._result.denoisedNode.GetScene() is None:
            self._result = None
        return self._result

    def _onAlphaChanged(self, value: float) -> None:
        # Re-blending on every slider step would lag behind a drag: wait until it pauses briefly.
        self._alphaTimer.start()

    def _applyAlpha(self) -> None:
        result = self._currentResult()
        if result is not None:
            self.logic.setAlpha(result, self.ui.alphaSliderWidget.value)

    def _updateOverlay(self, value=None) -> None:
        result = self._currentResult()
        if result is not None and self._parameterNode is not None:
            self.logic.setOverlay(result, self._parameterNode.stabilityMap, self.ui.overlayOpacitySliderWidget.value)


#
# PETStabilityDenoiseLogic
#


def findPythonSlicer() -> str:
    """Path of the PythonSlicer executable, which runs the worker with Slicer's Python packages."""
    # Slicer puts its bin folder on PATH; slicer.util's own pip helpers find PythonSlicer the same way.
    path = shutil.which("PythonSlicer")
    if not path:
        raise RuntimeError("The PythonSlicer executable was not found on PATH; it should be in Slicer's bin folder. "
                           "Run the module from inside 3D Slicer.")
    return path


def launchWorker(args: list, cwd: str):
    """Starts the worker with Slicer's launcher settings; stdout and stderr are merged, as text."""
    return slicer.util.launchConsoleProcess(args, useStartupEnvironment=False, cwd=cwd)


def isBatchMode() -> bool:
    """True without a main window or while testing: no dialog can be answered then."""
    return slicer.app.commandOptions().noMainWindow or slicer.app.testingEnabled()


class PETStabilityDenoiseLogic(ScriptedLoadableModuleLogic):
    """The module's logic, usable from the Python console and in batch mode.

    A thin layer over ``PETStabilityDenoiseLib.logic.PETStabilityDenoiseLogic``
    (the engine): it supplies what only Slicer has (PythonSlicer, its process
    launcher, a QTimer to poll the worker on the main thread) and installs the
    Python packages the worker needs.
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)
        self._engine = None
        # Running poll timers; a QTimer without a Python reference would be garbage-collected.
        self._pollTimers = []

    def getParameterNode(self):
        return PETStabilityDenoiseParameterNode(super().getParameterNode())

    @property
    def engine(self):
        """The library logic, created on first use: building it needs PythonSlicer and the worker's packages."""
        if self._engine is None:
            from PETStabilityDenoiseLib.logic import PETStabilityDenoiseLogic as EngineLogic

            self._engine = EngineLogic(scene=None, python_executable=findPythonSlicer(), launcher=launchWorker,
                                       scheduler=self._schedulePolling)
        return self._engine

    def _schedulePolling(self, poll) -> None:
        """Calls ``poll()`` from the main thread every 100 ms until it returns False."""
        timer = qt.QTimer()
        timer.setInterval(POLL_INTERVAL_MS)

        def onTimeout():
            keepPolling = False
            try:
                keepPolling = poll()
            finally:
                # An exception must not leave the timer raising it again every 100 ms.
                if not keepPolling:
                    timer.stop()
                    self._pollTimers.remove(timer)

        timer.connect("timeout()", onTimeout)
        self._pollTimers.append(timer)
        timer.start()

    @property
    def isRunning(self) -> bool:
        return self._engine is not None and self._engine.isRunning

    def process(self, petNode, mrNode=None, method="dip", alpha=0.3, preset="fast", wait=True, progress=None,
                finished=None, **engineParameters):
        """Denoises ``petNode`` (guided by ``mrNode``; None runs the plain DIP) into four new volume nodes.

        ``method`` is "dip" or "ddpm" (the diffusion model, which needs ``mrNode``).
        ``wait=True`` blocks and returns a ``ProcessResult``; ``wait=False`` returns a ``RunHandle`` at once
        and reports through ``progress(report)`` and ``finished(handle)``. ``engineParameters`` are DIP settings
        (epochs, interval, start, device, seed, ...) that override the preset, or DDPM settings (samples, steps,
        start_fraction, model_dir, device, seed, ...); None keeps the default.
        See ``PETStabilityDenoiseLib.logic`` for the details.
        """
        return self.engine.process(petNode, mrNode, method=method, alpha=alpha, preset=preset, wait=wait,
                                   progress=progress, finished=finished, **engineParameters)

    def setAlpha(self, result, alpha: float) -> None:
        """Re-blends the result's denoised volume (and S_norm) at ``alpha``, in place, with no new fit."""
        self.engine.setAlpha(result, alpha)

    def showResult(self, result, overlay: str = "stability", opacity: float = 0.4) -> None:
        """Shows the denoised PET in the slice views with a stability map (``stability`` or ``stability_norm``) over it."""
        self.engine.showResult(result, overlay=overlay, opacity=opacity)

    def setOverlay(self, result, overlay: str, opacity: float) -> None:
        """Changes which stability map (``stability`` or ``stability_norm``) is overlaid, and its opacity."""
        # Setting the slice layers again is cheap: only the composite nodes change.
        self.engine.showResult(result, overlay=overlay, opacity=opacity)

    def cancel(self) -> None:
        """Stops the run under way, if any; nothing is added to the scene."""
        if self._engine is not None:
            self._engine.cancel()

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Makes torch and the packages of Resources/requirements.txt available to the worker.

        torch is installed through the PyTorch extension, the others with pip under a
        constraints file that pins Slicer's own numpy, SimpleITK and vtk (and torch).
        Returns True when everything is installed, False when the user declined.
        In batch or testing mode nothing is installed: RuntimeError names what is
        missing and the commands that install it.
        """
        from packaging.requirements import Requirement

        from PETStabilityDenoiseLib import dependencies

        torchMissing = bool(dependencies.missing_requirements([Requirement(TORCH_REQUIREMENT)]))
        missing = dependencies.missing_requirements(dependencies.read_requirements(REQUIREMENTS_PATH))
        if not torchMissing and not missing:
            return True
        if isBatchMode():
            constraintsPath = dependencies.write_constraints(self._constraintsPath())
            raise RuntimeError(self._installHint(torchMissing, missing, constraintsPath))
        if torchMissing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(_("PETStabilityDenoise needs the PyTorch extension. Install \"PyTorch\" from "
                                     "the Extensions Manager, restart Slicer, and try again.")) from None

        names = ([f"{TORCH_REQUIREMENT} (through the PyTorch extension)"] if torchMissing else [])
        names += [dependencies.requirement_text(requirement) for requirement in missing]
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("Denoising needs these Python packages, which will now be downloaded and installed into "
                  "Slicer's Python. This can take several minutes. Slicer's own numpy, SimpleITK and vtk "
                  "are kept as they are.") + "\n\n" + "\n".join(f"• {name}" for name in names),
                windowTitle=_("PET Stability Denoise: install Python packages")):
            return False

        # torch first: monai requires torch, and pip must find the PyTorch extension's build installed
        # (and pinned by the constraints) rather than fetch a generic one.
        if torchMissing:
            with slicer.util.displayPythonShell():
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                        askConfirmation=False, torchVersionRequirement=TORCH_VERSION_REQUIREMENT) is None:
                    raise RuntimeError(_("PyTorch was not installed."))
        if missing:
            constraintsPath = dependencies.write_constraints(self._constraintsPath())
            self._pipInstall(missing, constraintsPath, dependencies)
        # Let this process import what pip has just added.
        importlib.invalidate_caches()
        return True

    @staticmethod
    def _constraintsPath() -> pathlib.Path:
        return pathlib.Path(slicer.app.temporaryPath) / "PETStabilityDenoise-constraints.txt"

    @staticmethod
    def _pipInstall(missing, constraintsPath, dependencies) -> None:
        """Installs ``missing`` under the constraints, with Slicer's best available installer."""
        try:
            from slicer.packaging import pip_ensure
        except ImportError:
            # Before Slicer 5.11: plain pip, with the output in the Python console.
            with slicer.util.displayPythonShell():
                slicer.util.pip_install(dependencies.pip_arguments(missing, constraintsPath))
        else:
            # Slicer 5.11 and later: progress dialog and a restart prompt when an imported package changed.
            pip_ensure([dependencies.requirement_text(requirement) for requirement in missing],
                       constraints=constraintsPath, prompt_install=False, requester="PETStabilityDenoise")

    @staticmethod
    def _installHint(torchMissing: bool, missing, constraintsPath) -> str:
        from PETStabilityDenoiseLib import dependencies

        parts = []
        if torchMissing:
            parts.append(
                f"PETStabilityDenoise needs PyTorch ({TORCH_REQUIREMENT}). Install the \"PyTorch\" extension from "
                "the Extensions Manager, then run in Slicer's Python console:\n"
                "    import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch("
                f"torchVersionRequirement=\"{TORCH_VERSION_REQUIREMENT}\")")
        if missing:
            parts.append(dependencies.format_install_hint(missing, constraintsPath))
        return "\n\n".join(parts)


#
# PETStabilityDenoiseTest
#


class PETStabilityDenoiseTest(ScriptedLoadableModuleTest):
    """Denoises the bundled sample with the tiny preset and checks the outputs and the live re-blend."""

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_PETStabilityDenoise1()

    def test_PETStabilityDenoise1(self):
        """Sample PET/MR in, four output nodes on the PET's grid out; alpha 0 gives the network output."""
        import numpy as np
        import SampleData

        self.delayDisplay("Starting the test")

        registerSampleData()
        petNode, mrNode = SampleData.downloadSamples(SAMPLE_NAME)
        self.delayDisplay("Loaded the sample PET/MR case")

        logic = PETStabilityDenoiseLogic()
        # In testing mode this installs nothing: it fails with the commands that install what is missing.
        logic.ensureDependencies(askConfirmation=False)
        result = logic.process(petNode, mrNode, preset="tiny", wait=True)
        self.delayDisplay("Denoising finished")

        petMatrix = vtk.vtkMatrix4x4()
        petNode.GetIJKToRASMatrix(petMatrix)
        outputs = [result.denoisedNode, result.networkOutputNode, result.stabilityNode, result.normalizedStabilityNode]
        for node in outputs:
            self.assertIsNotNone(node)
            self.assertIs(node.GetScene(), slicer.mrmlScene)
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix),
                                       slicer.util.arrayFromVTKMatrix(petMatrix), atol=1e-6)
            self.assertEqual(node.GetImageData().GetDimensions(), petNode.GetImageData().GetDimensions())
            self.assertTrue(np.isfinite(slicer.util.arrayFromVolume(node)).all(), node.GetName())

        logic.setAlpha(result, 0)
        networkOutput = slicer.util.arrayFromVolume(result.networkOutputNode)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.denoisedNode), networkOutput)
        logic.setAlpha(result, 3)
        self.assertFalse(np.array_equal(slicer.util.arrayFromVolume(result.denoisedNode), networkOutput))

        self.delayDisplay("Test passed")
