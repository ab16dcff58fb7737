"""What the running 3D Slicer application provides, as small adapters for the module file.

PythonSlicer and its process launcher, batch mode, Slicer's pip, the PyTorch
extension and the Sample Data module. These need a running Slicer (``slicer.app``),
so they import it where they are used; none of them touches Qt widgets.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from packaging.requirements import Requirement

from .. import DATA_DIR
from ..worker.process import worker_environment
from .install import TORCH_VERSION_REQUIREMENT, pip_arguments, requirement_text

SAMPLE_NAME = "PETStabilitySample"


def find_python_slicer() -> str:
    """Path of the PythonSlicer executable, which runs the worker with Slicer's Python packages."""
    # Slicer puts its bin folder on PATH; slicer.util's own pip helpers find PythonSlicer the same way.
    path = shutil.which("PythonSlicer")
    if not path:
        raise RuntimeError("The PythonSlicer executable was not found on PATH; it should be in Slicer's bin folder. "
                           "Run the module from inside 3D Slicer.")
    return path


def launch_worker(args: List[str], cwd: str):
    """Starts the worker with Slicer's launcher settings; stdout and stderr are merged, as text."""
    import slicer

    return slicer.util.launchConsoleProcess(args, useStartupEnvironment=False,
                                            updateEnvironment=worker_environment(cwd), cwd=cwd)


def is_batch_mode() -> bool:
    """True without a main window or while testing: no dialog can be answered then."""
    import slicer

    return bool(slicer.app.commandOptions().noMainWindow or slicer.app.testingEnabled())


def constraints_path() -> Path:
    """Where the pip constraints file goes: Slicer's temporary folder."""
    import slicer

    return Path(slicer.app.temporaryPath) / "PETStabilityDenoise-constraints.txt"


def torch_installer() -> Optional[Callable[[], bool]]:
    """Installs torch through the PyTorch extension; None when that extension is not installed."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        return None

    def install_torch() -> bool:
        import slicer

        with slicer.util.displayPythonShell():
            return PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=TORCH_VERSION_REQUIREMENT) is not None
    return install_torch


def pip_install(missing: Sequence[Requirement], constraints: Path) -> None:
    """Installs ``missing`` under the constraints, with Slicer's best available installer."""
    import slicer

    try:
        from slicer.packaging import pip_ensure
    except ImportError:  # before Slicer 5.11: plain pip, with the output in the Python console
        with slicer.util.displayPythonShell():
            slicer.util.pip_install(pip_arguments(missing, constraints))
    else:  # Slicer 5.11 and later: a progress dialog, and a restart prompt when an imported package changed
        pip_ensure([requirement_text(requirement) for requirement in missing],
                   constraints=constraints, prompt_install=False, requester="PETStabilityDenoise")


def sample_files() -> List[Path]:
    """The bundled simulated PET/MR case (1/10 dose), in the library's data: PET first, then MR."""
    return [DATA_DIR / "sample" / f"{SAMPLE_NAME}_{kind}.nrrd" for kind in ("PET", "MR")]


def register_sample_data(resources: Path) -> None:
    """Adds the bundled simulated PET/MR case to the Sample Data module; its thumbnail is in ``resources``.

    The files ship with the module, so the "download" is a local copy. The
    checksums are computed from the bundled files, because Sample Data reuses a
    cached file of the same name without a checksum: an updated sample would
    otherwise be shadowed by the copy cached from an older version.
    """
    import SampleData

    files = sample_files()
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="PETStabilityDenoise",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(resources / "Icons" / f"{SAMPLE_NAME}.png"),
        uris=[path.as_uri() for path in files],
        fileNames=[path.name for path in files],
        checksums=[f"SHA256:{hashlib.sha256(path.read_bytes()).hexdigest()}" for path in files],
        nodeNames=[path.stem for path in files],
    )


class TimerScheduler:
    """Calls a run's ``poll()`` from Slicer's main thread every ``interval_ms`` until it returns False.

    The library logic's ``scheduler`` inside Slicer: nodes must be created on the main thread.
    """

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        # Running timers; a QTimer without a Python reference would be garbage-collected.
        self._timers: list = []

    def __call__(self, poll: Callable[[], bool]) -> None:
        import qt

        timer = qt.QTimer()
        timer.setInterval(self.interval_ms)

        def on_timeout() -> None:
            keep_polling = False
            try:
                keep_polling = poll()
            finally:
                # An exception must not leave the timer raising it again at every tick.
                if not keep_polling:
                    timer.stop()
                    self._timers.remove(timer)

        timer.connect("timeout()", on_timeout)
        self._timers.append(timer)
        timer.start()
