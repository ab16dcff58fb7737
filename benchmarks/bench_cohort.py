"""Throughput of ``petstab batch`` with 1 and 2 workers, and its scheduling overhead against direct runs.

Eight subjects, each the bundled sample case (PET 91 x 109 x 91 at 2 mm, MR at 1 mm), denoised with the
``tiny`` preset by default (a 3 s fit, so that any overhead shows at its largest) or another. All in one
run, so that the ratios share the machine's state:

- direct: ``denoise_into_folder`` called in a loop in one process (the engine's time and nothing else);
- shell loop: one ``petstab denoise`` process per subject, as a user's shell loop would run it;
- batch, serial: ``run_cohort`` with ``--workers 1`` (no Ray);
- batch, Ray, 1 worker and 2 workers: a local Ray runtime started and stopped within the timing.

With one worker each subject gets all the CPU threads; with two, each gets half. Overhead per subject is
(batch time - direct time) / subjects, against the direct time per subject. Target: at most 5 %. The runs
are repeated ``--rounds`` times, interleaved, and each is reported by its median, so that drift in the
machine's load falls on all of them alike. For the one-worker batches the overhead is split into the
scheduling (the batch's wall time less the time inside the subjects' tasks, as the summary records it) and
the rest (the tasks' time less the direct time: a fresh process's first fit, for Ray).

    python benchmarks/bench_cohort.py [--subjects 8] [--preset tiny] [--rounds 2] [--runs direct serial ray1 ray2]
        [--out bench_cohort.json]
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
from typing import Optional

from PETStabilityDenoiseLib import DATA_DIR
from PETStabilityDenoiseLib.cohort.batch import run_cohort
from PETStabilityDenoiseLib.cohort.schedulers import RaySettings, run_on_ray, run_serially
from PETStabilityDenoiseLib.cohort.table import read_cohort
from PETStabilityDenoiseLib.engine.run import denoise_into_folder

PET = DATA_DIR / "sample" / "PETStabilitySample_PET.nrrd"
MR = DATA_DIR / "sample" / "PETStabilitySample_MR.nrrd"
RUN_NAMES = {"direct": "direct", "serial": "batch, serial", "ray1": "batch, Ray, 1 worker",
             "ray2": "batch, Ray, 2 workers", "shell": "shell loop"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--runs", nargs="+", choices=tuple(RUN_NAMES), default=["direct", "serial", "ray1", "ray2"],
                        help="which runs to time (direct is needed for the overhead); shell: one petstab process "
                             "per subject")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench_cohort-"))
    cohort = work / "cohort.csv"
    with cohort.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "pet", "mr"])
        writer.writerows([f"s{i:02d}", PET, MR] for i in range(args.subjects))

    def rows(threads: Optional[int]):
        return read_cohort(cohort, method="dip", preset=args.preset, alpha=1.0,
                           parameters={"device": "cpu", "threads": threads})

    def direct() -> None:
        for row in rows(cpus):
            denoise_into_folder(row.pet, row.mr, work / "direct" / row.subject, row.config, alpha=row.alpha,
                                fmt="nii.gz")

    def shell_loop() -> None:
        for row in rows(cpus):
            subprocess.run([sys.executable, "-m", "PETStabilityDenoiseLib.cli", "denoise", "--pet", str(row.pet),
                            "--mr", str(row.mr), "--out", str(work / "shell" / row.subject), "--preset", args.preset,
                            "--device", "cpu", "--threads", str(cpus), "--progress", "none"],
                           check=True, capture_output=True)

    def on_ray(workers: int):
        settings = RaySettings(workers=workers, cpus_per_task=max(1, cpus // workers))
        # Threads None: the scheduler gives each task one torch thread per reserved CPU.
        return lambda: run_cohort(rows(None), work / f"ray{workers}", "nii.gz",
                                  lambda tasks, report: run_on_ray(tasks, report, settings), show_progress=False)

    every_run = {"direct": direct, "serial": lambda: run_cohort(rows(cpus), work / "serial", "nii.gz", run_serially,
                                                                show_progress=False),
                 "ray1": on_ray(1), "ray2": on_ray(2), "shell": shell_loop}
    runs = {RUN_NAMES[key]: every_run[key] for key in RUN_NAMES if key in {"direct", *args.runs}}
    samples: dict = {name: [] for name in runs}
    in_tasks: dict = {name: [] for name in runs}  # the batches' time inside the subjects' tasks
    for _ in range(args.rounds):
        for name, run in runs.items():
            for folder in work.glob("*/"):  # every round computes every subject again
                if folder.is_dir():
                    shutil.rmtree(folder)
            started = time.perf_counter()
            outcomes = run()
            samples[name].append(time.perf_counter() - started)
            if outcomes is not None:
                in_tasks[name].append(sum(outcome.wall_s for outcome in outcomes))
    timings = {name: statistics.median(values) for name, values in samples.items()}

    per_subject = timings["direct"] / args.subjects
    results = {"subjects": args.subjects, "preset": args.preset, "cpus": cpus, "rounds": args.rounds,
               "python": platform.python_version(), "runs": {}}
    print(f"{args.subjects} subjects, preset {args.preset}, {cpus} CPUs, median of {args.rounds} rounds; "
          f"direct: {per_subject:.2f} s per subject")
    print(f"{'run':<24}{'wall s':>9}{'subjects/min':>14}{'overhead s/subject':>20}{'overhead %':>12}"
          f"{'of which scheduling %':>23}")
    for name, wall in timings.items():
        overhead = (wall - timings["direct"]) / args.subjects
        run = {"wall_s": round(wall, 2), "rounds_s": [round(v, 2) for v in samples[name]],
               "subjects_per_min": round(60 * args.subjects / wall, 2),
               "overhead_s_per_subject": round(overhead, 2), "overhead_percent": round(100 * overhead / per_subject, 1)}
        scheduling = ""
        if in_tasks[name] and "2 workers" not in name:  # with 2 workers the tasks overlap
            run["scheduling_s_per_subject"] = round((wall - statistics.median(in_tasks[name])) / args.subjects, 2)
            run["scheduling_percent"] = round(100 * run["scheduling_s_per_subject"] / per_subject, 1)
            scheduling = f"{run['scheduling_percent']:>22.1f}%"
        results["runs"][name] = run
        print(f"{name:<24}{wall:>9.1f}{60 * args.subjects / wall:>14.2f}{overhead:>20.2f}"
              f"{100 * overhead / per_subject:>11.1f}%{scheduling}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
