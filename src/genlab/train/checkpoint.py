"""Checkpoints: the full state of a run, written atomically, readable with ``weights_only=True``.

A checkpoint holds everything needed to continue bit-for-bit on the same device (networks,
optimizers, schedulers, step, epoch, every RNG state) and to rebuild its model with no other input
(the resolved config, the image shape, the genlab version).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

import genlab
from genlab.config import Config, resolve_config
from genlab.errors import GenlabError
from genlab.io import atomic_write

FORMAT = "genlab-checkpoint"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, cfg: Config, image_shape, method_state: dict, progress: dict) -> None:
    """Write to a temporary file beside ``path`` and rename it into place, so a crash or a full disk
    mid-write leaves the previous checkpoint intact."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genlab_version": genlab.__version__,
        "method": cfg.method,
        "config": cfg.to_dict(),
        "image_shape": list(image_shape),
        "state": method_state,
        "progress": progress,
        "rng": rng_state(),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp), "checkpoint")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint; anything that is not a genlab checkpoint is a GenlabError."""
    if not path.is_file():
        raise GenlabError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenlabError(f"{path} is not a readable genlab checkpoint ({first[:200]})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GenlabError(f"{path} is not a genlab checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise GenlabError(f"{path} was written by a newer genlab ({payload.get('genlab_version')}); upgrade genlab")
    return payload


def config_from_checkpoint(payload: dict[str, Any], source: Path) -> Config:
    try:
        return resolve_config(payload["config"])
    except GenlabError as e:
        raise GenlabError(f"{source}: its stored config is not valid for this genlab: {e}") from e


def build_method_from_checkpoint(path: Path, device: torch.device, networks_only: bool = True):
    """Rebuild the model a checkpoint was trained as, on ``device``, from the checkpoint alone."""
    from genlab.methods import METHODS

    payload = load_checkpoint(path)
    cfg = config_from_checkpoint(payload, path)
    method = METHODS.get(cfg.method)(cfg.model, tuple(payload["image_shape"]), device)
    method.load_state_dict(payload["state"], networks_only=networks_only, source=str(path))
    return method, cfg, payload
