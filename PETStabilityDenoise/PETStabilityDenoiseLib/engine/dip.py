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

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple, cast

import numpy as np
import torch

from ..errors import Cancelled, LossJumpError, setting
from ..settings import DIPConfig, EpochReport, sample_epochs
from .device import resolve_device
from .network import build_unet
from .stability import WelfordAccumulator

log = logging.getLogger(__name__)

# Each step the loss-jump guard rejects is redone at the learning rate divided by this.
LOSS_JUMP_LR_DIVISOR = 10.0


@dataclass
class DIPResult:
    """The fit's outputs, in the units and shape of the input PET.

    ``loss_history[n]`` is the loss of the weights after n epochs (one per
    epoch, accepted steps only). ``loss_jumps`` lists the steps the guard
    rejected, as dicts: ``epoch`` (whose weights were rejected), ``loss``,
    ``best_loss`` (the lowest accepted so far) and ``new_learning_rate``.
    """

    network_output: np.ndarray
    stability: np.ndarray
    n_samples: int
    sample_epochs: list
    loss_history: list
    device: str
    timings: dict = field(default_factory=dict)
    loss_jumps: list = field(default_factory=list)


def _normalised(volume: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, float]:
    """Divides by the mean over the head, so the fit does not depend on the scanner's units."""
    region = volume[mask] if mask is not None else volume[volume > 0]
    scale = float(region.mean()) if region.size else 0.0
    if not scale > 0:
        raise ValueError("cannot normalise a volume whose mean over the head is not positive")
    return (volume / scale).astype(np.float32), scale


def _network_input(
    pet: np.ndarray, prior: Optional[np.ndarray], mode: str, mask: Optional[np.ndarray], seed: int
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

    A step after which the loss exceeds ``config.loss_jump_factor`` x the lowest
    so far, or is not finite, is undone and redone at a lower learning rate;
    when that keeps happening, :class:`LossJumpError` is raised.

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
    # Train mode throughout, the final pass included: batch norm ('gong') then
    # normalises every output, snapshot or final, with that output's own statistics.
    net = build_unet(net_input.shape[1], config.channels, config.num_res_units, config.network).to(device).train()
    learning_rate = config.learning_rate
    optimizer = _make_optimizer(net.parameters(), config, learning_rate)

    wanted = set(sample_epochs(config.epochs, config.interval, config.start))
    stability = WelfordAccumulator()
    requested = set(output_epochs) if on_output is not None else set()

    def _record(epoch: int, output: torch.Tensor) -> None:
        if epoch in wanted:
            stability.update(output)
        if epoch in requested:  # empty when on_output is None
            on_output(epoch, output[0, 0].float().cpu().numpy() * pet_scale)  # type: ignore[misc]

    first_output: list = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        output = net(net_input)
        if not first_output:
            first_output.append(output.detach())
        loss = torch.nn.functional.mse_loss(output, target)
        loss.backward()
        return loss

    losses: list = []
    jumps: list = []
    best = float("inf")
    before_step = None  # the accepted weights that the current ones were stepped from
    t_fit = time.perf_counter()

    # The first forward pass of epoch n evaluates the weights after n-1 epochs,
    # so that output doubles as the epoch-(n-1) snapshot: S costs no extra pass.
    # Its loss is what the loss-jump guard judges those weights by, so a
    # snapshot reaches S and on_output only once its weights are accepted, and
    # a jump undoes the previous step, the one that made them. After the last
    # epoch one no-grad pass gives the final output and its loss, judged alike.
    epoch = 0  # net holds the weights after this many epochs, not yet judged
    while True:
        first_output.clear()
        if epoch < config.epochs:
            saved = {name: value.detach().clone() for name, value in net.state_dict().items()}
            # The optimisers take a closure that returns the loss tensor, and return that tensor.
            loss = float(cast(torch.Tensor, optimizer.step(closure)).detach())
            output = first_output[0]
        else:
            with torch.no_grad():
                output = net(net_input)
            loss = float(torch.nn.functional.mse_loss(output, target))

        if not np.isfinite(loss) or loss > config.loss_jump_factor * best:
            if before_step is None:
                raise FloatingPointError(f"the DIP loss of the initial network is {loss}: check the inputs")
            if len(jumps) == config.max_loss_jump_retries:
                raise LossJumpError(
                    f"the DIP loss jumped to {loss:.4g} at epoch {epoch} (lowest so far {best:.4g}) at learning "
                    f"rate {learning_rate:g}, after {len(jumps)} of {config.max_loss_jump_retries} allowed "
                    f"learning-rate reductions; lower {setting('learning_rate')} or set {setting('optimizer')} to "
                    "'adam'"
                )
            learning_rate /= LOSS_JUMP_LR_DIVISOR
            jumps.append({"epoch": epoch, "loss": loss, "best_loss": best, "new_learning_rate": learning_rate})
            log.warning("DIP loss jumped to %.4g at epoch %d (lowest so far %.4g): redoing the step at "
                        "learning rate %g", loss, epoch, best, learning_rate)
            # Back to the weights before the rejected step, and a new optimiser at
            # the lower rate (L-BFGS's history and Adam's moments go with the old
            # one). Redoing the step re-evaluates those accepted weights, which
            # are already recorded: its output is dropped.
            net.load_state_dict(before_step)
            optimizer = _make_optimizer(net.parameters(), config, learning_rate)
            optimizer.step(closure)
            continue

        _record(epoch, output)
        if epoch == config.epochs:
            break
        best = min(best, loss)
        before_step = saved
        epoch += 1
        losses.append(loss)
        if progress is not None:
            elapsed = time.perf_counter() - t_fit
            progress(EpochReport(epoch, config.epochs, loss, elapsed,
                                 elapsed / epoch * (config.epochs - epoch), stability.count))
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled at epoch {epoch} of {config.epochs}")
    t_end = time.perf_counter()

    return DIPResult(
        network_output=(output[0, 0].float().cpu().numpy() * pet_scale).astype(np.float32),
        stability=(stability.std()[0, 0].float().cpu().numpy() * pet_scale).astype(np.float32),
        n_samples=stability.count,
        sample_epochs=sorted(wanted),
        loss_history=losses,
        device=str(device),
        timings={"setup_s": t_fit - t_start, "fit_s": t_end - t_fit,
                 "s_per_epoch": (t_end - t_fit) / config.epochs},
        loss_jumps=jumps,
    )


def _make_optimizer(params, config: DIPConfig, learning_rate: Optional[float] = None) -> torch.optim.Optimizer:
    """The config's optimiser; ``learning_rate`` replaces the config's (the loss-jump guard lowers it)."""
    if learning_rate is None:
        learning_rate = config.learning_rate
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=learning_rate)
    return torch.optim.LBFGS(
        params,
        lr=learning_rate,
        max_iter=config.inner_iterations,
        history_size=config.history_size,
        line_search_fn=config.line_search,
    )
