"""Checkpoints as safetensors weights plus JSON metadata, so loading never unpickles code.

A checkpoint directory contains:

* ``model.safetensors``: the trained weights;
* ``ema.safetensors``: the exponential moving average of the trainable weights
  (the copy BAGEL's release ships and its app loads);
* ``vae.safetensors``: the frozen autoencoder, with its latent shift and scale;
* ``config.json``: the model configuration, the autoencoder's kind and settings,
  and free-form training metadata.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import BagelConfig
from .model import Bagel
from .vae import LatentAutoencoder, autoencoder_spec, build_autoencoder

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
VAE_FILE = "vae.safetensors"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete or inconsistent."""


def _state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors rejects tensors that share memory, so store independent contiguous copies.
    return {name: tensor.detach().contiguous().clone() for name, tensor in module.state_dict().items()}


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    vae: LatentAutoencoder,
    ema: nn.Module | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write ``model`` (a ``Bagel``), its EMA copy and ``vae`` into ``directory``; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict(model), directory / MODEL_FILE)
    if ema is not None:
        save_file(_state_dict(ema), directory / EMA_FILE)
    save_file(_state_dict(vae), directory / VAE_FILE)
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "vae": autoencoder_spec(vae),
        "metadata": metadata or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info("saved checkpoint to %s", directory)
    return directory


@dataclass
class LoadedCheckpoint:
    model: Bagel  # the EMA weights when available and requested, else the trained weights
    vae: LatentAutoencoder
    config: BagelConfig
    weights: str  # "ema" or "model": the file whose weights ``model`` contains
    metadata: dict = field(default_factory=dict)


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {directory} not found; pass the --out directory of a train run")
    if not path.is_file():
        raise CheckpointError(f"{path} not found; {directory} is not a checkpoint directory")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return data


def _load_weights(module: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} not found; the checkpoint is incomplete")
    missing, unexpected = module.load_state_dict(load_file(path), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the configuration: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def load_checkpoint(directory: str | Path, use_ema: bool = True, device: str = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint written by ``save_checkpoint``; prefers the EMA weights when ``use_ema``."""
    directory = Path(directory)
    data = read_config(directory)
    config = BagelConfig.from_dict(data["model"])
    vae_spec = data["vae"]
    vae = build_autoencoder(vae_spec["kind"], vae_spec.get("config"))
    _load_weights(vae, directory / VAE_FILE)
    vae.eval().requires_grad_(False)

    weights = "ema" if use_ema and (directory / EMA_FILE).is_file() else "model"
    model = Bagel(config)
    _load_weights(model, directory / (EMA_FILE if weights == "ema" else MODEL_FILE))
    model.eval()
    return LoadedCheckpoint(
        model=model.to(device), vae=vae.to(device), config=config, weights=weights, metadata=data.get("metadata", {})
    )
