"""Bad input and faults, tried as a user would: ``petstab`` must refuse with exit code 2 and a message that
names the file and the problem, print no traceback, leave the inputs unchanged and leave no output behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETStabilityDenoiseLib.cli import main
from PETStabilityDenoiseLib.volumes.validation import MAX_VOXELS


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "not a file"


def refused(argv, inputs, out: Path, capsys, caplog, message: str) -> None:
    """Runs ``petstab argv`` and checks the refusal: code 2, ``message`` logged, no traceback, inputs and out intact."""
    before = {path: digest(path) for path in inputs}
    with caplog.at_level(logging.INFO):
        code = main([str(a) for a in argv])
    printed = capsys.readouterr()
    text = caplog.text + printed.out + printed.err
    assert code == 2, text
    assert message in text
    assert "Traceback" not in text
    assert {path: digest(path) for path in inputs} == before
    assert not out.exists(), "a refused run left an output folder"


@pytest.fixture()
def inputs(small_pet_mr, tmp_path):
    pet, mr, _ = small_pet_mr
    paths = {"pet": tmp_path / "pet.nii.gz", "mr": tmp_path / "mr.nrrd"}
    sitk.WriteImage(pet, str(paths["pet"]), True)
    sitk.WriteImage(mr, str(paths["mr"]), True)
    return paths


def denoise(pet: Path, mr: Path, out: Path) -> list:
    return ["denoise", "--pet", pet, "--mr", mr, "--out", out, "--preset", "tiny", "--device", "cpu",
            "--progress", "none"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nan_and_inf_in_a_nifti_pet_are_refused(small_pet_mr, inputs, tmp_path, capsys, caplog, suffix):
    # ITK's NIfTI reader would read them as 0 and the run would look normal.
    pet, _, _ = small_pet_mr
    array = sitk.GetArrayFromImage(pet)
    array[10, 10, 10], array[11, 11, 11] = np.nan, np.inf
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(pet)
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(bad, str(path), True)
    out = tmp_path / "out"
    refused(denoise(path, inputs["mr"], out), [path, inputs["mr"]], out, capsys, caplog, f"{path} holds 2 NaN/Inf")


def test_nan_in_an_nrrd_pet_is_refused(small_pet_mr, inputs, tmp_path, capsys, caplog):
    pet, _, _ = small_pet_mr
    array = sitk.GetArrayFromImage(pet)
    array[10, 10, 10] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(pet)
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(bad, str(path), True)
    out = tmp_path / "out"
    refused(denoise(path, inputs["mr"], out), [path, inputs["mr"]], out, capsys, caplog, "1 NaN/Inf voxels")


@pytest.mark.parametrize("suffix, message", [(".nii.gz", "is truncated or its compressed data is corrupt"),
                                             (".nii", "is truncated: its header announces"),
                                             (".nrrd", "Could not read"), (".mha", "Could not read")])
def test_a_truncated_pet_is_refused(small_pet_mr, inputs, tmp_path, capsys, caplog, suffix, message):
    # Cut at 60 % of its bytes; ITK would fill 40 % of a NIfTI's voxels with zeros.
    pet, _, _ = small_pet_mr
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(pet, str(whole), True)
    path = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    path.write_bytes(data[: int(0.6 * len(data))])
    out = tmp_path / "out"
    refused(denoise(path, inputs["mr"], out), [path, inputs["mr"]], out, capsys, caplog, message)


def test_corrupt_gzip_data_is_refused(inputs, tmp_path, capsys, caplog):
    data = bytearray(inputs["pet"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    refused(denoise(path, inputs["mr"], out), [path, inputs["mr"]], out, capsys, caplog, "corrupt")


def test_a_fifo_is_refused_without_waiting(inputs, tmp_path, capsys, caplog):
    fifo = tmp_path / "pet.nii.gz"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would block until someone writes
    out = tmp_path / "out"
    refused(denoise(fifo, inputs["mr"], out), [inputs["mr"]], out, capsys, caplog, "is not a regular file")


def test_an_oversized_header_is_refused_before_reading_the_data(inputs, tmp_path, capsys, caplog):
    # 1100^3 float voxels would be 5.3 GB; the file holds no data at all, so only the header is read.
    path = tmp_path / "huge.nrrd"
    path.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 1100 1100 1100\nencoding: raw\nendian: little\n\n")
    assert 1100**3 > MAX_VOXELS
    out = tmp_path / "out"
    refused(denoise(path, inputs["mr"], out), [path, inputs["mr"]], out, capsys, caplog,
            "announces 1100 x 1100 x 1100 voxels")


def test_the_checks_apply_to_the_mr_too(inputs, tmp_path, capsys, caplog):
    data = gzip.decompress(inputs["pet"].read_bytes())
    path = tmp_path / "mr.nii"
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    refused(denoise(inputs["pet"], path, out), [inputs["pet"], path], out, capsys, caplog, "is truncated")


@pytest.mark.parametrize("labels, args, message", [
    ("bundled", ["--lesions", "-2"], "n_lesions must be >= 0"),
    ("bundled", ["--lesions", "1000"], "ask for fewer or smaller lesions"),
    ("bundled", ["--seed", "-1"], "seed must be >= 0"),
    ("bundled", ["--noise-seed", "-3"], "noise_seed must be >= 0"),
    ("an image", [], "not BrainWeb tissue labels"),
    ("no grey matter", [], "no GM voxels"),
])
def test_simulate_refuses_bad_labels_and_settings(small_pet_mr, tmp_path, capsys, caplog, labels, args, message):
    from PETStabilityDenoiseLib.simulation import bundled_labels_path

    if labels == "bundled":
        path = bundled_labels_path()
    else:
        pet = small_pet_mr[0]
        array = sitk.GetArrayFromImage(pet) if labels == "an image" else np.full(pet.GetSize()[::-1], 3, np.uint8)
        path = tmp_path / "labels.nii.gz"
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(pet)
        sitk.WriteImage(image, str(path))
    out = tmp_path / "out"
    refused(["simulate", "--labels", path, "--out", out, *args], [path], out, capsys, caplog, message)


# --- outputs: complete or absent, and the settings checked before any work ---------------------------------


def tree(folder: Path) -> dict:
    """Every file below ``folder`` with its hash: the state a failed run must leave unchanged."""
    return {str(path.relative_to(folder)): digest(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def no_leftovers(out: Path) -> bool:
    return not [path for path in out.parent.iterdir() if path.name.startswith(f".{out.name}.")]


def run_cli(argv, capsys, caplog):
    with caplog.at_level(logging.INFO):
        code = main([str(a) for a in argv])
    printed = capsys.readouterr()
    text = caplog.text + printed.out + printed.err
    assert "Traceback" not in text
    return code, text


def test_a_rerun_replaces_the_earlier_run_as_a_whole(quick_engine, inputs, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out) + ["--format", "nrrd"], capsys, caplog)[0] == 0
    code, text = run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)
    assert code == 0 and "Replaced the earlier run" in text
    # No nrrd file of the first run is left beside the new nii.gz set.
    assert sorted(tree(out)) == ["denoised.nii.gz", "network_output.nii.gz", "run.json", "stability.nii.gz",
                                 "stability_norm.nii.gz"]
    assert no_leftovers(out)


def test_no_overwrite_refuses_an_earlier_run(quick_engine, inputs, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)[0] == 0
    before = tree(out)
    code, text = run_cli(denoise(inputs["pet"], inputs["mr"], out) + ["--no-overwrite"], capsys, caplog)
    assert code == 2 and "already holds a run" in text and tree(out) == before


def test_a_folder_of_other_files_is_never_replaced(quick_engine, inputs, tmp_path, capsys, caplog):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    code, text = run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)
    assert code == 2 and "not a PETStabilityDenoise run (thesis.txt)" in text
    assert (out / "thesis.txt").read_text() == "years of work" and no_leftovers(out)


@pytest.mark.parametrize("where, message", [("file", "is a file, not a folder"),
                                            ("below_file", "which is a file, not a folder"),
                                            ("proc", "cannot write beside out_dir (petstab --out)")])
def test_an_unusable_out_is_refused_before_the_inputs_are_read(quick_engine, inputs, tmp_path, capsys, caplog,
                                                               monkeypatch, where, message):
    from PETStabilityDenoiseLib.engine import run as engine_run

    monkeypatch.setattr(engine_run, "read_volume", lambda path: pytest.fail("the inputs were read"))
    monkeypatch.setattr(engine_run, "read_pet", lambda path, suv=None: pytest.fail("the PET was read"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # /proc takes no new folders, even for root (a read-only location that a permission bit cannot fake).
    out = {"file": a_file, "below_file": a_file / "out", "proc": Path("/proc/petstab_out")}[where]
    code, text = run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)
    assert code == 2 and message in text
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("argv, message", [(["--alpha", "-1"], "alpha must be a finite number >= 0"),
                                           (["--threads", "-3"], "threads must be a whole number >= 1"),
                                           (["--device", "cuda"], "the device 'cuda' was requested")])
def test_bad_settings_are_refused_before_any_work(inputs, tmp_path, capsys, caplog, monkeypatch, argv, message):
    import torch

    from PETStabilityDenoiseLib.engine import run as engine_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(engine_run, "read_volume", lambda path: pytest.fail("the inputs were read"))
    monkeypatch.setattr(engine_run, "read_pet", lambda path, suv=None: pytest.fail("the PET was read"))
    out = tmp_path / "out"
    refused(denoise(inputs["pet"], inputs["mr"], out) + argv, [inputs["pet"], inputs["mr"]], out, capsys, caplog,
            message)


def failing_writes(monkeypatch, after: int, error: BaseException) -> None:
    """Makes SimpleITK's writer fail from its ``after``-th call on, as a full disk or an interrupt would."""
    real_write, calls = sitk.WriteImage, []

    def write(*args, **kwargs):
        calls.append(args)
        if len(calls) >= after:
            raise error
        return real_write(*args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", write)


@pytest.mark.parametrize("error, code, message", [
    (RuntimeError("itk::ERROR: No space left on device"), 1, "No space left on device"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_a_failed_write_leaves_the_earlier_run_as_it_was(quick_engine, inputs, tmp_path, capsys, caplog,
                                                         monkeypatch, error, code, message):
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)[0] == 0
    before = tree(out)
    failing_writes(monkeypatch, after=3, error=error)
    got, text = run_cli(denoise(inputs["pet"], inputs["mr"], out) + ["--alpha", "0.7"], capsys, caplog)
    assert got == code and message in text
    assert tree(out) == before and no_leftovers(out)
    if code == 1:
        assert f"{out} was left as it was" in text


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM ends a Windows process outright")
def test_sigterm_stops_a_run_as_ctrl_c_does(quick_engine, inputs, tmp_path, capsys, caplog, monkeypatch):
    """kill, or a job scheduler's time limit: the staged folder goes, the earlier run stays, the handler is restored."""
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)[0] == 0
    before = tree(out)
    real_write = sitk.WriteImage

    def write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_write(*args, **kwargs)

    def ignore(signum, frame):  # the test process's own handler: without petstab's, the run would go on
        pass

    monkeypatch.setattr(sitk, "WriteImage", write)
    original = signal.signal(signal.SIGTERM, ignore)
    try:
        got, text = run_cli(denoise(inputs["pet"], inputs["mr"], out) + ["--alpha", "0.7"], capsys, caplog)
        assert signal.getsignal(signal.SIGTERM) is ignore
    finally:
        signal.signal(signal.SIGTERM, original)
    assert got == 130 and "interrupted" in text
    assert tree(out) == before and no_leftovers(out)


def test_a_failed_first_write_leaves_nothing(quick_engine, inputs, tmp_path, capsys, caplog, monkeypatch):
    failing_writes(monkeypatch, after=2, error=RuntimeError("No space left on device"))
    out = tmp_path / "out"
    code, _ = run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)
    assert code == 1 and not out.exists() and no_leftovers(out)


def test_blend_refuses_a_pet_changed_since_the_run(quick_engine, small_pet_mr, inputs, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)[0] == 0
    before = tree(out)
    pet, _, _ = small_pet_mr
    sitk.WriteImage(pet * 1.01, str(inputs["pet"]), True)  # overwritten in place, same grid
    code, text = run_cli(["blend", "--run", out, "--alpha", "0.5"], capsys, caplog)
    assert code == 2 and "is not the image this run processed" in text and tree(out) == before


def test_blend_refuses_a_run_json_without_its_keys(quick_engine, inputs, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)[0] == 0
    record = json.loads((out / "run.json").read_text())
    del record["format"]
    (out / "run.json").write_text(json.dumps(record))
    before = tree(out)
    code, text = run_cli(["blend", "--run", out, "--alpha", "0.5"], capsys, caplog)
    assert code == 2 and "lacks format" in text and tree(out) == before


def test_blend_is_atomic_too(quick_engine, inputs, tmp_path, capsys, caplog, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)[0] == 0
    before = tree(out)
    failing_writes(monkeypatch, after=2, error=RuntimeError("No space left on device"))
    code, text = run_cli(["blend", "--run", out, "--alpha", "0.5"], capsys, caplog)
    assert code == 1 and "No space left on device" in text and tree(out) == before and no_leftovers(out)


def test_blend_rewrites_the_run_as_a_whole(quick_engine, inputs, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert run_cli(denoise(inputs["pet"], inputs["mr"], out), capsys, caplog)[0] == 0
    kept = {name: digest(out / name) for name in ("network_output.nii.gz", "stability.nii.gz")}
    assert run_cli(["blend", "--run", out, "--alpha", "0.5"], capsys, caplog)[0] == 0
    assert json.loads((out / "run.json").read_text())["alpha"] == 0.5
    assert {name: digest(out / name) for name in kept} == kept and no_leftovers(out)


def test_the_same_volume_as_pet_and_mr_is_warned_about(quick_engine, inputs, tmp_path, capsys, caplog):
    code, text = run_cli(denoise(inputs["pet"], inputs["pet"], tmp_path / "out"), capsys, caplog)
    assert code == 0 and "is the same image as the PET" in text


# --- the diffusion model's files --------------------------------------------------------------------------


def damaged_model(source: Path, folder: Path, how: str) -> Path:
    """A copy of a model folder with a flipped byte in its weights, or truncated weights with a re-hashed manifest."""
    import shutil

    from PETStabilityDenoiseLib.engine.ddpm.weights import MANIFEST_FILE, WEIGHTS_FILE, sha256_of

    shutil.copytree(source, folder)
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    if how == "flipped byte":
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    else:
        weights.write_bytes(bytes(data[: len(data) // 2]))
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest["sha256"] = sha256_of(weights)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("how, message", [("flipped byte", "do not match their recorded checksum"),
                                          ("truncated, re-hashed", "cannot be loaded")])
def test_damaged_weights_are_refused(tiny_ddpm_model_dir, inputs, tmp_path, capsys, caplog, how, message):
    model = damaged_model(tiny_ddpm_model_dir, tmp_path / "model", how)
    out = tmp_path / "out"
    argv = ["denoise", "--method", "ddpm", "--pet", inputs["pet"], "--mr", inputs["mr"], "--out", out,
            "--ddpm-model", model, "--samples", "2", "--device", "cpu", "--progress", "none"]
    refused(argv, [inputs["pet"], inputs["mr"], model / "weights.pt"], out, capsys, caplog, message)


def test_damaged_weights_are_an_error_event_of_the_worker(tiny_ddpm_model_dir, inputs, tmp_path, capsys):
    from PETStabilityDenoiseLib.worker import __main__ as worker

    model = damaged_model(tiny_ddpm_model_dir, tmp_path / "model", "flipped byte")
    code = worker.main(["--pet", str(inputs["pet"]), "--mr", str(inputs["mr"]), "--out", str(tmp_path / "out"),
                        "--method", "ddpm", "--parameters", json.dumps({"model_dir": str(model), "device": "cpu"})])
    printed = capsys.readouterr()
    assert code == worker.EXIT_INPUT_ERROR and "Traceback" not in printed.err
    event = json.loads(printed.out.strip().splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == "input" and "recorded checksum" in event["message"]


def test_an_internal_error_keeps_its_traceback(inputs, tmp_path, capsys, caplog, monkeypatch):
    # A bug is not the user's input: exit code 1, and the traceback stays in the log for the report.
    from PETStabilityDenoiseLib.engine import run as engine_run

    def broken(*args, **kwargs):
        raise ValueError("an engine bug")

    monkeypatch.setattr(engine_run, "denoise", broken)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = main([str(a) for a in denoise(inputs["pet"], inputs["mr"], out)])
    assert code == 1
    assert "internal error" in caplog.text and "Traceback" in caplog.text and "an engine bug" in caplog.text
    assert not out.exists() and no_leftovers(out)


def test_the_worker_sends_an_internal_error_with_its_traceback(inputs, tmp_path, capsys, monkeypatch):
    from PETStabilityDenoiseLib.engine import run as engine_run
    from PETStabilityDenoiseLib.worker import __main__ as worker

    def broken(*args, **kwargs):
        raise ValueError("an engine bug")

    monkeypatch.setattr(engine_run, "denoise", broken)
    code = worker.main(["--pet", str(inputs["pet"]), "--mr", str(inputs["mr"]), "--out", str(tmp_path / "out"),
                        "--preset", "tiny", "--parameters", json.dumps({"device": "cpu"})])
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == worker.EXIT_INTERNAL_ERROR
    assert event["kind"] == "internal" and "an engine bug" in event["message"] and "Traceback" in event["traceback"]
