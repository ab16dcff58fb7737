"""Time the bundled diffusion network on the CPU in each weight layout, interleaved in one run: the measurement
behind ``memory_format_for`` (channels-last on the CPU) and ``CPU_INPUTS_PER_CALL`` (engine/ddpm).

- **Sampling:** one window's 8 samples (the default) through the network, all at once and a few at a time.
- **Training:** one AdamW step of a batch of 8 patches of 32^3, float32.

Inputs are random; only time is measured. Each figure is the mean over ``--repeats`` calls, for each of
``--rounds`` rounds; read the ratios, since the machine is shared.

    python benchmarks/bench_memory_format.py --threads 2 [--out docs/ddpm/bench_memory_format_avx2.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from PETStabilityDenoiseLib.engine.ddpm.model import build_model
from PETStabilityDenoiseLib.engine.ddpm.weights import bundled_model_dir, load_model

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}
INPUTS = 8  # the default samples per window, and the training batch


def seconds_per_call(call, repeats: int) -> float:
    call()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return round((time.perf_counter() - started) / repeats, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, config, _ = load_model(bundled_model_dir())
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((INPUTS, 1 + config.condition_channels, *(config.patch_size,) * 3), generator=generator)
    targets = torch.randn((INPUTS, 1, *(config.patch_size,) * 3), generator=generator)
    timesteps = torch.full((INPUTS,), 333)
    results: dict = {}
    for _ in range(args.rounds):
        for name, layout in LAYOUTS.items():
            model = model.to(memory_format=layout).eval()
            x = inputs.contiguous(memory_format=layout)
            for per_call in (INPUTS, 2):
                def sampling_call() -> None:
                    with torch.inference_mode():
                        for chunk, steps in zip(x.split(per_call), timesteps.split(per_call)):
                            model(chunk, timesteps=steps)
                key = f"sampling_s_{name}_{per_call}_per_call"
                results.setdefault(key, []).append(seconds_per_call(sampling_call, args.repeats))
            trainee = build_model(config).to(memory_format=layout).train()
            optimiser = torch.optim.AdamW(trainee.parameters(), lr=3e-4)

            def training_step() -> None:
                loss = torch.nn.functional.mse_loss(trainee(x, timesteps=timesteps), targets)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            results.setdefault(f"training_step_s_{name}", []).append(seconds_per_call(training_step, args.repeats))
    record = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "inputs": INPUTS, "patch": config.patch_size, "rounds": args.rounds, "repeats": args.repeats,
              **results}
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
