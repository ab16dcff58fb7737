"""Time the diffusion model on a 136 x 136 x 112 PET volume with the default sampling settings.

The volume is the bundled subject 04 simulated at 1/10 dose, padded with air
to a scanner-like 136 x 136 x 112 field of view (2 mm voxels); its MR stays on
its own 1 mm grid, so the timing includes resampling, cropping to the head,
sampling and blending, as a user's run does. Targets: 15 min or less on
2 CPU cores, 60 s or less on a GPU.

    python benchmarks/bench_ddpm.py --threads 2 --device cpu [--out bench.json]

``--baseline MODEL_DIR`` times the U-Net baseline on the same volume instead: twice with ``WINDOWS_PER_CALL``
windows per network call and twice with one.

    python benchmarks/bench_ddpm.py --threads 2 --baseline PETStabilityDenoise/PETStabilityDenoiseLib/data/ddpm/base
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import List

import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.engine.ddpm.sampling import WINDOWS_PER_CALL
from PETStabilityDenoiseLib.engine.pipeline import denoise_ddpm, predict_regression
from PETStabilityDenoiseLib.settings import DDPMSamplingConfig, EpochReport
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case

FIELD_OF_VIEW = (136, 136, 112)  # x, y, z voxels


def padded_to_field_of_view(image: sitk.Image) -> sitk.Image:
    missing = [max(f - s, 0) for f, s in zip(FIELD_OF_VIEW, image.GetSize())]
    return sitk.ConstantPad(image, [m // 2 for m in missing], [m - m // 2 for m in missing], 0.0)


def time_baseline(pet: sitk.Image, mr: sitk.Image, model_dir: Path, device: str, threads: int) -> dict:
    """Seconds per volume of the U-Net baseline, per number of windows per network call (two runs each)."""
    seconds: dict = {WINDOWS_PER_CALL: [], 1: []}
    for per_call in (WINDOWS_PER_CALL, 1) * 2:
        started = time.perf_counter()
        predict_regression(pet, mr, model_dir, device=device, threads=threads, windows_per_call=per_call)
        seconds[per_call].append(round(time.perf_counter() - started, 1))
    return {"volume_xyz": list(pet.GetSize()), "model_dir": str(model_dir),
            "device_name": platform.processor() or device, "threads": torch.get_num_threads(),
            "seconds_by_windows_per_call": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--samples", type=int, help="override the default number of samples")
    parser.add_argument("--steps", type=int, help="override the default number of DDIM steps")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    parser.add_argument("--baseline", type=Path, help="time this U-Net baseline instead (see above)")
    args = parser.parse_args()

    case = simulate_case(sitk.ReadImage(str(bundled_labels_path())), SimulationConfig(doses=(0.1,)))
    pet = padded_to_field_of_view(case.osem[0.1])
    if args.baseline:
        print(json.dumps(time_baseline(pet, case.mr, args.baseline, args.device, args.threads), indent=1))
        return
    overrides = {k: v for k, v in (("samples", args.samples), ("steps", args.steps)) if v}
    config = DDPMSamplingConfig(device=args.device, threads=args.threads, **overrides)
    reports: List[EpochReport] = []
    started = time.perf_counter()
    result = denoise_ddpm(pet, case.mr, config, progress=reports.append)
    seconds = time.perf_counter() - started
    record = {
        "model_sha256": result.record["model_sha256"], "volume_xyz": list(pet.GetSize()),
        "fit_shape_zyx": result.info["fit_shape"],
        # A corrective model's progress counts its U-Net's windows, then the sampling's.
        "windows": len(reports), "corrective": "base_sha256" in result.record,
        "samples": config.samples, "steps": config.steps, "start_fraction": config.start_fraction,
        "device": result.record["device"],
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "seconds": round(seconds, 1),
        "timings": {k: round(v, 2) for k, v in result.info["timings"].items()},
        "seconds_per_window": round(result.info["timings"]["engine_s"] / max(len(reports), 1), 3),
    }
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
