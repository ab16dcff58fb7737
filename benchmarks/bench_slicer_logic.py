"""Benchmarks of the Slicer logic on ``slicer-core``: live re-blend (setAlpha) and cancel.

    python benchmarks/bench_slicer_logic.py [--repeats 30] [--no-cancel]

- ``setAlpha`` on a 136 x 136 x 112 result (the panel's target: 50 ms or
  less), with the numba kernel and with the numpy fallback that runs when
  numba is not installed (as it may not be inside Slicer); reported beside a
  plain numpy copy of one volume timed in the same run.
- ``cancel``: time from ``logic.cancel()`` until the worker's whole process
  tree is gone (target: 2 s or less), on a real worker in mid-fit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import psutil
import SimpleITK as sitk
import slicer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "PETStabilityDenoise"))

from PETStabilityDenoiseLib.engine import blend as blend_module  # noqa: E402
from PETStabilityDenoiseLib.slicer.logic import PETStabilityDenoiseLogic, ProcessResult  # noqa: E402
from PETStabilityDenoiseLib.slicer.mrml_volumes import add_volume_like  # noqa: E402

SHAPE = (112, 136, 136)


def median_ms(function, repeats: int) -> float:
    function()  # warm-up (numba compiles on first call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def make_result(scene) -> ProcessResult:
    rng = np.random.default_rng(0)
    pet_array = rng.gamma(4.0, 1.0, SHAPE).astype(np.float32)
    pet = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET")
    pet.SetSpacing(2.0, 2.0, 2.0)
    slicer.util.updateVolumeFromArray(pet, pet_array)
    network_output = (pet_array * 0.9).astype(np.float32)
    stability = rng.random(SHAPE, dtype=np.float32)
    denoised, output, stability_node, normalized = (
        add_volume_like(scene, pet, array, name) for name, array in
        (("denoised", pet_array), ("network output", network_output), ("stability", stability),
         ("normalized stability", stability)))
    return ProcessResult(denoised, output, stability_node, normalized, alpha=0.6, stabilityMean=float(stability.mean()), runInfo={}, petArray=pet_array)


def bench_set_alpha(repeats: int) -> None:
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logic = PETStabilityDenoiseLogic()
    result = make_result(scene)
    source = slicer.util.arrayFromVolume(result.networkOutputNode)
    target = np.empty_like(source)
    copy_ms = median_ms(lambda: np.copyto(target, source), repeats)
    alphas = iter(np.tile(np.linspace(0.0, 3.0, 31), 100))
    kernel = blend_module._blend_kernel
    backends: Dict[str, Any] = {"numba": kernel, "numpy fallback": blend_module._blend_numpy} if blend_module.numba else \
        {"numpy fallback": kernel}
    print(f"setAlpha on {SHAPE[::-1]} voxels (x, y, z), median of {repeats}; numpy copy of one volume: {copy_ms:.2f} ms")
    for name, function in backends.items():
        blend_module._blend_kernel = function
        ms = median_ms(lambda: logic.setAlpha(result, float(next(alphas))), repeats)
        print(f"  {name:15s} {ms:7.2f} ms  ({ms / copy_ms:.1f} x copy)  target <= 50 ms: {'met' if ms <= 50 else 'MISSED'}")
    blend_module._blend_kernel = kernel


def bench_cancel() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))
    from conftest import centred_grid, head_phantom, rotation_direction

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    grid = centred_grid((44, 48, 38), (2.0, 2.0, 2.0), rotation_direction(0))
    pet = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET")
    pet.SetSpacing(2.0, 2.0, 2.0)
    slicer.util.updateVolumeFromArray(pet, head_phantom(grid, "pet") + 0.1)
    first_epoch = threading.Event()
    with tempfile.TemporaryDirectory() as temp_root:
        logic = PETStabilityDenoiseLogic(temp_root=temp_root)
        handle = logic.process(pet, None, wait=False, progress=lambda report: first_epoch.set(),
                               preset="tiny", device="cpu", epochs=5000, start=4990)
        if not first_epoch.wait(120):
            raise RuntimeError("the worker never reported an epoch")
        root = psutil.Process(handle._worker.pid)
        tree = [root] + root.children(recursive=True)
        start = time.perf_counter()
        logic.cancel()
        gone, alive = psutil.wait_procs(tree, timeout=5)
        elapsed = time.perf_counter() - start
        print(f"cancel: {len(gone)} process(es) gone, {len(alive)} alive, {elapsed * 1000:.0f} ms after cancel() "
              f"(target <= 2000 ms: {'met' if not alive and elapsed <= 2 else 'MISSED'}); "
              f"temporary files left: {len(list(Path(temp_root).iterdir()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-cancel", action="store_true", help="skip the cancel benchmark (it starts a worker)")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    bench_set_alpha(args.repeats)
    if not args.no_cancel:
        bench_cancel()


if __name__ == "__main__":
    main()
