"""Training the conditional DDPM, or its regression baseline, on simulated pairs: loss, EMA, checkpoints, resume
and a loss log. Both see the same patches, drawn by the same generator, for the same budget.

The training folder holds:
- ``checkpoint.pt``: network, EMA, optimiser and random states, written every
  ``checkpoint_every`` steps, from which ``resume=True`` continues exactly;
- ``loss.csv``: step, mean training loss since the last row, validation loss
  (of the EMA network on fixed held-out patches, when computed) and elapsed time;
- ``model/``: the EMA network with its checksummed manifest, once training ends.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..engine.ddpm.model import (
    DROPPED_CONDITION,
    DROPPED_MR,
    DDPMConfig,
    add_residual_noise,
    count_parameters,
    memory_format_for,
    training_scheduler,
)
from ..engine.ddpm.sampling import matched_timesteps
from ..engine.ddpm.weights import MODEL_KINDS, model_kind, save_model
from ..errors import InputError
from ..settings import DEFAULT_TRAINING_TARGET, TRAINING_TARGETS
from ..volumes.files import write_atomically
from .dataset import TrainingPair, random_patches

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOSS_LOG = "loss.csv"
MODEL_DIR = "model"
LOG_COLUMNS = ("step", "train_loss", "validation_loss", "elapsed_s")


@dataclass(frozen=True)
class TrainingSettings:
    """How long and how to train; stored in the checkpoint and the model manifest."""

    steps: int = 3000
    batch_size: int = 8
    learning_rate: float = 3e-4
    ema_decay: float = 0.995
    checkpoint_every: int = 100
    validate_every: int = 250
    log_every: int = 10
    validation_patches: int = 32
    seed: int = 0
    target: str = DEFAULT_TRAINING_TARGET  # one of settings.TRAINING_TARGETS
    # A DDPM only: the probability that a patch's low-dose condition is dropped (set to DROPPED_CONDITION), so
    # that the model also learns p(PET | MR), the prior of the sinogram reconstruction DDIP. 1: always dropped, a
    # model that is only that prior (and is validated without the condition too).
    condition_dropout: float = 0.0
    # A DDPM with the MR only: the probability that a patch's MR channel (the last) is dropped (set to
    # DROPPED_MR), so that the model also learns p(PET) and DDIP can weigh the MR (``DDIPConfig.mr_guidance``).
    mr_dropout: float = 0.0
    # Run the network in bfloat16 (autocast; weights and optimiser stay float32). About 2x faster on CPUs with
    # AMX (benchmarks/bench_training.py); far slower on CPUs without bfloat16 support (``warn_if_slow_bf16``).
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.target not in TRAINING_TARGETS:
            raise InputError(f"unknown training target {self.target!r}; choose one of {', '.join(TRAINING_TARGETS)}")
        if not 0 <= self.condition_dropout <= 1:
            raise InputError(f"condition_dropout must be in [0, 1]; got {self.condition_dropout}")
        if not 0 <= self.mr_dropout < 1:
            raise InputError(f"mr_dropout must be in [0, 1): a model that never sees the MR is no MR-guided prior; "
                             f"got {self.mr_dropout}")


@dataclass
class TrainingReport:
    """One row of the loss log."""

    step: int
    steps: int
    train_loss: float
    validation_loss: Optional[float]
    elapsed_s: float


def ema_update(decay: float) -> Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], Any], None]:
    """The EMA's update, for ``AveragedModel(multi_avg_fn=...)``, with a warm-up: the n-th update uses decay
    min(``decay``, (1 + n) / (10 + n)).

    Without it the average of a short run is still partly its first, nearly random, weights: 0.995^500 = 8 % of
    them after 500 steps at decay 0.995, which showed as an offset in the output (docs/DDPM.md). From the
    1,791st update on, the warm-up no longer changes anything at decay 0.995.
    """
    def update(averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], num_averaged: Any) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for average, value in zip(averaged, current):
            average.lerp_(value.detach(), weight)
    return update


def diffusion_loss(model: torch.nn.Module, scheduler, conditions: torch.Tensor, targets: torch.Tensor,
                   prediction_type: str, generator: torch.Generator, timestep_choices: Sequence[int] = (),
                   residual: bool = False) -> torch.Tensor:
    """Mean squared error of the network's prediction at uniformly drawn diffusion steps.

    Args:
        timestep_choices: draw the steps among these only (a matched short schedule); empty: among all.
        residual: noise by Resfusion's forward process (towards the low-dose image, the first condition channel).
    """
    noise = torch.randn(targets.shape, generator=generator, device=generator.device).to(targets.device)
    if timestep_choices:
        picks = torch.randint(0, len(timestep_choices), (targets.shape[0],), generator=generator,
                              device=generator.device)
        timesteps = torch.as_tensor(timestep_choices, device=generator.device)[picks].to(targets.device)
    else:
        timesteps = torch.randint(0, scheduler.num_train_timesteps, (targets.shape[0],), generator=generator,
                                  device=generator.device).to(targets.device)
    if residual:
        noisy = add_residual_noise(scheduler.alphas_cumprod, targets, conditions[:, :1], noise, timesteps)
    else:
        noisy = scheduler.add_noise(targets, noise, timesteps)
    prediction = model(torch.cat([noisy, conditions], dim=1), timesteps=timesteps)
    goal = {"sample": targets, "epsilon": noise}.get(prediction_type)
    if goal is None:
        goal = scheduler.get_velocity(targets, noise, timesteps)
    return torch.nn.functional.mse_loss(prediction, goal)


def drop_condition(conditions: torch.Tensor, channel: int, value: float, probability: float,
                   generator: torch.Generator) -> torch.Tensor:
    """``conditions`` with each patch's ``channel`` set to ``value`` with ``probability``, drawn per patch."""
    if probability == 0:
        return conditions
    dropped = torch.rand(conditions.shape[0], generator=generator, device=generator.device) < probability
    conditions = conditions.clone()
    conditions[dropped.to(conditions.device), channel] = value
    return conditions


def drop_low_dose(conditions: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """``conditions`` with each patch's low-dose channel (the first) set to DROPPED_CONDITION with ``probability``."""
    return drop_condition(conditions, 0, DROPPED_CONDITION, probability, generator)


def drop_mr(conditions: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """``conditions`` with each patch's MR channel (the last) set to DROPPED_MR with ``probability``."""
    return drop_condition(conditions, -1, DROPPED_MR, probability, generator)


def corrective_scale(config: Any) -> Optional[float]:
    """The residual's scale when ``config`` is a corrective diffusion model (its patches' target), else None."""
    return config.residual_scale if isinstance(config, DDPMConfig) and config.corrective else None


def training_loss(model: torch.nn.Module, config: Any, scheduler, conditions: torch.Tensor, targets: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """The diffusion loss for a DDPM (``config`` a DDPMConfig); the squared error of the prediction for the baseline."""
    if isinstance(config, DDPMConfig):
        return diffusion_loss(model, scheduler, conditions, targets, config.prediction_type, generator,
                              matched_timesteps(config), config.residual)
    return torch.nn.functional.mse_loss(model(conditions), targets)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, config: Any, scheduler, conditions: torch.Tensor, targets: torch.Tensor,
                    seed: int, batch_size: int) -> float:
    """The loss on fixed held-out patches, with fixed noise and steps, so that rows are comparable."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    losses = [training_loss(model, config, scheduler, c, t, generator).item()
              for c, t in zip(conditions.split(batch_size), targets.split(batch_size))]
    model.train()
    return float(np.mean(losses))


def validation_patches(config: Any, settings: TrainingSettings, validation_pairs: Sequence[TrainingPair],
                       device: torch.device = torch.device("cpu")) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out patches (conditions, targets) that :func:`train` validates on, drawn from
    ``settings.seed``: with the same seed, target and pairs, two trainings' validation losses compare."""
    conditions, targets = (torch.from_numpy(a).to(device) for a in random_patches(
        validation_pairs, settings.validation_patches, config.patch_size,
        np.random.default_rng(settings.seed + 1), use_mr=config.use_mr, target=settings.target,
        residual_scale=corrective_scale(config)))
    if settings.condition_dropout == 1:
        conditions[:, 0] = DROPPED_CONDITION  # a pure prior never sees the condition
    return conditions, targets


def _read_log(path: Path, up_to_step: int) -> list:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) <= up_to_step]


def _write_log(path: Path, rows: list) -> None:
    """Writes the loss log whole, so that a run stopped while it writes keeps the previous log to resume from."""
    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_atomically(path, write)


def save_checkpoint(state: dict, path: Path) -> None:
    """Writes ``state`` whole: a run stopped while it writes keeps the previous checkpoint, not half of a new one."""
    write_atomically(path, lambda handle: torch.save(state, handle), binary=True)


def same_config(config: Any, recorded: dict) -> bool:
    """Whether a checkpoint's ``recorded`` config is ``config``; a field added since it was written counts at its
    default, so that checkpoints written before stay resumable."""
    try:
        return type(config)(**recorded) == config
    except TypeError:  # a field that the config no longer has
        return False


def check_training_folder(out_dir: Path, resume: bool) -> None:
    """Refuses to overwrite a checkpoint, or to resume from none; cheap, so callers check before simulating."""
    checkpoint_path = Path(out_dir) / CHECKPOINT_FILE
    if checkpoint_path.is_file() and not resume:
        raise FileExistsError(f"{out_dir} already holds a training checkpoint: resume it, or choose a new folder")
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"nothing to resume: {checkpoint_path} does not exist")


def cpu_has_bf16() -> bool:
    """Whether oneDNN, which runs torch's CPU convolutions, has bfloat16 kernels for this CPU (True when the
    build cannot tell: the check is private to torch, and only decides a warning)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def warn_if_slow_bf16(settings: TrainingSettings, device: torch.device) -> None:
    """Warns when ``settings.bf16`` asks for bfloat16 on a CPU without it: there autocast emulates it."""
    if settings.bf16 and device.type == "cpu" and not cpu_has_bf16():
        log.warning("bfloat16 (--bf16) was asked for, but this CPU (%s) has no bfloat16 support: a training step "
                    "of the bundled network was measured 56 times slower than in float32 on such a CPU (AMD EPYC, "
                    "AVX2 only). Train without --bf16.", torch.backends.cpu.get_cpu_capability())


def train(
    config: Any,
    settings: TrainingSettings,
    train_pairs: Sequence[TrainingPair],
    validation_pairs: Sequence[TrainingPair],
    out_dir: Path,
    *,
    device: torch.device = torch.device("cpu"),
    resume: bool = False,
    info: Optional[dict] = None,
    progress: Optional[Callable[[TrainingReport], None]] = None,
    initial_weights: Optional[Mapping[str, torch.Tensor]] = None,
    time_limit_s: Optional[float] = None,
) -> Path:
    """Trains (or resumes) a model in ``out_dir``; returns the folder of the saved EMA model.

    ``config`` is a DDPMConfig (the diffusion model) or a RegressionConfig (its baseline). ``info`` (training data, command line) is stored in the model manifest with the
    settings, device and timings, for the model card.

    Args:
        initial_weights: a state dict of the same network to start from instead of a fresh one (fine-tuning a
            trained model); unused when resuming, since the checkpoint holds the weights.
        time_limit_s: stop after the first step that ends this long after the call began (a GPU lent for fixed
            minutes), with a checkpoint, a validation and the model, as at ``settings.steps``; the manifest records
            the steps reached, and ``resume=True`` with the same settings continues towards ``settings.steps``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_training_folder(out_dir, resume)
    checkpoint_path, log_path = out_dir / CHECKPOINT_FILE, out_dir / LOSS_LOG

    torch.manual_seed(settings.seed)
    kind = model_kind(config)
    if settings.condition_dropout and not isinstance(config, DDPMConfig):
        raise InputError("condition dropout trains a diffusion prior; the regression baseline has no use for it")
    if settings.condition_dropout and config.residual:
        raise InputError("a residual (Resfusion) model noises towards the low-dose image: it cannot drop it")
    if settings.condition_dropout and config.corrective:
        raise InputError("a corrective model's base prediction comes from the low-dose image: it cannot drop it")
    if settings.mr_dropout and not (isinstance(config, DDPMConfig) and config.use_mr):
        raise InputError("MR dropout trains an MR-guided diffusion prior: the network must be a DDPM that uses the MR")
    warn_if_slow_bf16(settings, device)
    model = MODEL_KINDS[kind][1](config)
    if initial_weights is not None and not resume:
        model.load_state_dict(initial_weights)  # strict: another network's weights are refused
    model = model.to(device, memory_format=memory_format_for(device))
    ema = AveragedModel(model, multi_avg_fn=ema_update(settings.ema_decay))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    scheduler = training_scheduler(config) if isinstance(config, DDPMConfig) else None
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    step, elapsed = 0, 0.0
    if resume:
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state.get("kind", "ddpm") != kind or not same_config(config, state["config"]):
            raise InputError(f"the checkpoint in {out_dir} was made with another network: "
                             f"{state.get('kind', 'ddpm')} {state['config']}")
        if (info or {}).get("base_sha256") != state["info"].get("base_sha256"):
            raise InputError(f"the checkpoint in {out_dir} was trained to correct another base model: resume with "
                             "the same --base-model")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        rng.bit_generator.state = state["numpy_rng"]
        generator.set_state(state["torch_rng"])
        step, elapsed = state["step"], state["elapsed_s"]
        # The first run's facts (its command, how long simulation took) describe the model; keep them.
        info = {**state["info"], "resumed_with": (info or {}).get("command")}
    log_rows = _read_log(log_path, step)

    validation = validation_patches(config, settings, validation_pairs, device)
    model.train()
    started, window_losses = time.perf_counter() - elapsed, []
    deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
    last_step = settings.steps
    while step < last_step:
        conditions, targets = (torch.from_numpy(a).to(device) for a in random_patches(
            train_pairs, settings.batch_size, config.patch_size, rng, use_mr=config.use_mr, target=settings.target,
            residual_scale=corrective_scale(config)))
        conditions = drop_low_dose(conditions, settings.condition_dropout, generator)
        conditions = drop_mr(conditions, settings.mr_dropout, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = training_loss(model, config, scheduler, conditions, targets, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        ema.update_parameters(model)
        step += 1
        window_losses.append(loss.item())
        if deadline is not None and time.perf_counter() >= deadline:
            last_step = step

        validate = step % settings.validate_every == 0 or step == last_step
        if step % settings.log_every == 0 or validate:
            report = TrainingReport(step, settings.steps, float(np.mean(window_losses)), None,
                                    time.perf_counter() - started)
            if validate:
                report.validation_loss = validation_loss(ema.module, config, scheduler, *validation, settings.seed,
                                                         settings.batch_size)
            window_losses = []
            log_rows.append({"step": step, "train_loss": f"{report.train_loss:.6f}",
                             "validation_loss": "" if report.validation_loss is None else f"{report.validation_loss:.6f}",
                             "elapsed_s": f"{report.elapsed_s:.1f}"})
            _write_log(log_path, log_rows)
            if progress is not None:
                progress(report)
        if step % settings.checkpoint_every == 0 or step == last_step:
            save_checkpoint({"kind": kind, "config": dataclasses.asdict(config),
                             "settings": dataclasses.asdict(settings), "model": model.state_dict(),
                             "ema": ema.state_dict(), "optimiser": optimiser.state_dict(),
                             "numpy_rng": rng.bit_generator.state, "torch_rng": generator.get_state(), "step": step,
                             "elapsed_s": time.perf_counter() - started, "info": info or {}}, checkpoint_path)

    last_validation = next((float(r["validation_loss"]) for r in reversed(log_rows) if r["validation_loss"]), None)
    manifest_info = {
        **(info or {}),
        "training": {**dataclasses.asdict(settings), "steps": step, "device": str(device),
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "threads": torch.get_num_threads(), "elapsed_s": time.perf_counter() - started,
                     "final_validation_loss": last_validation, "parameters": count_parameters(model)},
    }
    return save_model(ema.module, config, out_dir / MODEL_DIR, manifest_info).parent
