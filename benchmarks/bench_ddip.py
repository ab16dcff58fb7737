"""Time DDIP, the sinogram reconstruction with the diffusion prior, on a whole brain at 2 mm.

The data are the bundled subject 04 simulated at 1/10 dose (91 x 109 x 91 voxels; 91 slices x 168 angles x 144
bins). The network is the bundled DDPM's: a prior has the same architecture, so it takes the same time, but the
bundled model was not trained with condition dropout, so the images are not meaningful and are not scored;
only the time is. The engine is called directly for that reason (``petstab reconstruct`` refuses a model that
is not a prior). Target: 15 minutes or less on 2 CPU cores (docs/RECONSTRUCTION.md).

    python benchmarks/bench_ddip.py --threads 2 [--samples 2] [--steps 10] [--no-refresh-estimate] [--out docs/benchmarks/ddip_cpu.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.engine.ddip import ddip_reconstruct
from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_model_dir, load_model
from PETStabilityDenoiseLib.engine.reconstruct import osem_image, sinogram_projector
from PETStabilityDenoiseLib.settings import DDIPConfig
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case
from PETStabilityDenoiseLib.volumes.geometry import head_mask, resample_to_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--samples", type=int, help="override the default number of samples")
    parser.add_argument("--steps", type=int, help="override the default number of DDIM steps")
    parser.add_argument("--no-refresh-estimate", action="store_true",
                        help="one network pass per DDIM step (DDIPConfig.refresh_estimate False)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    case = simulate_case(sitk.ReadImage(str(bundled_labels_path())), SimulationConfig(doses=(0.1,)),
                         keep_sinograms=True)
    sinogram = case.sinograms[0.1]
    overrides = {k: v for k, v in (("samples", args.samples), ("steps", args.steps)) if v}
    if args.no_refresh_estimate:
        overrides["refresh_estimate"] = False
    config = DDIPConfig(device=args.device, threads=args.threads, **overrides)
    device = torch.device(args.device)
    model, model_config, _ = load_model(bundled_model_dir(), device)

    started = time.perf_counter()
    osem = osem_image(sinogram)
    osem_array = sitk.GetArrayFromImage(osem)
    mr = sitk.GetArrayFromImage(resample_to_reference(case.mr, osem)).astype(np.float32)
    head = head_mask(osem_array, mr)
    prepared = time.perf_counter()
    steps = []
    ddip_reconstruct((sinogram.prompts, sinogram.additive, sinogram.multiplicative), sinogram_projector(sinogram),
                     osem_array, mr, head, model, model_config, config, device=device,
                     progress=lambda done, total, elapsed: steps.append(round(elapsed, 2)))
    seconds = time.perf_counter() - started
    record = {
        "volume_xyz": list(osem.GetSize()), "sinogram_shape": list(sinogram.shape),
        "config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model_config),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "seconds": round(seconds, 1),
        "osem_and_preparation_s": round(prepared - started, 2),
        "elapsed_after_each_step_s": steps,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
