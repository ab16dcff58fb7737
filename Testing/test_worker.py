"""The background worker's protocol and the caller's side of it, without Slicer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.engine import blend as blend_module
from PETStabilityDenoiseLib.worker import __main__ as worker
from PETStabilityDenoiseLib.worker.process import WorkerProcess, parse_event


def protocol_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_worker_writes_the_run_folder_and_reports_json_lines(small_pet_mr, tmp_path):
    pet, mr, _ = small_pet_mr
    sitk.WriteImage(pet, str(tmp_path / "pet.nrrd"))
    sitk.WriteImage(mr, str(tmp_path / "mr.nrrd"))
    completed = subprocess.run(
        [sys.executable, "-m", "PETStabilityDenoiseLib.worker", "--pet", str(tmp_path / "pet.nrrd"),
         "--mr", str(tmp_path / "mr.nrrd"), "--out", str(tmp_path / "out"), "--preset", "tiny",
         "--parameters", json.dumps({"device": "cpu", "epochs": 4, "start": 2})],
        capture_output=True, text=True, timeout=300, cwd=Path(worker.__file__).parents[2])
    assert completed.returncode == 0, completed.stderr
    events = protocol_lines(completed.stdout)
    assert [e["epoch"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]
    assert {"loss", "elapsed", "eta", "samples", "epochs"} <= set(events[0])
    assert events[-1]["event"] == "done"
    for file_name in events[-1]["outputs"].values():
        output = sitk.ReadImage(str(tmp_path / "out" / file_name))
        assert output.GetSize() == pet.GetSize()
        np.testing.assert_allclose(output.GetDirection(), pet.GetDirection(), atol=1e-9)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["config"]["epochs"] == 4


def test_worker_runs_the_diffusion_model(small_pet_mr, tiny_ddpm_model_dir, tmp_path):
    pet, mr, _ = small_pet_mr
    sitk.WriteImage(pet, str(tmp_path / "pet.nrrd"))
    sitk.WriteImage(mr, str(tmp_path / "mr.nrrd"))
    parameters = {"model_dir": str(tiny_ddpm_model_dir), "samples": 2, "steps": 2, "device": "cpu", "threads": 1}
    completed = subprocess.run(
        [sys.executable, "-m", "PETStabilityDenoiseLib.worker", "--pet", str(tmp_path / "pet.nrrd"),
         "--mr", str(tmp_path / "mr.nrrd"), "--out", str(tmp_path / "out"), "--method", "ddpm",
         "--parameters", json.dumps(parameters)],
        capture_output=True, text=True, timeout=300, cwd=Path(worker.__file__).parents[2])
    assert completed.returncode == 0, completed.stderr
    events = protocol_lines(completed.stdout)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["loss"] is None and e["samples"] == 2 for e in progress)
    assert [e["epoch"] for e in progress] == list(range(1, progress[0]["epochs"] + 1))
    assert events[-1]["event"] == "done" and len(events) == len(progress) + 1
    assert sorted(events[-1]["outputs"]) == ["denoised", "network_output", "stability", "stability_norm"]
    for file_name in events[-1]["outputs"].values():
        output = sitk.ReadImage(str(tmp_path / "out" / file_name))
        assert output.GetSize() == pet.GetSize()
        np.testing.assert_allclose(output.GetDirection(), pet.GetDirection(), atol=1e-9)
        assert np.isfinite(sitk.GetArrayFromImage(output)).all()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["method"] == "ddpm" and record["config"]["samples"] == 2


def test_worker_refuses_a_parameter_the_method_does_not_have(small_pet_mr, tmp_path, capsys):
    sitk.WriteImage(small_pet_mr[0], str(tmp_path / "pet.nrrd"))
    code = worker.main(["--pet", str(tmp_path / "pet.nrrd"), "--out", str(tmp_path / "out"), "--method", "ddpm",
                        "--parameters", json.dumps({"samples": 2, "epochs": 50})])
    assert code == worker.EXIT_INPUT_ERROR
    event = protocol_lines(capsys.readouterr().out)[-1]
    assert event["event"] == "error" and event["kind"] == "input"
    assert "unknown engine parameter epochs" in event["message"] and "samples" in event["message"]
    assert not (tmp_path / "out").exists()


def test_worker_reports_bad_parameters_as_input_error(small_pet_mr, tmp_path, capsys):
    sitk.WriteImage(small_pet_mr[0], str(tmp_path / "pet.nrrd"))
    code = worker.main(["--pet", str(tmp_path / "pet.nrrd"), "--out", str(tmp_path / "out"),
                        "--parameters", "{epochs: 3}"])
    assert code == worker.EXIT_INPUT_ERROR
    event = protocol_lines(capsys.readouterr().out)[-1]
    assert event["event"] == "error" and event["kind"] == "input" and "not valid JSON" in event["message"]
    assert not (tmp_path / "out").exists()


def test_worker_refuses_a_fifo_as_input_without_waiting(tmp_path, capsys):
    fifo = tmp_path / "pet.nii.gz"
    os.mkfifo(fifo)  # opening it for reading would block until someone writes
    code = worker.main(["--pet", str(fifo), "--out", str(tmp_path / "out"), "--preset", "tiny"])
    assert code == worker.EXIT_INPUT_ERROR
    event = protocol_lines(capsys.readouterr().out)[-1]
    assert event["event"] == "error" and event["kind"] == "input" and "is not a regular file" in event["message"]
    assert "traceback" not in event and not (tmp_path / "out").exists()


def test_worker_turns_gpu_out_of_memory_into_advice(small_pet_mr, tmp_path, capsys, monkeypatch):
    sitk.WriteImage(small_pet_mr[0], str(tmp_path / "pet.nrrd"))

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("PETStabilityDenoiseLib.engine.run.denoise", out_of_memory)
    code = worker.main(["--pet", str(tmp_path / "pet.nrrd"), "--out", str(tmp_path / "out"), "--preset", "tiny"])
    assert code == worker.EXIT_OUT_OF_MEMORY
    event = protocol_lines(capsys.readouterr().out)[-1]
    assert event["kind"] == "out_of_memory"
    assert "'cpu'" in event["message"] and "smaller preset" in event["message"] and "2.00 GiB" in event["message"]
    assert "fewer samples" in event["message"]


def test_parse_event_separates_protocol_from_log_text():
    assert parse_event('{"event": "progress", "epoch": 1}') == {"event": "progress", "epoch": 1}
    assert parse_event('{"epoch": 1}') is None  # JSON, but not a protocol line
    assert parse_event("{not json") is None
    assert parse_event("INFO petstab: resampled MR") is None


def test_worker_process_collects_events_and_log_tail():
    script = ("import json, sys\n"
              "print('warming up')\n"
              "print(json.dumps({'event': 'progress', 'epoch': 1}), flush=True)\n"
              "print('a warning', file=sys.stderr)\n")
    process = WorkerProcess([sys.executable, "-c", script], cwd=".")
    process._process.wait(30)
    process._reader.join(30)
    assert process.finished() and process.returncode == 0
    assert process.events() == [{"event": "progress", "epoch": 1}]
    assert process.events() == []
    assert process.log_tail() == ["warming up", "a warning"]


def test_numpy_fallback_blend_matches_the_kernel():
    rng = np.random.default_rng(3)
    x0, net, stability = (rng.random((5, 6, 7), dtype=np.float32) for _ in range(3))
    expected = [np.empty_like(x0) for _ in range(2)]
    got = [np.empty_like(x0) for _ in range(2)]
    blend_module._blend_kernel(x0.ravel(), net.ravel(), stability.ravel(), np.float32(1.7),
                               expected[0].ravel(), expected[1].ravel())
    blend_module._blend_numpy(x0.ravel(), net.ravel(), stability.ravel(), np.float32(1.7),
                              got[0].ravel(), got[1].ravel())
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    np.testing.assert_array_equal(got[1], expected[1])
    assert (got[1] <= 1).all() and (got[1] == 1).any()


def test_worker_process_survives_output_that_is_not_valid_text():
    # Slicer's launchConsoleProcess decodes strictly; a bad byte must not stop the reading.
    def strict_launcher(args, cwd):
        return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8")

    script = ("import json, sys\n"
              "sys.stdout.buffer.write(b'\\xff\\xfe not text\\n'); sys.stdout.flush()\n"
              "print(json.dumps({'event': 'done'}), flush=True)\n")
    process = WorkerProcess([sys.executable, "-c", script], cwd=".", launcher=strict_launcher)
    process._process.wait(30)
    process._reader.join(30)
    assert process.finished()
    assert process.events() == [{"event": "done"}]
    assert process.log_tail() == ["\ufffd\ufffd not text"]


def test_a_failure_while_polling_ends_the_run_as_failed(tmp_path):
    from PETStabilityDenoiseLib.slicer.logic import RunHandle

    class FakeWorker:
        killed = False

        def events(self):
            return [{"event": "progress", "epoch": 1}]  # malformed: no "epochs", "elapsed", ...

        def finished(self):
            return False

        def kill(self):
            self.killed = True

        def log_tail(self, lines=20):
            return []

    worker, ended = FakeWorker(), []
    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    handle = RunHandle(worker, temp_dir, import_result=lambda folder: None, progress=lambda report: None,
                       finished=ended.append)
    assert handle.poll() is False
    assert handle.state == "failed" and isinstance(handle.error, KeyError)
    assert worker.killed and ended == [handle] and not temp_dir.exists()
    assert handle.poll() is False and ended == [handle]  # once only


def test_a_broken_torch_is_reported_as_a_protocol_error(tmp_path, capsys, monkeypatch):
    # The memory advice must not import torch again: a failing torch import may be the error itself.
    def broken_torch(args):
        raise OSError("[WinError 126] Error loading c10.dll")

    monkeypatch.setattr(worker, "run", broken_torch)
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch now raises ImportError
    code = worker.main(["--pet", str(tmp_path / "pet.nrrd"), "--out", str(tmp_path / "out")])
    assert code == worker.EXIT_INTERNAL_ERROR
    event = protocol_lines(capsys.readouterr().out)[-1]
    assert event["kind"] == "internal" and "c10.dll" in event["message"]


def test_a_protocol_line_is_one_write(monkeypatch):
    # Written in one piece, nothing another thread writes to the same stream can split it.
    from PETStabilityDenoiseLib.worker.protocol import emit

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    recorder = Recorder()
    monkeypatch.setattr(sys, "stdout", recorder)
    emit("progress", epoch=1)
    assert len(recorder.writes) == 1 and recorder.writes[0].endswith("\n")
    assert parse_event(recorder.writes[0].rstrip("\n")) == {"event": "progress", "epoch": 1}


def test_kill_ends_the_worker_without_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # as in Slicer before the packages are installed
    process = WorkerProcess([sys.executable, "-c", "import time; time.sleep(60)"], cwd=".")
    process.kill()
    assert process.returncode is not None


def test_the_last_error_of_a_finished_worker_is_not_lost(tmp_path):
    # The worker's error line and its exit can both land between two looks at the worker; the run must still
    # end with that error's message, not a bare exit code.
    from PETStabilityDenoiseLib.errors import InputError
    from PETStabilityDenoiseLib.slicer.logic import RunHandle

    class LateErrorWorker:
        returncode = 2

        def __init__(self):
            self.queued, self.exited = [], False

        def events(self):
            drained, self.queued = self.queued, []
            if not self.exited:  # the last line arrives, and the process exits, just after this drain
                self.queued, self.exited = [{"event": "error", "kind": "input", "message": "the PET is empty"}], True
            return drained

        def finished(self):
            return self.exited

        def kill(self):
            pass

        def log_tail(self, lines=20):
            return []

    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    handle = RunHandle(LateErrorWorker(), temp_dir, import_result=lambda folder: None, progress=None, finished=None)
    for _ in range(3):
        if not handle.poll():
            break
    assert handle.state == "failed"
    assert isinstance(handle.error, InputError) and "the PET is empty" in str(handle.error)


class ExitedWorker:
    """A worker process that has exited with ``returncode`` and reported nothing."""

    def __init__(self, returncode: int):
        self.returncode = returncode

    def events(self):
        return []

    def finished(self):
        return True

    def kill(self):
        pass

    def log_tail(self, lines=20):
        return []


def test_a_worker_killed_by_a_signal_is_reported_with_the_memory_advice(tmp_path):
    # The kernel's out-of-memory killer sends SIGKILL: the worker writes no error line.
    from PETStabilityDenoiseLib.errors import WorkerFailed
    from PETStabilityDenoiseLib.slicer.logic import RunHandle
    from PETStabilityDenoiseLib.worker.protocol import CPU_MEMORY_ADVICE

    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    handle = RunHandle(ExitedWorker(returncode=-9), temp_dir, import_result=lambda folder: None, progress=None, finished=None)
    assert handle.poll() is False
    assert isinstance(handle.error, WorkerFailed)
    assert "signal 9" in str(handle.error) and CPU_MEMORY_ADVICE in str(handle.error)


def test_a_temporary_folder_that_cannot_be_removed_is_named(tmp_path, monkeypatch, caplog):
    # It holds copies of the patient's volumes: the user must learn that it stayed, and where.
    from PETStabilityDenoiseLib.slicer import logic

    temp_dir = tmp_path / "run"
    temp_dir.mkdir()
    monkeypatch.setattr(logic.shutil, "rmtree", lambda path, ignore_errors=False: None)  # a file held open
    handle = logic.RunHandle(ExitedWorker(returncode=0), temp_dir, import_result=lambda folder: "result", progress=None,
                             finished=None)
    with caplog.at_level("WARNING"):
        assert handle.poll() is False
    assert handle.state == "succeeded"
    assert str(temp_dir) in caplog.text and "delete it by hand" in caplog.text


def ended_process_id() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("psutil_installed", [True, False], ids=["psutil", "without psutil"])
def test_the_folders_of_runs_whose_process_ended_are_removed(tmp_path, monkeypatch, psutil_installed):
    # A Slicer that crashed mid-run leaves copies of the patient's volumes in the temporary folder.
    from PETStabilityDenoiseLib.worker.temp_folders import make_temp_folder, remove_abandoned_temp_folders

    if not psutil_installed:
        monkeypatch.setitem(sys.modules, "psutil", None)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        abandoned = tmp_path / f"PETStabilityDenoise-{ended_process_id()}-x1y2"
        another_running = tmp_path / f"PETStabilityDenoise-{running.pid}-a3b4"
        unrelated = tmp_path / "PETStabilityDenoise-notapid-c5d6"
        for folder in (abandoned, another_running, unrelated):
            folder.mkdir()
            (folder / "pet.nrrd").write_bytes(b"copy of a PET")
        this_process = make_temp_folder(str(tmp_path))

        assert remove_abandoned_temp_folders(str(tmp_path)) == [abandoned]
        assert not abandoned.exists()
        assert another_running.exists() and unrelated.exists() and this_process.exists()
    finally:
        running.kill()
        running.wait()


def slicer_launch_console_process(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
    """Slicer 5.8's ``slicer.util.launchConsoleProcess`` as the worker calls it (useStartupEnvironment=False)."""
    assert not useStartupEnvironment
    env = {**os.environ, **updateEnvironment} if updateEnvironment else None
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)


@pytest.mark.parametrize("inside_slicer", [False, True])
def test_the_worker_imports_the_library_beside_it_even_with_pythonsafepath(tmp_path, monkeypatch, inside_slicer):
    # With PYTHONSAFEPATH set, 'python -m' does not put cwd on sys.path: the worker would import another installed
    # copy of the library (here, the test environment's), not the module's own.
    from PETStabilityDenoiseLib.slicer import application
    from PETStabilityDenoiseLib.worker.process import launch_subprocess

    own_copy = tmp_path / "PETStabilityDenoiseLib"
    own_copy.mkdir()
    (own_copy / "__init__.py").write_text("BESIDE_THE_MODULE = True\n")
    monkeypatch.setenv("PYTHONSAFEPATH", "1")
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(
        util=types.SimpleNamespace(launchConsoleProcess=slicer_launch_console_process)))
    launcher = application.launch_worker if inside_slicer else launch_subprocess
    script = "import PETStabilityDenoiseLib as lib; print(getattr(lib, 'BESIDE_THE_MODULE', lib.__file__))"
    process = WorkerProcess([sys.executable, "-c", script], cwd=str(tmp_path), launcher=launcher)
    process._process.wait(30)
    process._reader.join(30)
    assert process.log_tail() == ["True"]


@pytest.mark.skipif(sys.platform == "win32", reason="the children are POSIX 'sleep' processes")
def test_kill_leaves_no_child_of_a_process_that_keeps_starting_them(tmp_path):
    # A child started between the listing of the tree and the kill would escape a one-time snapshot.
    psutil = pytest.importorskip("psutil")
    started = tmp_path / "started.txt"
    spawner = ("import subprocess, sys\n"
               "with open(sys.argv[1], 'a') as pids:\n"
               "    while True:\n"
               "        pids.write(f'{subprocess.Popen([\"sleep\", \"60\"]).pid}\\n'); pids.flush()\n")
    escaped = []
    for _ in range(3):  # the one-time snapshot let children escape in 4 rounds of 5
        process = WorkerProcess([sys.executable, "-c", spawner, str(started)], cwd=".")
        deadline = time.monotonic() + 30
        while not started.is_file() or len(started.read_text().split()) < 20:
            assert time.monotonic() < deadline, f"the spawner started too few children: {process.log_tail()}"
            time.sleep(0.01)
        process.kill()
        pids = [int(pid) for pid in started.read_text().split()]
        started.unlink()
        for pid in pids:
            try:
                child = psutil.Process(pid)
                if child.status() != psutil.STATUS_ZOMBIE:
                    escaped.append(pid)
                    child.kill()
            except psutil.NoSuchProcess:
                pass
    assert escaped == [], f"{len(escaped)} children escaped the kill"
