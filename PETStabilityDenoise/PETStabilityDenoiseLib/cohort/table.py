"""The cohort file: one row per subject, read and checked before any subject runs.

Columns: ``subject`` and ``pet`` (required), ``mr`` (optional: empty runs the plain DIP), and optionally
``method``, ``preset``, ``alpha``, ``suv`` or any engine setting of the row's method (``epochs``, ``samples``, ...),
which override the command line's for that row; an empty cell keeps the command line's. Relative paths are
relative to the cohort file's folder.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import InputError
from ..settings import SUV_TYPES, EngineConfig, engine_config, engine_parameters, method_alpha, parse_parameter

REQUIRED_COLUMNS = ("subject", "pet")
# Per-row overrides that are not engine settings.
RUN_COLUMNS = ("mr", "method", "preset", "alpha", "suv")
# A subject names its run folder: no path separators, nothing hidden, no clash with the summary.
SUBJECT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
SUMMARY_FILE = "summary.csv"


@dataclass(frozen=True)
class CohortRow:
    """One subject to denoise, with its validated settings.

    Args:
        subject: the run folder's name.
        pet: the noisy PET (a volume file or a DICOM series folder).
        mr: the subject's MR, or None for the plain DIP.
        method: a key of :data:`METHODS`.
        config: the engine's validated config.
        alpha: the blend strength.
        suv: None, or a key of :data:`SUV_TYPES` to denoise a DICOM PET in SUV.
    """

    subject: str
    pet: Path
    mr: Optional[Path]
    method: str
    config: EngineConfig
    alpha: float
    suv: Optional[str] = None


def read_cohort(path: Path, *, method: str, preset: str, alpha: Optional[float], parameters: Dict[str, object],
                suv: Optional[str] = None) -> List[CohortRow]:
    """The rows of the cohort file ``path``, each with the command line's settings and its own overrides.

    Args:
        path: the CSV file.
        method: the command line's method, for rows that give none.
        preset: the command line's DIP preset, for rows that give none.
        alpha: the command line's blend strength, for rows that give none (None: each row's method's default).
        suv: the command line's SUV conversion (None: none), for rows that give none.
        parameters: the command line's engine settings (None keeps the default), for both methods:
            a row keeps those its method accepts.

    Raises:
        InputError: a missing file or column, a duplicate or unusable subject name, or a bad setting,
            naming the line of the file.
    """
    path = Path(path).resolve()  # the rows' paths become absolute: a Ray worker may run in another folder
    if not path.is_file():
        raise InputError(f"the cohort file {path} does not exist; give a CSV with columns subject, pet and mr")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or ()]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise InputError(f"the cohort file {path} lacks the column(s) {', '.join(missing)}; "
                             f"its header is: {', '.join(columns) or '(empty)'}")
        lines = [(number, {key.strip(): (value or "").strip() for key, value in row.items() if key})
                 for number, row in enumerate(reader, start=2)]
    if not lines:
        raise InputError(f"the cohort file {path} has no subjects")
    rows, seen = [], set()
    for number, cells in lines:
        try:
            row = _row(cells, path.parent, method, preset, alpha, parameters, suv)
        except InputError as error:
            raise InputError(f"{path}, line {number}: {error}") from None
        if row.subject in seen:
            raise InputError(f"{path}, line {number}: subject {row.subject!r} is listed twice")
        seen.add(row.subject)
        rows.append(row)
    return rows


def _row(cells: Dict[str, str], folder: Path, method: str, preset: str, alpha: Optional[float],
         parameters: Dict[str, object], suv: Optional[str]) -> CohortRow:
    subject = cells["subject"]
    if not SUBJECT_NAME.fullmatch(subject) or subject == SUMMARY_FILE:
        raise InputError(f"subject {subject!r} cannot name a folder: use letters, digits, '.', '_' and '-', "
                         "not starting with '.'")
    if not cells["pet"]:
        raise InputError(f"subject {subject} has no PET")
    method = cells.get("method") or method
    try:
        row_alpha = float(cells["alpha"]) if cells.get("alpha") else alpha
    except ValueError:
        raise InputError(f"alpha must be a number; got {cells['alpha']!r}") from None
    row_alpha = method_alpha(row_alpha, method)
    suv = cells.get("suv") or suv
    if suv is not None and suv not in SUV_TYPES:
        raise InputError(f"unknown suv {suv!r}; choose one of {', '.join(SUV_TYPES)}, or leave it empty")
    overrides = {name: parse_parameter(method, name, text) for name, text in cells.items()
                 if name not in REQUIRED_COLUMNS + RUN_COLUMNS}
    # The command line's settings of the other method do not apply to this row.
    settings = {name: value for name, value in parameters.items() if name in engine_parameters(method)}
    settings.update({name: value for name, value in overrides.items() if value is not None})
    config = engine_config(method, cells.get("preset") or preset, settings)
    mr = _path(cells.get("mr", ""), folder)
    if method == "ddpm" and mr is None:
        raise InputError(f"subject {subject} has no MR, which the diffusion model needs")
    return CohortRow(subject, _path(cells["pet"], folder) or Path(), mr, method, config, row_alpha, suv)


def _path(text: str, folder: Path) -> Optional[Path]:
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else folder / path
