"""DDIP, the sinogram reconstruction with a diffusion prior: its data step, its adapters, its prior, and a tiny
end-to-end run on a small block of the bundled subject (8 PET slices of 40 x 50, fewer slices than the tiny
prior's patch is wide)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PETStabilityDenoise"))

from conftest import synthetic_training_pairs  # noqa: E402

from PETStabilityDenoiseLib.cli import main  # noqa: E402
from PETStabilityDenoiseLib.engine import tomography  # noqa: E402
from PETStabilityDenoiseLib.engine.ddpm.model import DROPPED_CONDITION, DROPPED_MR, DDPMConfig, build_model  # noqa: E402
from PETStabilityDenoiseLib.engine.filters import FWHM_PER_SIGMA  # noqa: E402
from PETStabilityDenoiseLib.engine.lora import add_lora  # noqa: E402
from PETStabilityDenoiseLib.engine.reconstruct import reconstruct, sinogram_projector  # noqa: E402
from PETStabilityDenoiseLib.errors import InputError  # noqa: E402
from PETStabilityDenoiseLib.settings import DDIP_ALPHA, DEFAULT_ALPHAS, DDIPConfig  # noqa: E402
from PETStabilityDenoiseLib.simulation import SimulationConfig, bundled_labels_path, simulate_case  # noqa: E402
from PETStabilityDenoiseLib.training.trainer import TrainingSettings, drop_low_dose, drop_mr, train  # noqa: E402
from PETStabilityDenoiseLib.volumes.sinogram import write_sinogram  # noqa: E402

TINY_DDIP = dict(samples=2, steps=2, start_fraction=0.3, finetune_steps=1, finetune_batch=1, em_updates=1,
                 device="cpu")


@pytest.fixture(scope="module")
def slab(tmp_path_factory):
    """A simulated block at 1/5 dose: (its case, its sinogram file, its MR file)."""
    labels = sitk.ReadImage(str(bundled_labels_path()))[50:130, 60:160, 70:86]
    case = simulate_case(labels, SimulationConfig(doses=(0.2,), n_lesions=1, hypo_depth=0.0, seed=3),
                         keep_sinograms=True)
    folder = tmp_path_factory.mktemp("slab")
    sitk.WriteImage(case.mr, str(folder / "mr.nii.gz"))
    return case, write_sinogram(case.sinograms[0.2], folder / "sinogram.npz"), folder / "mr.nii.gz"


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    return train_tiny_prior(tmp_path_factory.mktemp("tiny_prior"))


def train_tiny_prior(folder, mr_dropout=0.0, **config_changes):
    """A tiny DDPM trained for a few steps with condition dropout: a prior p(PET | MR), though not a useful one."""
    config = DDPMConfig(channels=(16, 16), num_res_blocks=1, patch_size=16, **config_changes)
    settings = TrainingSettings(steps=2, batch_size=2, checkpoint_every=2, validate_every=2, log_every=1,
                                validation_patches=2, condition_dropout=0.5, mr_dropout=mr_dropout)
    pairs = synthetic_training_pairs()
    return train(config, settings, pairs[:1], pairs[1:], folder)


def slab_data(slab):
    """The slab's case, its 1/5-dose data, the data terms of ``tomography.penalized_em`` and an image's Poisson
    misfit to the data."""
    case = slab[0]
    data = case.sinograms[0.2]
    terms = (data.prompts, sinogram_projector(data), data.multiplicative, data.additive)

    def misfit(image):
        return tomography.poisson_misfit(data.prompts, tomography.expected_counts(image, *terms[1:]))

    return case, data, terms, misfit


def test_the_data_step_with_a_fixed_network_estimate_lowers_the_data_misfit(slab):
    case, data, terms, misfit = slab_data(slab)
    projector = terms[1]
    # A network's estimate: the truth smoothed well past the scanner's resolution, so that the data disagree.
    anchor = np.maximum(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(case.truth, 6.0)), 0.0)

    # Weights relative to the data's curvature at the mean activity, as DDIP's beta.
    unit = float(projector.back(data.multiplicative).mean() / anchor.mean())
    steps = {beta: tomography.penalized_em(*terms, anchor, beta * unit, 3) for beta in (0.0, 1.0, 1e3)}
    assert misfit(steps[0.0]) < misfit(steps[1.0]) < misfit(anchor)
    # The weight ties the step to the estimate: a heavy one barely moves it.
    distances = [np.abs(steps[beta] - anchor).mean() for beta in (0.0, 1.0, 1e3)]
    assert distances[0] > distances[1] > distances[2] and distances[2] < 0.01 * np.abs(anchor).mean()
    # beta 0 is plain MLEM: one update from the anchor, as written out.
    expected = tomography.expected_counts(anchor, *terms[1:])
    mlem = anchor * projector.back(data.multiplicative * data.prompts / expected) / projector.back(data.multiplicative)
    np.testing.assert_allclose(tomography.penalized_em(*terms, anchor, 0.0, 1), mlem, rtol=1e-4, atol=1e-6)
    # Ordered subsets (as OSEM) move further towards the data in one update than MLEM, at the same weight.
    ordered = tomography.penalized_em(*terms, anchor, unit, 1, n_subsets=8)
    assert misfit(ordered) < misfit(tomography.penalized_em(*terms, anchor, unit, 1)) < misfit(anchor)
    with pytest.raises(ValueError, match="do not split into 5 subsets"):
        tomography.penalized_em(*terms, anchor, unit, 1, n_subsets=5)


def test_the_final_data_correction_moves_regional_means_to_the_data_and_leaves_the_detail(slab):
    """The correction takes the data step's coarse change (a regional bias the network made) and not its noise."""
    from PETStabilityDenoiseLib.engine.ddip import low_frequency_data_correction
    from PETStabilityDenoiseLib.engine.filters import sigma_voxels

    case, data, terms, misfit = slab_data(slab)
    truth = np.maximum(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(case.truth, 2.0)), 0.0)
    head = truth > 0.05 * truth.max()
    nx = truth.shape[2]
    # A network's image with a regional bias: 30 % high at one side of the head, falling to none at the other.
    image = truth * np.linspace(1.3, 1.0, nx, dtype=np.float32)
    data_image = tomography.penalized_em(*terms, image, 0.0, 2, n_subsets=8)
    sigma = sigma_voxels(6.0, data.spacing[::-1])
    corrected = low_frequency_data_correction(image, data_image, head, sigma)

    assert misfit(corrected) < misfit(image)
    side = head.copy()
    side[:, :, nx // 2:] = False
    bias = [abs(x[side].mean() / truth[side].mean() - 1) for x in (image, corrected)]
    assert bias[1] < 0.5 * bias[0], bias
    # Fine-grained noise in the data step's image stays out.
    noise = np.random.default_rng(0).normal(0.0, 1.0, image.shape).astype(np.float32)
    noisier = low_frequency_data_correction(image, data_image + noise, head, sigma)
    assert (noisier - corrected)[head].std() < 0.25 * noise[head].std()
    np.testing.assert_array_equal(corrected[~head], image[~head])


def test_masked_smoothing_keeps_values_beyond_the_mask_out():
    from PETStabilityDenoiseLib.engine.filters import masked_gaussian

    mask = np.zeros((12, 12, 12), bool)
    mask[3:9, 3:9, 3:9] = True
    image = np.where(mask, 2.0, 1e6).astype(np.float32)
    smoothed = masked_gaussian(image, mask, 2.0)
    np.testing.assert_allclose(smoothed[mask], 2.0, rtol=1e-5)
    assert (smoothed[~mask] == 0).all()


def test_the_data_step_models_the_scanners_psf_when_given_one(slab):
    """With a resolution model H the data step is EM for multiplicative x A H x, written out, and H is its own
    adjoint, as EM needs."""
    case, _, _ = slab
    data = case.sinograms[0.2]
    nx, ny, _ = data.image_size
    projector = tomography.ParallelBeamProjector.build((ny, nx), data.spacing[0], n_bins=data.shape[2],
                                                       bin_mm=data.bin_mm, angles_rad=data.angles_rad)
    psf = tomography.ResolutionModel(3.0, data.spacing[::-1], (ny, nx))
    rng = np.random.default_rng(0)
    image, other = (rng.random(case.truth.GetSize()[::-1]).astype(np.float32) for _ in range(2))
    assert np.dot(psf.image(image).ravel(), other.ravel()) == pytest.approx(
        np.dot(image.ravel(), psf.image(other).ravel()), rel=1e-5)
    columns = image.reshape(image.shape[0], -1).T
    np.testing.assert_allclose(psf.columns(np.ascontiguousarray(columns)),
                               psf.image(image).reshape(image.shape[0], -1).T, rtol=1e-5, atol=1e-7)

    terms = (data.prompts, projector, data.multiplicative, data.additive)
    anchor = np.maximum(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(case.truth, 6.0)), 0.0)
    expected = tomography.expected_counts(anchor, *terms[1:], resolution=psf)
    mlem = anchor * psf.image(projector.back(data.multiplicative * data.prompts / expected)) / psf.image(
        projector.back(data.multiplicative))
    step = tomography.penalized_em(*terms, anchor, 0.0, 1, resolution=psf)
    np.testing.assert_allclose(step, mlem, rtol=1e-4, atol=1e-6)
    assert not np.allclose(step, tomography.penalized_em(*terms, anchor, 0.0, 1), rtol=1e-3)

    def misfit(x):
        return tomography.poisson_misfit(data.prompts, tomography.expected_counts(x, *terms[1:], resolution=psf))

    assert misfit(tomography.penalized_em(*terms, anchor, 0.0, 2, n_subsets=8, resolution=psf)) < misfit(anchor)


def test_osem_with_the_psf_modelled_is_the_data_step_from_its_start_and_recovers_more_activity(slab):
    """OSEM with a resolution model (a scanner's "PSF" reconstruction, the full-dose reference of
    benchmarks/psf_reference.py) is the unpenalised data step with H, run from OSEM's uniform start."""
    case, data, terms, _ = slab_data(slab)
    psf = tomography.ResolutionModel(3.0, data.spacing[::-1], terms[1].image_shape)
    start = tomography.osem(*terms, 0, 4, resolution=psf)
    np.testing.assert_array_equal(start, np.full_like(start, start.flat[0]))
    np.testing.assert_allclose(tomography.osem(*terms, 2, 4, resolution=psf),
                               tomography.penalized_em(*terms, start, 0.0, 2, n_subsets=4, resolution=psf),
                               rtol=1e-5, atol=1e-6)
    # Undoing the blur puts back activity that partial volume takes from the hottest tenth of the head.
    truth = sitk.GetArrayFromImage(case.truth)
    hot = truth >= np.percentile(truth[truth > 0], 90)
    recovered = [tomography.osem(*terms, 4, 4, resolution=model)[hot].mean() / truth[hot].mean()
                 for model in (None, psf)]
    assert recovered[0] + 0.02 < recovered[1] < 1.0, recovered


def test_lora_adapters_start_at_zero_and_only_they_train():
    torch.manual_seed(0)
    model = build_model(DDPMConfig(channels=(16, 16), patch_size=16))
    inputs, timesteps = torch.randn(1, 3, 16, 16, 16), torch.tensor([100])
    before_output = model(inputs, timesteps=timesteps).detach()
    base = {name: value.clone() for name, value in model.state_dict().items()}

    adapters = add_lora(model, rank=4)
    assert torch.equal(model(inputs, timesteps=timesteps), before_output)  # the adapted network starts equal
    assert {p.data_ptr() for p in model.parameters() if p.requires_grad} == {p.data_ptr() for p in adapters}
    optimiser = torch.optim.AdamW(adapters, lr=1e-2)
    for _ in range(3):
        optimiser.zero_grad()
        (model(inputs, timesteps=timesteps) - 1.0).square().mean().backward()
        optimiser.step()
    after = model.state_dict()
    for name, value in base.items():
        adapted_name = name if name in after else name.replace(".weight", ".base.weight").replace(
            ".bias", ".base.bias")
        assert torch.equal(after[adapted_name], value), f"{name} changed"
    assert not torch.equal(model(inputs, timesteps=timesteps), before_output)
    with pytest.raises(ValueError, match="rank"):
        add_lora(build_model(DDPMConfig(channels=(16, 16), patch_size=16)), rank=0)


def test_condition_dropout_drops_the_low_dose_channel_only():
    conditions = torch.randn(64, 2, 4, 4, 4)
    generator = torch.Generator().manual_seed(0)
    assert drop_low_dose(conditions, 0.0, generator) is conditions
    dropped = drop_low_dose(conditions, 0.5, generator)
    is_dropped = (dropped[:, 0] == DROPPED_CONDITION).flatten(1).all(1)
    assert 16 < int(is_dropped.sum()) < 48
    assert torch.equal(dropped[~is_dropped], conditions[~is_dropped])
    assert torch.equal(dropped[:, 1], conditions[:, 1])
    assert (drop_low_dose(conditions, 1.0, generator)[:, 0] == DROPPED_CONDITION).all()  # a pure prior
    with pytest.raises(InputError, match="condition_dropout"):
        TrainingSettings(condition_dropout=1.5)


def test_mr_dropout_drops_the_mr_channel_only_and_needs_a_network_that_takes_the_mr(tmp_path):
    conditions = torch.randn(64, 2, 4, 4, 4)
    generator = torch.Generator().manual_seed(0)
    dropped = drop_mr(conditions, 0.5, generator)
    is_dropped = (dropped[:, 1] == DROPPED_MR).flatten(1).all(1)
    assert 16 < int(is_dropped.sum()) < 48
    assert torch.equal(dropped[~is_dropped], conditions[~is_dropped])
    assert torch.equal(dropped[:, 0], conditions[:, 0])
    with pytest.raises(InputError, match=r"mr_dropout must be in \[0, 1\)"):
        TrainingSettings(mr_dropout=1.0)
    with pytest.raises(InputError, match="a DDPM that uses the MR"):
        train_tiny_prior(tmp_path / "no_mr", mr_dropout=0.5, use_mr=False)


def test_mr_guidance_mixes_the_estimates_with_and_without_the_mr():
    """w = 1 is the network as trained, in one pass; otherwise x0(no MR) + w (x0(MR) - x0(no MR))."""
    from PETStabilityDenoiseLib.engine.ddip import estimate_clean, guided_estimate

    torch.manual_seed(0)
    config = DDPMConfig(channels=(16, 16), num_res_blocks=1, patch_size=16)
    model = build_model(config).eval()
    with torch.no_grad():  # MONAI starts the output layer at zero, which would hide the MR's effect
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    x_t, conditions = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 2, 16, 16, 16)
    without_mr = conditions.clone()
    without_mr[:, 1] = DROPPED_MR
    with torch.no_grad():
        with_mr, no_mr = (estimate_clean(model, config, x_t, c, 300, 0.5) for c in (conditions, without_mr))
        assert not torch.allclose(with_mr, no_mr)
        passes = []
        model.register_forward_hook(lambda *_: passes.append(1))
        assert torch.equal(guided_estimate(model, config, x_t, conditions, 300, 0.5, 1.0), with_mr)
        assert len(passes) == 1
        for weight in (0.0, 0.5, 2.0):
            torch.testing.assert_close(guided_estimate(model, config, x_t, conditions, 300, 0.5, weight),
                                       no_mr + weight * (with_mr - no_mr))
        assert len(passes) == 7
    with pytest.raises(InputError, match="mr_guidance must be a weight >= 0"):
        DDIPConfig(mr_guidance=-0.5)


def test_the_mr_guidance_option_needs_a_prior_trained_with_mr_dropout(slab, tiny_prior, tmp_path, caplog,
                                                                      monkeypatch):
    """``--mr-guidance`` reaches every estimate of the network, fine-tuning's included, and run.json."""
    from PETStabilityDenoiseLib.engine import ddip

    weights = []
    guided_estimate = ddip.guided_estimate
    monkeypatch.setattr(ddip, "guided_estimate", lambda *a: weights.append(a[-1]) or guided_estimate(*a))
    _, sinogram, mr = slab
    tiny = ["--samples", "2", "--steps", "2", "--start-fraction", "0.3", "--finetune-steps", "1", "--em-updates", "1",
            "--device", "cpu"]
    bad = tmp_path / "bad"
    assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(bad), "--mr", str(mr),
                 "--mr-guidance", "0.5", "--ddip-model", str(tiny_prior), *tiny]) == 2
    assert "mr_guidance (petstab --mr-guidance) 0.5 needs a prior trained with MR dropout" in caplog.text
    assert not bad.exists()
    guided = train_tiny_prior(tmp_path / "mr_dropout", mr_dropout=0.5)
    out = tmp_path / "guided"
    assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(out), "--mr", str(mr),
                 "--mr-guidance", "0.5", "--ddip-model", str(guided), *tiny]) == 0
    assert json.loads((out / "run.json").read_text())["config"]["mr_guidance"] == 0.5
    # Per sample, 2 fine-tuning steps and the windows of 3 estimates.
    assert set(weights) == {0.5} and len(weights) > 2 * (2 + 3), weights
    assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(str(out / "network_output.nii.gz")))).all()


def test_a_tiny_ddip_run_gives_finite_volumes_on_the_pet_grid(slab, tiny_prior, tmp_path):
    case, sinogram, mr = slab
    out = tmp_path / "ddip"
    reports = []
    paths = reconstruct(sinogram, out, method="ddip", mr_path=mr, alpha=0.5,
                        ddip=DDIPConfig(**TINY_DDIP, model_dir=str(tiny_prior)), progress=reports.append)
    assert set(paths) == {"osem", "denoised", "network_output", "stability", "stability_norm", "run"}
    assert [(r.epoch, r.epochs) for r in reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    pet = case.osem[0.2]
    for name in ("denoised", "network_output", "stability", "stability_norm"):
        image = sitk.ReadImage(str(paths[name]))
        assert image.GetSize() == pet.GetSize()
        assert np.allclose(image.GetOrigin(), pet.GetOrigin()) and np.allclose(image.GetSpacing(), pet.GetSpacing())
        assert np.isfinite(sitk.GetArrayViewFromImage(image)).all(), name
    assert (sitk.GetArrayViewFromImage(sitk.ReadImage(str(paths["stability"]))) >= 0).all()
    record = json.loads(paths["run"].read_text())
    assert record["method"] == "ddip" and record["pet"] == "osem.nii.gz" and record["n_samples"] == 2
    assert record["outputs"]["osem"] == "osem.nii.gz" and record["config"]["lora_rank"] == 4

    # The folder is a run like a denoise's: 'petstab blend' re-blends it against its own OSEM image, even moved.
    moved = tmp_path / "moved"
    out.rename(moved)
    assert main(["blend", "--run", str(moved), "--alpha", "0"]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(moved / "denoised.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(moved / "network_output.nii.gz"))))
    assert (moved / "osem.nii.gz").is_file()


def test_ddip_keeps_the_osem_image_outside_the_head(slab, tiny_prior):
    """Beyond the head's margin the mean is the OSEM image and the std 0, as for the DDPM denoiser."""
    from scipy import ndimage

    from PETStabilityDenoiseLib.engine.ddip import ddip_reconstruct
    from PETStabilityDenoiseLib.engine.ddpm.sampling import HEAD_MARGIN_VOXELS
    from PETStabilityDenoiseLib.engine.ddpm.weights import load_model
    from PETStabilityDenoiseLib.engine.reconstruct import osem_image
    from PETStabilityDenoiseLib.volumes.geometry import resample_to_reference

    case, _, _ = slab
    data = case.sinograms[0.2]
    osem_volume = osem_image(data)
    osem = sitk.GetArrayFromImage(osem_volume).astype(np.float32)
    mr = sitk.GetArrayFromImage(resample_to_reference(case.mr, osem_volume, name="MR")).astype(np.float32)
    head = np.zeros(osem.shape, bool)  # the slab is all head: a smaller one, to leave air around it
    head[:, 10:40, 8:32] = True
    model, model_config, _ = load_model(tiny_prior)
    mean, std = ddip_reconstruct((data.prompts, data.additive, data.multiplicative), sinogram_projector(data), osem,
                                 mr, head, model, model_config, DDIPConfig(**TINY_DDIP),
                                 voxel_size_mm=data.spacing[::-1])
    far = ~ndimage.binary_dilation(head, iterations=HEAD_MARGIN_VOXELS)
    assert far.any()
    np.testing.assert_array_equal(mean[far], osem[far])
    assert (std[far] == 0).all() and std[head].mean() > 0
    assert not np.allclose(mean[head], osem[head])


def test_ddip_refuses_what_it_cannot_use(slab, tiny_prior, tiny_ddpm_model_dir, tmp_path, caplog):
    _, sinogram, mr = slab
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"give the subject's MR, mr_path \(petstab --mr\)"):
        reconstruct(sinogram, out, method="ddip", ddip=DDIPConfig(model_dir=str(tiny_prior)))
    with pytest.raises(InputError, match=r"without condition dropout.* model_dir \(petstab --ddip-model\)"):
        reconstruct(sinogram, out, method="ddip", mr_path=mr, ddip=DDIPConfig(model_dir=str(tiny_ddpm_model_dir)))
    with pytest.raises(InputError, match=r"5 DDIP EM subsets, em_subsets \(petstab --em-subsets\), do not divide the "
                                         r"sinogram's 168 angles"):
        reconstruct(sinogram, out, method="ddip", mr_path=mr, ddip=DDIPConfig(model_dir=str(tiny_prior), em_subsets=5))
    assert not out.exists()
    assert main(["reconstruct", "--sinogram", str(sinogram), "--out", str(out), "--mr", str(mr)]) == 2
    assert "apply to --method ddip only" in caplog.text
    assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(out), "--mr", str(mr),
                 "--ddip-model", str(tiny_prior), "--em-subsets", "5"]) == 2
    assert "choose one of 1, 2, 3, 4, 6, 7, 8" in caplog.text and not out.exists()
    with pytest.raises(InputError, match="samples must be >= 2"):
        DDIPConfig(samples=1)
    with pytest.raises(InputError, match="psf_fwhm_mm must be a FWHM in mm >= 0"):
        DDIPConfig(psf_fwhm_mm=-1.0)
    assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(out), "--mr", str(mr),
                 "--ddip-model", str(tiny_prior), "--psf-fwhm", "nan"]) == 2
    assert "psf_fwhm_mm must be a FWHM" in caplog.text and not out.exists()


def test_the_settings_hash_follows_what_changes_the_image_only():
    """Studies key cached runs by it: a changed default must not read an older run."""
    default = DDIPConfig()
    assert default.replace(device="cpu", threads=1, model_dir="elsewhere").settings_hash() == default.settings_hash()
    assert default.replace(data_correction_fwhm_mm=0.0).settings_hash() != default.settings_hash()
    assert default.replace(beta=1.0).settings_hash() != default.settings_hash()
    assert default.replace(mr_guidance=0.5).settings_hash() != default.settings_hash()


def test_ddip_refuses_a_prior_trained_on_another_chain(slab, tmp_path):
    """A prior trained on a matched short schedule has never seen DDIP's other timesteps."""
    _, sinogram, mr = slab
    prior = train_tiny_prior(tmp_path / "matched", matched_steps=2, matched_start_fraction=0.5)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"trained for 2 DDIM steps from 0.5 T only: sample with steps \(petstab "
                                         r"--steps\) 2 and start_fraction \(petstab --start-fraction\) 0.5"):
        reconstruct(sinogram, out, method="ddip", mr_path=mr, ddip=DDIPConfig(model_dir=str(prior)))
    assert not out.exists()


def test_a_ddip_run_folder_loads_into_mrml_on_its_osem_image(slab, tiny_prior, tmp_path):
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    from PETStabilityDenoiseLib.slicer.logic import PETStabilityDenoiseLogic
    from PETStabilityDenoiseLib.slicer.mrml_volumes import node_to_image

    case, sinogram, mr = slab
    out = tmp_path / "ddip"
    reconstruct(sinogram, out, method="ddip", mr_path=mr, ddip=DDIPConfig(**TINY_DDIP, model_dir=str(tiny_prior)))
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLColorLogic().SetMRMLScene(scene)
    result = PETStabilityDenoiseLogic(scene).loadRunFolder(out)
    osem = scene.GetFirstNodeByName("osem")
    assert osem is not None, "the run's PET, its own OSEM image, is added"
    for node in (osem, result.denoisedNode, result.networkOutputNode, result.stabilityNode,
                 result.normalizedStabilityNode):
        image = node_to_image(node, node.GetName())
        assert image.GetSize() == case.osem[0.2].GetSize()
        assert np.allclose(image.GetOrigin(), case.osem[0.2].GetOrigin(), atol=1e-4)
        assert np.allclose(image.GetDirection(), case.osem[0.2].GetDirection(), atol=1e-6)


@pytest.mark.parametrize("refresh, finetune_steps, passes", [(True, 1, 4), (False, 1, 3), (False, 0, 2)])
def test_network_passes_per_run(slab, tiny_prior, tmp_path, monkeypatch, refresh, finetune_steps, passes):
    """Two passes per step when the adapted network is run again; one, plus one at the end, when not; one
    without adapters (2 DDIM steps per run)."""
    from PETStabilityDenoiseLib.engine import ddip

    calls = []
    estimate = ddip._Run.estimate
    monkeypatch.setattr(ddip._Run, "estimate", lambda run, *a: calls.append(a[2]) or estimate(run, *a))
    config = DDIPConfig(**{**TINY_DDIP, "samples": 2, "finetune_steps": finetune_steps},
                        refresh_estimate=refresh, model_dir=str(tiny_prior))
    _, sinogram, mr = slab
    paths = reconstruct(sinogram, tmp_path / "out", method="ddip", mr_path=mr, ddip=config)
    assert len(calls) == 2 * passes
    assert DDIP_ALPHA != DEFAULT_ALPHAS["dip"], "the test below needs the two defaults to differ"
    assert json.loads(paths["run"].read_text())["alpha"] == DDIP_ALPHA, "DDIP's own alpha"


def test_the_psf_option_reaches_the_data_step_and_run_json(slab, tiny_prior, tmp_path, monkeypatch):
    """``--psf-fwhm`` puts the scanner's PSF, in voxels of the PET grid, into every data step; 0 leaves it out."""
    models = []
    data_step = tomography.penalized_em
    monkeypatch.setattr(tomography, "penalized_em",
                        lambda *a, resolution=None, **k: models.append(resolution)
                        or data_step(*a, resolution=resolution, **k))
    case, sinogram, mr = slab
    tiny = ["--samples", "2", "--steps", "2", "--start-fraction", "0.3", "--finetune-steps", "1", "--em-updates", "1",
            "--device", "cpu", "--ddip-model", str(tiny_prior)]
    for fwhm in ("3", "0"):
        out = tmp_path / f"psf{fwhm}"
        assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(out), "--mr", str(mr),
                     "--psf-fwhm", fwhm, *tiny]) == 0
        assert json.loads((out / "run.json").read_text())["config"]["psf_fwhm_mm"] == float(fwhm)
    assert len(models) == 12  # 2 samples x (2 steps + the final data correction) per run
    with_psf, without = models[:6], models[6:]
    spacing = case.osem[0.2].GetSpacing()
    assert all(model is None for model in without)
    for model in with_psf:
        assert model.sigma_zyx == pytest.approx([3.0 / FWHM_PER_SIGMA / s for s in spacing[::-1]])


def test_the_data_correction_option_runs_one_more_data_step_per_sample(slab, tiny_prior, tmp_path, monkeypatch):
    """``--data-correction-fwhm`` adds one data step per sample after the chain, and 0 leaves it out; both land in
    run.json."""
    from PETStabilityDenoiseLib.engine import ddip

    data_steps, corrections = [], []
    data_step, correct = tomography.penalized_em, ddip.low_frequency_data_correction
    monkeypatch.setattr(tomography, "penalized_em", lambda *a, **k: data_steps.append(1) or data_step(*a, **k))
    monkeypatch.setattr(ddip, "low_frequency_data_correction",
                        lambda *a: corrections.append(a[3]) or correct(*a))
    case, sinogram, mr = slab
    tiny = ["--samples", "2", "--steps", "2", "--start-fraction", "0.3", "--finetune-steps", "1", "--em-updates", "1",
            "--device", "cpu", "--ddip-model", str(tiny_prior)]
    means = {}
    for fwhm in ("8", "0"):
        out = tmp_path / f"correction{fwhm}"
        assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(out), "--mr", str(mr),
                     "--data-correction-fwhm", fwhm, *tiny]) == 0
        assert json.loads((out / "run.json").read_text())["config"]["data_correction_fwhm_mm"] == float(fwhm)
        means[fwhm] = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "network_output.nii.gz")))
    assert len(data_steps) == 2 * 3 + 2 * 2  # with it, 2 samples x (2 steps + 1); without, 2 x 2
    spacing = case.osem[0.2].GetSpacing()
    assert len(corrections) == 2
    assert all(list(sigma) == pytest.approx([8.0 / FWHM_PER_SIGMA / s for s in spacing[::-1]]) for sigma in corrections)
    assert not np.allclose(means["8"], means["0"])
    assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(tmp_path / "bad"),
                 "--mr", str(mr), "--data-correction-fwhm", "-1", "--ddip-model", str(tiny_prior)]) == 2
    assert not (tmp_path / "bad").exists()


def test_the_overlap_option_reaches_the_windows_and_run_json(slab, tiny_prior, tmp_path, monkeypatch):
    """``--overlap`` sets the overlap of every sliding-window pass of the network."""
    from PETStabilityDenoiseLib.engine import ddip

    overlaps = []
    windows = ddip.blend_windows
    monkeypatch.setattr(ddip, "blend_windows", lambda *a: overlaps.append(a[3]) or windows(*a))
    _, sinogram, mr = slab
    out = tmp_path / "overlap"
    assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(out), "--mr", str(mr),
                 "--overlap", "0.5", "--samples", "2", "--steps", "2", "--start-fraction", "0.3", "--finetune-steps",
                 "1", "--em-updates", "1", "--device", "cpu", "--ddip-model", str(tiny_prior)]) == 0
    assert overlaps == [0.5] * 6  # 2 samples x (2 steps + the last estimate)
    assert json.loads((out / "run.json").read_text())["config"]["overlap"] == 0.5
    assert main(["reconstruct", "--method", "ddip", "--sinogram", str(sinogram), "--out", str(tmp_path / "bad"),
                 "--mr", str(mr), "--overlap", "1", "--ddip-model", str(tiny_prior)]) == 2
    assert not (tmp_path / "bad").exists()
