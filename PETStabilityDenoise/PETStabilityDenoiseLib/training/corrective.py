"""Training data of a corrective diffusion model (``DDPMConfig.corrective``, CorrDiff): the pairs with their base
regression model's predictions, and the residual's scale.

Each base prediction is a whole-volume pass of the U-Net (about 13 s per pair on 2 CPU cores: 1,326 s for the 105
pairs of docs/DDPM.md), so they are computed once and cached beside the pairs, under the base model's checksum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..engine.ddpm.model import to_model_space
from ..engine.ddpm.regression import predict_volume
from ..engine.ddpm.weights import load_model
from ..settings import DDPMSamplingConfig
from .dataset import TrainingPair, load_pairs, save_pairs, with_base_predictions


def base_cache_paths(folder: Path, base_checksum: str, parts: Sequence[str]) -> List[Path]:
    """Where the pairs named ``parts`` (for example training, validation) with a base's predictions are cached."""
    return [Path(folder) / f"{part}_pairs_base_{base_checksum[:12]}.npz" for part in parts]


def pairs_with_base(parts: Sequence[Sequence[TrainingPair]], names: Sequence[str], base_dir: Path, cache_dir: Path,
                    device: torch.device = torch.device("cpu"),
                    progress: Optional[Callable[[str], None]] = None) -> Tuple[List[TrainingPair], ...]:
    """Each of ``parts`` with ``base`` set to the regression model of ``base_dir``'s prediction, read from
    ``cache_dir`` when it was made before with the same base.

    Args:
        parts: groups of pairs (the training and the validation pairs), named ``names`` in the cache.
        base_dir: a regression model folder (``petstab train-ddpm --objective regression``).

    Raises:
        FileNotFoundError, ModelError: ``base_dir`` holds no regression model, or a damaged one.
    """
    base, config, manifest = load_model(base_dir, device, kind="regression")
    paths = base_cache_paths(cache_dir, manifest["sha256"], names)
    if all(path.is_file() for path in paths):
        return tuple(load_pairs(path) for path in paths)
    overlap = DDPMSamplingConfig().overlap  # the windows that denoise_ddpm's base pass uses

    def predict(pair: TrainingPair) -> np.ndarray:
        return predict_volume(base, config, pair.low, pair.mr, pair.head, overlap=overlap, device=device)

    done = tuple(with_base_predictions(part, predict, progress) for part in parts)
    for part, path in zip(done, paths):
        save_pairs(part, path)
    return done


def residual_std(pairs: Sequence[TrainingPair], target: str) -> float:
    """The std of target - base in the network's range over the pairs' heads: the scale that makes a corrective
    model's residual about unit-sized (``DDPMConfig.residual_scale``)."""
    residuals = [(to_model_space(p.target(target), 1.0) - to_model_space(p.base, 1.0))[p.head]
                 for p in pairs if p.base is not None]
    if len(residuals) != len(pairs):
        raise ValueError("every pair needs its base prediction (pairs_with_base)")
    return float(np.concatenate(residuals).std())
