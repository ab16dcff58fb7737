"""Stability-map conditional deep image prior (METHOD.md §1).

A 3D U-Net f(theta | g) is fitted so that its output matches the noisy PET
x0 under an L2 loss; g is the MR (optionally with the PET as a second
channel), or fixed random noise when there is no MR (the original DIP).
While it is fitted, the outputs at epochs n >= start with n % interval == 0
are accumulated online into the stability map S.

This module is pure torch/numpy: no file I/O, no geometry, no Slicer. It
works on arrays that the caller has already cropped and padded to a size the
U-Net accepts (see ``pipeline.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import DIPConfig, EpochReport, InputMode, sample_epochs
from .network import build_unet
from .stability import WelfordAccumulator

@dataclass
class DIPResult:
    """The fit's outputs, in the units and shape of the input PET."""

    network_output: np.ndarray
    stability: np.ndarray
    n_samples: int
    sample_epochs: list
    loss_history: list
    device: str
    timings: dict = field(default_factory=dict)


class Cancelled(RuntimeError):
    """Raised inside ``fit_dip`` when the caller's ``should_stop`` returns True."""


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when there is one and the CPU otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {name!r}")
    return torch.device(name)


def _normalised(volume: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, float]:
    """Divides by the mean over the head, so the fit does not depend on the scanner's units."""
    region = volume[mask] if mask is not None else volume[volume > 0]
    scale = float(region.mean()) if region.size else 0.0
    if not scale > 0:
        raise ValueError("cannot normalise a volume whose mean over the head is not positive")
    return (volume / scale).astype(np.float32), scale


def _network_input(
    pet: np.ndarray, prior: Optional[np.ndarray], mode: InputMode, mask: Optional[np.ndarray], seed: int
) -> np.ndarray:
    if mode == "noise":
        # Ulyanov et al.'s input: fixed uniform noise scaled by 1/10.
        return 0.1 * np.random.default_rng(seed).random((1,) + pet.shape, dtype=np.float32)
    if prior is None:
        raise ValueError(f"input mode {mode!r} needs an MR prior; use input_mode='noise' when there is no MR")
    mr = _normalised(prior, mask)[0][None]
    return mr if mode == "mr" else np.concatenate([mr, pet[None]], axis=0)


def fit_dip(
    pet: np.ndarray,
    prior: Optional[np.ndarray],
    config: DIPConfig,
    *,
    mask: Optional[np.ndarray] = None,
    progress: Optional[Callable[[EpochReport], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    output_epochs: Sequence[int] = (),
    on_output: Optional[Callable[[int, np.ndarray], None]] = None,
) -> DIPResult:
    """Fits the conditional DIP to ``pet`` and returns its output and stability map.

    Args:
        pet: noisy PET, 3D float array (z, y, x); each size a multiple of
            ``config.size_multiple``.
        prior: the MR on the same grid, or None with ``input_mode='noise'``.
        config: schedule, optimiser, network and device.
        mask: head mask over which the volumes are normalised (None: all
            positive voxels).
        progress: called after every epoch with an :class:`EpochReport`.
        should_stop: polled every epoch; True raises :class:`Cancelled`.
        output_epochs, on_output: ``on_output(epoch, image)`` receives the
            network output (PET units) at each of these epochs, e.g. to
            compare early stopping points from one fit.
    """
    if pet.ndim != 3:
        raise ValueError(f"fit_dip needs a 3D volume; got shape {pet.shape}")
    bad = [s for s in pet.shape if s % config.size_multiple]
    if bad:
        raise ValueError(f"each size of {pet.shape} must be a multiple of {config.size_multiple} for this U-Net")
    if prior is not None and prior.shape != pet.shape:
        raise ValueError(f"MR shape {prior.shape} != PET shape {pet.shape}: resample the MR onto the PET grid first")

    t_start = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    target_np, pet_scale = _normalised(pet, mask)
    input_np = _network_input(target_np, prior, config.input_mode, mask, config.seed)
    target = torch.from_numpy(target_np)[None, None].to(device)
    net_input = torch.from_numpy(input_np)[None].to(device)
    net = build_unet(net_input.shape[1], config.channels, config.num_res_units).to(device)
    optimizer = _make_optimizer(net.parameters(), config)

    wanted = set(sample_epochs(config.epochs, config.interval, config.start))
    stability = WelfordAccumulator()
    requested = set(output_epochs) if on_output is not None else set()

    def _record(epoch: int, output: torch.Tensor) -> None:
        if epoch in wanted:
            stability.update(output)
        if epoch in requested:
            on_output(epoch, output[0, 0].float().cpu().numpy() * pet_scale)

    losses: list = []
    t_fit = time.perf_counter()

    # The first forward pass of epoch n evaluates the weights after n-1 epochs,
    # so that output doubles as the epoch-(n-1) snapshot: S costs no extra pass.
    for epoch in range(1, config.epochs + 1):
        first_output: list = []

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            output = net(net_input)
            if not first_output:
                first_output.append(output.detach())
            loss = torch.nn.functional.mse_loss(output, target)
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        _record(epoch - 1, first_output[0])
        losses.append(float(loss.detach()))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(
                f"the DIP loss became {losses[-1]} at epoch {epoch}; lower the learning rate or use --optimizer adam"
            )
        if progress is not None:
            elapsed = time.perf_counter() - t_fit
            progress(EpochReport(epoch, config.epochs, losses[-1], elapsed,
                                 elapsed / epoch * (config.epochs - epoch), stability.count))
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled at epoch {epoch} of {config.epochs}")

    with torch.no_grad():
        final = net(net_input)
    _record(config.epochs, final)
    t_end = time.perf_counter()

    return DIPResult(
        network_output=(final[0, 0].float().cpu().numpy() * pet_scale).astype(np.float32),
        stability=(stability.std()[0, 0].float().cpu().numpy() * pet_scale).astype(np.float32),
        n_samples=stability.count,
        sample_epochs=sorted(wanted),
        loss_history=losses,
        device=str(device),
        timings={"setup_s": t_fit - t_start, "fit_s": t_end - t_fit,
                 "s_per_epoch": (t_end - t_fit) / config.epochs},
    )


def _make_optimizer(params, config: DIPConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate)
    return torch.optim.LBFGS(
        params,
        lr=config.learning_rate,
        max_iter=config.inner_iterations,
        history_size=config.history_size,
        line_search_fn=config.line_search,
    )
