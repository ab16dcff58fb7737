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


def test_defaults():
    args = batch.parse_arguments(REQUIRED)
    assert (args.pet, args.mr, args.out) == (Path("pet.nrrd"), Path("mr.nrrd"), Path("results"))
    assert (args.preset, args.alpha, args.format) == ("fast", 0.3, "nrrd")
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


def test_presets_match_the_library():
    presets = pytest.importorskip("PETStabilityDenoiseLib.presets")
    assert sorted(batch.PRESETS) == sorted(presets.PRESETS)


# --- run() with stand-ins for Slicer and the module's logic -------------------------------------------------


@pytest.fixture()
def fake_slicer(monkeypatch, tmp_path):
    """Stand-in ``slicer`` and ``PETStabilityDenoise`` modules; returns (inputs, saved paths, logic behaviour)."""
    logic_module = pytest.importorskip("PETStabilityDenoiseLib.logic")  # import while the real slicer is there
    saved, behaviour = [], {}

    def save_node(node, path):
        Path(path).write_text(node)
        saved.append(Path(path).name)
        return True

    util = types.SimpleNamespace(loadVolume=lambda path: f"node:{Path(path).name}", saveNode=save_node)

    class Logic:
        def ensureDependencies(self, askConfirmation):
            assert not askConfirmation
            if "missing" in behaviour:
                raise RuntimeError(behaviour["missing"])
            return True

        def process(self, pet, mr, **kwargs):
            behaviour["call"] = (pet, mr, kwargs)
            if "raise" in behaviour:
                raise behaviour["raise"]
            kwargs["progress"](types.SimpleNamespace(epoch=1, epochs=2, loss=0.5, elapsed_s=1.0, eta_s=1.0))
            return types.SimpleNamespace(denoisedNode="d", networkOutputNode="n", stabilityNode="s",
                                         normalizedStabilityNode="sn")

    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(util=util))
    monkeypatch.setitem(sys.modules, "PETStabilityDenoise", types.SimpleNamespace(PETStabilityDenoiseLogic=Logic))
    for name in ("pet.nrrd", "mr.nrrd"):
        (tmp_path / name).write_text("")
    inputs = ["--pet", str(tmp_path / "pet.nrrd"), "--mr", str(tmp_path / "mr.nrrd"), "--out", str(tmp_path / "out")]
    return inputs, saved, behaviour, logic_module


def test_run_saves_the_four_outputs(fake_slicer, capsys):
    inputs, saved, behaviour, _ = fake_slicer
    assert batch.main(inputs + ["--format", "nii.gz", "--epochs", "2", "--alpha", "0.3"]) == 0
    assert saved == ["denoised.nii.gz", "network_output.nii.gz", "stability.nii.gz", "stability_norm.nii.gz"]
    pet, mr, kwargs = behaviour["call"]
    assert (pet, mr) == ("node:pet.nrrd", "node:mr.nrrd")
    assert (kwargs["preset"], kwargs["alpha"], kwargs["wait"], kwargs["epochs"]) == ("fast", 0.3, True, 2)
    assert "epoch 1/2" in capsys.readouterr().out


def test_missing_input_file_exits_2(fake_slicer, capsys):
    inputs, saved, _, _ = fake_slicer
    inputs[1] += ".missing"
    assert batch.main(inputs) == 2
    assert "does not exist" in capsys.readouterr().err and not saved


def test_input_error_exits_2(fake_slicer, capsys):
    inputs, saved, behaviour, _ = fake_slicer
    from PETStabilityDenoiseLib.validation import InputError

    behaviour["raise"] = InputError("PET has 2 dimensions")
    assert batch.main(inputs) == 2
    assert "PET has 2 dimensions" in capsys.readouterr().err and not saved


def test_worker_failure_exits_1_with_its_log(fake_slicer, capsys):
    inputs, saved, behaviour, logic_module = fake_slicer
    behaviour["raise"] = logic_module.WorkerFailed("worker died", log_tail=("line one", "CUDA out of memory"))
    assert batch.main(inputs) == 1
    err = capsys.readouterr().err
    assert "worker died" in err and "CUDA out of memory" in err and not saved


def test_unexpected_error_exits_1(fake_slicer, capsys):
    inputs, _, behaviour, _ = fake_slicer
    behaviour["raise"] = KeyError("surprise")
    assert batch.main(inputs) == 1
    assert "surprise" in capsys.readouterr().err


def test_missing_packages_exit_1_with_the_install_commands(fake_slicer, capsys):
    inputs, saved, behaviour, _ = fake_slicer
    behaviour["missing"] = "PETStabilityDenoise needs monai>=1.4. Install it with: PythonSlicer -m pip install ..."
    assert batch.main(inputs) == 1
    assert "PythonSlicer -m pip install" in capsys.readouterr().err
    assert "call" not in behaviour and not saved
