"""The Slicer logic: denoise PET volume nodes in a background worker. The console API.

Inside the Slicer application (its Python console, a batch script), use the module's logic,
``PETStabilityDenoise.PETStabilityDenoiseLogic()``: it wraps this class with PythonSlicer, Slicer's
process launcher and a QTimer that polls on the main thread, where nodes must be created. This class
on its own, as below, polls a ``wait=False`` run from a background thread: for any Python that has
Slicer's MRML without the application (the ``slicer-core`` wheel), or pass ``scheduler=``::

    from PETStabilityDenoiseLib.slicer.logic import PETStabilityDenoiseLogic
    logic = PETStabilityDenoiseLogic()              # uses slicer.mrmlScene
    result = logic.process(petNode, mrNode, method="dip", alpha=0.3, preset="fast",
                           wait=True, progress=print, epochs=80)
    result.denoisedNode, result.networkOutputNode, result.stabilityNode, result.normalizedStabilityNode
    logic.setAlpha(result, 0.4)                      # re-blends result.denoisedNode in place
    handle = logic.process(petNode, mrNode, wait=False, finished=lambda h: print(h.state))
    logic.cancel()                                   # stops a run started with wait=False
    result = logic.process(petNode, mrNode, method="ddpm", samples=8)   # the diffusion model; needs the MR
    result = logic.loadRunFolder("/data/run1")       # a run made elsewhere (petstab denoise, batch, a GPU machine)

How a run goes: the inputs are copied (never modified) into a temporary
folder as NRRD; ``python -m PETStabilityDenoiseLib.worker`` fits the DIP (or
samples the diffusion model) in its own process and reports JSON lines; when
it is done, its four volumes become new nodes with the PET's exact geometry,
named after the PET and placed under the PET's study. Nothing is added to the scene unless the run succeeds.

This module needs no Qt and no torch. Inside Slicer, the module file passes a
PythonSlicer launcher and a QTimer-based ``scheduler``; elsewhere the worker
runs with ``sys.executable`` and a background thread polls it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, cast

import numpy as np
import SimpleITK as sitk
import slicer

from .. import LIBRARY_PARENT
from ..engine.blend import blend
from ..errors import InputError, OutputError, RunCancelled, WorkerFailed
from ..settings import (
    DEFAULT_METHOD,
    DEFAULT_OVERLAY,
    DEFAULT_PRESET,
    METHODS,
    OVERLAYS,
    EpochReport,
    check_alpha,
    engine_config,
    engine_parameters,
    method_alpha,
)
from ..volumes.geometry import grids_match
from ..volumes.io import non_ascii_path_advice, read_volume, write_volume
from ..volumes.pet_input import read_pet
from ..volumes.run_folder import VOLUME_NAMES, image_sha256, read_record, recorded_pet_path
from ..volumes.validation import same_volume_warning, validate_volume
from ..worker.process import Launcher, WorkerProcess
from ..worker.protocol import CPU_MEMORY_ADVICE
from ..worker.temp_folders import make_temp_folder, remove_abandoned_temp_folders
from .display import set_slice_layers, show_as_pet, show_as_stability
from .mrml_volumes import add_volume_from_image, add_volume_like, node_to_image, volume_array

log = logging.getLogger(__name__)

# Method -> the engine parameters process() accepts for it: the fields of DIPConfig or DDPMSamplingConfig.
METHOD_PARAMETERS = {method: engine_parameters(method) for method in METHODS}
# Output node names: "<PET name> <suffix>".
NODE_NAME_SUFFIXES = {"denoised": "denoised", "network_output": "network output",
                      "stability": "stability", "stability_norm": "normalized stability"}
POLL_INTERVAL_S = 0.1

Scheduler = Callable[[Callable[[], bool]], None]


@dataclass
class ProcessResult:
    """The output nodes of one run, and what :meth:`PETStabilityDenoiseLogic.setAlpha` needs."""

    denoisedNode: Any  # vtkMRMLScalarVolumeNode
    networkOutputNode: Any
    stabilityNode: Any
    normalizedStabilityNode: Any
    alpha: float
    stabilityMean: float
    runInfo: dict
    # A copy of the PET as it was processed: re-blending must not depend on later edits of the input node.
    petArray: np.ndarray = field(repr=False)


def thread_scheduler(poll: Callable[[], bool]) -> None:
    """Calls ``poll`` from a background thread until it returns False (use outside Slicer's GUI)."""
    def loop() -> None:
        while poll():
            time.sleep(POLL_INTERVAL_S)
    threading.Thread(target=loop, name="PETStabilityDenoise poll", daemon=True).start()


class RunHandle:
    """One run of the worker: its state, and its result or error once it ends.

    ``state`` is ``"running"``, then ``"succeeded"``, ``"failed"`` or ``"cancelled"``. ``warnings``
    holds what the user should know about the inputs before the run ends (they are also logged).
    """

    def __init__(self, worker: WorkerProcess, temp_dir: Path, import_result: Callable[[Path], ProcessResult],
                 progress: Optional[Callable[[EpochReport], None]],
                 finished: Optional[Callable[["RunHandle"], None]]) -> None:
        self.state = "running"
        self.warnings: List[str] = []
        self.result: Optional[ProcessResult] = None
        self.error: Optional[BaseException] = None
        self._worker = worker
        self._temp_dir = temp_dir
        self._import_result = import_result
        self._progress = progress
        self._finished = finished
        self._error_event: Optional[dict] = None
        self._lock = threading.RLock()
        self._ended = threading.Event()

    @property
    def log_tail(self) -> list:
        """The worker's last log lines, for error details."""
        return self._worker.log_tail()

    def poll(self) -> bool:
        """Handles what the worker reported since the last call; True while the run goes on.

        Whatever goes wrong while handling the reports (a malformed event, a failing
        progress callback) ends the run as failed, with the worker killed: it must
        never leave a run that stays "running" with nobody polling it.
        """
        with self._lock:
            if self.state != "running":
                return False
            try:
                # Asked before draining: once the worker has finished, the queue holds its every event, the last
                # line (an error's message) included; asked after, that line could arrive unread in between.
                finished = self._worker.finished()
                for event in self._worker.events():
                    self._handle_event(event)
            except Exception as error:  # noqa: BLE001 - any failure here ends the run, reported as its error
                self._worker.kill()
                self.error, self.state = error, "failed"
            else:
                if not finished:
                    return True
                try:
                    if self._worker.returncode == 0 and self._error_event is None:
                        self.result = self._import_result(self._temp_dir / "output")
                        self.state = "succeeded"
                    else:
                        self.error, self.state = self._failure(), "failed"
                except Exception as error:  # noqa: BLE001 - any import failure ends the run as failed
                    self.error, self.state = error, "failed"
            self._end()
        self._notify_finished()
        return False

    def _handle_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress" and self._progress is not None:
            self._progress(EpochReport.from_dict(event))
        elif kind == "error":
            self._error_event = event

    def _failure(self) -> BaseException:
        tail = self._worker.log_tail()
        if self._error_event is not None:
            message, kind = self._error_event.get("message", ""), self._error_event.get("kind", "internal")
            if kind == "input":
                return InputError(message)
            if kind in ("out_of_memory", "output"):
                return WorkerFailed(message, tail, kind)
            details = self._error_event.get("traceback", "").splitlines()
            return WorkerFailed(f"The denoising worker failed: {message}", [*tail, *details], kind)
        last_lines = "\n".join(tail) or "(no output)"
        code = self._worker.returncode
        # A negative code is a signal (POSIX): the kernel's out-of-memory killer sends SIGKILL and leaves no message.
        killed = (f" It was killed by signal {-code}; if the system stopped it, the computer most likely ran out of "
                  f"memory. {CPU_MEMORY_ADVICE}") if code is not None and code < 0 else ""
        return WorkerFailed(f"The denoising worker stopped (exit code {code}) without a result.{killed} "
                            f"Its last output:\n{last_lines}", tail)

    def cancel(self) -> None:
        """Kills the worker's process tree and removes its files; nothing is added to the scene."""
        with self._lock:
            if self.state != "running":
                return
            self._worker.kill()
            self.state, self.error = "cancelled", RunCancelled("The run was cancelled")
            self._end()
        self._notify_finished()

    def _end(self) -> None:
        shutil.rmtree(self._temp_dir, ignore_errors=True)
        if self._temp_dir.exists():  # on Windows, a file another program holds open (a virus scanner) stays
            log.warning("Could not remove the temporary folder %s, which holds copies of the input volumes: "
                        "delete it by hand", self._temp_dir)
        self._ended.set()

    def _notify_finished(self) -> None:
        if self._finished is not None:
            self._finished(self)

    def wait(self, timeout: Optional[float] = None) -> ProcessResult:
        """Blocks until the run ends (polling it here); returns the result or raises its error.

        Ctrl+C while waiting cancels the run.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.poll():
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"the run did not end within {timeout} s; it is still running")
                self._ended.wait(POLL_INTERVAL_S)
        except KeyboardInterrupt:
            self.cancel()
            raise
        if self.error is not None:
            raise self.error
        return cast(ProcessResult, self.result)  # the run succeeded: it has a result


def _write_input_copy(image, path: Path) -> Path:
    """Writes the worker's copy of an input volume, uncompressed (the panel waits for it); OutputError, saying what
    to do, when it cannot."""
    try:
        return write_volume(image, path, compress=False)
    except OutputError as error:
        tmp_advice = (" For the temporary folder, set the TMP environment variable to one, then start Slicer again."
                      if non_ascii_path_advice(path) else "")
        raise OutputError(f"could not copy the input volumes into the temporary folder {path.parent}: {error} "
                          f"Is the disk full?{tmp_advice}") from None


class PETStabilityDenoiseLogic:
    """Runs the denoising on volume nodes of an MRML scene, in a background worker.

    Args:
        scene: the scene to add outputs to; None uses ``slicer.mrmlScene`` at call time.
        python_executable: the Python that runs the worker (PythonSlicer inside
            Slicer); default ``sys.executable``.
        launcher: starts the worker process, ``launcher(args, cwd) -> Popen``;
            default ``subprocess.Popen`` with stderr merged into stdout.
        scheduler: arranges for ``poll()`` to be called repeatedly until it
            returns False, for runs with ``wait=False``; default a background
            thread. Inside Slicer pass a QTimer-based one, so that nodes are
            created on the main thread.
        temp_root: where the temporary run folders go; default the system's.
    """

    def __init__(self, scene=None, *, python_executable: Optional[str] = None, launcher: Optional[Launcher] = None,
                 scheduler: Optional[Scheduler] = None, temp_root: Optional[str] = None) -> None:
        self._scene = scene
        self.python_executable = python_executable or sys.executable
        self.launcher = launcher
        self.scheduler = scheduler or thread_scheduler
        self.temp_root = temp_root
        self._handle: Optional[RunHandle] = None

    @property
    def scene(self):
        scene = self._scene if self._scene is not None else slicer.mrmlScene
        if scene is None:
            raise RuntimeError("no MRML scene: pass scene=... or set slicer.mrmlScene")
        return scene

    @property
    def isRunning(self) -> bool:
        return self._handle is not None and self._handle.state == "running"

    def process(self, petNode, mrNode=None, method: str = DEFAULT_METHOD, alpha: Optional[float] = None,
                preset: str = DEFAULT_PRESET,
                wait: bool = True, progress: Optional[Callable[[EpochReport], None]] = None,
                finished: Optional[Callable[[RunHandle], None]] = None, **engine_parameters):
        """Denoises ``petNode``, guided by ``mrNode`` (None: plain DIP from noise; the diffusion model needs it).

        Args:
            method: a key of :data:`METHODS`: ``dip`` fits the conditional DIP, ``ddpm``
                samples the diffusion model.
            alpha: blend strength of the denoised output (0 = network output; None: the method's
                default, :data:`DEFAULT_ALPHAS`); change it later with :meth:`setAlpha`, without a new run.
            preset: a key of :data:`presets.PRESETS` (``full``, ``fast`` or ``tiny``); DIP only.
            wait: True blocks and returns a :class:`ProcessResult` (errors raise);
                False returns a :class:`RunHandle` at once and reports through the callbacks.
            progress: called with a :class:`EpochReport` once per epoch (DIP) or per
                sliding window (DDPM, whose ``loss`` is None).
            finished: called once with the :class:`RunHandle` when the run ends, however it ends.
            engine_parameters: the settings of :data:`METHOD_PARAMETERS` for the method. DIP:
                ``epochs``, ``interval``, ``start``, ``device``, ``seed``, ... override the preset.
                DDPM: ``samples``, ``steps``, ``start_fraction``, ``model_dir`` (default: the
                bundled model), ``device``, ``seed``, ... None keeps the default.
        """
        if self.isRunning:
            raise RuntimeError("a denoising run is already under way: cancel it or wait for it to finish")
        alpha = method_alpha(alpha, method)
        overrides = {name: value for name, value in engine_parameters.items() if value is not None}
        if overrides.get("model_dir"):
            # The worker runs in another folder: a relative path must mean the same there.
            overrides["model_dir"] = str(Path(overrides["model_dir"]).resolve())
        engine_config(method, preset, overrides)  # every setting is checked before any work starts

        pet_image = node_to_image(petNode, "PET")
        validate_volume(pet_image, "PET")
        mr_image, warnings = None, []
        if mrNode is not None:
            mr_image = node_to_image(mrNode, "MR")
            validate_volume(mr_image, "MR", activity=False)
            same_volume = same_volume_warning(pet_image, mr_image, same_source=mrNode is petNode)
            if same_volume:
                log.warning(same_volume)
                warnings.append(same_volume)
        pet_array = np.array(volume_array(petNode, "PET"), dtype=np.float32)

        remove_abandoned_temp_folders(self.temp_root)
        temp_dir = make_temp_folder(self.temp_root)
        try:
            args = self._worker_arguments(temp_dir, pet_image, mr_image, method, preset, alpha, overrides)
            worker = WorkerProcess(args, cwd=str(LIBRARY_PARENT), launcher=self.launcher)
        except OSError as error:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise WorkerFailed(f"Could not start the denoising worker with {self.python_executable}: {error}") from error
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise

        def import_result(output_dir: Path) -> ProcessResult:
            return self._import_result(output_dir, petNode, pet_array)

        handle = RunHandle(worker, temp_dir, import_result, progress, finished)
        handle.warnings = warnings
        self._handle = handle
        if wait:
            return handle.wait()
        self.scheduler(handle.poll)
        return handle

    def _worker_arguments(self, temp_dir: Path, pet_image, mr_image, method: str, preset: str, alpha: float,
                          overrides: dict) -> list:
        pet_path = _write_input_copy(pet_image, temp_dir / "pet.nrrd")
        args = [self.python_executable, "-m", "PETStabilityDenoiseLib.worker", "--pet", str(pet_path),
                "--out", str(temp_dir / "output"), "--method", method, "--preset", preset,
                "--alpha", repr(float(alpha)), "--parameters", json.dumps(overrides)]
        if mr_image is not None:
            args += ["--mr", str(_write_input_copy(mr_image, temp_dir / "mr.nrrd"))]
        return args

    def loadRunFolder(self, runFolder, petNode=None) -> ProcessResult:
        """Loads a finished run folder as the four result nodes, as if the run had been made here.

        For runs made elsewhere: ``petstab denoise``, a subject of ``petstab batch``, or a GPU machine. The live
        re-blend (:meth:`setAlpha`) and :meth:`showResult` then work on it.

        Args:
            runFolder: a folder holding run.json and the four volumes.
            petNode: the PET the run processed, already in the scene; the outputs take its geometry. It must
                re-blend to the run's denoised volume (in SUV if the run converted to SUV). None: the PET is
                read from the path run.json records, checked by its SHA-256, and added to the scene.

        Raises:
            InputError: not a run folder, a folder without the four volumes, or a PET that is missing, changed
                or not the one the run processed.
        """
        folder = Path(runFolder)
        missing = [name for name in VOLUME_NAMES if name not in read_record(folder, "outputs")["outputs"]]
        if missing:
            raise InputError(f"{folder} holds no {', '.join(missing)}: it is not a denoising run (an OSEM "
                             "reconstruction is one volume: load it with Add Data)")
        run_info = read_record(folder, "outputs", "alpha", "stability_mean")
        images = self._read_run_volumes(folder, run_info)
        added_pet = petNode is None
        if added_pet:
            petNode = self._add_recorded_pet(folder, run_info)
        try:
            pet_image = node_to_image(petNode, "PET")
            if not grids_match(pet_image, images["denoised"], tol=1e-3):
                raise InputError(f"the PET '{petNode.GetName()}' is not on this run's grid; select the PET the "
                                 "run processed")
            pet_array = np.array(volume_array(petNode, "PET"), dtype=np.float32)
            arrays = {name: sitk.GetArrayFromImage(image) for name, image in images.items()}
            reblended, _ = blend(pet_array, arrays["network_output"], arrays["stability"], float(run_info["alpha"]),
                                 stability_mean=float(run_info["stability_mean"]))
            # Loose enough for DICOM outputs' integer storage; a PET in other units or of another dose is far off.
            if not np.allclose(reblended, arrays["denoised"], rtol=1e-3,
                               atol=1e-3 * float(np.abs(arrays["denoised"]).max() or 1.0)):
                raise InputError(f"the PET '{petNode.GetName()}' is not the image this run processed: blending "
                                 "it does not give the run's denoised volume. Select the run's PET (in SUV if the "
                                 "run converted it)")
            return self._add_result_nodes(petNode, pet_array, arrays, run_info)
        except BaseException:
            if added_pet:
                self.scene.RemoveNode(petNode)
            raise

    def _add_recorded_pet(self, folder: Path, run_info: dict):
        """The PET that run.json records, read as the run read it and checked by its SHA-256, as a new node."""
        path = recorded_pet_path(folder, run_info) if run_info.get("pet") else Path()
        if not run_info.get("pet") or not path.exists():
            raise InputError(f"the run's PET ({run_info.get('pet')}) is not on this machine: load the PET "
                             "and select it, then load the run folder again")
        pet = read_pet(path, (run_info.get("suv") or {}).get("type"))
        if image_sha256(pet.image) != run_info.get("pet_sha256"):
            raise InputError(f"the PET at {path} is not the image this run processed (its SHA-256 differs from "
                             "run.json's): it was changed since. Select the run's PET instead")
        node = add_volume_from_image(self.scene, pet.image, path.name.split(".")[0] or "PET")
        show_as_pet(self.scene, node, sitk.GetArrayViewFromImage(pet.image))
        return node

    @staticmethod
    def _read_run_volumes(output_dir: Path, run_info: dict) -> dict:
        """The four volumes of a run folder; an output may also be a DICOM series folder."""
        return {name: read_volume(Path(output_dir) / run_info["outputs"][name]) for name in VOLUME_NAMES}

    def _import_result(self, output_dir: Path, petNode, pet_array: np.ndarray) -> ProcessResult:
        """Reads the worker's volumes into new nodes; adds all four or none."""
        if petNode.GetScene() is not self.scene:
            raise InputError("the PET volume was removed from the scene during the run; its result was discarded")
        run_info = read_record(output_dir, "outputs", "alpha", "stability_mean")
        arrays = {name: sitk.GetArrayFromImage(image)
                  for name, image in self._read_run_volumes(output_dir, run_info).items()}
        for name, array in arrays.items():
            if array.shape != pet_array.shape:
                raise WorkerFailed(f"the worker's {name} has shape {array.shape}, not the PET's {pet_array.shape}")
        return self._add_result_nodes(petNode, pet_array, arrays, run_info)

    def _add_result_nodes(self, petNode, pet_array: np.ndarray, arrays: dict, run_info: dict) -> ProcessResult:
        """The four volumes as new nodes on the PET's grid, shown; all four or none."""
        scene = self.scene
        nodes = {}
        try:
            for name in VOLUME_NAMES:
                nodes[name] = add_volume_like(scene, petNode, arrays[name],
                                              f"{petNode.GetName()} {NODE_NAME_SUFFIXES[name]}")
            self._place_in_subject_hierarchy(scene, petNode, nodes.values())
            show_as_pet(scene, nodes["denoised"], arrays["denoised"])
            show_as_pet(scene, nodes["network_output"], arrays["network_output"])
            show_as_stability(scene, nodes["stability"], arrays["stability"], normalized=False)
            show_as_stability(scene, nodes["stability_norm"], arrays["stability_norm"], normalized=True)
        except BaseException:
            for node in nodes.values():
                scene.RemoveNode(node)
            raise
        return ProcessResult(nodes["denoised"], nodes["network_output"], nodes["stability"], nodes["stability_norm"],
                             alpha=float(run_info["alpha"]), stabilityMean=float(run_info["stability_mean"]),
                             runInfo=run_info, petArray=pet_array)

    @staticmethod
    def _place_in_subject_hierarchy(scene, petNode, nodes) -> None:
        """Puts the outputs beside the PET (under its study), when the PET is in the subject hierarchy."""
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if hierarchy is None:
            return
        pet_item = hierarchy.GetItemByDataNode(petNode)
        if not pet_item:
            return
        parent = hierarchy.GetItemParent(pet_item)
        for node in nodes:
            item = hierarchy.GetItemByDataNode(node)
            if item:
                hierarchy.SetItemParent(item, parent)
            else:
                hierarchy.CreateItem(parent, node)

    def setAlpha(self, result: ProcessResult, alpha: float) -> None:
        """Re-blends ``result.denoisedNode`` (and its normalized stability) at ``alpha``, in place.

        No new run: the blend of METHOD.md §1 is recomputed from the stored
        network output and stability map, straight into the nodes' voxel memory.
        """
        check_alpha(alpha)
        nodes = (result.denoisedNode, result.networkOutputNode, result.stabilityNode, result.normalizedStabilityNode)
        if any(node.GetScene() is None for node in nodes):
            raise InputError("the result's volumes were removed from the scene, so there is nothing to re-blend; "
                             "run the denoising again")
        denoised = slicer.util.arrayFromVolume(result.denoisedNode)
        stability_norm = slicer.util.arrayFromVolume(result.normalizedStabilityNode)
        blend(result.petArray, slicer.util.arrayFromVolume(result.networkOutputNode),
              slicer.util.arrayFromVolume(result.stabilityNode), alpha, stability_mean=result.stabilityMean,
              out=denoised, stability_norm_out=stability_norm)
        slicer.util.arrayFromVolumeModified(result.denoisedNode)
        slicer.util.arrayFromVolumeModified(result.normalizedStabilityNode)
        result.alpha = float(alpha)

    def showResult(self, result: ProcessResult, overlay: str = DEFAULT_OVERLAY, opacity: float = 0.4) -> None:
        """Shows the denoised PET in every slice view with a stability map over it.

        ``overlay`` is ``"stability"`` (S) or ``"stability_norm"`` (S_norm, the blend weight).
        """
        if overlay not in OVERLAYS:
            raise ValueError(f"overlay must be one of {', '.join(OVERLAYS)}; got {overlay!r}")
        foreground = result.stabilityNode if overlay == "stability" else result.normalizedStabilityNode
        set_slice_layers(self.scene, result.denoisedNode, foreground, opacity)

    def cancel(self) -> None:
        """Stops the run under way, if any: the worker's process tree is killed and nothing is added."""
        if self._handle is not None:
            self._handle.cancel()
