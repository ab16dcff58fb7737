"""Progress reporters for the DIP fit, the DDPM sampling and OSEM: a terminal bar, or JSON lines for programs.

A DIP report counts epochs and carries the loss; a DDPM report counts sliding windows and an OSEM report
iterations, and their loss is None (``null`` in JSON).
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Callable, Iterator, Optional

from tqdm import tqdm

from ..settings import PROGRESS_STYLES, EpochReport


@contextlib.contextmanager
def make_reporter(kind: str, label: Optional[tuple] = None) -> Iterator[Optional[Callable[[EpochReport], None]]]:
    """Yields a progress callback for any engine: ``bar`` (tqdm on stderr), ``jsonl`` (stdout) or ``none``.

    ``label`` is the bar's (description, unit); by default ("DIP", "epoch"), or ("DDPM", "window") for reports
    without a loss.
    """
    if kind == "none":
        yield None
    elif kind == "jsonl":
        def emit(report: EpochReport) -> None:
            print(json.dumps(report.as_dict()), file=sys.stdout, flush=True)
        yield emit
    elif kind == "bar":
        bar = None

        def update(report: EpochReport) -> None:
            nonlocal bar
            if bar is None:
                desc, unit = label or (("DDPM", "window") if report.loss is None else ("DIP", "epoch"))
                bar = tqdm(total=report.epochs, desc=desc, unit=unit, file=sys.stderr)
            if report.loss is None:
                bar.set_postfix(samples=report.samples, refresh=False)
            else:
                bar.set_postfix(loss=f"{report.loss:.4g}", samples=report.samples, refresh=False)
            bar.update(report.epoch - bar.n)
        try:
            yield update
        finally:
            if bar is not None:
                bar.close()
    else:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS_STYLES)}; got {kind!r}")
