"""The numerical engine: blend, stability schedule, Welford accumulator, DIP fit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from PETStabilityDenoiseLib.engine import dip
from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.dip import DIPConfig, fit_dip
from PETStabilityDenoiseLib.engine.network import build_unet
from PETStabilityDenoiseLib.engine.stability import WelfordAccumulator
from PETStabilityDenoiseLib.errors import LossJumpError
from PETStabilityDenoiseLib.settings import sample_epochs

TINY = DIPConfig(epochs=8, interval=2, start=2, channels=(4, 8), num_res_units=1)


def test_blend_matches_hand_computed_values():
    x0 = np.array([1, 2, 3, 4], np.float32)
    net = np.array([2, 2, 2, 2], np.float32)
    s = np.array([0, 1, 2, 5], np.float32)
    # mean(S) = 2, alpha 0.5: S_norm = min(0.25 S, 1) = 0, 0.25, 0.5, 1
    # x = S_norm x0 + (1 - S_norm) f = 2, 0.25*2+0.75*2, 0.5*3+0.5*2, 4
    x, s_norm = blend(x0, net, s, 0.5)
    np.testing.assert_allclose(s_norm, [0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(x, [2.0, 2.0, 2.5, 4.0])
    # An explicit mean(S) replaces the whole-volume mean: 1.0 -> S_norm = min(0.5 S, 1)
    x, s_norm = blend(x0, net, s, 0.5, stability_mean=1.0)
    np.testing.assert_allclose(s_norm, [0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(x, [2.0, 2.0, 3.0, 4.0])


def test_blend_limits_and_buffers():
    rng = np.random.default_rng(0)
    x0, net = (rng.random((6, 7, 8), dtype=np.float32) for _ in range(2))
    s = rng.random((6, 7, 8), dtype=np.float32)
    s[0] = 0
    out, norm = np.empty_like(x0), np.empty_like(x0)
    x, s_norm = blend(x0, net, s, 0.0, out=out, stability_norm_out=norm)
    assert x is out and s_norm is norm
    np.testing.assert_array_equal(x, net)
    x, _ = blend(x0, net, s, 1e9, out=out, stability_norm_out=norm)
    np.testing.assert_array_equal(x[s > 0], x0[s > 0])
    np.testing.assert_array_equal(x[s == 0], net[s == 0])


def test_blend_rejects_bad_arguments():
    a = np.ones((2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        blend(a, a, np.ones((2, 2, 3), np.float32), 0.6)
    with pytest.raises(ValueError, match="alpha"):
        blend(a, a, a, -1.0)
    with pytest.raises(ValueError, match="float32"):
        blend(a.astype(np.float64), a, a, 0.6)


@pytest.mark.parametrize(
    "epochs, interval, start, expected",
    [(200, 5, 100, list(range(100, 201, 5))), (200, 5, 101, list(range(105, 201, 5))), (10, 3, 0, [0, 3, 6, 9])],
)
def test_sample_epochs(epochs, interval, start, expected):
    assert sample_epochs(epochs, interval, start) == expected
    assert len(sample_epochs(200, 5, 100)) == 21


def test_schedule_errors():
    with pytest.raises(ValueError):
        sample_epochs(10, 0, 0)
    with pytest.raises(ValueError, match="after the last epoch"):
        DIPConfig(epochs=50, start=100)


def test_welford_matches_numpy():
    rng = np.random.default_rng(3)
    samples = rng.normal(5, 2, (7, 3, 4, 5)).astype(np.float32)
    acc = WelfordAccumulator()
    for sample in samples:
        acc.update(torch.from_numpy(sample))
    assert acc.count == 7
    np.testing.assert_allclose(acc.std().numpy(), samples.std(axis=0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(acc.mean.numpy(), samples.mean(axis=0), rtol=1e-6)


def _blob(shape=(16, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    clean = 1.0 + 2.0 * (((z - 8) ** 2 + (y - 8) ** 2 + (x - 8) ** 2) < 20)
    return (clean + rng.normal(0, 0.3, shape)).astype(np.float32), clean.astype(np.float32) * 10


def test_stability_map_equals_std_of_stored_snapshots():
    pet, mr = _blob()
    stored = {}
    result = fit_dip(pet, mr, TINY, output_epochs=sample_epochs(8, 2, 2),
                     on_output=lambda epoch, image: stored.__setitem__(epoch, image.copy()))
    assert sorted(stored) == [2, 4, 6, 8] == result.sample_epochs
    assert result.n_samples == 4
    expected = np.std(np.stack([stored[e] for e in sorted(stored)]), axis=0, ddof=1)
    np.testing.assert_allclose(result.stability, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.network_output, stored[8], rtol=1e-6)
    assert expected.max() > 0


def test_same_seed_same_output_on_cpu():
    pet, mr = _blob()
    a = fit_dip(pet, mr, TINY.replace(seed=5))
    b = fit_dip(pet, mr, TINY.replace(seed=5))
    c = fit_dip(pet, mr, TINY.replace(seed=6))
    np.testing.assert_array_equal(a.network_output, b.network_output)
    np.testing.assert_array_equal(a.stability, b.stability)
    assert a.loss_history == b.loss_history
    assert not np.array_equal(a.network_output, c.network_output)


@pytest.mark.parametrize("mode", ["mr", "mr+pet", "noise"])
def test_input_modes_and_optimizers(mode):
    pet, mr = _blob()
    for optimizer in ("lbfgs", "adam"):
        result = fit_dip(pet, None if mode == "noise" else mr,
                         TINY.replace(input_mode=mode, optimizer=optimizer, learning_rate=0.01))
        assert result.network_output.shape == pet.shape
        assert np.isfinite(result.network_output).all() and result.n_samples == 4
        assert len(result.loss_history) == TINY.epochs


def test_fit_dip_rejects_bad_shapes_and_modes():
    pet, mr = _blob((15, 16, 16))
    with pytest.raises(ValueError, match="multiple of 2"):
        fit_dip(pet, mr, TINY)
    pet, mr = _blob()
    with pytest.raises(ValueError, match="MR shape"):
        fit_dip(pet, mr[:, :, :8], TINY)
    with pytest.raises(ValueError, match="needs an MR"):
        fit_dip(pet, None, TINY)


def test_config_rejects_unknown_network_and_bad_guard():
    with pytest.raises(ValueError, match="'monai', 'gong'"):
        DIPConfig(network="unet")
    with pytest.raises(ValueError, match="loss_jump_factor"):
        DIPConfig(loss_jump_factor=1.0)
    with pytest.raises(ValueError, match="max_loss_jump_retries"):
        DIPConfig(max_loss_jump_retries=-1)


def test_gong_network_shape_norms_and_additive_skips():
    net = build_unet(2, (4, 8, 16), num_res_units=1, network="gong")
    x = torch.randn(1, 2, 16, 24, 8)
    assert net(x).shape == (1, 1, 16, 24, 8)
    modules = list(net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in modules)
    assert not any(isinstance(m, (torch.nn.ConvTranspose3d, torch.nn.InstanceNorm3d)) for m in modules)
    # Added skips: the block after each skip takes the skip's channels, not twice them.
    assert [decoder[0][0].in_channels for decoder in net.decoders] == [4, 8]
    assert [up[0].out_channels for up in net.ups] == [4, 8]
    assert isinstance(net.head, torch.nn.Conv3d) and net.head.kernel_size == (1, 1, 1)
    with pytest.raises(ValueError, match="network must be"):
        build_unet(1, (4, 8), 1, network="unet")


def test_half_resolution_gong_network_keeps_the_shape_and_needs_one_more_halving():
    net = build_unet(1, (4, 8, 16), num_res_units=1, network="gong_halfres")
    assert net(torch.randn(1, 1, 16, 24, 8)).shape == (1, 1, 16, 24, 8)
    assert net.stem[0].stride == (2, 2, 2) and net.head.kernel_size == (3, 3, 3)
    assert DIPConfig(channels=(4, 8, 16), network="gong_halfres").size_multiple == 8
    assert DIPConfig(channels=(4, 8, 16), network="gong").size_multiple == 4
    pet, mr = _blob()
    result = fit_dip(pet, mr, TINY.replace(network="gong_halfres"))
    assert result.loss_history[-1] < 0.5 * result.loss_history[0]


def test_gong_fit_lowers_loss_and_final_pass_matches_snapshots():
    pet, mr = _blob()
    config = TINY.replace(network="gong")
    result = fit_dip(pet, mr, config)
    assert np.isfinite(result.stability).all() and result.stability.max() > 0
    assert result.loss_history[-1] < 0.5 * result.loss_history[0]
    # The no-grad final pass runs in train mode like the fit: it equals the
    # snapshot of the same weights taken inside a longer fit's next epoch.
    stored = {}
    fit_dip(pet, mr, config.replace(epochs=9), output_epochs=[8],
            on_output=lambda epoch, image: stored.__setitem__(epoch, image.copy()))
    np.testing.assert_allclose(result.network_output, stored[8], rtol=1e-5, atol=1e-5)


def _corrupt_steps(monkeypatch, steps, factor, learning_rate=None):
    """Multiplies all weights by ``factor`` after the given steps of each new optimiser (at ``learning_rate``)."""
    make = dip._make_optimizer

    def make_corrupting(params, config, lr):
        params = list(params)
        optimizer = make(params, config, lr)
        step, calls = optimizer.step, itertools.count(1)

        def corrupting_step(closure):
            loss = step(closure)
            if next(calls) in steps and learning_rate in (None, lr):
                with torch.no_grad():
                    for param in params:
                        param.mul_(factor)
            return loss

        optimizer.step = corrupting_step
        return optimizer

    monkeypatch.setattr(dip, "_make_optimizer", make_corrupting)


@pytest.mark.parametrize("step, factor", [(4, 100.0), (4, float("nan")), (8, 100.0)])
def test_loss_jump_is_undone_and_redone_at_lower_rate(monkeypatch, step, factor):
    # Step n makes the weights of epoch n: 4 is sampled into S, 8 is the final output.
    # Seed 1: this fit has no jump of its own (seed 0 jumps at epoch 2).
    _corrupt_steps(monkeypatch, {step}, factor, learning_rate=TINY.learning_rate)
    pet, mr = _blob()
    calls, reported = [], []
    result = fit_dip(pet, mr, TINY.replace(seed=1), output_epochs=range(9),
                     on_output=lambda epoch, image: calls.append((epoch, image.copy())),
                     progress=lambda report: reported.append(report.epoch))
    assert len(result.loss_jumps) == 1
    jump = result.loss_jumps[0]
    assert jump["epoch"] == step and jump["new_learning_rate"] == TINY.learning_rate / 10
    assert not jump["loss"] <= TINY.loss_jump_factor * jump["best_loss"]
    losses = result.loss_history
    assert len(losses) == TINY.epochs and reported == list(range(1, 9))
    assert all(loss <= TINY.loss_jump_factor * min(losses[:n]) for n, loss in enumerate(losses) if n)
    # The rejected weights reached neither on_output nor S.
    assert [epoch for epoch, _ in calls] == list(range(9))
    images = dict(calls)
    expected = np.std(np.stack([images[e] for e in result.sample_epochs]), axis=0, ddof=1)
    assert np.isfinite(result.stability).all()
    np.testing.assert_allclose(result.stability, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(result.network_output, images[8])


def test_loss_jump_error_when_retries_run_out(monkeypatch):
    # Every optimiser, at any learning rate, breaks the weights at its second step.
    _corrupt_steps(monkeypatch, {2}, float("nan"))
    pet, mr = _blob()
    with pytest.raises(LossJumpError, match=r"after 2 of 2 allowed .* lower learning_rate \(petstab "
                                             r"--learning-rate\) or set optimizer \(petstab --optimizer\) to 'adam'"):
        fit_dip(pet, mr, TINY.replace(seed=1, max_loss_jump_retries=2))


@pytest.mark.parametrize("cuda_build, advice", [(None, "is a CPU-only build"), ("12.4", "check that the NVIDIA driver")])
def test_cuda_without_a_gpu_is_refused_with_what_to_do(monkeypatch, cuda_build, advice):
    # The panel shows this too: it names the device setting and its cause, not a command-line flag.
    from PETStabilityDenoiseLib.engine.device import resolve_device
    from PETStabilityDenoiseLib.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    with pytest.raises(InputError, match=advice) as refusal:
        resolve_device("cuda")
    assert "choose the device 'auto' or 'cpu'" in str(refusal.value) and "--" not in str(refusal.value)
    assert resolve_device("auto") == torch.device("cpu")
