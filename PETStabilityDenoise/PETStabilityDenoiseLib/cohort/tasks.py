"""One subject of a cohort: the task a scheduler runs, and its outcome, a row of the summary.

:func:`run_subject` is the whole unit of work. It runs the same run-into-a-folder path as
``petstab denoise``, in this process or in a Ray worker, and turns any failure into an outcome:
one failing subject never stops the others.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError, OutputError
from ..volumes.run_folder import read_record
from .table import CohortRow

#: The summary's columns, in order: the fields of :class:`SubjectOutcome`.
SUMMARY_COLUMNS = ("subject", "status", "error", "method", "device", "wall_s", "stability_mean", "output")
#: ``done``: run now; ``skipped``: a complete earlier run with the same settings was kept; ``failed``;
#: ``not run``: the batch was interrupted first.
STATUSES = ("done", "skipped", "failed", "not run")


@dataclass(frozen=True)
class SubjectTask:
    """A row of the cohort, with where its run folder goes and the output format."""

    row: CohortRow
    out_dir: Path
    fmt: str


@dataclass(frozen=True)
class SubjectOutcome:
    """How one subject ended: a row of summary.csv.

    ``details`` (a traceback, for internal errors) goes to the log, not the summary.
    """

    subject: str
    status: str
    error: str = ""
    method: str = ""
    device: str = ""
    wall_s: Optional[float] = None
    stability_mean: Optional[float] = None
    output: str = ""
    details: str = ""

    def summary_row(self) -> dict:
        row = {name: getattr(self, name) for name in SUMMARY_COLUMNS}
        row["wall_s"] = "" if self.wall_s is None else f"{self.wall_s:.1f}"
        row["stability_mean"] = "" if self.stability_mean is None else f"{self.stability_mean:.6g}"
        return row


def run_subject(task: SubjectTask) -> SubjectOutcome:
    """Denoises one subject into its run folder; any failure is returned as a ``failed`` outcome."""
    from ..engine.run import denoise_into_folder  # here: the driver of a Ray cohort needs no torch

    row = task.row
    started = time.perf_counter()
    try:
        denoise_into_folder(row.pet, row.mr, task.out_dir, row.config, alpha=row.alpha, fmt=task.fmt,
                            progress=None, overwrite=True, suv=row.suv)
        record = read_record(task.out_dir, "device", "stability_mean")
    except (InputError, OutputError, FileNotFoundError) as error:
        return failed(task, str(error))
    except Exception as error:  # noqa: BLE001 - a bug in one subject must not stop the cohort; keep its traceback
        return failed(task, f"internal error: {type(error).__name__}: {error}", details=traceback.format_exc())
    return SubjectOutcome(row.subject, "done", method=row.method, device=record["device"],
                          wall_s=time.perf_counter() - started, stability_mean=record["stability_mean"],
                          output=str(task.out_dir))


def failed(task: SubjectTask, error: str, details: str = "") -> SubjectOutcome:
    return SubjectOutcome(task.row.subject, "failed", error=error, method=task.row.method, output="",
                          details=details)


def not_run(task: SubjectTask) -> SubjectOutcome:
    return SubjectOutcome(task.row.subject, "not run", method=task.row.method)


def earlier_outcome(task: SubjectTask) -> Optional[SubjectOutcome]:
    """A ``skipped`` outcome when the run folder holds a complete run of this task; None when it must run.

    Complete: run.json is there and names every output, which the atomic run folder guarantees exist.
    Of this task: the same PET, MR, method, settings (but the thread count, which is the scheduler's),
    alpha, format and SUV conversion. A folder with other settings is run again and replaced as a whole.
    """
    try:
        record = read_record(task.out_dir, "pet", "mr", "method", "config", "alpha", "format", "suv", "device",
                             "stability_mean", "outputs")
    except (InputError, OSError):
        return None
    row = task.row
    wanted = {"pet": str(Path(row.pet).resolve()), "mr": str(Path(row.mr).resolve()) if row.mr else None,
              "method": row.method, "config": _comparable(dataclasses.asdict(row.config)), "alpha": row.alpha,
              "format": task.fmt, "suv": row.suv}
    found = {name: record[name] for name in wanted}
    found["config"] = _comparable(record["config"])
    found["suv"] = (record["suv"] or {}).get("type")
    if found != wanted or not all((task.out_dir / name).exists() for name in record["outputs"].values()):
        return None
    return SubjectOutcome(row.subject, "skipped", method=row.method, device=record["device"],
                          stability_mean=record["stability_mean"], output=str(task.out_dir))


def _comparable(config: dict) -> dict:
    """A config as run.json stores it (JSON: tuples become lists), without the thread count."""
    return {name: value for name, value in json.loads(json.dumps(config)).items() if name != "threads"}
