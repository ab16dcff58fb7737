"""scripts/slicer_batch_denoise.py: argument parsing, and its exit statuses with a stand-in Slicer and logic."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slicer_batch_denoise.py"


def load_script():
    spec = importlib.util.spec_from_file_location("slicer_batch_denoise", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


batch = load_script()
REQUIRED = ["--pet", "pet.nrrd", "--mr", "mr.nrrd", "--out", "results"]


def test_importing_the_script_needs_no_slicer():
    assert "slicer" not in vars(batch)


def test_defaults_are_the_library_defaults():
    from PETStabilityDenoiseLib import settings

    args = batch.parse_arguments(REQUIRED)
    assert (args.pet, args.mr, args.out) == (Path("pet.nrrd"), Path("mr.nrrd"), Path("results"))
    assert (args.method, args.preset, args.alpha, args.format) == (
        settings.DEFAULT_METHOD, settings.DEFAULT_PRESET, None, settings.DEFAULT_OUTPUT_FORMAT)
    assert batch.engine_parameters(args) == {}


def test_advanced_settings_become_engine_parameters():
    args = batch.parse_arguments(REQUIRED + ["--epochs", "40", "--interval", "4", "--start", "20", "--device", "cpu",
                                             "--seed", "3", "--alpha", "0", "--preset", "tiny", "--format", "nii.gz"])
    assert batch.engine_parameters(args) == {"epochs": 40, "interval": 4, "start": 20, "device": "cpu", "seed": 3}
    assert (args.alpha, args.preset, args.format) == (0.0, "tiny", "nii.gz")


@pytest.mark.parametrize("missing", ["--pet", "--mr", "--out"])
def test_required_arguments(missing, capsys):
    argv = list(REQUIRED)
    del argv[argv.index(missing) : argv.index(missing) + 2]
    with pytest.raises(SystemExit) as exit_info:
        batch.parse_arguments(argv)
    assert exit_info.value.code == 2
    assert missing in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--alpha", "-0.1"], ["--alpha", "nan"], ["--alpha", "x"], ["--epochs", "0"],
                                 ["--interval", "2.5"], ["--start", "-1"], ["--device", "tpu"], ["--preset", "slow"],
                                 ["--format", "png"], ["--unknown", "1"]])
def test_bad_values_exit_with_status_2(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        batch.parse_arguments(REQUIRED + bad)
    assert exit_info.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_script_arguments_are_those_after_the_double_dash():
    slicer_argv = ["Slicer", "--no-splash", "--python-script", str(SCRIPT), "--", *REQUIRED]
    assert batch.script_arguments(slicer_argv) == REQUIRED
    # Only the first "--" separates Slicer's arguments from the script's.
    assert batch.script_arguments(["x", "--", "--pet", "--"]) == ["--pet", "--"]
    # When Slicer has already removed the separator, sys.argv is the script followed by its arguments.
    assert batch.script_arguments([str(SCRIPT), *REQUIRED]) == REQUIRED


def test_main_reads_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--", "--pet", "p", "--mr", "m", "--out", "o", "--epochs", "5"])
    seen = []

    def fake_run(args):
        seen.append(args)
        return 0

    monkeypatch.setattr(batch, "run", fake_run)
    assert batch.main() == 0
    assert seen[0].epochs == 5


# --- run() with stand-ins for Slicer and the module's logic -------------------------------------------------


@pytest.fixture()
def fake_slicer(monkeypatch, tmp_path):
    """A stand-in ``PETStabilityDenoise`` module and engine; returns (inputs, written paths, behaviour)."""
    from PETStabilityDenoiseLib.engine import run as engine_run

    written, behaviour = [], {}

    class Logic:
        def ensureDependencies(self, askConfirmation):
            assert not askConfirmation
            if "missing" in behaviour:
                raise RuntimeError(behaviour["missing"])
            return True

    def denoise_into_folder(pet, mr, out, config, *, alpha, fmt, progress):
        behaviour["call"] = (pet, mr, out, config, alpha, fmt)
        if "raise" in behaviour:
            raise behaviour["raise"]
        progress(types.SimpleNamespace(epoch=1, epochs=2, loss=0.5, elapsed_s=1.0, eta_s=1.0))
        paths = {name: Path(out) / f"{name}.{fmt}" for name in ("denoised", "network_output", "stability",
                                                                 "stability_norm")}
        written.extend(path.name for path in paths.values())
        return paths

    monkeypatch.setitem(sys.modules, "PETStabilityDenoise", types.SimpleNamespace(PETStabilityDenoiseLogic=Logic))
    monkeypatch.setattr(engine_run, "denoise_into_folder", denoise_into_folder)
    for name in ("pet.nrrd", "mr.nrrd"):
        (tmp_path / name).write_text("")
    inputs = ["--pet", str(tmp_path / "pet.nrrd"), "--mr", str(tmp_path / "mr.nrrd"), "--out", str(tmp_path / "out")]
    return inputs, written, behaviour


def test_run_denoises_into_the_folder_with_the_validated_config(fake_slicer, capsys):
    inputs, written, behaviour = fake_slicer
    assert batch.main(inputs + ["--format", "nii.gz", "--preset", "tiny", "--epochs", "2", "--alpha", "0.3"]) == 0
    assert written == ["denoised.nii.gz", "network_output.nii.gz", "stability.nii.gz", "stability_norm.nii.gz"]
    pet, mr, out, config, alpha, fmt = behaviour["call"]
    assert (pet.name, mr.name, alpha, fmt) == ("pet.nrrd", "mr.nrrd", 0.3, "nii.gz")
    assert (config.epochs, config.network) == (2, "monai")  # the tiny preset with the epochs overridden
    assert "epoch 1/2" in capsys.readouterr().out


def test_missing_input_file_exits_2(fake_slicer, capsys):
    inputs, written, behaviour = fake_slicer
    inputs[1] += ".missing"
    assert batch.main(inputs) == 2
    assert "does not exist" in capsys.readouterr().err and "call" not in behaviour


def test_bad_engine_setting_exits_2_before_any_work(fake_slicer, capsys):
    inputs, written, behaviour = fake_slicer
    assert batch.main(inputs + ["--epochs", "10", "--start", "20"]) == 2
    assert "start" in capsys.readouterr().err and "call" not in behaviour


def test_input_error_exits_2(fake_slicer, capsys):
    inputs, written, behaviour = fake_slicer
    from PETStabilityDenoiseLib.errors import InputError

    behaviour["raise"] = InputError("PET has 2 dimensions")
    assert batch.main(inputs) == 2
    assert "PET has 2 dimensions" in capsys.readouterr().err and not written


def test_engine_failure_exits_1_with_the_traceback(fake_slicer, capsys):
    inputs, written, behaviour = fake_slicer
    behaviour["raise"] = RuntimeError("CUDA out of memory")
    assert batch.main(inputs) == 1
    assert "CUDA out of memory" in capsys.readouterr().err and not written


def test_missing_packages_exit_1_with_the_install_commands(fake_slicer, capsys):
    inputs, written, behaviour = fake_slicer
    behaviour["missing"] = "PETStabilityDenoise needs monai>=1.4. Install it with: PythonSlicer -m pip install ..."
    assert batch.main(inputs) == 1
    assert "PythonSlicer -m pip install" in capsys.readouterr().err
    assert "call" not in behaviour and not written
