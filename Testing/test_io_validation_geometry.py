"""Tests for volume I/O, input validation and grid geometry (fast, CPU only)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETStabilityDenoiseLib.errors import InputError
from PETStabilityDenoiseLib.settings import FILE_FORMATS
from PETStabilityDenoiseLib.volumes.files import write_atomically
from PETStabilityDenoiseLib.volumes.geometry import (
    CropPad,
    apply_crop_pad,
    array_to_image,
    head_mask,
    plan_crop_pad,
    resample_to_reference,
    undo_crop_pad,
)
from PETStabilityDenoiseLib.volumes.io import (
    output_path,
    read_volume,
    write_volume,
)
from PETStabilityDenoiseLib.volumes.validation import validate_volume


def rotation_z(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def rotation_x(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


#: 20 degrees about z combined with a flip of the y axis (improper rotation, det -1).
ROTATED_FLIPPED = rotation_z(20.0) @ np.diag([1.0, -1.0, 1.0])


def make_image(
    array: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    origin=(0.0, 0.0, 0.0),
    direction: np.ndarray = np.eye(3),
) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    return image


def physical_points(image: sitk.Image) -> np.ndarray:
    """Physical coordinates (z, y, x, 3) of all voxel centres."""
    size = image.GetSize()
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    index = np.stack([ii, jj, kk], axis=-1).astype(float)
    matrix = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def smooth_function(points: np.ndarray) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return 50.0 + 0.8 * x - 0.5 * y + 0.3 * z + 5.0 * np.sin(x / 12.0) * np.cos(y / 15.0)


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)


@pytest.fixture
def pet_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 100.0, size=(10, 12, 14)).astype(np.float32)


# --------------------------------------------------------------------------- I/O


@pytest.mark.parametrize("fmt", FILE_FORMATS)  # DICOM series: test_dicom.py
def test_round_trip_preserves_values_and_oblique_geometry(tmp_path, pet_array, fmt):
    image = make_image(pet_array, spacing=(2.0, 1.5, 3.0), origin=(-10.5, 20.0, 3.25), direction=ROTATED_FLIPPED)
    path = write_volume(image, output_path(tmp_path / "nested" / "out", "pet", fmt))
    assert path.exists() and path.name == f"pet.{fmt}"

    before = (checksum(path), path.stat().st_mtime_ns)
    loaded = read_volume(str(path))
    assert (checksum(path), path.stat().st_mtime_ns) == before

    assert loaded.GetPixelID() == sitk.sitkFloat32
    assert_same_geometry(loaded, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), pet_array)


def test_read_casts_integer_input_to_float32(tmp_path, pet_array):
    image = make_image(pet_array.astype(np.int16))
    loaded = read_volume(write_volume(image, tmp_path / "int.nrrd"))
    assert loaded.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), pet_array.astype(np.int16))


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, prefix: str) -> list[Path]:
    """Write an int16 image as one DICOM file per slice (SimpleITK DicomSeriesFromArray recipe)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    series_tags = {
        "0008|0060": "PT",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0020|000e": series_uid,
        "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0008|103e": prefix,
    }
    paths = []
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in series_tags.items():
            slice_image.SetMetaData(tag, value)
        slice_image.SetMetaData(
            "0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        )
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0028|0030", f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}")
        slice_image.SetMetaData("0018|0050", f"{image.GetSpacing()[2]:.6f}")
        paths.append(folder / f"{prefix}_{k:03d}.dcm")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(slice_image)
    return paths


def test_dicom_series_round_trip_and_series_choice(tmp_path, pet_array, caplog):
    values = np.round(pet_array * 10).astype(np.int16)
    big = make_image(values, spacing=(2.0, 2.0, 3.0), origin=(-12.0, 30.0, 7.5), direction=rotation_z(15.0))
    small = make_image(values[:4], spacing=(1.0, 1.0, 1.0))
    folder = tmp_path / "dicom"
    files = write_dicom_series(big, folder, "1.2.826.0.1.3680043.2.1125.2", "big")
    write_dicom_series(small, folder, "1.2.826.0.1.3680043.2.1125.3", "small")
    before = {p: (checksum(p), p.stat().st_mtime_ns) for p in files}

    with caplog.at_level(logging.WARNING, logger="PETStabilityDenoiseLib.volumes.io"):
        loaded = read_volume(folder)

    assert "1.2.826.0.1.3680043.2.1125.2" in caplog.text  # the bigger series, named
    assert {p: (checksum(p), p.stat().st_mtime_ns) for p in files} == before
    assert loaded.GetPixelID() == sitk.sitkFloat32
    assert_same_geometry(loaded, big, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), values.astype(np.float32))


def test_read_rejects_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


def test_read_rejects_unsupported_extension(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"\.nii\.gz.*\.nrrd.*\.mha"):
        read_volume(path)


def test_read_rejects_empty_folder(tmp_path):
    with pytest.raises(InputError, match="No DICOM series"):
        read_volume(tmp_path)


def test_read_rejects_vector_image(tmp_path):
    vector = sitk.Image([9, 9, 9], sitk.sitkVectorFloat32, 3)
    path = tmp_path / "vec.mha"
    sitk.WriteImage(vector, str(path))
    with pytest.raises(InputError, match="3-component"):
        read_volume(path)


def test_output_path_rejects_unknown_format(tmp_path):
    with pytest.raises(InputError, match="nii.gz"):
        output_path(tmp_path, "pet", "png")


# --------------------------------------------------------------------------- validation


def test_validate_accepts_image_and_small_negatives(pet_array):
    pet_array[0, 0, :3] = -0.04 * pet_array.max()
    validate_volume(pet_array, "PET")
    validate_volume(make_image(pet_array, spacing=(2.0, 2.0, 2.0)), "PET")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.__setitem__((1, 2, 3), np.nan), "1 NaN/Inf"),
        (lambda a: a.__setitem__((slice(0, 2), 0, 0), np.inf), "2 NaN/Inf"),
        (lambda a: a.__setitem__(Ellipsis, 0.0), "all zero"),
        (lambda a: a.__setitem__(Ellipsis, 3.0), "constant"),
        (lambda a: a.__setitem__((0, 0, 0), -0.8 * a.max()), "difference image or wrong scaling"),
    ],
    ids=["nan", "inf", "zero", "constant", "strongly-negative"],
)
def test_validate_rejects_bad_values(pet_array, mutate, match):
    mutate(pet_array)
    with pytest.raises(InputError, match=match):
        validate_volume(pet_array, "PET")


def test_validate_rejects_2d_and_4d():
    with pytest.raises(InputError, match="got 2D"):
        validate_volume(np.ones((32, 32)), "PET")
    with pytest.raises(InputError, match=r"got 4D with shape \(3, 16, 16, 16\); pick one frame"):
        validate_volume(np.ones((3, 16, 16, 16)), "PET")
    with pytest.raises(InputError, match="got 2D"):
        validate_volume(sitk.Image([32, 32], sitk.sitkFloat32), "PET")
    with pytest.raises(InputError, match="got 4D"):
        validate_volume(sitk.Image([16, 16, 16, 3], sitk.sitkFloat32), "PET")


def test_validate_rejects_absurd_sizes(pet_array):
    with pytest.raises(InputError, match="more than the limit"):
        validate_volume(pet_array, "PET", max_voxels=1000)
    with pytest.raises(InputError, match="too small for the 3D U-Net"):
        validate_volume(np.random.default_rng(1).random((4, 64, 64)), "PET")


def test_validate_rejects_absurd_spacing(pet_array):
    with pytest.raises(InputError, match="spacing"):
        validate_volume(make_image(pet_array, spacing=(2.0, 2.0, 25.0)), "PET")


def test_validate_rejects_vector_image():
    with pytest.raises(InputError, match="components"):
        validate_volume(sitk.Image([16, 16, 16], sitk.sitkVectorFloat32, 2), "PET")


# --------------------------------------------------------------------------- resampling


def make_mr_and_pet() -> tuple[sitk.Image, sitk.Image]:
    mr_grid = make_image(
        np.zeros((48, 48, 48), np.float32), spacing=(1.0, 1.0, 1.0),
        origin=(-20.0, -26.0, -22.0), direction=rotation_x(15.0),
    )
    mr = make_image(smooth_function(physical_points(mr_grid)).astype(np.float32), spacing=(1.0, 1.0, 1.0),
                    origin=mr_grid.GetOrigin(), direction=rotation_x(15.0))
    pet = make_image(np.zeros((22, 24, 26), np.float32), spacing=(2.0, 2.0, 2.0),
                     origin=(-18.0, 20.0, -25.0), direction=ROTATED_FLIPPED)
    return mr, pet


def test_resample_matches_analytic_function(caplog):
    mr, pet = make_mr_and_pet()
    with caplog.at_level(logging.INFO, logger="PETStabilityDenoiseLib.volumes.geometry"):
        out = resample_to_reference(mr, pet)
    assert "Resampled MR from 48x48x48 @ 1.00x1.00x1.00 mm onto the PET grid 26x24x22 @ 2.00x2.00x2.00 mm" in caplog.text
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetSize() == pet.GetSize()
    assert out.GetOrigin() == pet.GetOrigin()
    assert out.GetSpacing() == pet.GetSpacing()
    assert out.GetDirection() == pet.GetDirection()

    out_array = sitk.GetArrayViewFromImage(out)
    size = pet.GetSize()
    inside, outside = 0, 0
    for i in range(size[0]):
        for j in range(size[1]):
            for k in range(size[2]):
                point = pet.TransformIndexToPhysicalPoint((i, j, k))
                cidx = np.asarray(mr.TransformPhysicalPointToContinuousIndex(point))
                if np.all(cidx >= 1.0) and np.all(cidx <= np.asarray(mr.GetSize()) - 2.0):
                    # Curvature of f is < 0.05 /mm^2, so trilinear error at 1 mm is < 0.05.
                    assert out_array[k, j, i] == pytest.approx(smooth_function(np.asarray(point)), abs=0.05)
                    inside += 1
                elif np.any(cidx < -1.0) or np.any(cidx > np.asarray(mr.GetSize())):
                    assert out_array[k, j, i] == 0.0
                    outside += 1
    assert inside > 1000 and outside > 100


def test_resample_returns_matching_grid_unchanged(caplog):
    mr, _ = make_mr_and_pet()
    with caplog.at_level(logging.INFO, logger="PETStabilityDenoiseLib.volumes.geometry"):
        assert resample_to_reference(mr, mr) is mr
    assert "Resampled" not in caplog.text


@pytest.mark.parametrize("shift", [(500.0, 0.0, 0.0), (0.0, 0.0, 42.0)], ids=["disjoint", "sliver"])
def test_resample_rejects_non_overlapping(shift):
    mr, pet = make_mr_and_pet()
    pet.SetDirection(tuple(np.eye(3).ravel()))
    pet.SetOrigin((-20.0, -20.0, -20.0))
    mr.SetDirection(tuple(np.eye(3).ravel()))
    mr.SetOrigin(tuple(np.array([-20.0, -20.0, -20.0]) + shift))
    with pytest.raises(InputError, match="do not overlap in physical space"):
        resample_to_reference(mr, pet)


def test_array_to_image_copies_reference_geometry():
    _, pet = make_mr_and_pet()
    array = np.random.default_rng(2).random((22, 24, 26))
    image = array_to_image(array, pet)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert_same_geometry(image, pet, atol=0.0)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(image), array, rtol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        array_to_image(array.transpose(2, 1, 0), pet)


# --------------------------------------------------------------------------- crop / pad


def check_round_trip(array: np.ndarray, plan: CropPad, multiple: int) -> None:
    for mode in ("edge", "constant"):
        padded = apply_crop_pad(array, plan, mode=mode)
        assert all(n % multiple == 0 for n in padded.shape[-3:])
        assert padded.shape[-3:] == plan.padded_shape
        restored = undo_crop_pad(padded, plan, fill=-7.0)
        assert restored.shape == array.shape
        inside = np.zeros(plan.original_shape, bool)
        inside[plan.crop_slices] = True
        np.testing.assert_array_equal(restored[..., inside], array[..., inside])
        assert np.all(restored[..., ~inside] == -7.0)


def test_crop_pad_round_trip():
    rng = np.random.default_rng(3)
    array = rng.random((30, 41, 27)).astype(np.float32)
    mask = np.zeros(array.shape, bool)
    mask[8:17, 10:30, 5:9] = True
    plan = plan_crop_pad(mask, margin_voxels=2, multiple=8)
    assert plan.crop_slices == (slice(6, 19), slice(8, 32), slice(3, 11))
    assert plan.padded_shape == (16, 24, 8)
    check_round_trip(array, plan, 8)
    check_round_trip(rng.random((2, 30, 41, 27)), plan, 8)  # leading channel axis


def test_crop_pad_mask_touching_border():
    array = np.arange(20 * 21 * 22, dtype=np.float64).reshape(20, 21, 22)
    mask = np.zeros(array.shape, bool)
    mask[0:5, 3:21, 18:22] = True
    plan = plan_crop_pad(mask, margin_voxels=(3, 2, 4), multiple=16)
    assert plan.crop_slices == (slice(0, 8), slice(1, 21), slice(14, 22))
    check_round_trip(array, plan, 16)


def test_crop_pad_rejects_empty_mask():
    with pytest.raises(InputError, match="mask is empty"):
        plan_crop_pad(np.zeros((10, 10, 10), bool), margin_voxels=2, multiple=8)


def test_head_mask_fills_holes_and_drops_stray_blobs():
    z, y, x = np.mgrid[:40, :40, :40]
    radius = np.sqrt((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2)
    pet = np.where(radius < 14, 10.0, 0.0)
    pet[radius < 4] = 0.0  # cold "ventricle" inside the head
    pet[2:5, 2:5, 2:5] = 10.0  # stray blob (e.g. bed) outside the head
    pet += np.random.default_rng(4).normal(0.0, 0.1, pet.shape)
    mask = head_mask(pet)
    assert mask.dtype == bool
    assert mask[20, 20, 20]  # hole filled
    assert not mask[3, 3, 3]  # stray blob dropped
    assert not mask[20, 20, 38]  # air
    assert np.mean(mask[radius < 12]) == 1.0

    # MR extends the head (scalp with little PET uptake)
    mr = np.where(radius < 17, 1.0, 0.0)
    assert head_mask(pet, mr)[20, 20, 36]
    assert not head_mask(pet)[20, 20, 36]


def test_validate_mr_has_no_sign_rule_but_still_rejects_nan_and_constant(pet_array):
    z_scored = (pet_array - 0.8 * pet_array.max()) / pet_array.std()  # mostly negative, as a z-scored MR can be
    with pytest.raises(InputError, match="difference image"):
        validate_volume(z_scored, "PET")
    validate_volume(z_scored, "MR", activity=False)
    z_scored[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        validate_volume(z_scored, "MR", activity=False)
    with pytest.raises(InputError, match="constant"):
        validate_volume(np.full_like(pet_array, -1.0), "MR", activity=False)


@pytest.mark.parametrize("binary, content", [(False, "{}"), (True, b"\x00weights")], ids=["text", "binary"])
def test_an_atomic_write_is_whole_or_absent(tmp_path, binary, content):
    def interrupted(stream):
        stream.write(content)
        raise KeyboardInterrupt

    path = tmp_path / "sub" / "case.json"
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, interrupted, binary=binary)
    assert list(path.parent.iterdir()) == []
    write_atomically(path, lambda stream: stream.write(content), binary=binary)
    assert [p.name for p in path.parent.iterdir()] == ["case.json"]
    assert (path.read_bytes() if binary else path.read_text()) == content
    with pytest.raises(KeyboardInterrupt):  # a failed rewrite keeps the earlier file
        write_atomically(path, interrupted, binary=binary)
    assert [p.name for p in path.parent.iterdir()] == ["case.json"]
    assert (path.read_bytes() if binary else path.read_text()) == content
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask, "an ordinary file's mode, not mkstemp's private one"


def test_on_windows_itk_is_given_non_ascii_paths_by_their_short_names(tmp_path, monkeypatch):
    # ITK on Windows cannot open "C:\Users\José\..." unless Windows runs with UTF-8: 8.3 names are ASCII.
    from PETStabilityDenoiseLib.volumes import io

    folder = tmp_path / "José"
    folder.mkdir()
    existing = folder / "pet.nii.gz"
    existing.write_bytes(b"")
    short_names = {str(folder): str(tmp_path / "JOSE~1"), str(existing): str(tmp_path / "JOSE~1" / "PET~1.GZ")}
    monkeypatch.setattr(io, "ON_WINDOWS", True)
    monkeypatch.setattr(io, "_windows_short_path", short_names.get)

    assert io.itk_path(existing) == short_names[str(existing)]
    assert io.itk_path(folder / "denoised.nii.gz") == str(tmp_path / "JOSE~1" / "denoised.nii.gz")  # to be written
    assert io.itk_path(tmp_path / "plain.nii.gz") == str(tmp_path / "plain.nii.gz")
    assert io.non_ascii_path_advice(existing) == ""

    monkeypatch.setattr(io, "_windows_short_path", lambda path: None)  # a drive that keeps no short names
    assert io.itk_path(existing) == str(existing)
    assert "plain-ASCII path" in io.non_ascii_path_advice(existing)
    monkeypatch.setattr(io, "ON_WINDOWS", False)
    assert io.itk_path(existing) == str(existing) and io.non_ascii_path_advice(existing) == ""
