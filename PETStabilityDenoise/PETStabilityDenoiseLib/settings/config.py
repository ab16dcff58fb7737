"""The settings of one DIP fit and its sampling schedule, and of one DDPM sampling run.

Kept free of torch so that the Slicer panel and the logic can list presets
and check settings without loading the deep-learning stack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ..errors import InputError
from .choices import (
    DEFAULT_ALPHAS,
    DEFAULT_DEVICE,
    DEFAULT_OSEM_SUBSETS,
    DEVICES,
    INPUT_MODES,
    METHODS,
    NETWORKS,
    OPTIMIZERS,
)


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raises ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_alpha(alpha: object) -> None:
    """The blend strength: a finite number >= 0 (0 gives the network output)."""
    if not (isinstance(alpha, numbers.Real) and math.isfinite(float(alpha)) and float(alpha) >= 0):
        raise InputError(f"alpha must be a finite number >= 0; got {alpha!r}")


def check_method(method: object) -> None:
    """A denoising method: a key of :data:`METHODS`."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def method_alpha(alpha: Optional[float], method: str) -> float:
    """``alpha``, checked; None gives ``method``'s default (:data:`DEFAULT_ALPHAS`)."""
    check_method(method)
    if alpha is None:
        return DEFAULT_ALPHAS[method]
    check_alpha(alpha)
    return float(alpha)


def check_runtime(device: object, threads: object, seed: object) -> None:
    """The settings both engines share: a known device, a thread count >= 1 or None, a seed >= 0."""
    check_choice("device", device, DEVICES)
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise InputError(f"threads must be a whole number >= 1, or None for torch's choice; got {threads!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise InputError(f"seed must be a whole number >= 0; got {seed!r}")


@dataclass(frozen=True)
class DIPConfig:
    """Everything that defines one DIP fit. Defaults are documented in docs/DEFAULTS.md.

    The defaults were chosen by measurement in the realistic simulation regime:
    the Gong-style network at 8-64 channels, 160 epochs of L-BFGS (lr 1, one
    inner iteration), S sampled every 5 epochs over the second half.
    """

    epochs: int = 160
    interval: int = 5
    start: int = 80
    optimizer: str = "lbfgs"  # choices.OPTIMIZERS
    learning_rate: float = 1.0
    inner_iterations: int = 1
    history_size: int = 10
    line_search: Optional[str] = None
    channels: Tuple[int, ...] = (8, 16, 32, 64)
    num_res_units: int = 2  # MONAI's network only
    network: str = "gong"  # choices.NETWORKS
    input_mode: str = "mr"  # choices.INPUT_MODES
    seed: int = 0
    device: str = DEFAULT_DEVICE
    threads: Optional[int] = None
    # Loss-jump guard (fit_dip): a step whose loss exceeds loss_jump_factor x the
    # lowest accepted loss so far is undone and redone at a 10x lower learning
    # rate (dip.LOSS_JUMP_LR_DIVISOR), at most max_loss_jump_retries times per fit.
    loss_jump_factor: float = 10.0
    max_loss_jump_retries: int = 3

    def __post_init__(self) -> None:
        sample_epochs(self.epochs, self.interval, self.start)  # validates the schedule
        if self.start > self.epochs:
            raise InputError(f"start ({self.start}) is after the last epoch ({self.epochs}): S would have no samples")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("input_mode", self.input_mode, INPUT_MODES)
        check_choice("network", self.network, NETWORKS)
        check_runtime(self.device, self.threads, self.seed)
        if not (len(self.channels) >= 2 and all(isinstance(c, int) and c >= 1 for c in self.channels)):
            raise InputError(f"channels must be at least 2 whole numbers >= 1, one per U-Net level; "
                             f"got {self.channels!r}")
        if self.num_res_units < 0:
            raise InputError(f"num_res_units must be >= 0; got {self.num_res_units}")
        if self.learning_rate <= 0 or self.inner_iterations < 1 or self.history_size < 1:
            raise InputError("learning_rate must be > 0, inner_iterations and history_size >= 1")
        if not self.loss_jump_factor > 1 or self.max_loss_jump_retries < 0:
            raise InputError(f"loss_jump_factor must be > 1 and max_loss_jump_retries >= 0; "
                             f"got {self.loss_jump_factor}, {self.max_loss_jump_retries}")

    def replace(self, **changes) -> "DIPConfig":
        return dataclasses.replace(self, **changes)

    @property
    def size_multiple(self) -> int:
        return required_multiple(self.channels, self.network)


def check_sampling(samples: int, steps: int, start_fraction: float, overlap: float) -> None:
    """The settings that sampling a diffusion model shares, whether to denoise or to reconstruct."""
    if samples < 2:
        raise InputError(f"samples must be >= 2 for a std map; got {samples}")
    if steps < 1:
        raise InputError(f"steps must be >= 1; got {steps}")
    if not 0 < start_fraction <= 1:
        raise InputError(f"start_fraction must be in (0, 1]; got {start_fraction}")
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be in [0, 1); got {overlap}")


@dataclass(frozen=True)
class DDPMSamplingConfig:
    """How the bundled diffusion model is sampled. Defaults are measured in docs/DDPM.md.

    ``samples`` draws per window give the mean (network output) and the std
    (stability map). The chain runs ``steps`` DDIM steps from t' =
    ``start_fraction`` x T, where the low-dose image, noised to t', is the start.
    ``model_dir`` None means the bundled model.
    """

    samples: int = 8
    steps: int = 2
    start_fraction: float = 0.5
    overlap: float = 0.25
    seed: int = 0
    device: str = DEFAULT_DEVICE
    threads: Optional[int] = None
    model_dir: Optional[str] = None

    def __post_init__(self) -> None:
        check_sampling(self.samples, self.steps, self.start_fraction, self.overlap)
        check_runtime(self.device, self.threads, self.seed)

    def replace(self, **changes) -> "DDPMSamplingConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DDIPConfig:
    """How ``petstab reconstruct --method ddip`` reconstructs a sinogram (engine/ddip.py; docs/RECONSTRUCTION.md).

    Each of ``samples`` independent runs starts from the OSEM image noised to t' = ``start_fraction`` x T and
    takes ``steps`` DDIM steps. At each step the network's estimate is pulled towards the data by
    ``em_updates`` EM updates (each over ``em_subsets`` ordered subsets of the angles; 1: MLEM) tied to it with
    weight ``beta`` (half-quadratic splitting), and the network's
    LoRA adapters of rank ``lora_rank`` are fine-tuned towards that image for ``finetune_steps`` steps on
    ``finetune_batch`` random patches. ``beta`` is relative to the data's curvature at the head-mean activity:
    1 weighs the network's estimate as much as the data there; 0 (the default, the best measured) gives plain EM
    updates from the network's estimate.
    ``finetune_steps`` 0 replaces the estimate by the data step instead of fine-tuning (the ablation).
    ``refresh_estimate``: after fine-tuning, run the adapted network again and take the DDIM step from its
    estimate (two network passes per step); off (the default) takes the step from the data step's image, and the
    adapted network serves from the next step on (one pass per step, and one more at the end). Off: on, the run
    takes about twice as long, and on a held-out brain it flattened the PET-only detail (peak-to-valley ratio
    1.01 against 2.50) and lost 0.5 dB of PSNR.
    ``psf_fwhm_mm``: the scanner's resolution, an isotropic 3D Gaussian of this FWHM, modelled in the data step
    (``tomography.ResolutionModel``); 0 (the default): none, as OSEM. On a held-out brain, the simulator's 3 mm
    gained 0.1 dB of PSNR against the truth and lost 0.8 dB against the blurred truth, with more noise.
    ``overlap``: of the network's sliding windows (``--overlap``); more fades the window edges in the std, and
    takes longer. With the bundled prior, 0.5 (the default) gained 0.12 to 0.15 dB of PSNR over 0.25 on held-out
    brains, at 1.6 to 1.8 times the run time.
    ``data_correction_fwhm_mm``: after the last step, the data step runs once more on each run's image, and the
    part of its change coarser than a Gaussian of this FWHM (within the head) is added to the image: the
    regional means follow the data, the detail stays the network's. 0: off, the run's image is the network's.
    ``mr_guidance``: the weight w of the MR in the network's estimate, x0(no MR) + w (x0(MR) - x0(no MR)); 1
    (the default): the prior as trained, one network pass; other values take two passes, and a prior trained with
    MR dropout (``petstab train-ddpm --mr-dropout``). Below 1 the prior leans less on the anatomy (an
    experiment for tracers other than the prior's; docs/RECONSTRUCTION.md).
    ``model_dir``: a prior, a diffusion model trained with condition dropout (``petstab train-ddpm
    --condition-dropout``); None: the bundled prior. The measured effect of each setting is in
    docs/RECONSTRUCTION.md.
    """

    samples: int = 2
    steps: int = 10
    start_fraction: float = 0.4
    lora_rank: int = 4
    finetune_steps: int = 2
    finetune_batch: int = 2
    learning_rate: float = 1e-3
    beta: float = 0.0
    em_updates: int = 2
    em_subsets: int = DEFAULT_OSEM_SUBSETS
    refresh_estimate: bool = False
    psf_fwhm_mm: float = 0.0
    overlap: float = 0.5
    data_correction_fwhm_mm: float = 6.0
    mr_guidance: float = 1.0
    seed: int = 0
    device: str = DEFAULT_DEVICE
    threads: Optional[int] = None
    model_dir: Optional[str] = None

    def __post_init__(self) -> None:
        check_sampling(self.samples, self.steps, self.start_fraction, self.overlap)
        for name in ("lora_rank", "finetune_batch", "em_updates", "em_subsets"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.finetune_steps < 0 or self.beta < 0 or not self.learning_rate > 0:
            raise InputError(f"finetune_steps and beta must be >= 0 and learning_rate > 0; got "
                             f"{self.finetune_steps}, {self.beta}, {self.learning_rate}")
        if not (math.isfinite(self.psf_fwhm_mm) and self.psf_fwhm_mm >= 0):
            raise InputError(f"psf_fwhm_mm must be a FWHM in mm >= 0 (0: no resolution model); got {self.psf_fwhm_mm}")
        if not (math.isfinite(self.data_correction_fwhm_mm) and self.data_correction_fwhm_mm >= 0):
            raise InputError("data_correction_fwhm_mm must be a FWHM in mm >= 0 (0: no final data correction); got "
                             f"{self.data_correction_fwhm_mm}")
        if not (math.isfinite(self.mr_guidance) and self.mr_guidance >= 0):
            raise InputError(f"mr_guidance must be a weight >= 0 (1: the prior as trained); got {self.mr_guidance}")
        check_runtime(self.device, self.threads, self.seed)

    def replace(self, **changes) -> "DDIPConfig":
        return dataclasses.replace(self, **changes)

    def settings_hash(self) -> str:
        """A short hash of the settings that change the image (not where it runs, on how many threads, or the
        prior, which has its own checksum): studies key their cached runs by it."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "threads", "model_dir")}
        if self.mr_guidance == 1:  # as before the setting existed, so that runs cached then keep their keys
            del fields["mr_guidance"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class EpochReport:
    """What a progress callback receives once per epoch (in this process, or from the worker).

    For the diffusion model an "epoch" is one sampled window, and ``loss`` is None.
    """

    epoch: int
    epochs: int
    loss: Optional[float]
    elapsed_s: float
    eta_s: float
    samples: int

    def as_dict(self) -> dict:
        """The fields of one progress line, as ``--progress jsonl`` and the Slicer worker write them."""
        return {"epoch": self.epoch, "epochs": self.epochs, "loss": self.loss,
                "elapsed": round(self.elapsed_s, 3), "eta": round(self.eta_s, 3), "samples": self.samples}

    @classmethod
    def from_dict(cls, fields: dict) -> "EpochReport":
        """The report of one progress line (:meth:`as_dict`'s inverse, up to rounding)."""
        loss = fields.get("loss")  # null for the diffusion model, which has no loss
        return cls(epoch=int(fields["epoch"]), epochs=int(fields["epochs"]), loss=None if loss is None else float(loss),
                   elapsed_s=float(fields["elapsed"]), eta_s=float(fields["eta"]), samples=int(fields["samples"]))


def sample_epochs(epochs: int, interval: int, start: int) -> list[int]:
    """Epochs n in [start, epochs] with n % interval == 0: where S is sampled.

    Epoch n means the weights after n optimiser epochs (n = 0: the initial
    weights). The paper's 200 / 5 / 100 gives 21 samples: 100, 105, ..., 200.
    """
    if epochs < 1 or interval < 1 or start < 0:
        raise InputError(f"need epochs >= 1, interval >= 1, start >= 0; got {epochs}, {interval}, {start}")
    first = -(-start // interval) * interval
    return list(range(first, epochs + 1, interval))


def required_multiple(channels: Sequence[int], network: str = "monai") -> int:
    """Each spatial size must be divisible by this for the U-Net's skip connections to align."""
    halvings = len(channels) - 1 + (network == "gong_halfres")
    return int(math.pow(2, halvings))
