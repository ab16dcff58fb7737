"""Denoise one PET volume with PETStabilityDenoise in headless 3D Slicer, into a run folder.

Run it with Slicer's own executable, so that the extension's module and its Python packages are available::

    Slicer --no-splash --no-main-window --python-script scripts/slicer_batch_denoise.py -- \\
        --pet pet.nrrd --mr mr.nrrd --out results/ [--method dip] [--preset full] [--alpha A] [--format nrrd]

With the extension installed, that is all. From a source checkout, make the module importable by adding
``--additional-module-paths PETStabilityDenoise`` before ``--python-script``.

It writes the folder that ``petstab denoise`` writes: ``denoised``, ``network_output``, ``stability`` and
``stability_norm`` on the PET's grid, and ``run.json``. The exit status is 0 on success, 2 for bad arguments or
inputs, and 1 when the denoising (or anything else) fails. Slicer must always exit, or a headless run never
ends, so every error leads to ``sys.exit``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

try:  # torch-free; importable once Slicer has loaded the module (or from a source checkout's test setup)
    from PETStabilityDenoiseLib import settings
except ImportError as error:
    settings = None
    LIBRARY_IMPORT_ERROR: Optional[ImportError] = error
else:
    LIBRARY_IMPORT_ERROR = None

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
        description="Denoise a PET volume with stability-map conditional DIP (or the diffusion model) in headless "
                    "Slicer.",
        epilog="Run as: Slicer --no-splash --no-main-window --python-script slicer_batch_denoise.py -- ARGS",
    )
    parser.add_argument("--pet", required=True, type=Path, help="noisy PET volume (NRRD, NIfTI, MHA, ...)")
    parser.add_argument("--mr", required=True, type=Path, help="the subject's MR, registered to the PET (any grid)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--method", default=settings.DEFAULT_METHOD, choices=tuple(settings.METHODS),
                        help=f"default: {settings.DEFAULT_METHOD}")
    parser.add_argument("--preset", default=settings.DEFAULT_PRESET, choices=settings.PRESET_NAMES,
                        help=f"DIP schedule (default: {settings.DEFAULT_PRESET})")
    parser.add_argument("--alpha", type=_non_negative_float,
                        help="blend strength; 0 gives the network output (default: the method's, "
                             + ", ".join(f"{method} {alpha}" for method, alpha in settings.DEFAULT_ALPHAS.items()) + ")")
    # Files only: a DICOM output is derived from a PET DICOM series, and --pet here is a file.
    parser.add_argument("--format", default=settings.DEFAULT_OUTPUT_FORMAT, choices=settings.FILE_FORMATS,
                        help=f"output file format (default: {settings.DEFAULT_OUTPUT_FORMAT})")
    advanced = parser.add_argument_group("DIP settings (override the preset)")
    advanced.add_argument("--epochs", type=_positive_int, help="epochs N")
    advanced.add_argument("--interval", type=_positive_int, help="stability sampling interval M")
    advanced.add_argument("--start", type=_non_negative_int, help="first sampled epoch m")
    advanced.add_argument("--device", choices=settings.DEVICES, help=f"default: {settings.DEFAULT_DEVICE}")
    advanced.add_argument("--seed", type=_non_negative_int, help="random seed of the network's initialisation")
    return parser


def script_arguments(argv: Sequence[str]) -> list[str]:
    """The script's own arguments: those after the first ``--``, or all but the script name when none."""
    argv = list(argv)
    return argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parses the script's arguments (exits with status 2 and a usage message when they are wrong)."""
    return build_parser().parse_args(list(argv))


def engine_parameters(args: argparse.Namespace) -> dict:
    """The engine settings given on the command line; the preset (or the DDPM's defaults) supplies the others."""
    names = ("epochs", "interval", "start", "device", "seed")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def print_progress(report) -> None:
    step = "window" if report.loss is None else "epoch"  # the diffusion model reports windows, with no loss
    loss = "" if report.loss is None else f"  loss {report.loss:.5g}"
    print(f"{step} {report.epoch}/{report.epochs}{loss}  elapsed {report.elapsed_s:.0f} s  "
          f"remaining {report.eta_s:.0f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    """Checks the inputs, makes sure the packages are there, denoises into --out; returns the exit status."""
    for name, path in (("PET", args.pet), ("MR", args.mr)):
        if not path.is_file():
            print(f"ERROR: the {name} file {path} does not exist.", file=sys.stderr)
            return EXIT_INPUT
    try:
        from PETStabilityDenoise import PETStabilityDenoiseLogic
        from PETStabilityDenoiseLib.errors import InputError, OutputError
    except ImportError as error:
        print(f"ERROR: cannot import the PETStabilityDenoise module ({error}). Install the extension, or add "
              "--additional-module-paths <checkout>/PETStabilityDenoise to the Slicer command line.", file=sys.stderr)
        return EXIT_FAILED
    try:
        # Headless, nothing can be confirmed, so nothing is installed: a missing package raises with the commands.
        PETStabilityDenoiseLogic().ensureDependencies(askConfirmation=False)
    except RuntimeError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_FAILED

    from PETStabilityDenoiseLib.engine.run import denoise_into_folder

    start = time.perf_counter()
    try:
        config = settings.engine_config(args.method, args.preset, engine_parameters(args))
        paths = denoise_into_folder(args.pet, args.mr, args.out, config,
                                    alpha=settings.method_alpha(args.alpha, args.method), fmt=args.format,
                                    progress=print_progress)
    except InputError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_INPUT
    except OutputError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Denoised in {time.perf_counter() - start:.0f} s", flush=True)
    for path in paths.values():
        print(f"Wrote {path}", flush=True)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the script on its arguments (default: those after ``--`` in ``sys.argv``); returns the exit status."""
    if settings is None:
        print(f"ERROR: cannot import PETStabilityDenoiseLib ({LIBRARY_IMPORT_ERROR}). Install the extension, or add "
              "--additional-module-paths <checkout>/PETStabilityDenoise to the Slicer command line.", file=sys.stderr)
        return EXIT_FAILED
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
