"""Shared fixtures: a small synthetic head, PET on a rotated 2 mm grid, MR on its own 1 mm grid."""

from __future__ import annotations

import locale

import numpy as np
import pytest
import SimpleITK as sitk


@pytest.fixture(autouse=True)
def _locale_restored():
    """Writing DICOM with SimpleITK (the tests' series) leaves the C library's locale at "C", which makes Python's
    default text encoding ASCII: later tests must not inherit that."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


def rotation_direction(degrees: float, flip_y: bool = False) -> tuple:
    """A non-identity direction matrix: rotation about z, optionally with a flipped y axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrix = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1, -1 if flip_y else 1, 1])
    return tuple(matrix.ravel())


def centred_grid(size, spacing, direction) -> sitk.Image:
    """An empty float image whose field of view is centred on the physical origin."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    half_extent = (np.array(size) - 1) * np.array(spacing) / 2
    image.SetOrigin(tuple(-np.array(direction).reshape(3, 3) @ half_extent))
    return image


def _physical_grid(image: sitk.Image) -> np.ndarray:
    """Physical coordinates (z, y, x, 3) of every voxel centre."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.array(image.GetOrigin()) + (idx * np.array(image.GetSpacing())) @ direction.T
    return points.reshape(size + (3,)).transpose(2, 1, 0, 3)


def head_phantom(image: sitk.Image, kind: str) -> np.ndarray:
    """An ellipsoidal head with a hot rim and two hot spots (PET) or bright core (MR), in mm."""
    p = _physical_grid(image)
    r_head = np.sqrt((p[..., 0] / 30) ** 2 + (p[..., 1] / 36) ** 2 + (p[..., 2] / 26) ** 2)
    r_core = np.sqrt((p[..., 0] / 18) ** 2 + (p[..., 1] / 24) ** 2 + (p[..., 2] / 16) ** 2)
    head, core = r_head < 1, r_core < 1
    if kind == "mr":
        return (60.0 * head + 90.0 * core).astype(np.float32)
    spots = sum(np.linalg.norm(p - np.array([x, 0, 0]), axis=-1) < 5 for x in (-8, 8))
    return (1.0 * head + 3.0 * (head & ~core) + 4.0 * spots).astype(np.float32)


@pytest.fixture()
def small_pet_mr():
    """(pet, mr, clean_pet): PET 2 mm on a rotated, flipped grid with OSEM-like negatives; MR 1 mm elsewhere.

    The head lies wholly inside both fields of view, with air around it.
    """
    pet = centred_grid((44, 48, 38), (2.0, 2.0, 2.0), rotation_direction(15, flip_y=True))
    clean = head_phantom(pet, "pet")
    # Poisson-like noise that grows with activity; air gets small OSEM-like negatives.
    sigma = 0.3 * np.sqrt(clean) + 0.02
    noisy = (clean + sigma * np.random.default_rng(1).standard_normal(clean.shape)).astype(np.float32)
    pet_image = sitk.GetImageFromArray(noisy)
    pet_image.CopyInformation(pet)

    mr = centred_grid((86, 94, 70), (1.0, 1.0, 1.0), rotation_direction(-10))
    mr.SetOrigin(tuple(np.array(mr.GetOrigin()) + (1.5, -2.0, 0.5)))
    mr_image = sitk.GetImageFromArray(head_phantom(mr, "mr"))
    mr_image.CopyInformation(mr)
    return pet_image, mr_image, clean


def synthetic_training_pairs(count: int = 2, shape=(28, 30, 26)):
    """Low-dose/full-dose pairs of a noisy sphere with its MR, already cropped, for quick DDPM training."""
    from PETStabilityDenoiseLib.training.dataset import make_pair

    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    head = ((z - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (min(shape) / 2.2) ** 2
    clean = (2.0 * head + 2.0 * (head & (x > shape[2] / 2))).astype(np.float32)
    mr = (100.0 * head).astype(np.float32)
    return [make_pair(clean + rng.normal(0, 0.8, shape).astype(np.float32) * head,
                      clean + rng.normal(0, 0.2, shape).astype(np.float32) * head, clean, mr, f"s{i}", 0.1, margin=2)
            for i in range(count)]


@pytest.fixture(scope="session")
def tiny_ddpm_model_dir(tmp_path_factory):
    """A tiny DDPM trained for a few steps inside the tests (not a useful denoiser): its saved model folder."""
    from PETStabilityDenoiseLib.engine.ddpm.model import DDPMConfig
    from PETStabilityDenoiseLib.training.trainer import TrainingSettings, train

    config = DDPMConfig(channels=(16, 16), num_res_blocks=1, patch_size=16)
    settings = TrainingSettings(steps=4, batch_size=2, checkpoint_every=2, validate_every=2, log_every=1,
                                validation_patches=2)
    pairs = synthetic_training_pairs()
    return train(config, settings, pairs[:1], pairs[1:], tmp_path_factory.mktemp("tiny_ddpm"))


@pytest.fixture()
def quick_engine(monkeypatch):
    """Replaces the DIP fit by a Gaussian smoothing, so that a run takes a second; the rest of the path is real."""
    from PETStabilityDenoiseLib.engine import run as engine_run
    from PETStabilityDenoiseLib.engine.pipeline import DenoiseResult, blend_images

    def denoise(pet, mr, config, *, alpha, progress=None):
        network_output = sitk.SmoothingRecursiveGaussian(pet, 2.0)
        stability = sitk.Abs(pet - network_output)
        stability_mean = float(np.mean(sitk.GetArrayViewFromImage(stability)))
        denoised, stability_norm = blend_images(pet, network_output, stability, alpha, stability_mean)
        return DenoiseResult(pet, denoised, network_output, stability, stability_norm, alpha, stability_mean, 3,
                             "dip", {"device": "cpu"}, {"timings": {}, "fit_shape": [1, 1, 1], "mr_resampled": False})

    monkeypatch.setattr(engine_run, "denoise", denoise)
