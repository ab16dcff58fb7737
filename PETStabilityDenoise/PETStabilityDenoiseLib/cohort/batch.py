"""A cohort run: every subject into ``DIR/<subject>/``, and ``DIR/summary.csv``, resumable and interruptible.

- A subject whose run folder already holds a complete run with the same settings is skipped; the others
  (new, failed before, or with other settings) run.
- A failing subject is a ``failed`` row of the summary; the others go on.
- summary.csv is rewritten (atomically) after each subject, so it is complete at every moment.
- Ctrl+C (or a failure of the scheduler itself) stops the tasks, removes what they had half-written, writes
  the summary with the subjects left ``not run``, and re-raises: finished run folders stay whole and no
  partial folder remains.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from tqdm import tqdm

from ..errors import InputError, OutputError
from ..volumes.files import write_atomically
from ..volumes.run_folder import OUT, clean_up_interrupted
from .schedulers import Scheduler
from .table import SUMMARY_FILE, CohortRow
from .tasks import SUMMARY_COLUMNS, SubjectOutcome, SubjectTask, earlier_outcome, not_run

log = logging.getLogger(__name__)

def run_cohort(rows: Sequence[CohortRow], out_dir: Path, fmt: str, scheduler: Scheduler, *,
               show_progress: bool = True) -> List[SubjectOutcome]:
    """Runs the subjects of ``rows`` that need it with ``scheduler``; returns every subject's outcome.

    Args:
        rows: the cohort, already validated (:func:`table.read_cohort`).
        out_dir: the cohort folder; each subject's run folder is ``out_dir/<subject>``.
        fmt: the output format of every run folder.
        scheduler: runs the tasks and reports each outcome (:mod:`schedulers`).
        show_progress: a progress bar of subjects done, failed and left, with an ETA, on stderr.

    Raises:
        InputError: ``out_dir`` is a file, or cannot be created.
        KeyboardInterrupt: after the clean-up and the summary, when the user interrupted the run (and so
            for any error of the scheduler).
    """
    out_dir = Path(out_dir).resolve()  # the summary's output paths hold from any folder
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{OUT} {out_dir} is a file, not a folder; choose a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {OUT} {out_dir}: {error.strerror or error}") from None
    tasks = [SubjectTask(row, out_dir / row.subject, fmt) for row in rows]
    for task in tasks:
        clean_up_interrupted(task.out_dir)  # what a killed earlier batch may have left

    outcomes: Dict[str, SubjectOutcome] = {}
    to_run = []
    for task in tasks:
        earlier = earlier_outcome(task)
        if earlier is None:
            to_run.append(task)
        else:
            outcomes[task.row.subject] = earlier
    if outcomes:
        log.info("Skipping %d subject(s) whose run folder is complete with these settings", len(outcomes))
    summary = out_dir / SUMMARY_FILE

    def summary_rows() -> List[SubjectOutcome]:
        return [outcomes.get(task.row.subject) or not_run(task) for task in tasks]

    write_summary(summary, summary_rows())
    bar = tqdm(total=len(to_run), unit="subject", desc="Cohort", file=sys.stderr, disable=not show_progress)
    counts = {"done": 0, "failed": 0}

    def on_outcome(outcome: SubjectOutcome) -> None:
        outcomes[outcome.subject] = outcome
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status == "failed":
            log.error("%s failed: %s%s", outcome.subject, outcome.error,
                      f"\n{outcome.details}" if outcome.details else "")
        write_summary(summary, summary_rows())
        bar.set_postfix(done=counts["done"], failed=counts["failed"], left=len(to_run) - bar.n - 1, refresh=False)
        bar.update()

    try:
        scheduler(to_run, on_outcome)
    except BaseException:  # Ctrl+C, or a failure of the scheduler itself: the stopped subjects leave nothing
        for task in to_run:
            if task.row.subject not in outcomes:
                clean_up_interrupted(task.out_dir)
        with contextlib.suppress(OutputError):  # the error being raised says more than a second one
            write_summary(summary, summary_rows())
        raise
    finally:
        bar.close()
    return summary_rows()


def write_summary(path: Path, outcomes: Sequence[SubjectOutcome]) -> None:
    """Writes summary.csv whole (:func:`write_atomically`)."""
    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(outcome.summary_row() for outcome in outcomes)

    try:
        write_atomically(path, write)
    except OSError as error:
        raise OutputError(f"could not write {path}: {error.strerror or error}. Is the disk full?") from None
