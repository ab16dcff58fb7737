"""Where the subjects of a cohort run: one after another in this process, or as Ray tasks.

Ray (``pip install ".[cohort]"``) either starts a local runtime sized by ``workers`` or joins an existing
cluster at ``address``. Each subject is one task; it reserves ``cpus_per_task`` CPUs, and a GPU when it
asks for CUDA. A scheduler reports each outcome as it arrives, and on Ctrl+C stops its tasks before
re-raising, so that no process is left writing a run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence, Tuple

from .. import LIBRARY_PARENT
from ..errors import InputError
from .table import CohortRow
from .tasks import SubjectOutcome, SubjectTask, failed, run_subject

log = logging.getLogger(__name__)

OutcomeCallback = Callable[[SubjectOutcome], None]
Scheduler = Callable[[Sequence[SubjectTask], OutcomeCallback], None]
RAY_INSTALL_HINT = ('Ray is not installed: install it with pip install "petstabilitydenoise[cohort]" '
                    '(or pip install ".[cohort]" in a checkout), or run the subjects one after another with '
                    "--workers 1")
# How long to wait for cancelled Ray tasks to end before their run folders are cleaned up.
CANCEL_WAIT_S = 30.0
# A DIP fit of a brain with the full preset peaked at 2.2 GB (README); with a margin.
MEMORY_PER_SUBJECT_GIB = 3.0


@dataclass(frozen=True)
class RaySettings:
    """How the cohort uses Ray.

    Args:
        workers: subjects run at once on a local runtime (ignored with ``address``).
        address: an existing cluster's address (``ray://host:10001`` or ``host:6379``); None starts a local one.
        cpus_per_task: CPUs each subject reserves, and its torch threads unless the settings give them.
        gpus_per_task: GPUs each subject reserves when its device is ``cuda``.
    """

    workers: int = 1
    address: Optional[str] = None
    cpus_per_task: int = 1
    gpus_per_task: float = 1.0


def choose_scheduler(rows: Sequence[CohortRow], *, workers: Optional[int] = None, address: Optional[str] = None,
                     cpus_per_task: Optional[int] = None, gpus_per_task: float = 1.0) -> Tuple[Scheduler, str]:
    """The scheduler for a cohort, and how it will run, for the log.

    Args:
        rows: the cohort (their devices decide the GPU needs).
        workers: subjects at once on this machine; None sizes it (:func:`local_workers`); 1 without
            ``address`` runs them one after another in this process, without Ray.
        address: an existing Ray cluster; None starts a local runtime when ``workers`` > 1.
        cpus_per_task: CPUs (and torch threads) per subject; None: the cores divided among the workers
            locally, 1 on a cluster.
        gpus_per_task: GPUs per subject that asks for CUDA.

    Raises:
        InputError: a count below 1 (or negative GPUs), or CUDA asked for on a machine without it.
    """
    for name, value in (("workers", workers), ("cpus-per-task", cpus_per_task)):
        if value is not None and value < 1:
            raise InputError(f"--{name} must be at least 1; got {value}")
    if gpus_per_task < 0:
        raise InputError(f"--gpus-per-task must be >= 0; got {gpus_per_task}")
    cuda = any(row.config.device == "cuda" for row in rows)
    if address:
        settings = RaySettings(address=address, cpus_per_task=cpus_per_task or 1, gpus_per_task=gpus_per_task)
        return partial(run_on_ray, settings=settings), f"on the Ray cluster at {address}"
    if cuda:
        from ..engine.device import resolve_device

        resolve_device("cuda")  # refuses CUDA on a machine without it before any work
    workers = workers or local_workers(cuda)
    if workers == 1:
        return run_serially, "one after another in this process"
    settings = RaySettings(workers=workers, cpus_per_task=cpus_per_task or max(1, (os.cpu_count() or 1) // workers),
                           gpus_per_task=gpus_per_task)
    return (partial(run_on_ray, settings=settings),
            f"on a local Ray runtime: {workers} workers, {settings.cpus_per_task} CPU(s) each")


def local_workers(cuda: bool) -> int:
    """Subjects to run at once on this machine: one per GPU with CUDA; else one per CPU, as memory allows."""
    if cuda:
        import torch

        return max(1, torch.cuda.device_count())
    import psutil

    by_memory = int(psutil.virtual_memory().available / 2**30 // MEMORY_PER_SUBJECT_GIB)
    return max(1, min(os.cpu_count() or 1, by_memory))


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_serially(tasks: Sequence[SubjectTask], on_outcome: OutcomeCallback) -> None:
    """Runs the subjects one after another in this process."""
    for task in tasks:
        on_outcome(run_subject(task))


def run_on_ray(tasks: Sequence[SubjectTask], on_outcome: OutcomeCallback, settings: RaySettings) -> None:
    """Runs each subject as a Ray task and reports the outcomes in the order they finish.

    Raises:
        InputError: Ray is not installed, or the cluster cannot be reached.
        KeyboardInterrupt: after the running tasks were cancelled and have ended (or ``CANCEL_WAIT_S`` passed);
            any other error while the tasks run is handled the same way.
    """
    if not ray_available():
        raise InputError(RAY_INSTALL_HINT)
    import ray

    _start_ray(ray, settings)
    try:
        remote = ray.remote(run_subject)
        pending = {}
        for task in tasks:
            config = task.row.config
            if config.threads is None:  # one torch thread per reserved CPU, so tasks do not oversubscribe
                task = dataclasses.replace(task, row=dataclasses.replace(
                    task.row, config=dataclasses.replace(config, threads=settings.cpus_per_task)))
            gpus = settings.gpus_per_task if config.device == "cuda" else 0
            pending[remote.options(num_cpus=settings.cpus_per_task, num_gpus=gpus).remote(task)] = task
        try:
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    task = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the worker died: killed, out of memory, ...
                        outcome = failed(task, f"the Ray task failed: {error}")
                    on_outcome(outcome)
        except BaseException:  # Ctrl+C, or a failure while reporting: no task may go on writing
            for ref in pending:
                ray.cancel(ref, force=True)
            if pending:
                ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
            raise
    finally:
        ray.shutdown()


def _start_ray(ray, settings: RaySettings) -> None:
    # Ray prints its own banners and warnings; the cohort's log says what matters.
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if settings.address:
            log.info("Joining the Ray cluster at %s", settings.address)
            ray.init(address=settings.address, **options)
        else:
            # Local workers import this library from where the driver does, installed or not. They inherit the
            # environment of the runtime started here, which is cheaper than a Ray runtime_env for each worker.
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIBRARY_PARENT), saved]))
            try:
                ray.init(num_cpus=settings.workers * settings.cpus_per_task, **options)
            finally:
                if saved is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = saved
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray runtime"
        raise InputError(f"could not start or join {where}: {error}") from None
