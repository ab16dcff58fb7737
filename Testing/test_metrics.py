"""Metrics of METHOD.md section 4 on hand-built arrays with known answers."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PETStabilityDenoise"))

from PETStabilityDenoiseLib.evaluation import metrics  # noqa: E402


def _masks(shape=(2, 3, 4)):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    c = np.zeros(shape, bool)
    a.flat[[0, 1]] = True  # values 0, 1
    b.flat[[10, 12]] = True  # values 10, 12
    c.flat[[4]] = True  # value 4
    return image, a, b, c


def test_peak_to_valley_ratio():
    image, a, b, c = _masks()
    # peaks: means 0.5 and 11 -> 5.75; valley 4
    assert metrics.peak_to_valley_ratio(image, [a, b], c) == pytest.approx(5.75 / 4)


def test_wm_noise():
    image = np.zeros((1, 1, 4), np.float32)
    image[0, 0] = [1.0, 3.0, 1.0, 3.0]
    std, cov = metrics.wm_noise(image, np.ones(image.shape, np.uint8))
    assert std == pytest.approx(1.0)
    assert cov == pytest.approx(0.5)


def test_roi_bias():
    image, a, b, _ = _masks()
    reference = np.full(image.shape, 10.0)
    assert metrics.roi_bias(image, reference, b) == pytest.approx(0.1)  # mean 11 vs 10
    assert metrics.roi_bias(image * 0 + 9.0, reference, a) == pytest.approx(-0.1)


def test_contrast_recovery():
    image = np.ones((1, 2, 5), np.float32)
    lesion = np.zeros(image.shape, bool)
    lesion[0, 0, :2] = True
    image[lesion] = 2.0  # measured ratio 2 with true ratio 3 -> (2 - 1) / (3 - 1)
    background = ~lesion
    assert metrics.contrast_recovery(image, lesion, background, 3.0) == pytest.approx(0.5)
    image[lesion] = 3.0
    assert metrics.contrast_recovery(image, lesion, background, 3.0) == pytest.approx(1.0)


def test_neighbour_steps_known_answer_and_mask():
    # A step of 1 halfway along x on a background of 1: along x one pair in five of each row differs by 1.
    image = np.ones((4, 4, 6))
    image[:, :, 3:] = 2.0
    steps = metrics.neighbour_steps(image, np.ones(image.shape, bool))
    assert steps == pytest.approx((0.0, 0.0, (1 / 5) / 1.5))
    # Only pairs with both voxels in the mask count: without the step's pairs, the map is flat.
    left = np.zeros(image.shape, bool)
    left[:, :, :3] = True
    assert metrics.neighbour_steps(image, left) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="mean is zero"):
        metrics.neighbour_steps(np.zeros((3, 3, 3)), np.ones((3, 3, 3), bool))


def test_validation_messages():
    image, a, b, c = _masks()
    with pytest.raises(ValueError, match="shape"):
        metrics.wm_noise(image, np.ones((2, 3, 5), bool))
    with pytest.raises(ValueError, match="valley mask is empty"):
        metrics.peak_to_valley_ratio(image, [a, b], np.zeros(image.shape, bool))
    with pytest.raises(ValueError, match="lesion background mask is empty"):
        metrics.contrast_recovery(image, a, np.zeros(image.shape, bool), 2.0)
    with pytest.raises(ValueError, match="reference shape"):
        metrics.roi_bias(image, np.ones((3, 3)), a)
    with pytest.raises(ValueError, match="true ratio"):
        metrics.contrast_recovery(image, a, b, 1.0)


def test_psnr_known_answer():
    truth = np.zeros((8, 8, 8), np.float32)
    truth[2:6, 2:6, 2:6] = 10.0
    mask = np.ones_like(truth, bool)
    image = truth + 1.0  # MSE 1 everywhere; peak 10 -> 20 dB
    assert metrics.psnr(image, truth, mask) == pytest.approx(20.0)
    assert metrics.psnr(truth, truth, mask) == float("inf")
    inner = truth > 0  # only the cube: still MSE 1, same peak
    assert metrics.psnr(image, truth, inner) == pytest.approx(20.0)


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    truth = np.zeros((20, 20, 20), np.float32)
    truth[3:17, 3:17, 3:17] = 4.0  # the bounding box must hold the 11-voxel Gaussian window
    truth[8:12, 8:12, 8:12] = 8.0
    mask = truth > 0
    assert metrics.ssim(truth, truth, mask) == pytest.approx(1.0)
    noisy = truth + rng.normal(0, 1.0, truth.shape).astype(np.float32)
    noisier = truth + rng.normal(0, 3.0, truth.shape).astype(np.float32)
    assert 0 < metrics.ssim(noisier, truth, mask) < metrics.ssim(noisy, truth, mask) < 1
    with pytest.raises(ValueError, match="shape"):
        metrics.ssim(truth[:-1], truth, mask)
