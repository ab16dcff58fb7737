"""The pipeline on images (geometry, validation) and the petstab command line."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PETStabilityDenoiseLib.cli import main
from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.pipeline import denoise
from PETStabilityDenoiseLib.engine.progress import make_reporter
from PETStabilityDenoiseLib.errors import InputError
from PETStabilityDenoiseLib.settings import EpochReport, get_preset
from PETStabilityDenoiseLib.volumes.run_folder import strict_json

TINY = get_preset("tiny")
REPO = Path(__file__).resolve().parents[1]


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin()
            and a.GetSpacing() == b.GetSpacing() and a.GetDirection() == b.GetDirection())


def test_outputs_sit_exactly_on_the_pet_grid(small_pet_mr, caplog):
    pet, mr, _ = small_pet_mr
    pet_before, mr_before = sitk.GetArrayFromImage(pet).copy(), sitk.GetArrayFromImage(mr).copy()
    with caplog.at_level(logging.INFO):
        result = denoise(pet, mr, TINY, alpha=0.6)
    assert any("Resampled MR" in r.getMessage() for r in caplog.records)
    for image in (result.denoised, result.network_output, result.stability, result.stability_norm):
        assert _same_geometry(image, pet)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pet), pet_before)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mr), mr_before)
    assert result.n_samples == 3 and result.info["mr_resampled"]
    # Outside the head crop the network output is the input and S is zero.
    s = sitk.GetArrayFromImage(result.stability)
    x0 = sitk.GetArrayFromImage(pet)
    net = sitk.GetArrayFromImage(result.network_output)
    assert (s == 0).any() and np.array_equal(net[s == 0], x0[s == 0])


def test_snapshots_come_back_on_the_pet_grid(small_pet_mr):
    pet, mr, _ = small_pet_mr
    snapshots = {}
    result = denoise(pet, mr, TINY, output_epochs=(3, TINY.epochs),
                     on_output=lambda epoch, array: snapshots.__setitem__(epoch, array.copy()))
    assert sorted(snapshots) == [3, TINY.epochs]
    pet_array = sitk.GetArrayFromImage(pet)
    assert snapshots[3].shape == pet_array.shape
    np.testing.assert_allclose(snapshots[TINY.epochs], sitk.GetArrayFromImage(result.network_output), rtol=1e-6)
    assert not np.allclose(snapshots[3], snapshots[TINY.epochs])
    # Outside the head crop the snapshot is the input, as the final output is.
    outside = sitk.GetArrayFromImage(result.network_output) == pet_array
    assert outside.any() and not outside.all()
    np.testing.assert_array_equal(snapshots[3][outside], pet_array[outside])


def test_reblend_follows_the_formula(small_pet_mr):
    pet, mr, _ = small_pet_mr
    result = denoise(pet, mr, TINY, alpha=0.6)
    result.reblend(0.3)
    x0 = sitk.GetArrayFromImage(pet)
    net = sitk.GetArrayFromImage(result.network_output)
    s = sitk.GetArrayFromImage(result.stability)
    s_norm = np.minimum(0.3 * s / result.stability_mean, 1.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.denoised), s_norm * x0 + (1 - s_norm) * net,
                               rtol=1e-5, atol=1e-5)
    assert result.alpha == 0.3


def test_alpha_is_independent_of_the_air_around_the_head(small_pet_mr):
    """mean(S) is taken over the head, so padding the field of view with air changes nothing.

    The paper's whole-volume mean would fall with every voxel of air added.
    """
    pet, mr, _ = small_pet_mr
    padded = sitk.ConstantPad(pet, [10, 10, 10], [10, 10, 10], 0.0)
    a = denoise(pet, mr, TINY)
    b = denoise(padded, mr, TINY)
    assert b.info["fit_shape"] == a.info["fit_shape"]
    assert b.stability_mean == pytest.approx(a.stability_mean, rel=1e-6)
    whole_a = sitk.GetArrayFromImage(a.stability).mean()
    whole_b = sitk.GetArrayFromImage(b.stability).mean()
    assert whole_b < 0.7 * whole_a


@pytest.mark.parametrize("problem, match", [
    ("nan", "NaN"), ("inf", "NaN/Inf"), ("zero", "all zero"), ("2d", "3D"), ("4d", "3D"), ("huge", "voxels"),
])
def test_bad_pet_gets_a_clear_error(small_pet_mr, problem, match):
    pet, mr, _ = small_pet_mr
    array = sitk.GetArrayFromImage(pet)
    if problem == "nan":
        array[3, 4, 5] = np.nan
    elif problem == "inf":
        array[3, 4, 5] = np.inf
    elif problem == "zero":
        array[:] = 0
    bad = {"2d": lambda: sitk.Image([32, 32], sitk.sitkFloat32),
           "4d": lambda: sitk.Image([16, 16, 16, 3], sitk.sitkFloat32),
           "huge": lambda: sitk.Image([1024, 1024, 160], sitk.sitkUInt8)}.get(problem, lambda: sitk.GetImageFromArray(array))()
    with pytest.raises(InputError, match=match):
        denoise(bad, mr, TINY)


def test_small_negative_values_are_accepted(small_pet_mr):
    pet, mr, _ = small_pet_mr
    assert sitk.GetArrayFromImage(pet).min() < 0  # the fixture has OSEM-like negatives in air
    denoise(pet, mr, TINY)


def test_mr_that_does_not_overlap_is_rejected(small_pet_mr):
    pet, mr, _ = small_pet_mr
    far = sitk.Image(mr)
    far.SetOrigin((500.0, 500.0, 500.0))
    with pytest.raises(InputError, match="do not overlap"):
        denoise(pet, far, TINY)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_denoise_then_blend(small_pet_mr, tmp_path, capsys):
    pet, mr, _ = small_pet_mr
    pet_path, mr_path = tmp_path / "pet.nrrd", tmp_path / "mr.nii.gz"
    sitk.WriteImage(pet, str(pet_path))
    sitk.WriteImage(mr, str(mr_path))
    digests = (_digest(pet_path), _digest(mr_path))
    out = tmp_path / "run"
    code = main(["denoise", "--pet", str(pet_path), "--mr", str(mr_path), "--out", str(out), "--preset", "tiny",
                 "--alpha", "0.6", "--format", "mha", "--progress", "jsonl", "--seed", "2"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, TINY.epochs + 1))
    assert set(lines[0]) == {"epoch", "epochs", "loss", "elapsed", "eta", "samples"}
    assert sorted(p.name for p in out.iterdir()) == [
        "denoised.mha", "network_output.mha", "run.json", "stability.mha", "stability_norm.mha"]
    record = json.loads((out / "run.json").read_text())
    assert record["n_samples"] == 3 and len(record["loss_per_epoch"]) == TINY.epochs
    assert record["config"]["seed"] == 2 and record["device"] == "cpu" and "torch" in record["versions"]
    assert (_digest(pet_path), _digest(mr_path)) == digests

    assert main(["blend", "--run", str(out), "--alpha", "0.2"]) == 0
    read = {n: sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{n}.mha")))
            for n in ("denoised", "network_output", "stability")}
    expected, _ = blend(sitk.GetArrayFromImage(pet), read["network_output"], read["stability"], 0.2,
                        stability_mean=record["stability_mean"])
    np.testing.assert_allclose(read["denoised"], expected, rtol=1e-6)
    assert json.loads((out / "run.json").read_text())["alpha"] == 0.2
    assert _digest(pet_path) == digests[0]


@pytest.fixture()
def restore_torch_threads():
    """``--threads`` sets torch's thread count for the whole process: the tests that follow get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cli_denoise_with_the_diffusion_model(small_pet_mr, tiny_ddpm_model_dir, tmp_path, capsys,
                                              restore_torch_threads):
    pet, mr, _ = small_pet_mr
    pet_path, mr_path = tmp_path / "pet.nrrd", tmp_path / "mr.nii.gz"
    sitk.WriteImage(pet, str(pet_path))
    sitk.WriteImage(mr, str(mr_path))
    out = tmp_path / "run"
    code = main(["denoise", "--method", "ddpm", "--ddpm-model", str(tiny_ddpm_model_dir), "--samples", "2",
                 "--steps", "2", "--pet", str(pet_path), "--mr", str(mr_path), "--out", str(out),
                 "--format", "mha", "--progress", "jsonl", "--device", "cpu", "--threads", "1"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and all(line["loss"] is None and line["samples"] == 2 for line in lines)
    assert [line["epoch"] for line in lines] == list(range(1, lines[0]["epochs"] + 1))
    assert sorted(p.name for p in out.iterdir()) == [
        "denoised.mha", "network_output.mha", "run.json", "stability.mha", "stability_norm.mha"]
    record = json.loads((out / "run.json").read_text())
    assert record["method"] == "ddpm" and record["n_samples"] == 2 and record["device"] == "cpu"
    assert record["config"]["steps"] == 2 and record["config"]["threads"] == 1
    assert record["config"]["model_dir"] == str(tiny_ddpm_model_dir)
    for name in ("denoised", "network_output", "stability", "stability_norm"):
        image = sitk.ReadImage(str(out / f"{name}.mha"))
        assert _same_geometry(image, pet), name
        assert np.isfinite(sitk.GetArrayFromImage(image)).all(), name
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(out / "stability.mha"))) > 0).any()


@pytest.mark.parametrize("extra, message", [
    ([], "MR"),
    (["--mr", "MR_PATH", "--epochs", "5"], "--epochs do not apply to --method ddpm"),
    (["--mr", "MR_PATH", "--samples", "1"], "samples must be >= 2"),
])
def test_cli_ddpm_refuses_a_run_without_mr_or_with_bad_settings(small_pet_mr, tiny_ddpm_model_dir, tmp_path, caplog,
                                                                 extra, message):
    pet, mr, _ = small_pet_mr
    sitk.WriteImage(pet, str(tmp_path / "pet.nrrd"))
    sitk.WriteImage(mr, str(tmp_path / "mr.nrrd"))
    extra = [str(tmp_path / "mr.nrrd") if arg == "MR_PATH" else arg for arg in extra]
    code = main(["denoise", "--method", "ddpm", "--ddpm-model", str(tiny_ddpm_model_dir), "--pet",
                 str(tmp_path / "pet.nrrd"), "--out", str(tmp_path / "out"), "--progress", "none", *extra])
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "out").exists()


def test_progress_bar_counts_windows_without_a_loss_for_ddpm(capsys):
    with make_reporter("bar") as report:
        for window in (1, 2):
            report(EpochReport(window, 2, None, float(window), 2.0 - window, 8))
    bar = capsys.readouterr().err
    assert "DDPM" in bar and "2/2" in bar and "window" in bar and "samples=8" in bar and "loss" not in bar


def test_a_non_finite_rejected_loss_is_written_as_strict_json():
    # A loss-jump record may hold a NaN or infinite loss; run.json must still parse in strict JSON readers.
    record = {"loss_jumps": [{"epoch": 3, "loss": float("nan"), "best_loss": 0.5},
                             {"epoch": 5, "loss": np.float64("inf"), "best_loss": 0.5}], "shape": (2, 3)}
    text = json.dumps(strict_json(record), allow_nan=False)
    assert json.loads(text) == {"loss_jumps": [{"epoch": 3, "loss": None, "best_loss": 0.5},
                                               {"epoch": 5, "loss": None, "best_loss": 0.5}], "shape": [2, 3]}
    assert record["loss_jumps"][0]["loss"] != record["loss_jumps"][0]["loss"]  # the record itself is untouched


def test_cli_reports_bad_input_clearly(tmp_path, caplog):
    assert main(["denoise", "--pet", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.nii.gz" in caplog.text
    assert main(["blend", "--run", str(tmp_path), "--alpha", "0.5"]) == 2
    assert "run.json" in caplog.text


def test_console_script_module_runs():
    completed = subprocess.run([sys.executable, "-m", "PETStabilityDenoiseLib.cli", "--help"], capture_output=True,
                               text=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "PETStabilityDenoise")})
    assert completed.returncode == 0 and "denoise" in completed.stdout
