"""``petstab batch``: the cohort file, the summary, resume, failure isolation, interrupts, and Ray."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from PETStabilityDenoiseLib.cli import EXIT_SUBJECTS_FAILED, main
from PETStabilityDenoiseLib.cohort import schedulers
from PETStabilityDenoiseLib.cohort.batch import run_cohort
from PETStabilityDenoiseLib.cohort.schedulers import RaySettings, run_on_ray, run_serially
from PETStabilityDenoiseLib.cohort.table import read_cohort
from PETStabilityDenoiseLib.cohort.tasks import SUMMARY_COLUMNS, SubjectTask, not_run
from PETStabilityDenoiseLib.errors import InputError
from PETStabilityDenoiseLib.settings import DEFAULT_ALPHAS
from PETStabilityDenoiseLib.volumes.run_folder import clean_up_interrupted

DEFAULTS = dict(method="dip", preset="tiny", alpha=1.0, parameters={"device": "cpu"})


@pytest.fixture()
def cohort_inputs(small_pet_mr, tmp_path):
    """A PET and an MR file, written once, that every subject of a test cohort shares."""
    pet, mr, _ = small_pet_mr
    paths = {"pet": tmp_path / "data" / "pet.nii.gz", "mr": tmp_path / "data" / "mr.nii.gz"}
    paths["pet"].parent.mkdir()
    sitk.WriteImage(pet, str(paths["pet"]))
    sitk.WriteImage(mr, str(paths["mr"]))
    return paths


def write_cohort(path: Path, rows: list, extra_columns: tuple = ()) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "pet", "mr", *extra_columns])
        writer.writerows(rows)
    return path


def three_subjects(tmp_path: Path, inputs: dict) -> Path:
    """s1 and s3 are fine; s2's PET does not exist."""
    return write_cohort(tmp_path / "cohort.csv", [["s1", inputs["pet"], inputs["mr"]],
                                                  ["s2", tmp_path / "missing.nii.gz", inputs["mr"]],
                                                  ["s3", "data/pet.nii.gz", ""]])


def summary(out: Path) -> dict:
    with (out / "summary.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == SUMMARY_COLUMNS
        return {row["subject"]: row for row in reader}


# --- the cohort file -----------------------------------------------------------------------------------------


def test_rows_take_the_command_line_settings_and_their_own_overrides(tmp_path, cohort_inputs):
    path = write_cohort(tmp_path / "cohort.csv", [["a", "data/pet.nii.gz", "data/mr.nii.gz", "", "", ""],
                                                  ["b", cohort_inputs["pet"], "", "8", "0.5", "4 8"]],
                        extra_columns=("epochs", "alpha", "channels"))
    a, b = read_cohort(path, **DEFAULTS)
    assert a.pet == tmp_path / "data" / "pet.nii.gz" and a.mr == tmp_path / "data" / "mr.nii.gz"
    assert a.config.epochs == 6 and a.alpha == 1.0 and a.config.device == "cpu"  # the tiny preset's epochs
    assert b.mr is None and b.config.epochs == 8 and b.alpha == 0.5 and b.config.channels == (4, 8)


def test_without_an_alpha_each_row_takes_its_methods_default(tmp_path):
    path = write_cohort(tmp_path / "cohort.csv", [["a", "pet.nii.gz", "mr.nii.gz", ""],
                                                  ["b", "pet.nii.gz", "mr.nii.gz", "ddpm"]], extra_columns=("method",))
    a, b = read_cohort(path, **dict(DEFAULTS, alpha=None))
    assert (a.alpha, b.alpha) == (DEFAULT_ALPHAS["dip"], DEFAULT_ALPHAS["ddpm"])
    assert DEFAULT_ALPHAS["dip"] != DEFAULT_ALPHAS["ddpm"]  # else this test could not tell them apart


@pytest.mark.parametrize("rows, columns, message", [
    ([["a", "p.nii"]], ("subject", "pet"), None),
    ([["a"]], ("subject", "mr"), "lacks the column(s) pet"),
    ([["a", "p.nii", ""], ["a", "q.nii", ""]], ("subject", "pet", "mr"), "line 3: subject 'a' is listed twice"),
    ([["../a", "p.nii", ""]], ("subject", "pet", "mr"), "cannot name a folder"),
    ([[".hidden", "p.nii", ""]], ("subject", "pet", "mr"), "cannot name a folder"),
    ([["a", "", ""]], ("subject", "pet", "mr"), "has no PET"),
    ([["a", "p.nii", "", "many"]], ("subject", "pet", "mr", "epochs"), "line 2: epochs must be a whole number"),
    ([["a", "p.nii", "", "1"]], ("subject", "pet", "mr", "colour"), "unknown engine parameter colour"),
    ([["a", "p.nii", "", "-1"]], ("subject", "pet", "mr", "alpha"), "alpha"),
    ([["a", "p.nii", "", "ddpm"]], ("subject", "pet", "mr", "method"), "has no MR, which the diffusion model needs"),
    ([["a", "p.nii", "", "unet"]], ("subject", "pet", "mr", "method"), "unknown method 'unet'"),
    ([], ("subject", "pet", "mr"), "has no subjects"),
])
def test_a_bad_cohort_file_is_refused_naming_the_line(tmp_path, rows, columns, message):
    path = tmp_path / "cohort.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([list(columns), *rows])
    if message is None:
        assert read_cohort(path, **DEFAULTS)[0].subject == "a"
        return
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_cohort(path, **DEFAULTS)


# --- a cohort run: summary, resume, isolation, interrupt ---------------------------------------------------------


def test_a_failing_subject_is_recorded_and_the_others_run(quick_engine, tmp_path, cohort_inputs):
    rows = read_cohort(three_subjects(tmp_path, cohort_inputs), **DEFAULTS)
    out = tmp_path / "out"
    outcomes = run_cohort(rows, out, "nii.gz", run_serially, show_progress=False)
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    table = summary(out)
    assert table["s2"]["status"] == "failed" and "missing.nii.gz does not exist" in table["s2"]["error"]
    for subject in ("s1", "s3"):
        row = table[subject]
        assert row["status"] == "done" and row["error"] == "" and row["method"] == "dip" and row["device"] == "cpu"
        assert float(row["wall_s"]) > 0 and float(row["stability_mean"]) > 0
        assert Path(row["output"]) == out / subject and (out / subject / "run.json").is_file()
    assert not (out / "s2").exists() and sorted(p.name for p in out.iterdir()) == ["s1", "s3", "summary.csv"]


def test_a_rerun_skips_complete_subjects_retries_failed_ones_and_reruns_changed_settings(
        quick_engine, tmp_path, cohort_inputs):
    cohort = three_subjects(tmp_path, cohort_inputs)
    out = tmp_path / "out"
    run_cohort(read_cohort(cohort, **DEFAULTS), out, "nii.gz", run_serially, show_progress=False)
    s1_before = (out / "s1" / "run.json").stat().st_mtime_ns

    ran = []

    def recording(tasks, on_outcome):
        ran.extend(task.row.subject for task in tasks)
        run_serially(tasks, on_outcome)

    outcomes = run_cohort(read_cohort(cohort, **DEFAULTS), out, "nii.gz", recording, show_progress=False)
    assert ran == ["s2"] and [o.status for o in outcomes] == ["skipped", "failed", "skipped"]
    assert (out / "s1" / "run.json").stat().st_mtime_ns == s1_before
    assert summary(out)["s1"]["stability_mean"] != ""

    ran.clear()
    changed = dict(DEFAULTS, alpha=0.5)
    run_cohort(read_cohort(cohort, **changed), out, "nii.gz", recording, show_progress=False)
    assert ran == ["s1", "s2", "s3"]


def test_an_internal_error_in_one_subject_keeps_its_traceback_in_the_log(quick_engine, tmp_path, cohort_inputs,
                                                                         monkeypatch, caplog):
    from PETStabilityDenoiseLib.engine import run as engine_run

    real = engine_run.denoise

    def flaky(pet, mr, config, **kwargs):
        if mr is None:
            raise ZeroDivisionError("a bug")
        return real(pet, mr, config, **kwargs)

    monkeypatch.setattr(engine_run, "denoise", flaky)
    rows = read_cohort(three_subjects(tmp_path, cohort_inputs), **DEFAULTS)
    with caplog.at_level(logging.ERROR):
        outcomes = run_cohort(rows, tmp_path / "out", "nii.gz", run_serially, show_progress=False)
    assert [o.status for o in outcomes] == ["done", "failed", "failed"]
    assert outcomes[2].error == "internal error: ZeroDivisionError: a bug"
    assert "Traceback" in caplog.text and "ZeroDivisionError" in caplog.text


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_leaves_finished_folders_whole_and_no_partial_folder(quick_engine, tmp_path, cohort_inputs,
                                                                          stop):
    rows = read_cohort(three_subjects(tmp_path, cohort_inputs), **DEFAULTS)
    out = tmp_path / "out"

    def interrupted(tasks, on_outcome):
        run_serially(tasks[:1], on_outcome)
        # A killed task's half-written run folder, as a cancelled Ray task leaves it.
        (out / f".{tasks[2].row.subject}.partial-0000").mkdir()
        (out / f".{tasks[2].row.subject}.partial-0000" / "denoised.nii.gz").write_bytes(b"half")
        raise stop

    with pytest.raises(stop):
        run_cohort(rows, out, "nii.gz", interrupted, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["s1", "summary.csv"]
    assert [row["status"] for row in summary(out).values()] == ["done", "not run", "not run"]
    assert len(list((out / "s1").iterdir())) == 5  # four volumes and run.json


def test_clean_up_puts_back_an_old_run_set_aside_by_a_killed_replacement(tmp_path):
    out = tmp_path / "s1"
    old = tmp_path / ".s1.old-1234"
    old.mkdir()
    (old / "run.json").write_text("{}")
    (tmp_path / ".s1.partial-5678").mkdir()
    clean_up_interrupted(out)
    assert (out / "run.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["s1"]


# --- the command line and Ray ------------------------------------------------------------------------------------


def run_batch(argv, caplog):
    with caplog.at_level(logging.INFO):
        code = main(["batch", *[str(a) for a in argv]])
    assert "Traceback" not in caplog.text
    return code


def test_without_ray_more_than_one_worker_says_how_to_install_it(quick_engine, tmp_path, cohort_inputs,
                                                                  monkeypatch, caplog):
    monkeypatch.setattr(schedulers, "ray_available", lambda: False)
    cohort, out = three_subjects(tmp_path, cohort_inputs), tmp_path / "out"
    assert run_batch(["--cohort", cohort, "--out", out, "--workers", "2", "--preset", "tiny"], caplog) == 2
    assert 'pip install "petstabilitydenoise[cohort]"' in caplog.text and "--workers 1" in caplog.text
    caplog.clear()
    code = run_batch(["--cohort", cohort, "--out", out, "--workers", "1", "--preset", "tiny"], caplog)
    assert code == EXIT_SUBJECTS_FAILED and "one after another" in caplog.text
    assert [row["status"] for row in summary(out).values()] == ["done", "failed", "done"]


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--cpus-per-task", "0"], "--cpus-per-task must be at least 1"),
    (["--gpus-per-task", "-1"], "--gpus-per-task must be >= 0"),
    (["--epochs", "-4"], "line 2"),
])
def test_bad_scheduling_settings_are_refused_before_any_work(tmp_path, cohort_inputs, caplog, argv, message):
    out = tmp_path / "out"
    code = run_batch(["--cohort", three_subjects(tmp_path, cohort_inputs), "--out", out, *argv], caplog)
    assert code == 2 and message in caplog.text and not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(not schedulers.ray_available(), reason="needs Ray: pip install '.[cohort]'")
def test_batch_on_a_local_ray_of_two_cpus_isolates_a_failure_and_resumes(tmp_path, cohort_inputs, caplog):
    cohort, out = three_subjects(tmp_path, cohort_inputs), tmp_path / "out"
    argv = ["--cohort", cohort, "--out", out, "--workers", "2", "--preset", "tiny", "--device", "cpu"]
    assert run_batch(argv, caplog) == EXIT_SUBJECTS_FAILED
    first = summary(out)
    assert {subject: row["status"] for subject, row in first.items()} == {"s1": "done", "s2": "failed", "s3": "done"}
    assert "does not exist" in first["s2"]["error"]
    assert all(float(first[s]["wall_s"]) > 0 and first[s]["device"] == "cpu" for s in ("s1", "s3"))
    run_json = {s: (out / s / "run.json").stat().st_mtime_ns for s in ("s1", "s3")}

    shutil.copy(cohort_inputs["pet"], tmp_path / "missing.nii.gz")  # s2's PET appears
    assert run_batch(argv, caplog) == 0
    second = summary(out)
    assert {subject: row["status"] for subject, row in second.items()} == {"s1": "skipped", "s2": "done",
                                                                           "s3": "skipped"}
    assert {s: (out / s / "run.json").stat().st_mtime_ns for s in ("s1", "s3")} == run_json


def test_ray_settings_reserve_a_gpu_only_for_cuda_subjects(monkeypatch, tmp_path, cohort_inputs):
    """The resources each Ray task asks for, seen through a stand-in for Ray's remote function."""
    import types

    requested = []

    class Remote:
        def options(self, **resources):
            requested.append(resources)
            return self

        def remote(self, task):
            return len(requested)

    fake_ray = types.SimpleNamespace(remote=lambda function: Remote(), init=lambda **kw: None,
                                     shutdown=lambda: None, wait=lambda refs, num_returns: (refs[:1], refs[1:]),
                                     get=lambda ref: not_run(tasks[ref - 1]), exceptions=None)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    cohort = write_cohort(tmp_path / "cohort.csv", [["a", cohort_inputs["pet"], "", "cuda"],
                                                    ["b", cohort_inputs["pet"], "", "cpu"]], extra_columns=("device",))
    tasks = [SubjectTask(row, tmp_path / row.subject, "nii.gz") for row in read_cohort(cohort, **DEFAULTS)]
    seen = []
    run_on_ray(tasks, seen.append, RaySettings(address="ray://head:10001", cpus_per_task=4, gpus_per_task=0.5))
    assert requested == [{"num_cpus": 4, "num_gpus": 0.5}, {"num_cpus": 4, "num_gpus": 0}]
    assert [outcome.subject for outcome in seen] == ["a", "b"]


def test_the_scheduler_is_serial_for_one_worker_and_ray_otherwise(tmp_path, cohort_inputs):
    from PETStabilityDenoiseLib.cohort.schedulers import choose_scheduler

    cohort = three_subjects(tmp_path, cohort_inputs)
    rows = read_cohort(cohort, **DEFAULTS)
    assert choose_scheduler(rows, workers=1)[0] is run_serially
    local, description = choose_scheduler(rows, workers=2)
    assert local.func is run_on_ray and local.keywords["settings"] == RaySettings(
        workers=2, cpus_per_task=max(1, (os.cpu_count() or 1) // 2))
    cluster, description = choose_scheduler(rows, address="ray://head:10001", gpus_per_task=0.25)
    assert cluster.keywords["settings"] == RaySettings(address="ray://head:10001", cpus_per_task=1, gpus_per_task=0.25)
    assert "ray://head:10001" in description


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_unless_the_cohort_runs_on_a_cluster(tmp_path, cohort_inputs):
    from PETStabilityDenoiseLib.cohort.schedulers import choose_scheduler

    rows = read_cohort(three_subjects(tmp_path, cohort_inputs), **dict(DEFAULTS, parameters={"device": "cuda"}))
    with pytest.raises(InputError, match="the device .cuda. was requested"):
        choose_scheduler(rows, workers=2)
    assert choose_scheduler(rows, address="ray://head:10001")[0].func is run_on_ray
