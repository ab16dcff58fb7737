"""A short DIP run on a simulated low-dose brain case, measured against its own input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETStabilityDenoiseLib.cli import main
from PETStabilityDenoiseLib.engine.pipeline import denoise
from PETStabilityDenoiseLib.evaluation import metrics
from PETStabilityDenoiseLib.settings import get_preset
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case

# Far shorter than the paper's schedule, long enough for the network to fit
# the smooth signal and not yet the noise.
SHORT = get_preset("fast", epochs=30, interval=5, start=10, channels=(8, 16, 32, 64))


@pytest.fixture(scope="module")
def low_dose_case():
    return simulate_case(sitk.ReadImage(str(bundled_labels_path())), SimulationConfig(doses=(0.1,), seed=3))


@pytest.fixture(scope="module")
def denoised(low_dose_case):
    return denoise(low_dose_case.osem[0.1], low_dose_case.mr, SHORT, alpha=0.6)


@pytest.mark.slow
def test_dip_lowers_white_matter_noise(low_dose_case, denoised):
    wm = sitk.GetArrayFromImage(low_dose_case.masks["wm_eroded"]).astype(bool)
    osem_std, _ = metrics.wm_noise(sitk.GetArrayFromImage(low_dose_case.osem[0.1]), wm)
    dip_std, _ = metrics.wm_noise(sitk.GetArrayFromImage(denoised.network_output), wm)
    blend_std, _ = metrics.wm_noise(sitk.GetArrayFromImage(denoised.denoised), wm)
    assert dip_std < 0.9 * osem_std
    assert dip_std <= blend_std < osem_std
    assert denoised.n_samples == 5


@pytest.mark.slow
def test_alpha_limits(low_dose_case, denoised):
    denoised = copy.copy(denoised)  # reblend replaces images on this copy; the shared result keeps alpha 0.6
    x0 = sitk.GetArrayFromImage(low_dose_case.osem[0.1])
    net = sitk.GetArrayFromImage(denoised.network_output)
    s = sitk.GetArrayFromImage(denoised.stability)
    denoised.reblend(0.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(denoised.denoised), net)
    denoised.reblend(1e6)
    x = sitk.GetArrayFromImage(denoised.denoised)
    assert (s > 0).sum() > 0.2 * s.size
    np.testing.assert_allclose(x[s > 0], x0[s > 0], rtol=1e-6, atol=1e-6)


def test_demo_writes_figure_metrics_and_outputs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--preset", "tiny", "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    for name in ("OSEM", "Gaussian", "DIP", "blend", "PVR", "WM CoV", "hypo rec."):
        assert name in printed
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    table = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert len(table) == 4
    for metrics_of_image in table.values():
        for key in ("pvr", "wm_cov", "lesion_cr", "hypo_recovery", "psnr_blurred", "mean_abs_bias"):
            assert np.isfinite(metrics_of_image[key]), key
    assert {p.name for p in (tmp_path / "denoised").iterdir()} >= {"denoised.nii.gz", "stability.nii.gz", "run.json"}
