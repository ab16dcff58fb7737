"""Throughput of ``petstab batch`` with 1 and 2 workers, and its scheduling overhead against direct runs.

Eight subjects, each the bundled sample case (PET 91 x 109 x 91 at 2 mm, MR at 1 mm), denoised with the
``tiny`` preset: a short fit, so that any per-subject overhead shows at its largest. All in one run, so
that the ratios share the machine's state:

- direct: ``denoise_into_folder`` called in a loop in one process (the engine's time and nothing else);
- shell loop: one ``petstab denoise`` process per subject, as a user's shell loop would run it;
- batch, serial: ``run_cohort`` with ``--workers 1`` (no Ray);
- batch, Ray, 1 worker and 2 workers: a local Ray runtime started and stopped within the timing.

With one worker each subject gets all the CPU threads; with two, each gets half. Overhead per subject is
(batch time - direct time) / subjects, against the direct time per subject. Target: at most 5 %. The runs
are repeated ``--rounds`` times, interleaved, and each is reported by its median, so that drift in the
machine's load falls on all of them alike. Ray's fixed cost (starting the runtime and a worker that imports
the engine) is timed on its own, once per round.

    python benchmarks/bench_cohort.py [--subjects 8] [--rounds 2] [--shell-loop] [--out bench_cohort.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PETStabilityDenoiseLib import DATA_DIR
from PETStabilityDenoiseLib.cohort.batch import run_cohort
from PETStabilityDenoiseLib.cohort.schedulers import RaySettings, run_on_ray, run_serially
from PETStabilityDenoiseLib.cohort.table import read_cohort
from PETStabilityDenoiseLib.engine.run import denoise_into_folder

PET = DATA_DIR / "sample" / "PETStabilitySample_PET.nrrd"
MR = DATA_DIR / "sample" / "PETStabilitySample_MR.nrrd"
PRESET = "tiny"


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shell-loop", action="store_true", help="also time one petstab process per subject")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench_cohort-"))
    cohort = work / "cohort.csv"
    with cohort.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "pet", "mr"])
        writer.writerows([f"s{i:02d}", PET, MR] for i in range(args.subjects))

    def rows(threads: int):
        return read_cohort(cohort, method="dip", preset=PRESET, alpha=1.0,
                           parameters={"device": "cpu", "threads": threads})

    def direct() -> None:
        for row in rows(cpus):
            denoise_into_folder(row.pet, row.mr, work / "direct" / row.subject, row.config, alpha=row.alpha,
                                fmt="nii.gz")

    def shell_loop() -> None:
        for row in rows(cpus):
            subprocess.run([sys.executable, "-m", "PETStabilityDenoiseLib.cli", "denoise", "--pet", str(row.pet),
                            "--mr", str(row.mr), "--out", str(work / "shell" / row.subject), "--preset", PRESET,
                            "--device", "cpu", "--threads", str(cpus), "--progress", "none"],
                           check=True, capture_output=True)

    def on_ray(workers: int):
        settings = RaySettings(workers=workers, cpus_per_task=max(1, cpus // workers))
        # Threads None: the scheduler gives each task one torch thread per reserved CPU.
        return lambda: run_cohort(rows(None), work / f"ray{workers}", "nii.gz",
                                  lambda tasks, report: run_on_ray(tasks, report, settings), show_progress=False)

    def ray_start_up() -> None:
        import ray

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray.get(ray.remote(lambda: __import__("PETStabilityDenoiseLib.engine.run")).remote())
        ray.shutdown()

    runs = {"direct": direct, "batch, serial": lambda: run_cohort(rows(cpus), work / "serial", "nii.gz",
                                                                   run_serially, show_progress=False),
            "batch, Ray, 1 worker": on_ray(1), "batch, Ray, 2 workers": on_ray(2),
            "Ray start-up alone": ray_start_up}
    if args.shell_loop:
        runs["shell loop"] = shell_loop
    samples: dict = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            for folder in work.glob("*/"):  # every round computes every subject again
                if folder.is_dir():
                    shutil.rmtree(folder)
            samples[name].append(timed(run))
    timings = {name: statistics.median(values) for name, values in samples.items()}

    per_subject = timings["direct"] / args.subjects
    start_up = timings.pop("Ray start-up alone")
    results = {"subjects": args.subjects, "preset": PRESET, "cpus": cpus, "rounds": args.rounds,
               "python": platform.python_version(), "ray_start_up_s": round(start_up, 2), "runs": {}}
    print(f"{args.subjects} subjects, preset {PRESET}, {cpus} CPUs, median of {args.rounds} rounds; "
          f"direct: {per_subject:.2f} s per subject")
    print(f"{'run':<24}{'wall s':>9}{'subjects/min':>14}{'overhead s/subject':>20}{'overhead %':>12}")
    for name, wall in timings.items():
        overhead = (wall - timings["direct"]) / args.subjects
        results["runs"][name] = {"wall_s": round(wall, 2), "rounds_s": [round(v, 2) for v in samples[name]],
                                 "subjects_per_min": round(60 * args.subjects / wall, 2),
                                 "overhead_s_per_subject": round(overhead, 2),
                                 "overhead_percent": round(100 * overhead / per_subject, 1)}
        print(f"{name:<24}{wall:>9.1f}{60 * args.subjects / wall:>14.2f}{overhead:>20.2f}"
              f"{100 * overhead / per_subject:>11.1f}%")
    marginal = (timings["batch, Ray, 1 worker"] - start_up - timings["direct"]) / args.subjects
    results["ray_1_worker_overhead_beyond_start_up_s_per_subject"] = round(marginal, 2)
    print(f"Ray start-up (runtime + a worker importing the engine), once per batch: {start_up:.1f} s; "
          f"Ray, 1 worker, beyond it: {marginal:.2f} s per subject ({100 * marginal / per_subject:.1f} %)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
