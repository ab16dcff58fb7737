"""The background worker: ``python -m PETStabilityDenoiseLib.worker``.

The Slicer logic (``logic.py``) writes the inputs as NRRD into a temporary
folder and starts this module in a separate process (PythonSlicer inside
Slicer, ``sys.executable`` elsewhere), so that a long DIP fit or DDPM sampling
never blocks the application and a cancel can kill it outright.

It speaks one JSON object per line on stdout; everything else it prints
(logging, warnings) goes to stderr and is kept by the caller as log text:

    {"event": "progress", "epoch": 3, "epochs": 100, "loss": 0.01, "elapsed": 2.1, "eta": 68.0, "samples": 0}
    {"event": "progress", "epoch": 12, "epochs": 80, "loss": null, "elapsed": 30.5, "eta": 173.0, "samples": 8}
    {"event": "done", "outputs": {"network_output": "network_output.nrrd", ...}, "run": "run.json"}
    {"event": "error", "kind": "input" | "out_of_memory" | "internal", "message": "..."}

For DDPM (``--method ddpm``) "epoch" counts sliding windows and "loss" is null.

Exit status: 0 done, 2 bad input, 3 out of (GPU or CPU) memory, 1 anything else.
The output folder is the one ``petstab denoise`` writes (``run_folder.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from .config import DEFAULT_ALPHA, DDPMSamplingConfig, DIPConfig
from .presets import get_preset
from .validation import InputError

log = logging.getLogger("petstab.worker")

METHODS = ("dip", "ddpm")
EXIT_INPUT_ERROR = 2
EXIT_OUT_OF_MEMORY = 3
GPU_MEMORY_ADVICE = ("The GPU ran out of memory: choose 'cpu' as the device, or a smaller preset (DIP) "
                     "or fewer samples (DDPM), or close other programs that use the GPU.")
CPU_MEMORY_ADVICE = ("The computer ran out of memory: choose a smaller preset (DIP) or fewer samples (DDPM), "
                     "crop the PET to the head, or close other programs.")


def emit(event: str, **fields) -> None:
    """Writes one protocol line to stdout and flushes, so the caller sees it at once."""
    print(json.dumps({"event": event, **fields}), file=sys.stdout, flush=True)


def engine_parameters(method: str) -> Tuple[str, ...]:
    """The names ``--parameters`` accepts for ``method``: the fields of its config."""
    return tuple(f.name for f in dataclasses.fields(DDPMSamplingConfig if method == "ddpm" else DIPConfig))


def engine_config(method: str, preset: str, parameters: dict) -> Union[DIPConfig, DDPMSamplingConfig]:
    """The settings the worker runs with: the DIP preset with ``parameters`` applied, or DDPM sampling settings.

    A None value keeps the default; DDPM has no presets. Torch-free, so that the Slicer
    logic checks a run's settings with this before starting anything. Raises
    InputError for a parameter the method does not have, ValueError for a bad value.
    """
    accepted = engine_parameters(method)
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise InputError(f"unknown engine parameter {', '.join(unknown)} for method {method!r}; "
                         f"it accepts {', '.join(accepted)}")
    values = {name: value for name, value in parameters.items() if value is not None}
    try:
        return DDPMSamplingConfig(**values) if method == "ddpm" else get_preset(preset, **values)
    except TypeError as error:  # a value of the wrong type, e.g. a string for a number
        raise InputError(f"bad engine parameter value: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m PETStabilityDenoiseLib.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pet", required=True, type=Path)
    parser.add_argument("--mr", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--method", default="dip", choices=METHODS)
    parser.add_argument("--preset", default="fast", help="DIP preset; ddpm ignores it")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--parameters", default="{}",
                        help="JSON object of engine parameters: DIPConfig fields that override the preset, "
                             "e.g. '{\"epochs\": 50}', or DDPMSamplingConfig fields, e.g. '{\"samples\": 4}'")
    return parser


def _memory_advice(error: BaseException) -> Optional[str]:
    """What to tell the user when ``error`` is running out of GPU or CPU memory; None otherwise."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return GPU_MEMORY_ADVICE
    if isinstance(error, MemoryError) or "DefaultCPUAllocator" in str(error):
        return CPU_MEMORY_ADVICE
    return None


def run(args: argparse.Namespace) -> None:
    from .pipeline import denoise, denoise_ddpm
    from .progress import report_as_dict
    from .run_folder import write_run
    from .volume_io import read_volume

    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        raise InputError(f"--parameters is not valid JSON: {error}") from None
    if not isinstance(parameters, dict):
        raise InputError("--parameters must be a JSON object of engine parameters")
    config = engine_config(args.method, args.preset, parameters)

    pet = read_volume(args.pet)
    mr = read_volume(args.mr) if args.mr else None

    engine = denoise_ddpm if args.method == "ddpm" else denoise
    result = engine(pet, mr, config, alpha=args.alpha,
                    progress=lambda report: emit("progress", **report_as_dict(report)))
    paths = write_run(result, args.out, "nrrd", config=config, pet_path=args.pet, mr_path=args.mr)
    emit("done", outputs={name: path.name for name, path in paths.items() if name != "run"}, run=paths["run"].name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run(args)
        return 0
    except (InputError, ValueError, FileNotFoundError) as error:
        emit("error", kind="input", message=str(error))
        return EXIT_INPUT_ERROR
    except Exception as error:  # noqa: BLE001 - the caller needs every failure as a protocol line
        traceback.print_exc(file=sys.stderr)
        advice = _memory_advice(error)
        if advice:
            emit("error", kind="out_of_memory", message=f"{advice} ({type(error).__name__}: {error})")
            return EXIT_OUT_OF_MEMORY
        emit("error", kind="internal", message=f"{type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
