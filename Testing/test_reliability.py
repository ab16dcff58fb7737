"""Bad input and faults, tried as a user would: ``petstab`` must refuse with exit code 2 and a message that
names the file and the problem, print no traceback, leave the inputs unchanged and leave no output behind.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
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
