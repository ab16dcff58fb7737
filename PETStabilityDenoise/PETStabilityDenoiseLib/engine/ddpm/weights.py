"""Saving and loading trained networks (the DDPM, its regression baseline), with a SHA-256 checksum checked on load.

A model folder holds ``weights.pt`` (the state dict) and ``model.json`` (the
kind of model, the network and schedule settings, the weights' checksum, and
what the model card needs: training data, settings, timings). A damaged or
swapped weights file must fail loudly, not denoise with the wrong network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from ... import DATA_DIR
from ...errors import ModelError
from ...volumes.files import write_atomically
from .model import DDPMConfig, build_model, count_parameters
from .regression import RegressionConfig, build_regression_model

WEIGHTS_FILE = "weights.pt"
MANIFEST_FILE = "model.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
# Where a corrective diffusion model (DDPMConfig.corrective) keeps its base regression model, inside its folder.
BASE_DIR = "base"
# The kinds of model a folder can hold: their config class and network builder. Manifests without a kind
# predate the baseline and hold a DDPM.
MODEL_KINDS: Mapping[str, Tuple[type, Callable[[Any], torch.nn.Module]]] = {
    "ddpm": (DDPMConfig, build_model),
    "regression": (RegressionConfig, build_regression_model),
}
KIND_NAMES = {"ddpm": "a diffusion model", "regression": "a regression (U-Net baseline) model"}


def model_kind(config: Any) -> str:
    """The kind of model that ``config`` describes."""
    return next(kind for kind, (config_class, _) in MODEL_KINDS.items() if isinstance(config, config_class))


def bundled_model_dir() -> Path:
    """The diffusion denoiser shipped with the library, in ``data/ddpm`` (in Slicer, the repository and the wheel)."""
    return DATA_DIR / "ddpm"


def bundled_prior_dir() -> Path:
    """DDIP's prior p(PET | MR) shipped with the library, in ``data/ddip_prior``: the same network, trained with
    its low-dose condition always dropped, towards the activity before the scanner's PSF."""
    return DATA_DIR / "ddip_prior"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: torch.nn.Module, config: Any, directory: Path, info: dict) -> Path:
    """Writes the weights and their manifest into ``directory``; returns the weights path.

    Each file is written whole (``write_atomically``), the manifest last: a run stopped in between leaves
    weights that the older manifest's checksum refuses, or no manifest, never a model that loads half-written.

    Args:
        config: the network's :class:`DDPMConfig` or :class:`RegressionConfig`.
    """
    directory = Path(directory)
    weights = write_atomically(directory / WEIGHTS_FILE, lambda handle: torch.save(model.state_dict(), handle),
                               binary=True)
    manifest = {"kind": model_kind(config), "config": dataclasses.asdict(config), "sha256": sha256_of(weights),
                "parameters": count_parameters(model), "info": info}
    write_manifest(directory, manifest)
    return weights


def write_manifest(directory: Path, manifest: dict) -> None:
    """Writes ``manifest`` as the folder's ``model.json``, whole."""
    write_atomically(Path(directory) / MANIFEST_FILE, lambda handle: handle.write(json.dumps(manifest, indent=2)))


def load_model(directory: Path, device: torch.device = torch.device("cpu"),
               kind: Optional[str] = "ddpm") -> Tuple[torch.nn.Module, Any, dict]:
    """The model of ``directory``, its config and manifest, after checking its weights against the recorded SHA-256.

    Args:
        kind: the kind of model the caller needs (a key of ``MODEL_KINDS``); None accepts any.

    Raises:
        FileNotFoundError: the folder holds no model.
        ModelError: the manifest or weights are damaged, or the model is of another kind.
    """
    directory = Path(directory)
    manifest_path, weights = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no trained model in {directory}: expected {MANIFEST_FILE} and {WEIGHTS_FILE}. "
                                "The bundled models ship in PETStabilityDenoiseLib/data; reinstall "
                                "PETStabilityDenoise, or give a model folder written by 'petstab train-ddpm'.")
    restore = ("Reinstall PETStabilityDenoise to restore the bundled model, or train a model again with "
               "'petstab train-ddpm'.")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["sha256"]
        found = manifest.get("kind", "ddpm")
        config_class, build = MODEL_KINDS[found]
        fields: Dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()}
        config = config_class(**fields)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelError(f"the model description {manifest_path} cannot be read ({type(error).__name__}: {error}). "
                         f"{restore}") from None
    if kind is not None and found != kind:
        raise ModelError(f"{directory} holds {KIND_NAMES[found]}, not {KIND_NAMES[kind]}: give a model folder "
                         f"of the right kind")
    actual = sha256_of(weights)
    if actual != expected:
        raise ModelError(f"the model weights {weights} do not match their recorded checksum (SHA-256 {actual[:12]}..., "
                         f"expected {str(expected)[:12]}...): the file is damaged or was replaced. {restore}")
    model = build(config)
    try:
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file; all mean the same
        raise ModelError(f"the model weights {weights} cannot be loaded ({type(error).__name__}: {error}). "
                         f"{restore}") from None
    return model.to(device).eval(), config, manifest


def attach_base(model_dir: Path, base_dir: Path) -> None:
    """Copies the regression model of ``base_dir`` into the corrective model folder ``model_dir`` (as ``base/``)
    and records its checksum in ``model_dir``'s manifest, so that a swapped base fails to load."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    _, config, _ = load_model(model_dir)
    if not config.corrective:
        raise ModelError(f"{model_dir} holds a diffusion model that is not corrective: it takes no base model")
    _, _, base_manifest = load_model(base_dir, kind="regression")
    shutil.copytree(base_dir, model_dir / BASE_DIR, dirs_exist_ok=True)
    manifest["base_sha256"] = base_manifest["sha256"]
    write_manifest(model_dir, manifest)


def load_base(model_dir: Path, manifest: dict, device: torch.device = torch.device("cpu")) -> Tuple[torch.nn.Module, Any]:
    """A corrective model's base regression network and config, from ``model_dir/base``, checked against the
    checksum that ``manifest`` (the corrective model's) records.

    Raises:
        ModelError: the base is missing, damaged or not the one the model was trained on, or the model's
            training stopped before its base was attached (``attach_base``).
    """
    base_dir = Path(model_dir) / BASE_DIR
    if "base_sha256" not in manifest:
        raise ModelError(f"the corrective diffusion model in {model_dir} is incomplete: its training stopped before "
                         "its base model was attached. Train it again with 'petstab train-ddpm'")
    try:
        base, config, base_manifest = load_model(base_dir, device, kind="regression")
    except FileNotFoundError:
        raise ModelError(f"the corrective diffusion model in {model_dir} has no base model in {base_dir}: "
                         "copy the whole model folder") from None
    if base_manifest["sha256"] != manifest.get("base_sha256"):
        raise ModelError(f"the base model in {base_dir} is not the one the diffusion model in {model_dir} was "
                         "trained with (their checksums differ): copy the whole model folder again")
    return base, config
