"""Progress reporters for the DIP fit: a terminal bar, or JSON lines for programs."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Callable, Iterator, Optional

from tqdm import tqdm

from .config import EpochReport


def report_as_dict(report: EpochReport) -> dict:
    """The fields of one progress line, shared by ``--progress jsonl`` and the Slicer worker."""
    return {"epoch": report.epoch, "epochs": report.epochs, "loss": report.loss,
            "elapsed": round(report.elapsed_s, 3), "eta": round(report.eta_s, 3), "samples": report.samples}


def report_as_json(report: EpochReport) -> str:
    """One line of the ``--progress jsonl`` protocol."""
    return json.dumps(report_as_dict(report))


@contextlib.contextmanager
def make_reporter(kind: str) -> Iterator[Optional[Callable[[EpochReport], None]]]:
    """Yields a callback for ``fit_dip``: ``bar`` (tqdm on stderr), ``jsonl`` (stdout) or ``none``."""
    if kind == "none":
        yield None
    elif kind == "jsonl":
        def emit(report: EpochReport) -> None:
            print(report_as_json(report), file=sys.stdout, flush=True)
        yield emit
    elif kind == "bar":
        bar = None

        def update(report: EpochReport) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=report.epochs, desc="DIP", unit="epoch", file=sys.stderr)
            bar.set_postfix(loss=f"{report.loss:.4g}", samples=report.samples, refresh=False)
            bar.update(report.epoch - bar.n)
        try:
            yield update
        finally:
            if bar is not None:
                bar.close()
    else:
        raise ValueError(f"progress must be 'bar', 'jsonl' or 'none'; got {kind!r}")
