"""The worker's protocol: one JSON object per line on stdout, and its exit statuses.

Everything else the worker prints (logging, warnings) goes to stderr and is
kept by the caller as log text::

    {"event": "progress", "epoch": 3, "epochs": 100, "loss": 0.01, "elapsed": 2.1, "eta": 68.0, "samples": 0}
    {"event": "progress", "epoch": 12, "epochs": 80, "loss": null, "elapsed": 30.5, "eta": 173.0, "samples": 8}
    {"event": "done", "outputs": {"network_output": "network_output.nrrd", ...}, "run": "run.json"}
    {"event": "error", "kind": "input" | "out_of_memory" | "output" | "internal", "message": "...",
     "traceback": "..." (internal errors only)}

For DDPM "epoch" counts sliding windows and "loss" is null. The progress
fields are :meth:`EpochReport.as_dict`.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

EXIT_DONE = 0
EXIT_INTERNAL_ERROR = 1
EXIT_INPUT_ERROR = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_OUTPUT_ERROR = 4
# The worker's files are written in this format; the Slicer logic reads them back.
WORKER_FORMAT = "nrrd"
# The messages of an "out_of_memory" error.
GPU_MEMORY_ADVICE = ("The GPU ran out of memory: choose 'cpu' as the device, or a smaller preset (DIP) "
                     "or fewer samples (DDPM), or close other programs that use the GPU.")
CPU_MEMORY_ADVICE = ("The computer ran out of memory: choose a smaller preset (DIP) or fewer samples (DDPM), "
                     "crop the PET to the head, or close other programs.")


def emit(event: str, **fields) -> None:
    """Writes one protocol line to stdout, in one write, and flushes, so the caller sees it at once and whole."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def parse_event(line: str) -> Optional[dict]:
    """The protocol object on ``line``, or None when the line is log text."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
