"""The worker's temporary folders: one per run, holding copies of the input PET and MR.

A run removes its folder when it ends, however it ends. A Slicer that crashed or was
killed during a run cannot, and the copies of a patient's images would stay in the
system's temporary folder, which a restart does not empty on Windows. So each folder's
name carries the process that made it, and the next run removes the folders whose
process has ended.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

PREFIX = "PETStabilityDenoise-"
# "PETStabilityDenoise-<pid of the process that made it>-<mkdtemp's random part>"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[^-]+$")


def make_temp_folder(temp_root: Optional[str] = None) -> Path:
    """A new, empty folder for one run, named after this process; ``temp_root`` None: the system's temporary folder."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=temp_root))


def remove_abandoned_temp_folders(temp_root: Optional[str] = None) -> List[Path]:
    """Removes the run folders in ``temp_root`` whose process has ended; returns those removed.

    A folder of this process is kept (another logic in it may be running), and so is
    one whose process cannot be checked: on Windows without psutil, nothing is removed.
    Never raises: a folder that cannot be removed stays, with a warning.
    """
    root = Path(temp_root or tempfile.gettempdir())
    removed: List[Path] = []
    try:
        matches = [(path, _NAME.match(path.name)) for path in root.iterdir()]
    except OSError:
        return removed
    owners = {path: int(match.group(1)) for path, match in matches if match and path.is_dir()}
    for folder, pid in owners.items():
        if pid == os.getpid() or _process_exists(pid) is not False:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            log.warning("Could not remove %s, left by a run that did not end (it holds copies of input volumes): "
                        "delete it by hand", folder)
        else:
            removed.append(folder)
    if removed:
        log.info("Removed %d temporary folder(s) left by runs that did not end: %s", len(removed),
                 ", ".join(str(folder) for folder in removed))
    return removed


def _process_exists(pid: int) -> Optional[bool]:
    """Whether a process ``pid`` runs; None where that cannot be told."""
    try:
        import psutil
    except ImportError:  # Slicer does not ship psutil
        return _posix_process_exists(pid)
    return bool(psutil.pid_exists(pid))


def _posix_process_exists(pid: int) -> Optional[bool]:
    if os.name == "nt":  # there, os.kill(pid, 0) would not test the process but stop it
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True
