"""PET DICOM in (body-weight SUV, QIBA) and DICOM out (--format dicom), on a synthetic series built here."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import centred_grid, head_phantom, rotation_direction
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from PETStabilityDenoiseLib import __version__
from PETStabilityDenoiseLib.cli import main
from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.pipeline import denoise
from PETStabilityDenoiseLib.errors import InputError
from PETStabilityDenoiseLib.settings import get_preset
from PETStabilityDenoiseLib.volumes.dicom import DICOM_TOLERANCE, PIXEL_MAX, write_derived_series
from PETStabilityDenoiseLib.volumes.geometry import grids_match
from PETStabilityDenoiseLib.volumes.io import dicom_series_files, output_path, read_volume
from PETStabilityDenoiseLib.volumes.pet_input import read_pet
from PETStabilityDenoiseLib.volumes.suv import suv_bw_factor

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
SIZE, SPACING = (24, 24, 16), (4.0, 3.5, 4.5)  # x, y, z: an oblique grid with three different spacings
SERIES_DATE, SERIES_TIME, INJECTION = "20240312", "101500", "20240312091500.000000"
WEIGHT_KG, DOSE_BQ, HALF_LIFE_S = "72.5", "370000000", "6586.2"
# By hand: the scan starts 3600 s after the injection; 2 ** (-3600 / 6586.2) = 0.684633, so 370e6 Bq decays to
# 253.314e6 Bq; 72.5 kg = 72500 g; 72500 / 253.314e6 = 2.86206e-4 SUV per Bq/ml.
HAND_FACTOR = 2.86206e-4
VOLUMES = ("denoised", "network_output", "stability", "stability_norm")
SEQUENCE = "RadiopharmaceuticalInformationSequence"


def pet_headers(grid: sitk.Image, activity: np.ndarray) -> list:
    """One PET Image Storage dataset per slice of ``activity`` (Bq/ml, z y x), stored as int16 with a
    per-slice RescaleSlope as scanners do, with a radiopharmaceutical sequence, a private tag and a window."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    d = grid.GetDirection()
    headers = []
    for k, plane in enumerate(activity):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = PET_STORAGE, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientWeight, ds.PatientSex = "Test^Pet", "PETSTAB-1", WEIGHT_KG, "F"
        ds.Modality, ds.SeriesDescription, ds.ImageType = "PT", "PET Brain AC", ["ORIGINAL", "PRIMARY"]
        ds.StudyDate, ds.SeriesDate, ds.SeriesTime = SERIES_DATE, SERIES_DATE, SERIES_TIME
        ds.AcquisitionDate, ds.AcquisitionTime = SERIES_DATE, SERIES_TIME
        ds.Units, ds.CorrectedImage, ds.DecayCorrection = "BQML", ["DECY", "ATTN", "SCAT", "DTIM"], "START"
        item = Dataset()
        item.Radiopharmaceutical, item.RadionuclideTotalDose, item.RadionuclideHalfLife = "FDG", DOSE_BQ, HALF_LIFE_S
        item.RadiopharmaceuticalStartTime, item.RadiopharmaceuticalStartDateTime = INJECTION[8:], INJECTION
        ds.RadiopharmaceuticalInformationSequence = [item]
        ds.InstanceNumber, ds.ImageIndex = k + 1, k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in grid.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])]
        ds.PixelSpacing, ds.SliceThickness = [f"{SPACING[1]:g}", f"{SPACING[0]:g}"], f"{SPACING[2]:g}"
        ds.WindowCenter, ds.WindowWidth = "10000", "20000"
        ds.private_block(0x0009, "ACME PET", create=True).add_new(0x01, "DS", "0.5")  # a vendor's scale factor
        slope = float(f"{np.abs(plane).max() / 30000:.6g}")
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", *plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.6g}", "0"
        ds.PixelData = np.rint(plane / slope).astype("<i2").tobytes()
        headers.append(ds)
    return headers


def save_implicit(ds: Dataset, path: Path) -> None:
    """Writes ``ds`` in Implicit VR Little Endian (as many archives do), with pydicom 3 or 2."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, True
        ds.save_as(str(path), write_like_original=False)


@pytest.fixture()
def pet_series(tmp_path):
    """A 24 x 24 x 16 FDG PET series in Bq/ml on an oblique grid: its folder, headers, files and image as read."""
    grid = centred_grid(SIZE, SPACING, rotation_direction(15))
    clean = head_phantom(grid, "pet")  # 0 to 8; in air, small OSEM-like negatives after the noise
    noisy = clean + (0.3 * np.sqrt(clean) + 0.02) * np.random.default_rng(3).standard_normal(clean.shape)
    headers = pet_headers(grid, 5000.0 * noisy)  # Bq/ml
    folder = tmp_path / "pet_dicom"
    folder.mkdir()
    for k, ds in enumerate(reversed(headers)):  # file names in the reverse of slice order: the reader sorts
        save_implicit(ds, folder / f"IM{k:04d}")
    return SimpleNamespace(folder=folder, headers=headers, grid=grid, image=read_volume(folder),
                           files=dicom_series_files(folder))


# --- SUV ---------------------------------------------------------------------------------------------------


def test_suv_factor_matches_a_hand_computation(pet_series):
    factor = suv_bw_factor(pet_series.headers)
    assert factor.factor == pytest.approx(HAND_FACTOR, rel=2e-6)
    assert factor.decay_s == 3600.0 and factor.decayed_dose_bq == pytest.approx(253.314e6, rel=1e-6)
    assert (factor.scan_start, factor.injection) == ("2024-03-12T10:15:00", "2024-03-12T09:15:00")
    assert factor.tags == {"Units": "BQML", "CorrectedImage": ["DECY", "ATTN", "SCAT", "DTIM"],
                           "DecayCorrection": "START", "PatientWeight": 72.5, "RadionuclideTotalDose": 370e6,
                           "RadionuclideHalfLife": 6586.2, "SeriesDate": SERIES_DATE, "SeriesTime": SERIES_TIME,
                           "RadiopharmaceuticalStartDateTime": INJECTION}


def test_start_time_on_the_series_date_gives_the_same_factor(pet_series):
    for ds in pet_series.headers:
        del ds[SEQUENCE][0].RadiopharmaceuticalStartDateTime
    factor = suv_bw_factor(pet_series.headers)
    assert factor.factor == pytest.approx(HAND_FACTOR, rel=2e-6)
    assert factor.tags["RadiopharmaceuticalStartTime"] == "091500.000000"


def test_admin_decay_correction_does_not_decay_the_dose(pet_series):
    for ds in pet_series.headers:
        ds.DecayCorrection = "ADMIN"
    # 72500 g / 370e6 Bq
    assert suv_bw_factor(pet_series.headers).factor == pytest.approx(1.95946e-4, rel=1e-5)


def test_a_series_time_after_the_earliest_acquisition_is_replaced_by_it(pet_series, caplog):
    # A post-processed series whose SeriesTime is its creation time (11:40); the slices were acquired from 10:15.
    for k, ds in enumerate(pet_series.headers):
        ds.SeriesTime, ds.AcquisitionTime = "114000", f"1015{k:02d}"
    with caplog.at_level(logging.WARNING):
        factor = suv_bw_factor(pet_series.headers)
    assert factor.factor == pytest.approx(HAND_FACTOR, rel=2e-6) and factor.decay_s == 3600.0
    assert factor.tags["AcquisitionTime"] == "101500" and "earliest acquisition" in caplog.text


def holder(ds: Dataset, keyword: str) -> Dataset:
    """The dataset that holds ``keyword``: the radiopharmaceutical item, or the slice's own."""
    item = ds[SEQUENCE][0]
    return item if keyword in item else ds


def remove(headers: list, keyword: str) -> None:
    for ds in headers:
        where = holder(ds, keyword)
        delattr(where, keyword)
        if keyword == "RadiopharmaceuticalStartTime":  # the time is needed only without the date-time
            del where.RadiopharmaceuticalStartDateTime


@pytest.mark.parametrize("keyword, tag", [
    ("Units", "(0054,1001)"), ("CorrectedImage", "(0028,0051)"), ("DecayCorrection", "(0054,1102)"),
    ("PatientWeight", "(0010,1030)"), ("SeriesDate", "(0008,0021)"), ("SeriesTime", "(0008,0031)"),
    ("RadionuclideTotalDose", "(0018,1074)"), ("RadionuclideHalfLife", "(0018,1075)"),
    ("RadiopharmaceuticalStartTime", "(0018,1072)"), (SEQUENCE, "(0054,0016)"),
])
def test_a_missing_tag_is_named(pet_series, keyword, tag):
    remove(pet_series.headers, keyword)
    with pytest.raises(InputError, match=rf"{keyword} \({tag[1:-1]}\).*missing"):
        suv_bw_factor(pet_series.headers)


@pytest.mark.parametrize("keyword, value, message", [
    ("Units", "CNTS", r"Units \(0054,1001\) is 'CNTS': SUV needs BQML"),
    ("Units", "GML", r"already in SUV: leave suv unset; petstab: leave out --suv"),
    ("CorrectedImage", ["ATTN", "SCAT"], r"CorrectedImage \(0028,0051\) is 'ATTN\\\\SCAT', without DECY"),
    ("DecayCorrection", "NONE", r"DecayCorrection \(0054,1102\) is 'NONE'"),
    ("PatientWeight", "0", r"PatientWeight \(0010,1030\) is '0': SUV needs a positive value"),
    ("SeriesDate", "20240231", r"SeriesDate \(0008,0021\) is '20240231', not a DICOM date"),
    ("RadiopharmaceuticalStartDateTime", "20240312111500",
     r"the injection \(2024-03-12T11:15:00, from RadiopharmaceuticalStartDateTime \(0018,1078\)\) is after the "
     r"scan start \(2024-03-12T10:15:00, from SeriesDate \(0008,0021\) and SeriesTime \(0008,0031\)\)"),
])
def test_a_wrong_value_is_named(pet_series, keyword, value, message):
    for ds in pet_series.headers:
        setattr(holder(ds, keyword), keyword, value)
    with pytest.raises(InputError, match=message):
        suv_bw_factor(pet_series.headers)


def test_a_tag_that_differs_between_files_is_named(pet_series):
    pet_series.headers[5].PatientWeight = "80"
    with pytest.raises(InputError, match=r"PatientWeight \(0010,1030\) differs between the files.*'72.5'.*'80'"):
        suv_bw_factor(pet_series.headers)


def test_read_pet_in_suv_is_the_stored_values_times_the_factor(pet_series):
    bqml, suv = read_pet(pet_series.folder), read_pet(pet_series.folder, "bw")
    assert bqml.suv is None and suv.suv is not None and suv.suv.factor == pytest.approx(HAND_FACTOR, rel=2e-6)
    assert grids_match(suv.image, pet_series.grid, tol=1e-5) and suv.image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(suv.image),
                               sitk.GetArrayViewFromImage(bqml.image) * suv.suv.factor, rtol=1e-6)
    assert suv.series_files == pet_series.files and len(suv.series_files) == SIZE[2]


def test_suv_denoise_is_the_bqml_denoise_scaled_by_the_factor(pet_series):
    # The engine divides the PET by its mean over the head and scales the output back, so SUV changes nothing
    # but the units. Measured on 2 CPU cores: 4.0e-6 (denoised), 4.4e-6 (network output) and 4.6e-6 (S) of the
    # largest value, 5.9e-6 in S_norm: float32 rounding. The tolerance is about 10 times that.
    config = get_preset("tiny", seed=1, device="cpu")
    bqml, suv = read_pet(pet_series.folder), read_pet(pet_series.folder, "bw")
    in_bqml, in_suv = denoise(bqml.image, None, config, alpha=0.3), denoise(suv.image, None, config, alpha=0.3)
    factor = suv.suv.factor
    for name in ("denoised", "network_output", "stability"):
        scaled = sitk.GetArrayFromImage(getattr(in_bqml, name)) * factor
        difference = np.abs(sitk.GetArrayFromImage(getattr(in_suv, name)) - scaled).max() / np.abs(scaled).max()
        assert difference < 5e-5, name
    np.testing.assert_allclose(sitk.GetArrayFromImage(in_suv.stability_norm),
                               sitk.GetArrayFromImage(in_bqml.stability_norm), rtol=0, atol=5e-5)


# --- DICOM out -------------------------------------------------------------------------------------------------


def read_series(folder: Path) -> list:
    """The datasets of a written series, in slice order."""
    return [pydicom.dcmread(path) for path in dicom_series_files(folder)]


def test_a_derived_series_reads_back_on_the_grid_within_tolerance(pet_series, tmp_path):
    suv = read_pet(pet_series.folder, "bw")
    array = sitk.GetArrayFromImage(suv.image)
    array[3] = 0.0  # an empty slice
    array[4] -= 0.5 * array[4].max()  # a slice with large negatives
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(suv.image)
    folder = write_derived_series(image, tmp_path / "series", suv.series_files, description="test alpha 0.3",
                                  units="GML", suv_type="BW")

    written = read_volume(folder)  # SimpleITK
    assert grids_match(written, pet_series.grid, tol=1e-5)
    error = np.abs(sitk.GetArrayFromImage(written) - array)
    # Each slice rounds to half its slope: 1/64000 of its largest magnitude (1.6e-5), far within the 0.1 % promised.
    per_slice = error.reshape(len(array), -1).max(axis=1)
    assert np.all(per_slice <= np.abs(array).reshape(len(array), -1).max(axis=1) / (2 * PIXEL_MAX) * 1.0001 + 1e-12)
    assert error.max() / np.abs(array).max() < DICOM_TOLERANCE and per_slice[3] == 0.0

    source, derived = read_series(pet_series.folder), read_series(folder)  # pydicom
    assert len(derived) == len(source) == SIZE[2]
    series_uids = {ds.SeriesInstanceUID for ds in derived}
    assert len(series_uids) == 1 and series_uids.isdisjoint({source[0].SeriesInstanceUID})
    sop_uids = {ds.SOPInstanceUID for ds in derived}
    assert len(sop_uids) == len(derived) and sop_uids.isdisjoint({ds.SOPInstanceUID for ds in source})
    for before, after in zip(source, derived):
        assert list(after.ImageType) == ["DERIVED", "SECONDARY"]
        assert after.SeriesDescription == "PET Brain AC PETStab test alpha 0.3"
        assert after.DerivationDescription == f"PETStabilityDenoise {__version__}: test alpha 0.3"
        for keyword in ("PatientName", "PatientID", "PatientWeight", "StudyInstanceUID", "FrameOfReferenceUID",
                        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "SOPClassUID", "Modality", "RadiopharmaceuticalInformationSequence", "InstanceNumber"):
            assert after[keyword].value == before[keyword].value, keyword
        assert after.SourceImageSequence[0].ReferencedSOPInstanceUID == before.SOPInstanceUID
        assert (after.Units, after.SUVType, after.RescaleIntercept, after.PixelRepresentation) == ("GML", "BW", 0, 1)
        assert "WindowCenter" not in after and not any(element.tag.is_private for element in after)
        assert after.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_the_dicom_output_path_is_a_folder(tmp_path):
    assert output_path(tmp_path, "denoised", "dicom") == tmp_path / "denoised"
    assert output_path(tmp_path, "denoised", "nrrd") == tmp_path / "denoised.nrrd"


def test_cli_denoises_a_dicom_series_in_suv_into_dicom_then_reblends(pet_series, tmp_path, caplog):
    out = tmp_path / "run"
    code = main(["denoise", "--pet", str(pet_series.folder), "--suv", "bw", "--format", "dicom", "--out", str(out),
                 "--preset", "tiny", "--device", "cpu", "--seed", "1", "--progress", "none"])
    assert code == 0, caplog.text
    assert sorted(path.name for path in out.iterdir()) == sorted([*VOLUMES, "run.json"])
    record = json.loads((out / "run.json").read_text())
    assert record["format"] == "dicom" and record["outputs"] == {name: name for name in VOLUMES}
    assert record["suv"]["type"] == "bw" and record["suv"]["factor"] == pytest.approx(HAND_FACTOR, rel=2e-6)
    assert record["suv"]["tags"]["PatientWeight"] == 72.5 and record["suv"]["decay_s"] == 3600.0
    pet_suv = read_pet(pet_series.folder, "bw").image
    series = {name: read_series(out / name) for name in VOLUMES}
    for name in VOLUMES:
        assert grids_match(read_volume(out / name), pet_suv, tol=1e-5), name
    assert {ds.Units for ds in series["denoised"]} == {"GML"} and {ds.Units for ds in series["stability_norm"]} == {"NONE"}
    assert series["denoised"][0].SeriesDescription == "PET Brain AC PETStab denoised alpha 0.3"
    assert series["network_output"][0].SeriesDescription == "PET Brain AC PETStab network output"

    assert main(["blend", "--run", str(out), "--alpha", "0.6"]) == 0, caplog.text
    reblended = {name: read_series(out / name) for name in VOLUMES}
    assert reblended["denoised"][0].SeriesDescription == "PET Brain AC PETStab denoised alpha 0.6"
    assert reblended["denoised"][0].SeriesInstanceUID != series["denoised"][0].SeriesInstanceUID
    assert [ds.SOPInstanceUID for ds in reblended["network_output"]] == \
        [ds.SOPInstanceUID for ds in series["network_output"]]  # copied, not rewritten
    arrays = {name: sitk.GetArrayFromImage(read_volume(out / name)) for name in VOLUMES}
    expected, _ = blend(sitk.GetArrayFromImage(pet_suv), arrays["network_output"], arrays["stability"], 0.6,
                        stability_mean=record["stability_mean"])
    assert np.abs(arrays["denoised"] - expected).max() <= DICOM_TOLERANCE * np.abs(expected).max()
    assert json.loads((out / "run.json").read_text())["suv"] == record["suv"]


@pytest.mark.parametrize("argv, message", [
    (["--format", "dicom"], "fmt (petstab --format) dicom needs the PET as a DICOM series folder"),
    (["--suv", "bw"], "suv (petstab --suv) bw needs the PET as a DICOM series folder"),
])
def test_cli_refuses_dicom_output_or_suv_for_a_nifti_pet(pet_series, tmp_path, caplog, monkeypatch, argv, message):
    from PETStabilityDenoiseLib.engine import run as engine_run

    monkeypatch.setattr(engine_run, "denoise", lambda *args, **kwargs: pytest.fail("the fit started"))
    pet = tmp_path / "pet.nii.gz"
    sitk.WriteImage(pet_series.image, str(pet))
    out = tmp_path / "run"
    assert main(["denoise", "--pet", str(pet), "--out", str(out), "--preset", "tiny", "--progress", "none", *argv]) == 2
    assert message in caplog.text and "Traceback" not in caplog.text
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["pet.nii.gz", "pet_dicom"]


def test_a_cohort_row_in_suv_writes_dicom_and_resumes_only_with_the_same_conversion(pet_series, tmp_path, caplog):
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"subject,pet,mr,suv\ns1,{pet_series.folder},,bw\n")
    out = tmp_path / "cohort_out"
    argv = ["batch", "--cohort", str(cohort), "--out", str(out), "--workers", "1", "--format", "dicom",
            "--preset", "tiny", "--device", "cpu"]
    assert main(argv) == 0, caplog.text
    assert json.loads((out / "s1" / "run.json").read_text())["suv"]["factor"] == pytest.approx(HAND_FACTOR, rel=2e-6)
    assert sorted(path.name for path in (out / "s1").iterdir()) == sorted([*VOLUMES, "run.json"])
    assert main(argv) == 0 and "s1,skipped" in (out / "summary.csv").read_text()
    cohort.write_text(f"subject,pet,mr,suv\ns1,{pet_series.folder},,\n")  # now in Bq/ml: run again
    assert main(argv) == 0 and "s1,done" in (out / "summary.csv").read_text()
    assert json.loads((out / "s1" / "run.json").read_text())["suv"] is None
