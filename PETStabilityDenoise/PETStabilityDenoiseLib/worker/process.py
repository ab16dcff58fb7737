"""The caller's side of the worker: start it, read its JSON lines, kill its process tree.

No Slicer and no torch here. How the process is started is injectable
(``launcher``), because inside Slicer it must go through
``slicer.util.launchConsoleProcess`` and PythonSlicer, and tests substitute
scripted processes.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import threading
from typing import Callable, Dict, List, Optional, Sequence

from .protocol import parse_event

Launcher = Callable[[List[str], str], subprocess.Popen]

# How long a killed process tree may take to go away; the panel promises 2 s.
KILL_TIMEOUT_S = 2.0


def worker_environment(cwd: str) -> Dict[str, str]:
    """The environment variables a launcher sets for the worker: ``cwd`` first on PYTHONPATH.

    ``python -m`` puts ``cwd`` first on ``sys.path`` only when PYTHONSAFEPATH is unset (Python 3.11+). With it
    set, the worker would import another installed copy of the library, or none.
    """
    return {"PYTHONPATH": os.pathsep.join(filter(None, (cwd, os.environ.get("PYTHONPATH"))))}


def launch_subprocess(args: List[str], cwd: str) -> subprocess.Popen:
    """The default launcher: text stdout with stderr merged, as ``launchConsoleProcess`` gives."""
    return subprocess.Popen(args, cwd=cwd, env={**os.environ, **worker_environment(cwd)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1)


class WorkerProcess:
    """One running worker process.

    A reader thread splits its output into protocol events (a queue that
    :meth:`events` drains without blocking) and log lines (the last
    ``log_lines`` are kept for error messages).
    """

    def __init__(self, args: Sequence[str], *, cwd: str, launcher: Optional[Launcher] = None,
                 log_lines: int = 200) -> None:
        self.args = list(args)
        self._process = (launcher or launch_subprocess)(self.args, cwd)
        self._root = _process_handle(self._process.pid)
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._log: collections.deque = collections.deque(maxlen=log_lines)
        self._reader = threading.Thread(target=self._read, name="PETStabilityDenoise worker output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read(self) -> None:
        stdout = self._process.stdout
        if stdout is None:  # the launchers always give a pipe
            return
        # Slicer's launchConsoleProcess decodes strictly, and a byte that is not UTF-8 would end the reading
        # (and lose the rest of its chunk): nothing would drain the pipe any more. Read the bytes underneath
        # and decode each line leniently instead.
        raw = getattr(stdout, "buffer", None)
        lines = (line.decode("utf-8", errors="replace") for line in raw) if raw is not None else stdout
        for line in lines:
            line = line.rstrip("\r\n")
            event = parse_event(line)
            if event is None:
                self._log.append(line)
            else:
                self._events.put(event)

    def events(self) -> List[dict]:
        """Every event that arrived since the last call, oldest first."""
        drained = []
        while True:
            try:
                drained.append(self._events.get_nowait())
            except queue.Empty:
                return drained

    def finished(self) -> bool:
        """True once the process has exited and all of its output has been read."""
        return self._process.poll() is not None and not self._reader.is_alive()

    @property
    def returncode(self) -> Optional[int]:
        return self._process.poll()

    def log_tail(self, lines: int = 20) -> List[str]:
        """The last ``lines`` lines the worker printed that were not protocol events."""
        return list(self._log)[-lines:]

    def kill(self) -> None:
        """Kills the process and every process it started, and waits for them (up to 2 s). Never raises.

        Killing the launched process alone is not enough: inside Slicer it is a
        launcher whose child is the real Python worker. Without psutil, or where it
        is refused, only the launched process is killed.
        """
        if self._root is not None:
            try:
                self._kill_tree(self._root)
            except Exception:  # noqa: BLE001 - psutil refused (access denied): a cancel must still end the run
                pass
        if self._process.poll() is None:  # without psutil, or where it was refused
            self._process.kill()
        try:
            self._process.wait(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=KILL_TIMEOUT_S)

    @staticmethod
    def _kill_tree(root) -> None:
        import psutil

        # Each process is suspended before its children are listed, so that none can start another between the
        # listing and the kill. psutil.Process checks the creation time it recorded at launch: a PID that another
        # process reused after the worker ended is not touched.
        tree: list = []
        try:
            generation = [root]
            while generation:
                suspended = [process for process in generation if _suspend(process)]
                tree += suspended
                generation = [child for process in suspended for child in _children(process)]
        finally:  # where psutil is refused part of the way, what was suspended is still killed
            for process in tree:
                try:
                    process.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(tree, timeout=KILL_TIMEOUT_S)


def _suspend(process) -> bool:
    """Suspends a psutil process; False if it has already ended."""
    import psutil

    try:
        process.suspend()
        return True
    except psutil.NoSuchProcess:
        return False


def _children(process) -> list:
    """The direct children of a psutil process; none once it has ended."""
    import psutil

    try:
        return process.children()
    except psutil.NoSuchProcess:
        return []


def _process_handle(pid: int):
    """psutil's handle of the launched process, or None without psutil (Slicer does not ship it, and the panel must
    open before it is installed)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
