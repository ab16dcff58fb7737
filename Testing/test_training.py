"""Training data and objectives of the diffusion model and its regression baseline (issue 13)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import synthetic_training_pairs
from scipy import ndimage

from PETStabilityDenoiseLib.cli import build_parser, main, training_network
from PETStabilityDenoiseLib.engine.ddpm import sampling
from PETStabilityDenoiseLib.engine.ddpm.model import (
    DDPMConfig,
    acceleration_point,
    add_residual_noise,
    build_model,
    residual_ddim_step,
    sampling_scheduler,
    to_model_space,
    training_scheduler,
)
from PETStabilityDenoiseLib.engine.ddpm.regression import RegressionConfig, predict_volume
from PETStabilityDenoiseLib.engine.ddpm.sampling import (
    HEAD_MARGIN_VOXELS,
    denoise_volume,
    matched_timesteps,
    sample_corrective,
    sample_residual,
)
from PETStabilityDenoiseLib.engine.ddpm.weights import (
    BASE_DIR,
    attach_base,
    bundled_model_dir,
    bundled_prior_dir,
    load_base,
    load_model,
)
from PETStabilityDenoiseLib.engine.pipeline import denoise_ddpm
from PETStabilityDenoiseLib.errors import Cancelled, InputError, ModelError
from PETStabilityDenoiseLib.settings import DDPMSamplingConfig
from PETStabilityDenoiseLib.simulation import SimulationConfig
from PETStabilityDenoiseLib.simulation.case import BRAINWEB_LABELS
from PETStabilityDenoiseLib.simulation.scanners import SCANNERS
from PETStabilityDenoiseLib.training import dataset
from PETStabilityDenoiseLib.training.corrective import residual_std
from PETStabilityDenoiseLib.training.dataset import (
    AugmentationRanges,
    load_pairs,
    random_patches,
    save_pairs,
    variant_config,
    with_base_predictions,
)
from PETStabilityDenoiseLib.training.trainer import (
    CHECKPOINT_FILE,
    TrainingSettings,
    diffusion_loss,
    same_config,
    train,
)

QUICK = TrainingSettings(steps=4, batch_size=2, checkpoint_every=2, validate_every=2, log_every=1,
                         validation_patches=2)


def test_a_run_stopped_while_it_writes_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    pairs = synthetic_training_pairs()
    config = RegressionConfig(channels=(16, 16), patch_size=16)
    folder = tmp_path / "run"
    train(config, dataclasses.replace(QUICK, steps=2), pairs[:1], pairs[1:], folder)
    saved = torch.save

    def stopped_while_writing(state, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", stopped_while_writing)
    with pytest.raises(KeyboardInterrupt):
        train(config, QUICK, pairs[:1], pairs[1:], folder, resume=True)
    monkeypatch.setattr(torch, "save", saved)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    assert torch.load(folder / CHECKPOINT_FILE, weights_only=False)["step"] == 2
    train(config, QUICK, pairs[:1], pairs[1:], folder, resume=True)  # and training goes on from it


def test_a_time_limit_ends_training_early_with_a_model_and_a_checkpoint_to_resume(tmp_path):
    pairs = synthetic_training_pairs()
    config = RegressionConfig(channels=(16, 16), patch_size=16)
    folder = tmp_path / "run"
    stopped = train(config, QUICK, pairs[:1], pairs[1:], folder, time_limit_s=0)  # past at once: one step
    assert load_model(stopped, kind="regression")[2]["info"]["training"]["steps"] == 1
    assert torch.load(folder / CHECKPOINT_FILE, weights_only=False)["step"] == 1
    rows = (folder / "loss.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == "1" and rows[-1].split(",")[2] != ""  # validated at the stop
    finished = train(config, QUICK, pairs[:1], pairs[1:], folder, resume=True)
    assert load_model(finished, kind="regression")[2]["info"]["training"]["steps"] == QUICK.steps


def test_the_regression_baseline_resumes_exactly_and_predicts_the_input_outside_the_head(tmp_path):
    pairs = synthetic_training_pairs()
    config = RegressionConfig(channels=(16, 16), patch_size=16)
    straight = train(config, QUICK, pairs[:1], pairs[1:], tmp_path / "straight")
    train(config, dataclasses.replace(QUICK, steps=2), pairs[:1], pairs[1:], tmp_path / "resumed")
    resumed = train(config, QUICK, pairs[:1], pairs[1:], tmp_path / "resumed", resume=True)
    first, loaded_config, manifest = load_model(straight, kind="regression")
    second, _, _ = load_model(resumed, kind="regression")
    assert loaded_config == config and manifest["kind"] == "regression"
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ModelError, match="holds a regression"):
        load_model(straight)  # the DDPM method must not run a baseline's weights
    with pytest.raises(InputError, match="another network"):
        train(DDPMConfig(channels=(16, 16), patch_size=16), QUICK, pairs[:1], pairs[1:], tmp_path / "resumed",
              resume=True)

    pair = pairs[1]
    predicted = predict_volume(first, config, pair.low * 3.0, pair.mr, pair.head, overlap=0.25)
    assert predicted.shape == pair.low.shape and np.isfinite(predicted).all()
    far = ~ndimage.binary_dilation(pair.head, iterations=HEAD_MARGIN_VOXELS)
    assert far.any()
    np.testing.assert_array_equal(predicted[far], pair.low[far] * 3.0)
    assert not np.allclose(predicted[pair.head], pair.low[pair.head] * 3.0), "inside the head, the network's output"


def test_training_can_start_from_a_trained_models_weights(tmp_path):
    """Fine-tuning: with initial weights and a zero learning rate, the saved model is those weights."""
    pairs = synthetic_training_pairs()
    config = DDPMConfig(channels=(16, 16), patch_size=16)
    trained, _, _ = load_model(train(config, QUICK, pairs[:1], pairs[1:], tmp_path / "first"))
    still = dataclasses.replace(QUICK, steps=2, learning_rate=0.0)
    fine_tuned, _, _ = load_model(train(dataclasses.replace(config, matched_steps=2), still, pairs[:1], pairs[1:],
                                        tmp_path / "second", initial_weights=trained.state_dict()))
    fresh, _, _ = load_model(train(config, still, pairs[:1], pairs[1:], tmp_path / "fresh"))
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(fine_tuned.state_dict()[name], tensor, rtol=0, atol=0)
    assert any(not torch.equal(fresh.state_dict()[name], tensor) for name, tensor in trained.state_dict().items())
    with pytest.raises(RuntimeError, match="state_dict"):  # another network's weights
        train(DDPMConfig(channels=(16, 32), patch_size=16), still, pairs[:1], pairs[1:], tmp_path / "other",
              initial_weights=trained.state_dict())


def test_the_ddpm_keeps_the_input_and_a_zero_std_outside_the_head(tiny_ddpm_model_dir):
    model, config, _ = load_model(tiny_ddpm_model_dir)
    pair = synthetic_training_pairs(1)[0]
    mean, std = denoise_volume(model, config, pair.low, pair.mr, pair.head, samples=2, steps=2, seed=1)
    far = ~ndimage.binary_dilation(pair.head, iterations=HEAD_MARGIN_VOXELS)
    np.testing.assert_array_equal(mean[far], pair.low[far])
    assert (std[far] == 0).all() and (std[pair.head] > 0).all()


def test_patches_take_the_chosen_target():
    pair = synthetic_training_pairs(1)[0]
    pair = dataclasses.replace(pair, clean=np.full_like(pair.clean, 3.0))
    _, clean_targets = random_patches([pair], 4, 16, np.random.default_rng(0), intensity_scale=(1.0, 1.0),
                                      target="truth_blurred")
    np.testing.assert_allclose(clean_targets, to_model_space(np.float32(3.0), 1.0))
    _, full_targets = random_patches([pair], 4, 16, np.random.default_rng(0), intensity_scale=(1.0, 1.0),
                                     target="full_dose")
    assert full_targets.std() > 0.01, "the full-dose OSEM is noisy"
    _, default_targets = random_patches([pair], 4, 16, np.random.default_rng(0), intensity_scale=(1.0, 1.0))
    np.testing.assert_array_equal(default_targets, clean_targets)
    with pytest.raises(InputError, match="simulated before the unblurred truth"):
        random_patches([pair], 4, 16, np.random.default_rng(0), target="truth")
    sharp = dataclasses.replace(pair, truth=np.full_like(pair.clean, 5.0))
    _, truth_targets = random_patches([sharp], 4, 16, np.random.default_rng(0), intensity_scale=(1.0, 1.0),
                                      target="truth")
    np.testing.assert_allclose(truth_targets, to_model_space(np.float32(5.0), 1.0))
    with pytest.raises(InputError, match="unknown training target"):
        TrainingSettings(target="truth_unblurred")


def test_saved_pairs_round_trip_and_old_files_are_refused(tmp_path):
    pairs = synthetic_training_pairs()
    save_pairs(pairs, tmp_path / "pairs.npz")
    loaded = load_pairs(tmp_path / "pairs.npz")
    assert [(p.subject, p.dose) for p in loaded] == [(p.subject, p.dose) for p in pairs]
    np.testing.assert_array_equal(loaded[1].clean, pairs[1].clean)
    assert loaded[1].truth is None, "pairs made without the unblurred truth load without it"
    with_truth = [dataclasses.replace(p, truth=p.clean * 1.5) for p in pairs]
    save_pairs(with_truth, tmp_path / "with_truth.npz")
    np.testing.assert_array_equal(load_pairs(tmp_path / "with_truth.npz")[1].truth, with_truth[1].truth)
    np.savez(tmp_path / "old.npz", meta='[{"subject": "s0", "dose": 0.1}]', **{
        f"0_{name}": getattr(pairs[0], name) for name in ("low", "full", "mr", "head")})
    with pytest.raises(InputError, match="older format"):
        load_pairs(tmp_path / "old.npz")


def test_variants_cover_the_realistic_simulators_range():
    ranges = AugmentationRanges()
    configs = [variant_config(np.random.default_rng(seed), ranges, (0.1,), seed) for seed in range(40)]
    default = SimulationConfig()
    psfs = {c.psf_fwhm_mm for c in configs}
    assert psfs == {SCANNERS["brain"].psf_fwhm_mm, SCANNERS["wholebody"].psf_fwhm_mm}
    for c in configs:
        preset = SCANNERS["brain" if c.psf_fwhm_mm == SCANNERS["brain"].psf_fwhm_mm else "wholebody"]
        assert 0.5 <= c.full_dose_counts / preset.full_dose_counts <= 2.0
        assert ranges.texture_amplitude[0] <= c.texture_amplitude <= ranges.texture_amplitude[1]
        assert ranges.misregistration_mm[0] <= c.misregistration_mm <= ranges.misregistration_mm[1]
        assert c.doses == (1.0, 0.1) and c.seed == configs.index(c)
        for (region, value), (same, reference) in zip(c.gm_uptake, default.gm_uptake):
            assert region == same and abs(value / reference - 1) <= ranges.uptake_jitter
    with_hypo = [c for c in configs if c.hypo_depth > 0]
    assert 0 < len(with_hypo) < len(configs)
    assert all(ranges.hypo_depth[0] <= c.hypo_depth <= ranges.hypo_depth[1] for c in with_hypo)
    assert {np.sign(c.hypo_center_mm[0]) for c in with_hypo} == {-1.0, 1.0}, "both hemispheres"


def test_a_matched_short_schedule_trains_and_samples_at_the_same_timesteps(monkeypatch):
    config = DDPMConfig(channels=(16, 16), patch_size=16, matched_steps=2, matched_start_fraction=0.5)
    timesteps = matched_timesteps(config)
    assert len(timesteps) == 2 and timesteps == sorted(timesteps, reverse=True) and timesteps[0] <= 0.5 * 999
    assert matched_timesteps(DDPMConfig()) == []

    seen = []
    model = build_model(config)
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda x, timesteps: seen.extend(timesteps.tolist()) or original(x, timesteps))
    conditions, targets = torch.zeros(16, 2, 16, 16, 16), torch.zeros(16, 1, 16, 16, 16)
    diffusion_loss(model, training_scheduler(config), conditions, targets, "sample", torch.Generator().manual_seed(0),
                   timesteps)
    assert set(seen) == set(timesteps)

    pair = synthetic_training_pairs(1)[0]
    with pytest.raises(InputError, match=r"steps \(petstab --steps\) 2 and start_fraction \(petstab "
                                         r"--start-fraction\) 0.5"):
        denoise_volume(model, config, pair.low, pair.mr, pair.head, samples=2, steps=4, start_fraction=0.5)


def test_the_residual_process_starts_at_the_noised_low_dose_image_and_its_reverse_step_is_exact():
    config = DDPMConfig(matched_steps=2, residual=True)
    alphas_cumprod = training_scheduler(config).alphas_cumprod
    start = acceleration_point(config)
    assert abs(float(alphas_cumprod[start].sqrt()) - 0.5) < 0.01 and matched_timesteps(config) == [start, 0]
    generator = torch.Generator().manual_seed(0)
    clean, low_dose, noise = (torch.randn(2, 1, 4, 4, 4, generator=generator) for _ in range(3))
    noised_low_dose = training_scheduler(config).add_noise(low_dose, noise, torch.tensor([start, start]))
    torch.testing.assert_close(add_residual_noise(alphas_cumprod, clean, low_dose, noise, torch.tensor([start] * 2)),
                               noised_low_dose, rtol=0, atol=0.01 * float(clean.abs().max()))
    # Given the true x0, a reverse step lands on the forward process at the earlier step, with the same noise.
    for t, previous in ((start, 183), (183, 0)):
        x = add_residual_noise(alphas_cumprod, clean, low_dose, noise, torch.tensor([t, t]))
        expected = add_residual_noise(alphas_cumprod, clean, low_dose, noise, torch.tensor([previous] * 2))
        torch.testing.assert_close(residual_ddim_step(alphas_cumprod, clean, low_dose, x, t, previous), expected)
    x = add_residual_noise(alphas_cumprod, clean, low_dose, noise, torch.tensor([0, 0]))
    torch.testing.assert_close(residual_ddim_step(alphas_cumprod, clean, low_dose, x, 0, -1), clean)


def test_the_residual_chain_given_the_true_clean_image_returns_it_at_its_own_timesteps():
    config = DDPMConfig(matched_steps=2, residual=True)
    clean, low_dose = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) + 1
    seen = []

    def oracle(inputs, timesteps):
        seen.append((int(timesteps[0]), inputs[:, :1].clone()))
        return clean.expand(inputs.shape[0], -1, -1, -1, -1)

    draws = sample_residual(oracle, config, torch.cat([low_dose, low_dose], dim=1), samples=2,
                            generator=torch.Generator().manual_seed(0))
    noise = torch.randn((2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in seen] == matched_timesteps(config)
    alphas_cumprod = training_scheduler(config).alphas_cumprod
    for t, image in seen[1:]:  # the start is the noised low-dose image, to 1 % (see the test above)
        torch.testing.assert_close(image, add_residual_noise(alphas_cumprod, clean.expand(2, -1, -1, -1, -1),
                                                             low_dose.expand(2, -1, -1, -1, -1), noise,
                                                             torch.tensor([t, t])), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(draws, clean.expand(2, -1, -1, -1, -1))


def test_a_residual_model_trains_on_its_chain_and_denoises(tmp_path):
    pairs = synthetic_training_pairs()
    config = DDPMConfig(channels=(16, 16), patch_size=16, matched_steps=2, residual=True)
    model, _, _ = load_model(train(config, QUICK, pairs[:1], pairs[1:], tmp_path / "residual"))
    pair = pairs[0]
    mean, std = denoise_volume(model, config, pair.low, pair.mr, pair.head, samples=2, steps=2)
    assert mean.shape == pair.low.shape and np.isfinite(mean).all() and (std[pair.head] > 0).all()
    with pytest.raises(InputError, match=r"sample with steps \(petstab --steps\) 2"):
        denoise_volume(model, config, pair.low, pair.mr, pair.head, samples=2, steps=3)
    with pytest.raises(InputError, match="cannot drop"):
        train(config, dataclasses.replace(QUICK, condition_dropout=0.2), pairs[:1], pairs[1:], tmp_path / "dropout")
    with pytest.raises(ValueError, match="residual"):
        DDPMConfig(residual=True)  # it needs a matched chain


def test_a_checkpoint_written_before_a_config_field_existed_stays_resumable():
    recorded = dataclasses.asdict(DDPMConfig(matched_steps=2))
    del recorded["residual"]
    assert same_config(DDPMConfig(matched_steps=2), recorded)
    assert not same_config(DDPMConfig(matched_steps=2, residual=True), recorded)
    assert not same_config(DDPMConfig(matched_steps=2), {**recorded, "removed_field": 1})


def test_bf16_training_is_recorded_and_learns_like_float32(tmp_path):
    pairs = synthetic_training_pairs()
    config = DDPMConfig(channels=(16, 16), patch_size=16)
    float32 = load_model(train(config, QUICK, pairs[:1], pairs[1:], tmp_path / "float32"))
    bf16 = load_model(train(config, dataclasses.replace(QUICK, bf16=True), pairs[:1], pairs[1:], tmp_path / "bf16"))
    assert bf16[2]["info"]["training"]["bf16"] and not float32[2]["info"]["training"]["bf16"]
    for name, tensor in float32[0].state_dict().items():
        assert tensor.dtype == bf16[0].state_dict()[name].dtype  # the weights stay float32
        # The same data and noise, rounded differently: close after 4 steps, but not equal.
        torch.testing.assert_close(bf16[0].state_dict()[name], tensor, rtol=0.05, atol=0.01)
    assert any(not torch.equal(bf16[0].state_dict()[n], t) for n, t in float32[0].state_dict().items())


@pytest.mark.parametrize("supported", [True, False])
def test_bf16_on_a_cpu_without_bf16_support_warns(monkeypatch, caplog, supported):
    from PETStabilityDenoiseLib.training import trainer

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: supported)
    with caplog.at_level(logging.WARNING, logger=trainer.__name__):
        trainer.warn_if_slow_bf16(dataclasses.replace(QUICK, bf16=True), torch.device("cpu"))
        trainer.warn_if_slow_bf16(QUICK, torch.device("cpu"))  # float32: never a warning
    assert ("has no bfloat16 support" in caplog.text) is not supported
    assert len(caplog.records) == (0 if supported else 1)


def test_the_ema_warms_up_so_that_a_short_run_forgets_its_first_weights():
    from torch.optim.swa_utils import AveragedModel

    from PETStabilityDenoiseLib.training.trainer import ema_update

    network = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(network, multi_avg_fn=ema_update(0.995))
    with torch.no_grad():
        network.weight.fill_(1.0)
        ema.update_parameters(network)  # the first update copies
        network.weight.fill_(0.0)
        for _ in range(99):
            ema.update_parameters(network)
    # At a fixed 0.995 the first weights would still count 0.995^99 = 61 %; warmed up, the product of the decays
    # (1 + n) / (10 + n) for n = 1..99 is 10! / (101 x 102 x ... x 109), about 3e-12.
    assert float(ema.module.weight.detach()) < 1e-6
    update = ema_update(0.995)
    average = [torch.tensor([1.0])]
    update(average, [torch.tensor([0.0])], torch.tensor(5000))
    assert float(average[0]) == pytest.approx(0.995)  # past the warm-up, the plain decay


def test_corrective_patches_condition_on_the_base_and_target_the_scaled_residual():
    pair = synthetic_training_pairs(1)[0]
    pair = dataclasses.replace(pair, clean=np.full_like(pair.clean, 3.0), base=np.full_like(pair.clean, 2.0))
    conditions, targets = random_patches([pair], 4, 16, np.random.default_rng(0), intensity_scale=(1.0, 1.0),
                                         target="truth_blurred", residual_scale=0.05)
    assert conditions.shape[1] == 3, "the low-dose PET, the base, the MR"
    np.testing.assert_allclose(conditions[:, 1], to_model_space(np.float32(2.0), 1.0))
    np.testing.assert_allclose(targets, (to_model_space(np.float32(3.0), 1.0) - to_model_space(np.float32(2.0), 1.0))
                               / 0.05, rtol=1e-5)
    with pytest.raises(InputError, match="base predictions"):
        random_patches([dataclasses.replace(pair, base=None)], 1, 16, np.random.default_rng(0), residual_scale=0.05)


def test_a_corrective_chain_starts_from_pure_noise_and_returns_the_base_plus_the_scaled_residual():
    """With a network that knows the residual, the chain sees the forward process of the residual at each of its
    timesteps (999, then 500) with the start's noise, and its draws are the base plus residual_scale times it."""
    config = DDPMConfig(channels=(16, 16), patch_size=16, corrective=True, residual_scale=0.1, matched_steps=2)
    assert matched_timesteps(config) == [999, 500] and config.condition_channels == 3
    scheduler = sampling_scheduler(config)
    residual = torch.rand(1, 1, 8, 8, 8) * 2 - 1
    base = torch.rand(1, 1, 8, 8, 8)
    seen = []

    def oracle(inputs, timesteps):
        seen.append((int(timesteps[0]), inputs[:, :1].clone()))
        return residual.expand(inputs.shape[0], -1, -1, -1, -1)

    draws = sample_corrective(oracle, config, torch.cat([base * 3, base, base * 5], dim=1), samples=2,
                              generator=torch.Generator().manual_seed(3))
    noise = torch.randn((2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(seen[0][1], noise)
    # Exact but for the start, where pure noise stands for the forward process at t = 999 (sqrt(alpha_bar) 0.0064).
    torch.testing.assert_close(seen[1][1], scheduler.add_noise(residual.expand(2, -1, -1, -1, -1), noise,
                                                               torch.tensor([500, 500])), rtol=0, atol=0.01)
    torch.testing.assert_close(draws, (base + 0.1 * residual).expand(2, -1, -1, -1, -1))


def test_a_corrective_model_trains_carries_its_base_and_denoises(tmp_path, monkeypatch):
    pairs = synthetic_training_pairs()
    base_config = RegressionConfig(channels=(16, 16), patch_size=16)
    base_dir = train(base_config, QUICK, pairs[:1], pairs[1:], tmp_path / "base")
    base_model, _, _ = load_model(base_dir, kind="regression")
    pairs = with_base_predictions(pairs, lambda p: predict_volume(base_model, base_config, p.low, p.mr, p.head,
                                                                  overlap=0.25))
    config = DDPMConfig(channels=(16, 16), patch_size=16, corrective=True, residual_scale=0.05, matched_steps=2)
    model_dir = train(config, QUICK, pairs[:1], pairs[1:], tmp_path / "corrective")
    attach_base(model_dir, base_dir)
    model, loaded, manifest = load_model(model_dir)
    assert loaded == config
    base, _ = load_base(model_dir, manifest)
    pair = pairs[0]
    mean, std = denoise_volume(model, config, pair.low, pair.mr, pair.head, base=pair.base, samples=2, steps=2)
    assert np.isfinite(mean).all() and (std[pair.head] > 0).all()
    assert not np.allclose(mean[pair.head], pair.base[pair.head]), "the residual moves the base"
    with pytest.raises(ValueError, match="base prediction"):
        denoise_volume(model, config, pair.low, pair.mr, pair.head, samples=2, steps=2)
    with pytest.raises(InputError, match=r"sample with steps \(petstab --steps\) 2"):
        denoise_volume(model, config, pair.low, pair.mr, pair.head, base=pair.base, samples=2, steps=3)
    with pytest.raises(InputError, match=r"start_fraction \(petstab --start-fraction\) does not apply"):
        denoise_volume(model, config, pair.low, pair.mr, pair.head, base=pair.base, samples=2, steps=2,
                       start_fraction=0.3)
    with pytest.raises(InputError, match="cannot drop"):
        train(config, dataclasses.replace(QUICK, condition_dropout=0.2), pairs[:1], pairs[1:], tmp_path / "dropout")

    pet, mr = (sitk.GetImageFromArray(array) for array in (pair.low, pair.mr))
    sampled_windows, reports = [], []
    sample_window = sampling.sample_corrective
    monkeypatch.setattr(sampling, "sample_corrective", lambda *a, **k: sampled_windows.append(1) or sample_window(*a, **k))
    run = denoise_ddpm(pet, mr, DDPMSamplingConfig(model_dir=str(model_dir), samples=2, device="cpu"),
                       progress=reports.append)
    assert run.record["base_sha256"] == manifest["base_sha256"]
    # The base pass's windows (as many as the sampling's: one patch size) count in the run's progress first.
    done = [r.epoch for r in reports]
    assert done == sorted(set(done)) and {r.epochs for r in reports} == {done[-1]} == {2 * len(sampled_windows)}
    sampled_windows.clear()
    with pytest.raises(Cancelled):  # and cancel is polled in the base pass, before any sampling
        denoise_ddpm(pet, mr, DDPMSamplingConfig(model_dir=str(model_dir), samples=2, device="cpu"),
                     should_stop=lambda: True)
    assert not sampled_windows
    assert np.isfinite(sitk.GetArrayFromImage(run.network_output)).all()

    other = train(base_config, dataclasses.replace(QUICK, seed=1), pairs[:1], pairs[1:], tmp_path / "other")
    shutil.copytree(other, model_dir / BASE_DIR, dirs_exist_ok=True)
    with pytest.raises(ModelError, match="not the one"):
        load_base(model_dir, manifest)
    shutil.rmtree(model_dir / BASE_DIR)
    with pytest.raises(ModelError, match="no base model"):
        load_base(model_dir, manifest)
    # A training stopped between the corrective model's save and attach_base: no base recorded.
    with pytest.raises(ModelError, match="incomplete"):
        load_base(model_dir, {k: v for k, v in manifest.items() if k != "base_sha256"})


def test_train_ddpm_checks_a_corrective_models_options():
    def network(*extra, measured=0.044):
        return training_network(build_parser().parse_args(["train-ddpm", "--labels-dir", "l", "--out", "r", *extra]),
                                measured)

    corrective = ("--objective", "corrective", "--base-model", "unet")
    assert network(*corrective) == DDPMConfig(corrective=True, residual_scale=0.044, matched_steps=2)
    assert network(*corrective, "--residual-scale", "0.05").residual_scale == 0.05
    for extra, message in [(("--base-model", "unet"), "are for --objective corrective"),
                           (("--objective", "corrective"), "needs --base-model"),
                           ((*corrective, "--schedule", "full"), "drop --schedule full"),
                           ((*corrective, "--residual-scale", "0"), "must be positive")]:
        with pytest.raises(InputError, match=message):
            network(*extra)


def test_train_ddpm_trains_a_corrective_model_on_its_bases_predictions(tmp_path, monkeypatch, caplog):
    pairs = synthetic_training_pairs()
    simulated = itertools.cycle([pairs[:1], pairs[1:]])  # each run's training subject's pairs, then its validation's
    monkeypatch.setattr(dataset, "simulate_pairs", lambda *args, **kwargs: next(simulated))
    labels = tmp_path / "labels"
    labels.mkdir()
    for subject in ("04", "05"):
        (labels / BRAINWEB_LABELS.format(subject)).touch()
    bases = [train(RegressionConfig(channels=(16, 16), patch_size=16), dataclasses.replace(QUICK, seed=seed),
                   pairs[:1], pairs[1:], tmp_path / f"base{seed}") for seed in (0, 1)]
    command = ["train-ddpm", "--labels-dir", str(labels), "--subjects", "04", "--validation-subjects", "05",
               "--out", str(tmp_path / "run"), "--objective", "corrective", "--steps", "2", "--batch-size", "2",
               "--channels", "16", "16", "--patch-size", "16"]

    assert main([*command, "--base-model", str(bases[0])]) == 0
    _, config, manifest = load_model(tmp_path / "run" / "model")
    with_base = load_pairs(tmp_path / "run" / f"training_pairs_base_{manifest['base_sha256'][:12]}.npz")
    assert config.corrective and config.residual_scale == round(residual_std(with_base, "truth_blurred"), 3)
    assert manifest["info"]["base_sha256"] == load_model(bases[0], kind="regression")[2]["sha256"]
    load_base(tmp_path / "run" / "model", manifest)  # the base travels with the model, checksum and all

    # A time limit that has passed at once: one step, a model, and a checkpoint that --resume goes on from.
    assert main([*command, "--base-model", str(bases[0]), "--out", str(tmp_path / "timed"), "--steps", "5",
                 "--time-limit-minutes", "1e-9"]) == 0
    assert load_model(tmp_path / "timed" / "model")[2]["info"]["training"]["steps"] == 1
    assert main([*command, "--base-model", str(bases[0]), "--out", str(tmp_path / "timed"), "--resume",
                 "--steps", "3"]) == 0
    assert load_model(tmp_path / "timed" / "model")[2]["info"]["training"]["steps"] == 3
    assert main([*command, "--base-model", str(bases[0]), "--out", str(tmp_path / "bad"), "--time-limit-minutes",
                 "0"]) == 2
    assert "--time-limit-minutes must be positive" in caplog.text

    same_scale = ["--residual-scale", str(config.residual_scale)]  # so that only the base differs
    assert main([*command, "--base-model", str(bases[1]), *same_scale, "--resume", "--steps", "3"]) == 2
    assert "another base model" in caplog.text
    assert main(["train-ddpm", "--labels-dir", str(labels), "--out", str(tmp_path / "other"), "--objective",
                 "corrective"]) == 2
    assert "needs --base-model" in caplog.text


def test_train_ddpm_init_from_fine_tunes_a_trained_model(tmp_path, monkeypatch, caplog):
    """``--init-from``: the run starts from that folder's weights (with a zero learning rate, the saved model is
    them) and records their checksum; another network's folder is refused before any simulation."""
    pairs = synthetic_training_pairs()
    simulated = itertools.cycle([pairs[:1], pairs[1:]])
    monkeypatch.setattr(dataset, "simulate_pairs", lambda *args, **kwargs: next(simulated))
    labels = tmp_path / "labels"
    labels.mkdir()
    for subject in ("04", "05"):
        (labels / BRAINWEB_LABELS.format(subject)).touch()
    network = ["--channels", "16", "16", "--patch-size", "16", "--condition-dropout", "1"]
    first = train(training_network(build_parser().parse_args(["train-ddpm", "--labels-dir", "l", "--out", "r",
                                                              *network])),
                  dataclasses.replace(QUICK, condition_dropout=1.0), pairs[:1], pairs[1:], tmp_path / "first")
    command = ["train-ddpm", "--labels-dir", str(labels), "--subjects", "04", "--validation-subjects", "05",
               "--steps", "2", "--batch-size", "2", "--learning-rate", "0", "--init-from", str(first)]

    assert main([*command, *network, "--out", str(tmp_path / "tuned")]) == 0
    initial, _, initial_manifest = load_model(first)
    tuned, _, manifest = load_model(tmp_path / "tuned" / "model")
    assert manifest["info"]["fine_tuned_from_sha256"] == initial_manifest["sha256"]
    for name, tensor in initial.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[name], tensor, rtol=0, atol=0)

    monkeypatch.setattr(dataset, "simulate_pairs", lambda *args, **kwargs: pytest.fail("simulated before refusing"))
    wider = ["--channels", "16", "32", "--patch-size", "16", "--condition-dropout", "1"]
    assert main([*command, *wider, "--out", str(tmp_path / "other")]) == 2
    assert "holds another network" in caplog.text


@pytest.mark.parametrize("extra, bundled", [(["--objective", "corrective", "--base-model", "unet"], bundled_model_dir()),
                                            (["--condition-dropout", "1", "--target", "truth"], bundled_prior_dir())],
                         ids=["denoiser", "ddip_prior"])
def test_train_ddpm_trains_the_bundled_models_design(extra, bundled):
    # The README's commands for them; a corrective model's residual scale is measured on its pairs.
    args = build_parser().parse_args(["train-ddpm", "--labels-dir", "labels", "--out", "run", *extra])
    _, config, manifest = load_model(bundled)
    assert training_network(args, config.residual_scale) == config
    assert args.target == manifest["info"]["training"]["target"]
    regression = build_parser().parse_args(["train-ddpm", "--labels-dir", "l", "--out", "r", "--objective", "regression"])
    assert training_network(regression) == RegressionConfig()
    with pytest.raises(InputError, match="--schedule"):
        training_network(build_parser().parse_args(["train-ddpm", "--labels-dir", "l", "--out", "r", "--objective",
                                                    "regression", "--schedule", "full"]))
