"""Time DDIP, the sinogram reconstruction with the bundled diffusion prior, on a whole brain at 2 mm.

The data are the bundled subject 04 simulated at 1/10 dose (91 x 109 x 91 voxels; 91 slices x 168 angles x 144
bins). Only the time is measured here; the images are scored by ``ddip_study.py``. Target: 15 minutes or less on
2 CPU cores (docs/RECONSTRUCTION.md).

    python benchmarks/bench_ddip.py --threads 2 [--samples 2] [--steps 10] [--refresh-estimate] [--out docs/benchmarks/ddip_cpu.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.engine.reconstruct import ddip_image, osem_image
from PETStabilityDenoiseLib.settings import DDIPConfig
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--samples", type=int, help="override the default number of samples")
    parser.add_argument("--steps", type=int, help="override the default number of DDIM steps")
    parser.add_argument("--refresh-estimate", action="store_true",
                        help="two network passes per DDIM step (DDIPConfig.refresh_estimate True)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    case = simulate_case(sitk.ReadImage(str(bundled_labels_path())), SimulationConfig(doses=(0.1,)),
                         keep_sinograms=True)
    sinogram = case.sinograms[0.1]
    overrides = {k: v for k, v in (("samples", args.samples), ("steps", args.steps)) if v}
    if args.refresh_estimate:
        overrides["refresh_estimate"] = True
    config = DDIPConfig(device=args.device, threads=args.threads, **overrides)
    steps = []

    started = time.perf_counter()
    osem = osem_image(sinogram)
    osem_done = time.perf_counter()
    result = ddip_image(sinogram, osem, case.mr, config, progress=lambda report: steps.append(round(report.elapsed_s, 2)))
    seconds = time.perf_counter() - started
    record = {
        "volume_xyz": list(osem.GetSize()), "sinogram_shape": list(sinogram.shape),
        "config": dataclasses.asdict(config), "model_sha256": result.record["model_sha256"],
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "seconds": round(seconds, 1), "osem_s": round(osem_done - started, 2),
        "timings_s": {k: round(v, 2) for k, v in result.info["timings"].items()},
        "elapsed_after_each_step_s": steps,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
