"""Simulator: phantom values, acquisition statistics, OSEM scale and noise texture, geometry, reproducibility.

Case-level tests run on an axial slab (MNI z -40..39 mm) of the bundled subject 04 labels, to stay fast.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PETStabilityDenoise"))

from PETStabilityDenoiseLib.engine import tomography  # noqa: E402
from PETStabilityDenoiseLib.evaluation import metrics  # noqa: E402
from PETStabilityDenoiseLib.simulation import (  # noqa: E402
    SimulationConfig,
    bundled_labels_path,
    scanners,  # noqa: E402
    simulate_case,
)
from PETStabilityDenoiseLib.simulation import acquisition as acq  # noqa: E402
from PETStabilityDenoiseLib.simulation import phantom as ph  # noqa: E402
from PETStabilityDenoiseLib.simulation.case import index_to_ras, misregister  # noqa: E402

REQUIRED_MASKS = {
    "brain", "wm_eroded", "gm", "peak_left", "peak_right", "valley", "lesions", "lesion_background", "head",
    "roi_cerebellar_cortex", "roi_frontal", "roi_parietal", "roi_striatum", "roi_thalamus", "hypo", "hypo_mirror",
}
SMALL = dict(doses=(1.0, 0.1), n_lesions=2, seed=3)


def arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def labels() -> sitk.Image:
    full = sitk.ReadImage(str(bundled_labels_path()))
    return full[:, :, 32:112]  # SimpleITK slicing keeps the physical geometry of the kept voxels


@pytest.fixture(scope="module")
def case(labels):
    return simulate_case(labels, SimulationConfig(**SMALL))


@pytest.fixture(scope="module")
def masks(case):
    return {k: arr(v).astype(bool) for k, v in case.masks.items()}


def lag1_autocorrelation(volume: np.ndarray, mask: np.ndarray) -> float:
    """Correlation of x-neighbours that are both inside the mask."""
    pairs = mask[..., 1:] & mask[..., :-1]
    a, b = volume[..., 1:][pairs], volume[..., :-1][pairs]
    return float(np.corrcoef(a, b)[0, 1])


def test_activity_values(labels):
    lab = arr(labels)
    coords = ph.grid_coordinates(lab.shape, index_to_ras(labels))
    _, pet_affine = ph.block_grid(lab.shape, index_to_ras(labels), (2, 2, 2))
    colliculi = ph.make_colliculi(pet_affine)
    act = ph.make_activity(lab, coords, colliculi, ph.Lesions((), 2.5))
    gm = np.median(act[lab == ph.Label.GM])
    wm = np.median(act[lab == ph.Label.WM])
    assert gm / wm == pytest.approx(4.0)
    csf = (lab == ph.Label.CSF) & ~colliculi.tectum.mask(coords)  # the tectum overrides its labels
    assert act[csf].max() < 0.05 * gm
    assert np.median(act[lab == ph.Label.SKIN]) > 0.1 * gm  # scalp visible in FDG
    deep = (lab == ph.Label.GM) & ph.region_mask(ph.STRIATUM, coords)
    assert act[deep].mean() == pytest.approx(1.2 * gm, rel=1e-3)


def test_geometry(case, labels):
    assert case.truth.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    assert case.mr.GetSpacing() == pytest.approx(labels.GetSpacing())
    assert case.mr.GetSize() == labels.GetSize()
    # Each PET voxel centre is the centre of its 2x2x2 block of label voxels.
    p0 = np.array(labels.TransformIndexToPhysicalPoint((0, 0, 0)))
    p1 = np.array(labels.TransformIndexToPhysicalPoint((1, 1, 1)))
    assert case.truth.TransformIndexToPhysicalPoint((0, 0, 0)) == pytest.approx((p0 + p1) / 2)
    for image in [case.truth_blurred, *case.osem.values(), *case.masks.values()]:
        assert image.GetSize() == case.truth.GetSize()
        assert image.GetOrigin() == pytest.approx(case.truth.GetOrigin())
    assert case.truth.GetPixelID() == sitk.sitkFloat32 and case.mr.GetPixelID() == sitk.sitkFloat32
    assert all(m.GetPixelID() == sitk.sitkUInt8 for m in case.masks.values())


def test_masks(masks):
    assert REQUIRED_MASKS <= set(masks)
    for name in REQUIRED_MASKS:
        assert masks[name].any(), name
    assert not (masks["lesions"] & masks["lesion_background"]).any()
    assert not (masks["wm_eroded"] & masks["lesions"]).any()
    assert not (masks["peak_left"] & masks["valley"]).any()


def test_truth_contrasts(case, masks):
    truth = arr(case.truth)
    peaks = [masks["peak_left"], masks["peak_right"]]
    assert metrics.peak_to_valley_ratio(truth, peaks, masks["valley"]) > 2.0
    assert metrics.peak_to_valley_ratio(arr(case.truth_blurred), peaks, masks["valley"]) > 1.3
    # Partial volume at 2 mm lowers the nominal ratio of the 1 mm truth.
    assert 1.5 < case.lesion_true_ratio <= case.info["config"]["lesion_ratio"]
    assert metrics.contrast_recovery(truth, masks["lesions"], masks["lesion_background"], case.lesion_true_ratio) == (
        pytest.approx(1.0)
    )


def test_lesions_absent_from_mr(case, labels):
    mr = arr(case.mr)
    lab = arr(labels)
    coords = ph.grid_coordinates(lab.shape, index_to_ras(case.mr))
    spheres = [ph.sphere(tuple(les["center_ras_mm"]), les["diameter_mm"] / 2) for les in case.info["lesions"]]
    lesion = ph.region_mask(spheres, coords)
    wm = lab == ph.Label.WM
    assert lesion.sum() > 50
    # Deep white matter is a little brighter than the mean of all WM (which has partial-volume voxels at its edge).
    assert mr[lesion].mean() / mr[wm].mean() == pytest.approx(1.0, abs=0.12)
    assert mr[wm].mean() > 1.2 * mr[lab == ph.Label.GM].mean()  # T1 contrast: WM brighter than GM


def test_osem_scale_and_dose(case, masks):
    blurred = arr(case.truth_blurred)
    full, low = arr(case.osem[1.0]), arr(case.osem[0.1])
    for image in (full, low):
        assert image.min() >= 0
        assert abs(metrics.roi_bias(image, blurred, masks["brain"])) < 0.05
    assert metrics.wm_noise(low, masks["wm_eroded"])[1] > 1.5 * metrics.wm_noise(full, masks["wm_eroded"])[1]
    counts = case.info["counts"]
    assert counts["1-10"]["measured_prompts"] == pytest.approx(0.1 * counts["full"]["measured_prompts"], rel=0.01)
    assert counts["full"]["expected_background_counts"] / counts["full"]["expected_true_counts"] == (
        pytest.approx(case.info["background_fraction"])
    )


def test_osem_residual_is_correlated(case, masks):
    residual = arr(case.osem[0.1]) - arr(case.truth_blurred)
    white = np.random.default_rng(0).normal(size=residual.shape)
    assert lag1_autocorrelation(residual, masks["wm_eroded"]) > 0.3
    assert abs(lag1_autocorrelation(white, masks["wm_eroded"])) < 0.05


def test_osem_noise_texture_is_correlated():
    """The difference of two noise realisations is pure noise: correlated between neighbours, unlike white noise."""
    yy, xx = np.mgrid[:48, :48] - 23.5
    disc = (np.hypot(yy, xx) < 20).astype(np.float32)
    volume = np.repeat(disc[None], 4, axis=0)
    projector = tomography.ParallelBeamProjector.build(disc.shape, 2.0, 48)
    mult = np.full((4, *projector.sinogram_shape), 0.5, np.float32)
    background = np.full_like(mult, 0.2)
    expected = mult * projector.forward(volume) + background
    rng = np.random.default_rng(1)
    recon = [tomography.osem(acq.poisson_counts(expected, rng), projector, mult, background, 4, 8) for _ in range(2)]
    interior = np.repeat((np.hypot(yy, xx) < 15)[None], 4, axis=0)
    assert lag1_autocorrelation(recon[0] - recon[1], interior) > 0.2
    assert recon[0][interior].mean() == pytest.approx(1.0, rel=0.05)


def test_projector_matches_skimage_radon_and_is_adjoint():
    from skimage.transform import radon

    rng = np.random.default_rng(0)
    image = np.zeros((65, 65), np.float32)
    image[20:45, 15:40] = 1.0
    image[10:20, 40:50] = 2.0
    projector = tomography.ParallelBeamProjector.build(image.shape, 1.0, 36, n_bins=93)
    ours = projector.forward(image[None])[0]
    # skimage turns the other way and pads to 92 bins with the same centre bin (46).
    theirs = radon(image, theta=-180.0 * np.arange(36) / 36, circle=False).T
    assert np.linalg.norm(ours[:, :92] - theirs) / np.linalg.norm(theirs) < 0.03
    x = rng.random((2, 65, 65)).astype(np.float32)
    y = rng.random((2, *projector.sinogram_shape)).astype(np.float32)
    assert np.vdot(projector.forward(x), y) == pytest.approx(np.vdot(x, projector.back(y)), rel=1e-4)


def test_thinning_preserves_expectation():
    rng = np.random.default_rng(0)
    counts = rng.poisson(50.0, size=200_000)
    thinned = acq.thin_counts(counts, 0.2, rng)
    assert thinned.mean() == pytest.approx(10.0, rel=0.01)
    assert thinned.var() == pytest.approx(10.0, rel=0.03)  # thinned Poisson is Poisson
    assert (thinned <= counts).all()
    with pytest.raises(ValueError):
        acq.thin_counts(counts, 1.5, rng)


def test_seed_reproducibility(labels, case):
    cfg = SimulationConfig(**SMALL)
    again = simulate_case(labels, cfg)
    assert np.array_equal(arr(again.osem[0.1]), arr(case.osem[0.1]))
    assert np.array_equal(arr(again.mr), arr(case.mr))
    assert again.info["lesions"] == case.info["lesions"]
    other = simulate_case(labels, SimulationConfig(**{**SMALL, "seed": 4, "doses": (0.1,)}))
    assert not np.array_equal(arr(other.osem[0.1]), arr(case.osem[0.1]))
    # A new noise seed is a new noise realisation of the same phantom and MR.
    realisation = simulate_case(labels, SimulationConfig(**{**SMALL, "noise_seed": 7, "doses": (0.1,)}))
    assert np.array_equal(arr(realisation.truth), arr(case.truth))
    assert np.array_equal(arr(realisation.mr), arr(case.mr))
    assert not np.array_equal(arr(realisation.osem[0.1]), arr(case.osem[0.1]))


def test_write(case, tmp_path):
    paths = case.write(tmp_path)
    for name in ("truth", "mr", "osem_full", "osem_1-10", "mask_wm_eroded", "mask_peak_left"):
        assert paths[name].name == f"{name}.nii.gz" and paths[name].exists()
    info = json.loads(paths["simulation"].read_text())
    assert info["config"]["doses"] == [1.0, 0.1]
    reread = sitk.ReadImage(str(paths["osem_1-10"]))
    assert reread.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))


def test_regional_uptake_is_applied(labels):
    lab = arr(labels)
    coords = ph.grid_coordinates(lab.shape, index_to_ras(labels))
    _, pet_affine = ph.block_grid(lab.shape, index_to_ras(labels), (2, 2, 2))
    field = ph.regional_uptake_field(coords, ph.REGIONAL_GM_UPTAKE, 0.0, (1.0, 1.0, 1.0))
    act = ph.make_activity(lab, coords, ph.make_colliculi(pet_affine), ph.Lesions((), 2.5), gm_uptake_field=field)
    gm = lab == ph.Label.GM
    frontal = gm & ph.region_mask(ph.CORTICAL_ROIS["frontal"], coords)
    reference = np.median(act[frontal])
    for name, multiplier in ph.REGIONAL_GM_UPTAKE:
        inside = gm & ph.region_mask(ph.UPTAKE_REGIONS[name], coords)
        later = [n for n, _ in ph.REGIONAL_GM_UPTAKE[ph.REGIONAL_GM_UPTAKE.index((name, multiplier)) + 1:]]
        for other in later:  # a later region wins where they overlap
            inside &= ~ph.region_mask(ph.UPTAKE_REGIONS[other], coords)
        if inside.any():
            assert np.median(act[inside]) / reference == pytest.approx(multiplier, rel=1e-5), name
    # A transition width turns the box edges into gradients but keeps each region's value at its core.
    smooth = ph.regional_uptake_field(coords, ph.REGIONAL_GM_UPTAKE, 8.0, (1.0, 1.0, 1.0))
    core = ph.region_mask((ph.sphere((0.0, -95.0, 15.0), 3.0),), coords)  # deep inside the occipital box
    assert smooth[core].mean() == pytest.approx(1.15, abs=0.01)
    assert len(np.unique(smooth[gm])) > 100 > len(np.unique(field[gm]))


def test_texture_and_findings_are_pet_only(labels, case, masks):
    """The MR is the same, voxel for voxel, with and without texture, lesions and hypometabolism."""
    plain = simulate_case(labels, SimulationConfig(**{**SMALL, "doses": (1.0,), "texture_amplitude": 0.0,
                                                      "hypo_depth": 0.0, "n_lesions": 0}))
    assert np.array_equal(arr(plain.mr), arr(case.mr))
    truth, plain_truth = arr(case.truth), arr(plain.truth)
    # Hypometabolism: the truth's region is (1 - depth) of its mirror.
    depth = case.info["config"]["hypo_depth"]
    assert case.hypo_true_ratio == pytest.approx(1 - depth, abs=0.05)
    assert truth[masks["hypo"]].mean() / plain_truth[masks["hypo"]].mean() == pytest.approx(1 - depth, abs=0.05)
    # Texture: pure-GM voxels of frontal cortex vary by about the texture's amplitude, and not without it.
    frontal = masks["gm"] & masks["roi_frontal"] & (plain_truth == np.median(plain_truth[masks["roi_frontal"]]))
    assert frontal.sum() > 100
    assert 0.05 < truth[frontal].std() / truth[frontal].mean() < 0.15
    assert plain_truth[frontal].std() == pytest.approx(0.0, abs=1e-6)


def test_hypometabolism_masks(masks, case):
    coords = ph.grid_coordinates(masks["hypo"].shape, index_to_ras(case.truth))
    x = coords[0]
    assert masks["hypo"].sum() > 100
    assert x[masks["hypo"]].mean() < -30 and x[masks["hypo_mirror"]].mean() > 30  # left, mirror on the right
    assert masks["hypo_mirror"].sum() == pytest.approx(masks["hypo"].sum(), rel=0.4)
    assert not (masks["hypo"] & masks["wm_eroded"]).any()
    gm_fraction_ok = masks["gm"]
    assert (masks["hypo"] & ~gm_fraction_ok).sum() < 0.05 * masks["hypo"].sum()


def test_colliculi_have_several_voxel_peaks_and_a_wide_valley(masks, case):
    assert masks["peak_left"].sum() >= 15 and masks["peak_right"].sum() >= 15
    assert masks["valley"].sum() >= 20
    truth = arr(case.truth_blurred)
    assert metrics.peak_to_valley_ratio(truth, [masks["peak_left"], masks["peak_right"]], masks["valley"]) > 2.5


def test_misregistration_moves_the_mr_by_the_requested_amount():
    image = sitk.Image([41, 41, 41], sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 1.0))
    image[20, 20, 20] = 1.0
    smooth = sitk.SmoothingRecursiveGaussian(image, 2.0)
    moved, record = misregister(smooth, 2.0, 0.0, np.random.default_rng(0))
    a, b = arr(smooth), arr(moved)
    centre = [np.average(np.indices(a.shape)[i], weights=v) for v in (a, b) for i in range(3)]
    shift = np.linalg.norm(np.subtract(centre[3:], centre[:3]))
    assert shift == pytest.approx(2.0, abs=0.1)
    assert np.linalg.norm(record["shift_direction_lps"]) == pytest.approx(1.0)
    unmoved, _ = misregister(smooth, 0.0, 0.0, np.random.default_rng(0))
    assert unmoved is smooth


def test_brain_full_dose_counts_arithmetic():
    decay_to_start = 0.5 ** (104 / 109.77)
    mean_during_scan = (1 - 0.5 ** (30 / 109.77)) / (np.log(2) * 30 / 109.77)
    by_hand = 289 * decay_to_start * mean_during_scan * 0.08 * 1.18 * 25e3 * 1800 * 0.22
    assert scanners.brain_full_dose_counts() == pytest.approx(by_hand, rel=1e-9)
    assert SimulationConfig().full_dose_counts == scanners.brain_full_dose_counts()
    assert SimulationConfig.for_scanner("wholebody").psf_fwhm_mm == 4.5
    with pytest.raises(ValueError, match="unknown scanner"):
        SimulationConfig.for_scanner("pet-ct")


@pytest.mark.parametrize("make_config, documented_cov", [
    (lambda: SimulationConfig(doses=(0.1,)), 0.90),  # brain scanner, realistic phantom
    (lambda: SimulationConfig.legacy(doses=(0.1,)), 0.441),  # the first simulator
])
def test_scanner_presets_give_the_documented_noise(make_config, documented_cov):
    """docs/SIMULATOR.md's 1/10-dose white-matter CoV of BrainWeb subject 04, whole head, seed 0."""
    case = simulate_case(sitk.ReadImage(str(bundled_labels_path())), make_config())
    wm = arr(case.masks["wm_eroded"]).astype(bool)
    assert metrics.wm_noise(arr(case.osem[0.1]), wm)[1] == pytest.approx(documented_cov, rel=0.05)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="hypo_depth"):
        SimulationConfig(hypo_depth=1.0)
    with pytest.raises(ValueError, match="texture_amplitude"):
        SimulationConfig(texture_amplitude=-0.1)
    with pytest.raises(ValueError, match="unknown uptake regions"):
        SimulationConfig(gm_uptake=(("hippocampus", 0.8),))


def test_the_amyloid_regime_puts_white_matter_above_the_cortex(labels):
    from PETStabilityDenoiseLib.simulation import simulation_config

    case = simulate_case(labels, simulation_config(regime="amyloid", doses=(1.0,), seed=3))
    truth = arr(case.truth)
    wm, gm = (arr(case.masks[name]).astype(bool) for name in ("wm_eroded", "gm"))
    assert truth[wm].mean() > 1.3 * truth[gm].mean()
    assert case.info["lesions"] == [] and case.info["hypometabolism"] is None
