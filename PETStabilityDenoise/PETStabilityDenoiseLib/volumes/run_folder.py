"""The output folder of one denoising run: fixed file names plus ``run.json``, written all at once.

Scripts and the Slicer worker rely on these names:
``denoised``, ``network_output``, ``stability``, ``stability_norm`` (each
``.<fmt>``, or a DICOM series folder of that name) and ``run.json`` (parameters, versions, device, timings, loss per
epoch, number of stability samples, the SHA-256 of the inputs).
``engine/run.py`` fills such a folder. A reconstruction (``engine/reconstruct.py``) adds ``osem.<fmt>``, the OSEM
image of its sinogram.

A run never writes into its destination directly: :func:`staged_folder` gives
a hidden folder beside it, and only when everything there is written and read
back does the folder take the destination's place, replacing an earlier run as
a whole. A failure or an interrupt leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError, setting
from ..settings import FILE_FORMATS

log = logging.getLogger(__name__)
# How messages name the run folder, for the Python API and petstab alike.
OUT = setting("out_dir", "--out")

RUN_FILE = "run.json"
VOLUME_NAMES = ("denoised", "network_output", "stability", "stability_norm")
OSEM_VOLUME = "osem"
# Everything a run folder may hold (a DICOM output is a series folder named after its volume): a folder with
# anything else is not replaced.
RUN_FOLDER_FILES = frozenset({RUN_FILE, *VOLUME_NAMES} | {f"{name}.{fmt}" for name in (*VOLUME_NAMES, OSEM_VOLUME)
                                                         for fmt in FILE_FORMATS})


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


def image_sha256(image: sitk.Image) -> str:
    """The SHA-256 of an image as processed: its float32 voxels and its geometry, whatever file it came from."""
    digest = hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=np.float32).tobytes())
    digest.update(json.dumps([image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()]).encode())
    return digest.hexdigest()


def write_record(run_dir: Path, record: dict) -> Path:
    """Writes ``record`` as the folder's run.json and reads it back; returns its path."""
    path = Path(run_dir) / RUN_FILE
    text = json.dumps(strict_json(record), indent=2, allow_nan=False)
    try:
        path.write_text(text)
        if path.read_text() != text:
            raise OSError("run.json reads back differently")
    except OSError as error:
        raise OutputError(f"could not write {RUN_FILE}: {error}") from None
    return path


def read_record(run_dir: Path, *keys: str) -> dict:
    """The run.json of a run folder; InputError when there is none, or it lacks one of ``keys``.

    Its messages name no command-line flag: Slicer's Load run folder shows them too.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{Path(run_dir)} is not a run folder: it holds no {RUN_FILE}. Choose a folder that "
                         "'petstab denoise', 'petstab reconstruct' or 'petstab batch' wrote")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path} cannot be read ({error}): the run folder is damaged; make the run again") from None
    missing = [key for key in keys if key not in record]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: it was edited, or written by an older version; "
                         "make the run again")
    return record


def recorded_pet_path(run_dir: Path, record: dict) -> Path:
    """The PET a run processed, from run.json's ``pet``: an absolute path, or a file of the run folder itself."""
    path = Path(record["pet"])
    return path if path.is_absolute() else Path(run_dir) / path


def check_output_folder(out_dir: Path, *, overwrite: bool = True) -> bool:
    """Refuses an ``out_dir`` that cannot take a run folder; True when it holds an earlier run to be replaced.

    A folder that holds anything but a run's files is never replaced, so that nothing of the user's is deleted.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{OUT} {out} is a file, not a folder; choose a folder")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{OUT} {out} is below {ancestor}, which is a file, not a folder; choose another folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    entries = sorted(entry.name for entry in out.iterdir())
    foreign = [name for name in entries if name not in RUN_FOLDER_FILES]
    if foreign or RUN_FILE not in entries:
        shown = ", ".join((foreign or entries)[:5])
        raise InputError(f"{OUT} {out} holds files that are not a PETStabilityDenoise run ({shown}); "
                         "choose a new or empty folder, so that nothing in it is replaced")
    if not overwrite:
        raise InputError(f"{OUT} {out} already holds a run; choose another folder, or let it be replaced as a whole "
                         "(overwrite True; petstab without --no-overwrite)")
    return True


@contextlib.contextmanager
def staged_folder(out_dir: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yields an empty folder beside ``out_dir``; when the block ends without an error, it becomes ``out_dir``.

    Checks ``out_dir`` first (:func:`check_output_folder`) and makes the staging
    folder at once, so that an unwritable destination is refused before any work.
    """
    out = Path(out_dir)
    replaces = check_output_folder(out, overwrite=overwrite)
    stage = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
    except OSError as error:
        raise InputError(f"cannot write beside {OUT} {out}: {error.strerror or error}; "
                         "choose a folder you can write to") from None
    try:
        yield stage
        _move_into_place(stage, out)
    except OutputError as error:
        shutil.rmtree(stage, ignore_errors=True)
        raise OutputError(f"{error}. Is the disk full, or the folder read-only? {out} was left as it was") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if replaces:
        log.info("Replaced the earlier run in %s as a whole", out)


def _move_into_place(stage: Path, out: Path) -> None:
    """Renames ``stage`` to ``out``; an existing ``out`` is set aside first and put back if that fails."""
    if not out.exists():
        os.rename(stage, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def clean_up_interrupted(out_dir: Path) -> None:
    """Leaves ``out_dir`` as a killed run found it: removes its staging folders, and puts back a set-aside old run.

    For runs whose process was killed (a cancelled cohort task), so that the clean-up of :func:`staged_folder`
    never ran. Call it only when no process is writing ``out_dir`` any more.
    """
    out = Path(out_dir)
    for leftover in sorted(out.parent.glob(f".{out.name}.partial-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, out)  # killed between the two renames of _move_into_place: the old run is whole
