"""The Slicer logic on a real MRML scene (``slicer-core`` wheel): geometry, outputs, blend, cancel, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
import vtk  # noqa: E402 - after the skip: vtk comes with slicer-core

from PETStabilityDenoiseLib.errors import InputError, OutputError, WorkerFailed  # noqa: E402
from PETStabilityDenoiseLib.settings import DEFAULT_ALPHAS  # noqa: E402
from PETStabilityDenoiseLib.slicer.logic import PETStabilityDenoiseLogic  # noqa: E402
from PETStabilityDenoiseLib.slicer.mrml_volumes import node_to_image  # noqa: E402
from PETStabilityDenoiseLib.volumes import io  # noqa: E402

TINY = dict(preset="tiny", device="cpu", seed=0)


def add_node_from_image(scene, image: sitk.Image, name: str):
    """A volume node with the image's voxels and geometry (LPS -> RAS), built independently of the logic."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    flip = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = flip @ np.array(image.GetOrigin())
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, matrix[r, c])
    node.SetIJKToRASMatrix(vtk_matrix)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    return node


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture()
def scene():
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    slicer.mrmlScene = scene
    yield scene
    slicer.mrmlScene = None


@pytest.fixture()
def pet_mr_nodes(scene, small_pet_mr):
    pet_image, mr_image, _ = small_pet_mr
    return add_node_from_image(scene, pet_image, "PET"), add_node_from_image(scene, mr_image, "MR")


def volume_node_ids(scene) -> set:
    return {scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetID()
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))}


def test_node_to_image_keeps_geometry_and_applies_parent_transform(scene, small_pet_mr):
    pet_image = small_pet_mr[0]
    node = add_node_from_image(scene, pet_image, "PET")
    image = node_to_image(node, "PET")
    np.testing.assert_allclose(image.GetOrigin(), pet_image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(image.GetSpacing(), pet_image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(image.GetDirection(), pet_image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(pet_image))

    before = ijk_to_ras(node)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # 10 mm to the right (RAS x), i.e. -10 mm in LPS x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = node_to_image(node, "PET")
    np.testing.assert_allclose(np.array(moved.GetOrigin()) - image.GetOrigin(), [-10.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_array_equal(ijk_to_ras(node), before)


def test_process_outputs_carry_the_pet_geometry_and_set_alpha_follows_the_blend(scene, pet_mr_nodes, tmp_path):
    pet, mr = pet_mr_nodes
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Subject"), "Study")
    hierarchy.CreateItem(study, pet)
    pet_before, mr_before = slicer.util.arrayFromVolume(pet).copy(), slicer.util.arrayFromVolume(mr).copy()
    pet_matrix_before = ijk_to_ras(pet)
    reports = []

    logic = PETStabilityDenoiseLogic(temp_root=str(tmp_path))
    result = logic.process(pet, mr, alpha=0.6, wait=True, progress=reports.append, **TINY)

    assert [r.epoch for r in reports] == list(range(1, 7))
    assert list(tmp_path.iterdir()) == [], "the temporary run folder must be removed"
    outputs = {"denoised": result.denoisedNode, "network output": result.networkOutputNode,
               "stability": result.stabilityNode, "normalized stability": result.normalizedStabilityNode}
    for suffix, node in outputs.items():
        assert node.GetName() == f"PET {suffix}"
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(pet))
        assert node.GetImageData().GetDimensions() == pet.GetImageData().GetDimensions()
        assert np.isfinite(slicer.util.arrayFromVolume(node)).all()
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(pet), pet_before)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(mr), mr_before)
    np.testing.assert_array_equal(ijk_to_ras(pet), pet_matrix_before)
    assert result.runInfo["n_samples"] == 3 and result.stabilityMean > 0

    x0 = pet_before.astype(np.float64)
    f = slicer.util.arrayFromVolume(result.networkOutputNode).astype(np.float64)
    s = slicer.util.arrayFromVolume(result.stabilityNode).astype(np.float64)
    for alpha in (0.4, np.float32(2.5)):
        logic.setAlpha(result, alpha)
        s_norm = np.minimum(alpha * s / result.stabilityMean, 1.0)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(result.normalizedStabilityNode), s_norm, rtol=1e-5)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(result.denoisedNode), s_norm * x0 + (1 - s_norm) * f,
                                   rtol=1e-5, atol=1e-5 * np.abs(x0).max())
    logic.setAlpha(result, 0.0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.denoisedNode),
                                  slicer.util.arrayFromVolume(result.networkOutputNode))
    with pytest.raises(InputError, match="alpha"):
        logic.setAlpha(result, -1.0)


def test_process_runs_the_diffusion_model(scene, pet_mr_nodes, tiny_ddpm_model_dir, tmp_path, monkeypatch):
    pet, mr = pet_mr_nodes
    reports = []
    # A relative model folder means the caller's folder, not the worker's.
    monkeypatch.chdir(tiny_ddpm_model_dir.parent)
    logic = PETStabilityDenoiseLogic(temp_root=str(tmp_path))
    result = logic.process(pet, mr, method="ddpm", wait=True, progress=reports.append,
                           model_dir=tiny_ddpm_model_dir.name, samples=2, steps=2, device="cpu", threads=1)

    assert reports and all(r.loss is None and r.samples == 2 for r in reports)
    assert [r.epoch for r in reports] == list(range(1, reports[0].epochs + 1))
    assert list(tmp_path.iterdir()) == [], "the temporary run folder must be removed"
    for node in (result.denoisedNode, result.networkOutputNode, result.stabilityNode, result.normalizedStabilityNode):
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(pet))
        assert node.GetImageData().GetDimensions() == pet.GetImageData().GetDimensions()
        assert np.isfinite(slicer.util.arrayFromVolume(node)).all()
    assert result.runInfo["method"] == "ddpm" and result.runInfo["n_samples"] == 2
    assert result.alpha == result.runInfo["alpha"] == DEFAULT_ALPHAS["ddpm"]  # no alpha given: the method's
    assert result.runInfo["model_dir"] == str(tiny_ddpm_model_dir.resolve())
    assert result.stabilityMean > 0


def test_show_result_sets_colours_and_overlay(scene, pet_mr_nodes, tmp_path):
    pet, mr = pet_mr_nodes
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    logic = PETStabilityDenoiseLogic(temp_root=str(tmp_path))
    result = logic.process(pet, mr, wait=True, **TINY)

    logic.showResult(result, overlay="stability_norm", opacity=0.3)
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == result.denoisedNode.GetID()
        assert composite.GetForegroundVolumeID() == result.normalizedStabilityNode.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    assert "PET" in result.denoisedNode.GetDisplayNode().GetColorNodeID()
    assert "Heat" in result.stabilityNode.GetDisplayNode().GetColorNodeID()
    assert result.normalizedStabilityNode.GetDisplayNode().GetWindowLevelMax() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="overlay"):
        logic.showResult(result, overlay="S")


def nested_launcher(args, cwd):
    """Starts the worker through an intermediate Python process, as PythonSlicer's launcher does."""
    wrapper = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", wrapper, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_cancel_mid_run_kills_the_process_tree_and_adds_nothing(scene, pet_mr_nodes, tmp_path):
    pet, mr = pet_mr_nodes
    nodes_before = volume_node_ids(scene)
    first_epoch, ended = threading.Event(), []
    logic = PETStabilityDenoiseLogic(launcher=nested_launcher, temp_root=str(tmp_path))
    handle = logic.process(pet, mr, wait=False, progress=lambda report: first_epoch.set(),
                           finished=ended.append, preset="tiny", device="cpu", epochs=5000, start=4990)
    assert first_epoch.wait(120), "the worker never reported an epoch"
    launcher_process = psutil.Process(handle._worker.pid)
    tree = [launcher_process] + launcher_process.children(recursive=True)
    assert len(tree) == 2 and logic.isRunning

    logic.cancel()

    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left running after cancel: {alive}"
    assert handle.state == "cancelled" and not logic.isRunning
    assert ended == [handle]
    assert volume_node_ids(scene) == nodes_before
    assert list(tmp_path.iterdir()) == []
    time.sleep(0.3)  # a late poll from the scheduler thread must not add anything either
    assert volume_node_ids(scene) == nodes_before


def scripted_launcher(script: str):
    """A launcher that runs ``script`` instead of the worker, to stand in for a crashing worker."""
    def launch(args, cwd):
        return subprocess.Popen([sys.executable, "-c", script], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return launch


def test_worker_crash_raises_with_its_last_log_lines(scene, pet_mr_nodes, tmp_path):
    pet, mr = pet_mr_nodes
    nodes_before = volume_node_ids(scene)
    crash = "import sys; print('loading the network'); print('Segmentation fault in libfoo', file=sys.stderr); sys.exit(7)"
    logic = PETStabilityDenoiseLogic(launcher=scripted_launcher(crash), temp_root=str(tmp_path))
    with pytest.raises(WorkerFailed, match="exit code 7") as failure:
        logic.process(pet, mr, wait=True, **TINY)
    assert "Segmentation fault in libfoo" in str(failure.value)
    assert "Segmentation fault in libfoo" in failure.value.log_tail
    assert volume_node_ids(scene) == nodes_before and list(tmp_path.iterdir()) == []


def test_a_run_removes_the_input_copies_that_a_crashed_run_left(scene, pet_mr_nodes, tmp_path):
    # Slicer killed mid-run cannot remove its temporary folder; the next run does, and keeps its own until it ends.
    pet, mr = pet_mr_nodes
    temp_root = tmp_path / "temp"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    left_behind = temp_root / f"PETStabilityDenoise-{ended.pid}-k3j9"
    left_behind.mkdir(parents=True)
    (left_behind / "pet.nrrd").write_bytes(b"copy of a PET")
    seen_by_the_worker = tmp_path / "seen.txt"
    listing = (f"import os, sys; seen = os.listdir({str(temp_root)!r}); "
               f"open({str(seen_by_the_worker)!r}, 'w').write(' '.join(seen)); sys.exit(1)")
    logic = PETStabilityDenoiseLogic(launcher=scripted_launcher(listing), temp_root=str(temp_root))
    with pytest.raises(WorkerFailed, match="exit code 1"):
        logic.process(pet, mr, wait=True, **TINY)
    seen = seen_by_the_worker.read_text().split()
    assert len(seen) == 1 and seen[0].startswith(f"PETStabilityDenoise-{os.getpid()}-")
    assert list(temp_root.iterdir()) == []


def test_input_copies_that_cannot_be_written_are_refused_with_what_to_do(scene, pet_mr_nodes, tmp_path, monkeypatch):
    pet, mr = pet_mr_nodes
    temp_root = tmp_path / "Müller"  # a user name with an umlaut: ITK on Windows fails on this path
    temp_root.mkdir()
    nodes_before = volume_node_ids(scene)

    def cannot_write(image, path, *args, **kwargs):
        raise RuntimeError(f"Exception thrown in SimpleITK ImageFileWriter_Execute:\nCould not open {path}")

    monkeypatch.setattr(sitk, "WriteImage", cannot_write)
    monkeypatch.setattr(io, "ON_WINDOWS", True)
    monkeypatch.setattr(io, "_windows_short_path", lambda path: None)  # a drive that keeps no short names
    logic = PETStabilityDenoiseLogic(launcher=lambda args, cwd: pytest.fail("the worker was started"),
                                     temp_root=str(temp_root))
    with pytest.raises(OutputError, match="could not copy the input volumes into the temporary folder") as refusal:
        logic.process(pet, mr, wait=True, **TINY)
    assert "Could not open" in str(refusal.value) and "set the TMP environment variable" in str(refusal.value)
    assert list(temp_root.iterdir()) == [] and volume_node_ids(scene) == nodes_before and not logic.isRunning


@pytest.mark.parametrize("mr_is", ["the PET node", "a copy of the PET", "the MR"])
def test_the_pet_selected_as_the_mr_is_warned_about_before_the_run(scene, pet_mr_nodes, small_pet_mr, tmp_path,
                                                                   caplog, mr_is):
    pet, mr = pet_mr_nodes
    mr = {"the PET node": pet, "a copy of the PET": add_node_from_image(scene, small_pet_mr[0], "PET copy"),
          "the MR": mr}[mr_is]
    finished = threading.Event()
    logic = PETStabilityDenoiseLogic(launcher=scripted_launcher("import sys; sys.exit(3)"), temp_root=str(tmp_path))
    handle = logic.process(pet, mr, wait=False, finished=lambda h: finished.set(), **TINY)
    assert finished.wait(30)
    warned = mr_is != "the MR"
    assert len(handle.warnings) == int(warned)
    assert all("is the same image as the PET" in warning for warning in handle.warnings)
    assert ("is the same image as the PET" in caplog.text) == warned


def test_worker_out_of_memory_suggests_cpu_or_smaller_preset(scene, pet_mr_nodes, tmp_path):
    pet, mr = pet_mr_nodes
    from PETStabilityDenoiseLib.worker.protocol import GPU_MEMORY_ADVICE

    line = json.dumps({"event": "error", "kind": "out_of_memory", "message": GPU_MEMORY_ADVICE})
    logic = PETStabilityDenoiseLogic(launcher=scripted_launcher(f"import sys; print({line!r}); sys.exit(3)"),
                                     temp_root=str(tmp_path))
    finished = threading.Event()
    handle = logic.process(pet, mr, wait=False, finished=lambda h: finished.set(), **TINY)
    assert finished.wait(30)
    assert handle.state == "failed" and isinstance(handle.error, WorkerFailed)
    assert handle.error.kind == "out_of_memory"
    assert "'cpu'" in str(handle.error) and "smaller preset" in str(handle.error)


def test_worker_input_error_comes_back_as_input_error(scene, pet_mr_nodes, tmp_path):
    pet, _ = pet_mr_nodes
    line = json.dumps({"event": "error", "kind": "input", "message": "PET is all zeros; load the emission image"})
    logic = PETStabilityDenoiseLogic(launcher=scripted_launcher(f"import sys; print({line!r}); sys.exit(2)"),
                                     temp_root=str(tmp_path))
    with pytest.raises(InputError, match="all zeros"):
        logic.process(pet, None, wait=True, **TINY)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="unet"), "unknown method"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(preset="huge"), "unknown preset"),
    (dict(epochs_total=10), "unknown engine parameter"),
    (dict(epochs=10, start=20), "start"),
    (dict(method="ddpm", samples=1), "samples must be >= 2"),
    (dict(method="ddpm", epochs=10), "unknown engine parameter epochs"),
    (dict(device="gpu"), "device must be one of"),
    (dict(method="ddpm", device="tpu"), "device must be one of"),
    (dict(threads=-3), "threads must be a whole number >= 1"),
    (dict(channels=(8,)), "channels must be at least 2"),
    (dict(seed=-1), "seed must be a whole number >= 0"),
])
def test_bad_arguments_are_rejected_before_any_work(scene, pet_mr_nodes, tmp_path, kwargs, message):
    pet, mr = pet_mr_nodes
    nodes_before = volume_node_ids(scene)
    logic = PETStabilityDenoiseLogic(temp_root=str(tmp_path))
    with pytest.raises(InputError, match=message):
        logic.process(pet, mr, wait=True, **{**TINY, **kwargs})
    assert volume_node_ids(scene) == nodes_before and list(tmp_path.iterdir()) == []


def test_missing_or_non_scalar_inputs_are_rejected(scene, pet_mr_nodes, tmp_path):
    pet, _ = pet_mr_nodes
    logic = PETStabilityDenoiseLogic(temp_root=str(tmp_path))
    with pytest.raises(InputError, match="no PET volume selected"):
        logic.process(None, None, **TINY)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        logic.process(empty, None, **TINY)
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    pet.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="non-linear transform"):
        logic.process(pet, None, **TINY)


def test_set_alpha_on_a_result_whose_nodes_were_removed_is_refused(scene, pet_mr_nodes, small_pet_mr):
    from PETStabilityDenoiseLib.slicer.logic import ProcessResult

    pet, _ = pet_mr_nodes
    array = sitk.GetArrayFromImage(small_pet_mr[0])
    nodes = [add_node_from_image(scene, small_pet_mr[0], name) for name in ("d", "n", "s", "sn")]
    result = ProcessResult(*nodes, alpha=0.3, stabilityMean=1.0, runInfo={}, petArray=array)
    logic = PETStabilityDenoiseLogic()
    logic.setAlpha(result, 0.5)  # all four are in the scene
    scene.RemoveNode(nodes[2])
    with pytest.raises(InputError, match="removed from the scene"):
        logic.setAlpha(result, 0.6)
    assert result.alpha == 0.5


@pytest.fixture()
def run_folder(small_pet_mr, tmp_path_factory):
    """A tiny DIP run made by ``petstab denoise``'s own function, as on another machine: (folder, PET path)."""
    from PETStabilityDenoiseLib.engine.run import denoise_into_folder
    from PETStabilityDenoiseLib.settings import dip_config

    inputs = tmp_path_factory.mktemp("inputs")
    pet_path, mr_path = inputs / "pet_1-10.nii.gz", inputs / "mr.nii.gz"
    sitk.WriteImage(small_pet_mr[0], str(pet_path))
    sitk.WriteImage(small_pet_mr[1], str(mr_path))
    out = tmp_path_factory.mktemp("runs") / "run"
    denoise_into_folder(pet_path, mr_path, out, dip_config("tiny", {"device": "cpu", "seed": 0}), alpha=0.5,
                        fmt="nii.gz")
    return out, pet_path


def test_a_run_folder_loads_as_the_four_nodes_with_its_pet(scene, run_folder, small_pet_mr):
    folder, _ = run_folder
    result = PETStabilityDenoiseLogic().loadRunFolder(folder)

    pet = scene.GetFirstNodeByName("pet_1-10")
    assert pet is not None, "the PET that run.json records is added to the scene"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(pet), sitk.GetArrayFromImage(small_pet_mr[0]))
    loaded = node_to_image(pet, "PET")
    assert np.allclose(loaded.GetOrigin(), small_pet_mr[0].GetOrigin(), atol=1e-6)
    assert np.allclose(loaded.GetDirection(), small_pet_mr[0].GetDirection(), atol=1e-9)
    record = json.loads((folder / "run.json").read_text())
    assert (result.alpha, result.stabilityMean) == (0.5, record["stability_mean"])
    for node in (result.denoisedNode, result.networkOutputNode, result.stabilityNode, result.normalizedStabilityNode):
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(pet))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.denoisedNode),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "denoised.nii.gz"))))
    PETStabilityDenoiseLogic().setAlpha(result, 0.0)  # the live re-blend works on a loaded run
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.denoisedNode),
                                  slicer.util.arrayFromVolume(result.networkOutputNode))


def test_a_run_folder_loads_onto_the_selected_pet(scene, run_folder, small_pet_mr):
    pet = add_node_from_image(scene, small_pet_mr[0], "my PET")
    nodes_before = volume_node_ids(scene)
    result = PETStabilityDenoiseLogic().loadRunFolder(run_folder[0], pet)
    assert len(volume_node_ids(scene) - nodes_before) == 4
    assert result.denoisedNode.GetName() == "my PET denoised"
    np.testing.assert_array_equal(ijk_to_ras(result.stabilityNode), ijk_to_ras(pet))


def test_a_run_folder_is_refused_with_another_pet_and_adds_nothing(scene, run_folder, small_pet_mr, tmp_path):
    folder, pet_path = run_folder
    logic = PETStabilityDenoiseLogic()
    other_dose = add_node_from_image(scene, sitk.Cast(small_pet_mr[0] * 2.0, sitk.sitkFloat32), "other PET")
    other_grid = add_node_from_image(scene, small_pet_mr[0][2:, :, :], "cropped PET")
    nodes_before = volume_node_ids(scene)
    with pytest.raises(InputError, match="not the image this run processed"):
        logic.loadRunFolder(folder, other_dose)
    with pytest.raises(InputError, match="not on this run's grid"):
        logic.loadRunFolder(folder, other_grid)
    # Made on another machine: the recorded PET path is not here.
    moved = tmp_path / "moved"
    record = json.loads((folder / "run.json").read_text())
    moved.mkdir()
    for name in record["outputs"].values():
        (moved / name).write_bytes((folder / name).read_bytes())
    (moved / "run.json").write_text(json.dumps({**record, "pet": str(tmp_path / "elsewhere" / "pet.nii.gz")}))
    with pytest.raises(InputError, match="not on this machine: load the PET and select it"):
        logic.loadRunFolder(moved)
    (moved / "run.json").write_text(json.dumps({**record, "outputs": {"osem": "osem.nii.gz"}}))
    with pytest.raises(InputError, match="not a denoising run"):
        logic.loadRunFolder(moved)
    with pytest.raises(InputError, match="is not a run folder: it holds no run.json") as refusal:
        logic.loadRunFolder(tmp_path)
    assert "--" not in str(refusal.value)  # the panel shows it: no command-line flag
    assert volume_node_ids(scene) == nodes_before
