"""The background worker: ``python -m PETStabilityDenoiseLib.worker``.

The Slicer logic (``slicer/logic.py``) writes the inputs as NRRD into a
temporary folder and starts this module in a separate process (PythonSlicer
inside Slicer, ``sys.executable`` elsewhere), so that a long DIP fit or DDPM
sampling never blocks the application and a cancel can kill it outright. It
reports in the protocol of ``worker/protocol.py``.

Exit status: 0 done, 2 bad input, 3 out of (GPU or CPU) memory, 4 outputs not written, 1 anything else.
The output folder is the one ``petstab denoise`` writes (``volumes/run_folder.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from ..errors import InputError, OutputError
from ..settings import DEFAULT_METHOD, DEFAULT_PRESET, METHODS, PRESET_NAMES, engine_config, method_alpha
from .protocol import (
    CPU_MEMORY_ADVICE,
    EXIT_DONE,
    EXIT_INPUT_ERROR,
    EXIT_INTERNAL_ERROR,
    EXIT_OUT_OF_MEMORY,
    EXIT_OUTPUT_ERROR,
    GPU_MEMORY_ADVICE,
    WORKER_FORMAT,
    emit,
)

log = logging.getLogger("petstab.worker")



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m PETStabilityDenoiseLib.worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pet", required=True, type=Path)
    parser.add_argument("--mr", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=tuple(METHODS))
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES, help="DIP preset; ddpm ignores it")
    parser.add_argument("--alpha", type=float, help="blend strength; default: the method's")
    parser.add_argument("--parameters", default="{}",
                        help="JSON object of engine parameters: DIPConfig fields that override the preset, "
                             "e.g. '{\"epochs\": 50}', or DDPMSamplingConfig fields, e.g. '{\"samples\": 4}'")
    return parser


def _memory_advice(error: BaseException) -> Optional[str]:
    """What to tell the user when ``error`` is running out of GPU or CPU memory; None otherwise."""
    torch = sys.modules.get("torch")  # not imported here: a failing torch import may be the error itself
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return GPU_MEMORY_ADVICE
    if isinstance(error, MemoryError) or "DefaultCPUAllocator" in str(error):
        return CPU_MEMORY_ADVICE
    return None


def run(args: argparse.Namespace) -> None:
    from ..engine.run import denoise_into_folder

    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        raise InputError(f"--parameters is not valid JSON: {error}") from None
    if not isinstance(parameters, dict):
        raise InputError("--parameters must be a JSON object of engine parameters")
    config = engine_config(args.method, args.preset, parameters)
    paths = denoise_into_folder(args.pet, args.mr, args.out, config, alpha=method_alpha(args.alpha, args.method),
                                fmt=WORKER_FORMAT,
                                progress=lambda report: emit("progress", **report.as_dict()))
    emit("done", outputs={name: path.name for name, path in paths.items() if name != "run"}, run=paths["run"].name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run(args)
        return EXIT_DONE
    except (InputError, FileNotFoundError) as error:
        emit("error", kind="input", message=str(error))
        return EXIT_INPUT_ERROR
    except OutputError as error:  # the logic's temporary folder: a full disk, most likely
        emit("error", kind="output", message=str(error))
        return EXIT_OUTPUT_ERROR
    except Exception as error:  # noqa: BLE001 - the caller needs every failure as a protocol line
        traceback.print_exc(file=sys.stderr)
        advice = _memory_advice(error)
        if advice:
            emit("error", kind="out_of_memory", message=f"{advice} ({type(error).__name__}: {error})")
            return EXIT_OUT_OF_MEMORY
        emit("error", kind="internal", message=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
