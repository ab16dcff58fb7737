"""Engine benchmark: speed and memory of the DIP fit and the blend.

    python benchmarks/bench_engine.py                 # quick: epochs and blend ratios
    python benchmarks/bench_engine.py --full          # also the default 'full' preset on a simulated case
    python benchmarks/bench_engine.py --networks      # also every network's epoch

Reports, on the CPU and on CUDA when there is one:
- seconds per epoch and peak memory of the DIP fit on a 136 x 136 x 112 volume
  (the paper's image size), with the default network;
- engine time per epoch / a bare forward+backward+step of the same network
  and optimiser, measured in the same run (target <= 1.2);
- blend time / one plain numpy copy of the volume, same run (target <= 3);
- the bare seconds per epoch of every network (--networks);
- with --full, the wall time of the default 'full' preset on the simulated
  1/10-dose BrainWeb subject 04 case, cropped as in normal use.
Ratios are compared within one run because these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.dip import _make_optimizer, fit_dip
from PETStabilityDenoiseLib.engine.network import build_unet
from PETStabilityDenoiseLib.settings import NETWORKS, get_preset

SHAPE = (112, 136, 136)  # (z, y, x) of a 136 x 136 x 112 volume


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_blend(repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x0, net, s = (rng.random(SHAPE, dtype=np.float32) for _ in range(3))
    out, norm, copy_target = (np.empty(SHAPE, np.float32) for _ in range(3))
    s_mean = float(s.mean())
    t_copy = median_time(lambda: np.copyto(copy_target, x0), repeats)
    t_blend = median_time(lambda: blend(x0, net, s, 0.6, stability_mean=s_mean, out=out, stability_norm_out=norm),
                          repeats)
    return {"blend_ms": 1e3 * t_blend, "copy_ms": 1e3 * t_copy, "blend_over_copy": t_blend / t_copy}


def bare_step_time(config, device: torch.device, epochs: int) -> float:
    """Seconds per epoch of forward + MSE + backward + optimiser step, nothing else."""
    torch.manual_seed(0)
    net = build_unet(1, config.channels, config.num_res_units, config.network).to(device)
    x = torch.rand((1, 1) + SHAPE, device=device)
    y = torch.rand((1, 1) + SHAPE, device=device)
    optimizer = _make_optimizer(net.parameters(), config)

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        optimizer.step(closure)
    _sync(device)
    return (time.perf_counter() - start) / epochs


def bench_networks(device_name: str, epochs: int) -> dict:
    """Bare seconds per epoch of each network the DIP can use, with the default channels and optimiser."""
    config = get_preset("full")
    return {f"{name} {'-'.join(map(str, channels))}": bare_step_time(config.replace(network=name, channels=channels),
                                                                    torch.device(device_name), epochs)
            for name, channels in [(n, config.channels) for n in NETWORKS] + [("gong", (8, 16, 32, 64))]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_fit(device_name: str, epochs: int) -> dict:
    device = torch.device(device_name)
    config = get_preset("full", epochs=epochs + 1, interval=1, start=1, device=device_name)
    rng = np.random.default_rng(0)
    pet = rng.random(SHAPE, dtype=np.float32) + 0.5
    mr = rng.random(SHAPE, dtype=np.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The first epoch pays one-off allocation costs: time epochs 2..N from the progress reports.
    stamps = []
    fit_dip(pet, mr, config, progress=lambda r: stamps.append(time.perf_counter()))
    engine = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    bare = bare_step_time(config, device, epochs)
    result = {"device": device_name, "shape_xyz": SHAPE[::-1], "epochs_timed": epochs, "s_per_epoch": engine,
              "bare_s_per_epoch": bare, "engine_over_bare": engine / bare,
              "samples_every_epoch": True, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["peak_rss_growth_gib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    return result


def bench_full_preset(device_name: str) -> dict:
    import SimpleITK as sitk

    from PETStabilityDenoiseLib.engine.pipeline import denoise
    from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case

    case = simulate_case(sitk.ReadImage(str(bundled_labels_path())), SimulationConfig(doses=(0.1,)))
    start = time.perf_counter()
    result = denoise(case.osem[0.1], case.mr, get_preset("full", device=device_name))
    return {"device": device_name, "full_preset_s": time.perf_counter() - start,
            "fit_shape_zyx": result.info["fit_shape"], "n_samples": result.n_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed per device (default 5)")
    parser.add_argument("--full", action="store_true", help="also time the default 'full' preset")
    parser.add_argument("--networks", action="store_true", help="also time an epoch of every network")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {"blend": bench_blend(repeats=50), "fit": [bench_fit(d, args.epochs) for d in devices]}
    if args.networks:
        report["networks_s_per_epoch"] = {d: bench_networks(d, args.epochs) for d in devices}
    if args.full:
        report["full"] = [bench_full_preset(d) for d in devices]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
