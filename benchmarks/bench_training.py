"""Time training steps of the bundled network's design in float32 and in bfloat16 (``train-ddpm --bf16``), in one run.

Each precision trains ``--steps`` steps of batch ``--batch-size`` 32^3 patches (the default network and patch) on
synthetic pairs, after ``--warmup`` untimed steps; the ratio is what to read, since the machine is shared. bfloat16
pays only on CPUs with bfloat16 units (AMX, AVX512-BF16) and on recent GPUs; elsewhere it is much slower.

    python benchmarks/bench_training.py --threads 2 [--out docs/benchmarks/training_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from conftest import synthetic_training_pairs  # noqa: E402

from PETStabilityDenoiseLib.engine.ddpm.model import DDPMConfig  # noqa: E402
from PETStabilityDenoiseLib.training.trainer import TrainingSettings, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = synthetic_training_pairs(3, shape=(40, 40, 40))
    config = DDPMConfig()
    record = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "batch_size": args.batch_size, "patch_size": config.patch_size, "steps": args.steps}
    for bf16 in (False, True):
        seconds = {}
        for steps in (args.warmup, args.warmup + args.steps):
            settings = TrainingSettings(steps=steps, batch_size=args.batch_size, checkpoint_every=10 ** 9,
                                        validate_every=10 ** 9, validation_patches=2, bf16=bf16)
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                train(config, settings, pairs[:2], pairs[2:], Path(folder))
                seconds[steps] = time.perf_counter() - started
        # The difference of two runs leaves out the set-up, the validation and the saving.
        record["bf16" if bf16 else "float32"] = (seconds[args.warmup + args.steps] - seconds[args.warmup]) / args.steps
    record["speed-up"] = record["float32"] / record["bf16"]
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
