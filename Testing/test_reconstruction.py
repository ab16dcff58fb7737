"""Sinogram files and ``petstab reconstruct``: the format's round trip and its errors, and OSEM as the simulator's.

The case is a thin axial slab (16 label slices, 8 PET slices) of the bundled subject 04, to stay fast.
"""

import dataclasses
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PETStabilityDenoise"))

from PETStabilityDenoiseLib.cli import main  # noqa: E402
from PETStabilityDenoiseLib.engine.reconstruct import osem_image, reconstruct  # noqa: E402
from PETStabilityDenoiseLib.errors import InputError, OutputError  # noqa: E402
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case  # noqa: E402
from PETStabilityDenoiseLib.volumes.sinogram import (  # noqa: E402
    SINOGRAM_ARRAYS,
    check_sinogram,
    read_sinogram,
    write_sinogram,
)

DOSE = 0.2


@pytest.fixture(scope="module")
def slab_labels(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "slab.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(bundled_labels_path()))[:, :, 70:86], str(path))
    return path


@pytest.fixture(scope="module")
def simulated(slab_labels, tmp_path_factory) -> Path:
    """``petstab simulate --sinograms`` on the slab: its output folder."""
    out = tmp_path_factory.mktemp("case")
    assert main(["simulate", "--labels", str(slab_labels), "--out", str(out), "--doses", "1", str(DOSE),
                 "--lesions", "1", "--seed", "3", "--sinograms"]) == 0
    return out


def test_simulate_writes_a_readable_sinogram_for_every_dose(simulated):
    for tag in ("full", "1-5"):
        data = read_sinogram(simulated / f"sinogram_{tag}.npz")
        pet = sitk.ReadImage(str(simulated / f"osem_{tag}.nii.gz"))
        assert data.image_size == pet.GetSize()
        assert np.allclose(data.origin, pet.GetOrigin()) and np.allclose(data.spacing, pet.GetSpacing())
        assert data.shape == (pet.GetSize()[2], 168, data.shape[2])
    assert read_sinogram(simulated / "sinogram_1-5.npz").dose_fraction == DOSE


def test_sinogram_round_trip_is_exact(simulated, tmp_path):
    data = read_sinogram(simulated / "sinogram_1-5.npz")
    again = read_sinogram(write_sinogram(data, tmp_path / "copy.npz"))
    for name in (*SINOGRAM_ARRAYS, "angles_rad"):
        assert np.array_equal(getattr(again, name), getattr(data, name)), name
    for name in ("bin_mm", "image_size", "origin", "spacing", "direction", "dose_fraction", "description"):
        assert getattr(again, name) == getattr(data, name), name
    assert [p.name for p in tmp_path.iterdir()] == ["copy.npz"]  # no staging file left


def test_reconstruct_gives_the_simulators_osem(simulated, tmp_path):
    out = tmp_path / "run"
    assert main(["reconstruct", "--sinogram", str(simulated / "sinogram_1-5.npz"), "--out", str(out),
                 "--progress", "none"]) == 0
    ours, simulators = (sitk.ReadImage(str(p)) for p in (out / "osem.nii.gz", simulated / "osem_1-5.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(simulators))
    assert ours.GetOrigin() == simulators.GetOrigin() and ours.GetDirection() == simulators.GetDirection()
    record = json.loads((out / "run.json").read_text())
    assert record["method"] == "osem" and record["osem"] == {"iterations": 4, "subsets": 21}
    assert record["outputs"] == {"osem": "osem.nii.gz"} and record["dose_fraction"] == DOSE


def test_reconstruct_reports_each_iteration(simulated):
    reports = []
    osem_image(read_sinogram(simulated / "sinogram_1-5.npz"), iterations=2, subsets=7, progress=reports.append)
    assert [(r.epoch, r.epochs, r.loss) for r in reports] == [(1, 2, None), (2, 2, None)]


@pytest.mark.parametrize("change, message", [
    (lambda d: {"prompts": d.prompts[:, :, :-1]}, "one shape"),
    (lambda d: {"prompts": -d.prompts}, "whole numbers >= 0"),
    (lambda d: {"prompts": d.prompts + 0.5}, "whole numbers >= 0"),
    (lambda d: {"additive": d.additive * np.nan}, "additive must be finite"),
    (lambda d: {"multiplicative": d.multiplicative * 0}, "zero everywhere"),
    (lambda d: {"angles_rad": d.angles_rad[:-1]}, "angles"),
    (lambda d: {"angles_rad": np.rad2deg(d.angles_rad)}, "more than a full turn"),
    (lambda d: {"image_size": (d.image_size[0], d.image_size[1], d.image_size[2] + 1)}, "slices"),
    (lambda d: {"spacing": (2.0, 3.0, 2.0)}, "square pixels"),
    (lambda d: {"direction": (2.0, 0, 0, 0, 1, 0, 0, 0, 1)}, "orthonormal"),
    (lambda d: {"bin_mm": d.bin_mm / 2}, "do not cover"),
    (lambda d: {"dose_fraction": 2.0}, "dose_fraction"),
])
def test_bad_sinograms_are_refused_by_name(simulated, tmp_path, change, message):
    data = read_sinogram(simulated / "sinogram_1-5.npz")
    bad = dataclasses.replace(data, **change(data))
    with pytest.raises(InputError, match=message):
        check_sinogram(bad)
    # The same data written to a file are refused on reading, naming the file.
    path = tmp_path / "bad.npz"
    fields = {"format_version": 1, "prompts": bad.prompts, "additive": bad.additive,
              "multiplicative": bad.multiplicative, "angles_rad": bad.angles_rad, "bin_mm": bad.bin_mm,
              "image_size": bad.image_size, "origin": bad.origin, "spacing": bad.spacing,
              "direction": bad.direction, "dose_fraction": bad.dose_fraction}
    np.savez(path, **fields)
    with pytest.raises(InputError, match=rf"bad\.npz: .*{message}"):
        read_sinogram(path)


def test_unreadable_or_incomplete_files_are_refused(simulated, tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_sinogram(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a .npz archive"):
        read_sinogram(tmp_path / "text.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(InputError, match="not a .npz archive"):
        read_sinogram(tmp_path / "array.npy")
    (tmp_path / "cut.npz").write_bytes((simulated / "sinogram_1-5.npz").read_bytes()[:-100])
    with pytest.raises(InputError, match="or is cut short"):
        read_sinogram(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "damaged.npz", "w") as archive:
        archive.writestr("prompts.npy", b"\x93NUMPY\x01\x00 a damaged header")
    with pytest.raises(InputError, match="cannot be read as a .npz"):
        read_sinogram(tmp_path / "damaged.npz")
    data = read_sinogram(simulated / "sinogram_1-5.npz")
    np.savez(tmp_path / "partial.npz", format_version=1, prompts=data.prompts)
    with pytest.raises(InputError, match="lacks additive, multiplicative, angles_rad"):
        read_sinogram(tmp_path / "partial.npz")
    np.savez(tmp_path / "future.npz", **{**np.load(simulated / "sinogram_1-5.npz"), "format_version": 9})
    with pytest.raises(InputError, match="format version 9"):
        read_sinogram(tmp_path / "future.npz")


def test_subsets_must_divide_the_angles_before_any_output(simulated, tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["reconstruct", "--sinogram", str(simulated / "sinogram_1-5.npz"), "--out", str(out),
                 "--subsets", "5", "--progress", "none"]) == 2
    assert "5 subsets do not divide the sinogram's 168 angles" in caplog.text
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_reconstruct_never_replaces_a_folder_of_other_files(simulated, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a PETStabilityDenoise run"):
        reconstruct(simulated / "sinogram_1-5.npz", out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_failed_write_leaves_no_file(simulated, tmp_path):
    data = read_sinogram(simulated / "sinogram_1-5.npz")
    with pytest.raises(OutputError, match="could not write"):
        write_sinogram(data, tmp_path / "no such folder" / "s.npz")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"ends in \.npz"):
        write_sinogram(data, tmp_path / "s.nii.gz")


def test_simulated_case_keeps_sinograms_only_when_asked(slab_labels):
    labels = sitk.ReadImage(str(slab_labels))
    config = SimulationConfig(doses=(DOSE,), n_lesions=1, seed=3)
    assert simulate_case(labels, config).sinograms == {}
    kept = simulate_case(labels, config, keep_sinograms=True)
    assert set(kept.sinograms) == {DOSE}
    assert np.array_equal(sitk.GetArrayFromImage(osem_image(kept.sinograms[DOSE])),
                          sitk.GetArrayFromImage(kept.osem[DOSE]))
