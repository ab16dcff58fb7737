"""The output folder of one denoising run: fixed file names plus ``run.json``.

Scripts and the Slicer worker rely on these names:
``denoised``, ``network_output``, ``stability``, ``stability_norm`` (each
``.<fmt>``) and ``run.json`` (parameters, versions, device, timings, loss per
epoch, number of stability samples). ``engine/run.py`` fills such a folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import InputError

RUN_FILE = "run.json"
VOLUME_NAMES = ("denoised", "network_output", "stability", "stability_norm")


def strict_json(value):
    """``value`` with every non-finite float replaced by None, recursively, so that ``json.dumps`` writes strict
    JSON (a rejected DIP step's loss may be NaN or infinite)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_record(run_dir: Path, record: dict) -> Path:
    """Writes ``record`` as the folder's run.json; returns its path."""
    path = Path(run_dir) / RUN_FILE
    path.write_text(json.dumps(strict_json(record), indent=2, allow_nan=False))
    return path


def read_record(run_dir: Path) -> dict:
    """The run.json of a folder that ``petstab denoise`` wrote."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{path} not found: --run must be a folder written by 'petstab denoise'")
    return json.loads(path.read_text())
