"""Denoise one PET volume with PETStabilityDenoise in headless 3D Slicer, and save the four output volumes.

Run it with Slicer's own executable, so that the extension's module and its Python packages are available::

    Slicer --no-splash --no-main-window --python-script scripts/slicer_batch_denoise.py -- \\
        --pet pet.nrrd --mr mr.nrrd --out results/ [--preset fast] [--alpha 0.3] [--format nrrd]

With the extension installed, that is all. From a source checkout, make the module importable by adding
``--additional-module-paths PETStabilityDenoise`` before ``--python-script``.

It writes ``denoised``, ``network_output``, ``stability`` and ``stability_norm`` (``.nrrd`` or ``.nii.gz``)
into the output folder, on the PET's grid. The exit status is 0 on success, 2 for bad arguments or inputs,
and 1 when the denoising (or anything else) fails. Slicer must always exit, or a headless run never ends,
so every error leads to ``sys.exit``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

PRESETS = ("fast", "full", "tiny")
FORMATS = ("nrrd", "nii.gz")
DEVICES = ("auto", "cpu", "cuda")
#: Output file stem -> attribute of the logic's ProcessResult.
OUTPUTS = {
    "denoised": "denoisedNode",
    "network_output": "networkOutputNode",
    "stability": "stabilityNode",
    "stability_norm": "normalizedStabilityNode",
}
EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slicer_batch_denoise.py",
        description="Denoise a PET volume with stability-map conditional DIP in headless Slicer.",
        epilog="Run as: Slicer --no-splash --no-main-window --python-script slicer_batch_denoise.py -- ARGS",
    )
    parser.add_argument("--pet", required=True, type=Path, help="noisy PET volume (NRRD, NIfTI, MHA, ...)")
    parser.add_argument("--mr", required=True, type=Path, help="the subject's MR, registered to the PET (any grid)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--preset", default="fast", choices=PRESETS, help="DIP schedule (default: fast)")
    parser.add_argument("--alpha", default=0.3, type=_non_negative_float,
                        help="blend strength; 0 gives the network output (default: 0.3)")
    parser.add_argument("--format", default="nrrd", choices=FORMATS, help="output file format (default: nrrd)")
    advanced = parser.add_argument_group("DIP settings (override the preset)")
    advanced.add_argument("--epochs", type=_positive_int, help="epochs N")
    advanced.add_argument("--interval", type=_positive_int, help="stability sampling interval M")
    advanced.add_argument("--start", type=_non_negative_int, help="first sampled epoch m")
    advanced.add_argument("--device", choices=DEVICES, help="default: auto (CUDA if available)")
    advanced.add_argument("--seed", type=int, help="random seed of the network's initialisation")
    return parser


def script_arguments(argv: Sequence[str]) -> list[str]:
    """The script's own arguments: those after the first ``--``, or all but the script name when none."""
    argv = list(argv)
    return argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parses the script's arguments (exits with status 2 and a usage message when they are wrong)."""
    return build_parser().parse_args(list(argv))


def engine_parameters(args: argparse.Namespace) -> dict:
    """The DIP settings given on the command line; the preset supplies the others."""
    names = ("epochs", "interval", "start", "device", "seed")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def print_progress(report) -> None:
    print(
        f"epoch {report.epoch}/{report.epochs}  loss {report.loss:.5g}  "
        f"elapsed {report.elapsed_s:.0f} s  remaining {report.eta_s:.0f} s",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    """Loads the inputs, denoises, saves the outputs; returns the exit status."""
    import slicer

    for name, path in (("PET", args.pet), ("MR", args.mr)):
        if not path.is_file():
            print(f"ERROR: the {name} file {path} does not exist.", file=sys.stderr)
            return EXIT_INPUT
    try:
        # The module first: Slicer puts its folder, which holds the library, on sys.path.
        from PETStabilityDenoise import PETStabilityDenoiseLogic
        from PETStabilityDenoiseLib.logic import WorkerFailed
        from PETStabilityDenoiseLib.validation import InputError
    except ImportError as error:
        print(f"ERROR: cannot import the PETStabilityDenoise module ({error}). Install the extension, or add "
              "--additional-module-paths <checkout>/PETStabilityDenoise to the Slicer command line.", file=sys.stderr)
        return EXIT_FAILED

    try:
        pet = slicer.util.loadVolume(str(args.pet))
        mr = slicer.util.loadVolume(str(args.mr))
    except RuntimeError as error:
        print(f"ERROR: Slicer could not load the inputs: {error}", file=sys.stderr)
        return EXIT_INPUT

    logic = PETStabilityDenoiseLogic()
    try:
        # Headless, nothing can be confirmed, so nothing is installed: a missing package raises with the commands.
        logic.ensureDependencies(askConfirmation=False)
    except RuntimeError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_FAILED

    start = time.perf_counter()
    try:
        result = logic.process(
            pet, mr, preset=args.preset, alpha=args.alpha, wait=True, progress=print_progress,
            **engine_parameters(args),
        )
    except InputError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_INPUT
    except WorkerFailed as error:
        print(f"ERROR: {error}", file=sys.stderr)
        if error.log_tail and error.log_tail[-1] not in str(error):  # some messages already end with the log
            print("Last lines of the worker's log:\n" + "\n".join(error.log_tail), file=sys.stderr)
        return EXIT_FAILED
    print(f"Denoised in {time.perf_counter() - start:.0f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    for stem, attribute in OUTPUTS.items():
        path = args.out / f"{stem}.{args.format}"
        if not slicer.util.saveNode(getattr(result, attribute), str(path)):
            print(f"ERROR: could not write {path}", file=sys.stderr)
            return EXIT_FAILED
        print(f"Wrote {path}", flush=True)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the script on its arguments (default: those after ``--`` in ``sys.argv``); returns the exit status."""
    args = parse_arguments(script_arguments(sys.argv) if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - headless Slicer would otherwise keep running after the traceback
        traceback.print_exc()
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
