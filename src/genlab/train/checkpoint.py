"""Checkpoints: the full state of a run, written atomically, readable with ``weights_only=True``.

A checkpoint (``last.pt``, ``best.pt``) holds everything needed to continue bit-for-bit on the same
device (networks, optimizers, schedulers, the EMA of the sampling networks, step, epoch, every RNG
state) and to rebuild its model with no other input (the resolved config, the image shape, the
genlab version). Beside each, a lean inference snapshot (``last-inference.pt``,
``best-inference.pt``) holds only the config and the weights to sample with (the EMA weights in
place of the raw ones when EMA is on): no optimizer state, no RNG, a fraction of the size.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

import genlab
from genlab.config import Config
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.methods import build_method
from genlab.methods.base import Method
from genlab.resolve import resolve_config
from genlab.train.rundir import INFERENCE_SUFFIX, find_checkpoint, inference_path

FORMAT = "genlab-checkpoint"
FORMAT_VERSION = 2  # 2: EMA state and inference snapshots (version 1 checkpoints still load)


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


def _header(cfg: Config, image_shape, progress: dict, kind: str) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "genlab_version": genlab.__version__,
            "method": cfg.method, "config": cfg.to_dict(), "image_shape": list(image_shape), "progress": progress}


def inference_header(cfg: Config, image_shape, progress: dict) -> dict[str, Any]:
    """What every lean inference snapshot starts with (weights added by the writer)."""
    return _header(cfg, image_shape, progress, "inference")


def save_checkpoint(path: Path, cfg: Config, image_shape, method_state: dict, progress: dict,
                    ema_state: dict | None = None, posthoc_state: dict | None = None) -> None:
    """The full state to ``path`` and the inference snapshot beside it. Each is written to a temporary
    file and renamed into place, so a crash or a full disk mid-write leaves the previous one intact.
    ``posthoc_state``: the post-hoc EMA's running averages (genlab.train.posthoc_ema), for resume."""
    payload = {**_header(cfg, image_shape, progress, "full"), "state": method_state, "ema": ema_state,
               "rng": rng_state()}
    if posthoc_state is not None:
        payload["posthoc_ema"] = posthoc_state
    atomic_write(path, lambda tmp: torch.save(payload, tmp), "checkpoint")
    networks = dict(method_state["networks"])
    if ema_state is not None:
        networks.update(ema_state["networks"])
    lean = {**_header(cfg, image_shape, progress, "inference"), "state": {"networks": networks},
            "weights": "ema" if ema_state is not None else "raw",
            "ema_decay": ema_state["decay"] if ema_state is not None else None}
    atomic_write(inference_path(path), lambda tmp: torch.save(lean, tmp), "checkpoint")


def weights_description(payload: dict[str, Any]) -> str:
    """Which weights a model built from ``payload`` samples with, for protocol strings."""
    if payload.get("weights") == "posthoc-ema":
        chosen = payload.get("posthoc_ema") or {}
        return (f"post-hoc EMA weights (sigma_rel {chosen.get('sigma_rel')}, chosen on the choice split by "
                f"{chosen.get('metric')})")
    if payload.get("weights") == "ema" or payload.get("weights_used") == "ema":
        decay = payload.get("ema_decay") or (payload.get("ema") or {}).get("decay")
        return f"EMA weights (decay {decay})"
    return "raw weights"


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
        raise GenlabError(f"{path} was written by a newer genlab ({payload.get('genlab_version')}, checkpoint format "
                          f"{payload.get('format_version')}); this genlab {genlab.__version__} reads {FORMAT_VERSION} "
                          "and older: upgrade genlab")
    return payload


def config_from_checkpoint(payload: dict[str, Any], source: Path) -> Config:
    try:
        return resolve_config(payload["config"])
    except GenlabError as e:
        raise GenlabError(f"{source}: its stored config is not valid for this genlab: {e}") from e


def build_method_from_checkpoint(path: Path, device: torch.device, raw_weights: bool = False):
    """Rebuild the model a checkpoint was trained as, on ``device``, from the checkpoint alone, with
    the EMA weights for sampling when it has them (``raw_weights``: the last iterate instead).
    ``payload["weights_used"]`` says which."""
    payload = load_checkpoint(path)
    cfg = config_from_checkpoint(payload, path)
    method = build_method(cfg, tuple(payload["image_shape"]), device)
    if raw_weights and payload.get("weights") in ("ema", "posthoc-ema"):
        raise GenlabError(f"{path} is an inference snapshot that holds the EMA weights only; the raw weights are in "
                          f"{path.with_name(path.name.replace(INFERENCE_SUFFIX, ''))}")
    method.load_state_dict(payload["state"], networks_only=True, source=str(path))
    payload["weights_used"] = payload.get("weights", "raw")
    if payload.get("ema") and not raw_weights:
        networks = method.networks()
        for name, weights in payload["ema"]["networks"].items():
            try:
                networks[name].load_state_dict(weights, strict=True)
            except (KeyError, RuntimeError) as e:
                raise GenlabError(f"{path}: its EMA of {name!r} does not fit this model: "
                                  f"{str(e).strip().splitlines()[0]}") from e
        payload["weights_used"] = "ema"
    return method, cfg, payload


class LoadedModel(NamedTuple):
    method: Method
    config: Config
    payload: dict[str, Any]  # the checkpoint's contents; payload["weights_used"] is "ema" or "raw"
    path: Path  # the checkpoint file read


def load_model(run: Path | str, device: torch.device, prefer: str = "last", weights: str = "ema",
               fallback: bool = True) -> LoadedModel:
    """The one way to load a trained model: a run directory's ``prefer`` checkpoint ("best" or
    "last"; with ``fallback``, a run without best.pt gives its last) or a checkpoint file given
    directly, with ``weights`` "ema" (the lean inference snapshot: the averaged weights when the run
    kept an EMA, else the raw ones) or "raw" (the last iterate, from the full checkpoint)."""
    if prefer not in ("best", "last") or weights not in ("ema", "raw"):
        raise ValueError(f"prefer must be best or last and weights ema or raw, got {prefer!r}, {weights!r}")
    run = Path(run).expanduser()
    inference = weights == "ema"
    try:
        path = find_checkpoint(run, prefer, inference=inference)
    except GenlabError:
        if not (fallback and prefer == "best"):
            raise
        path = find_checkpoint(run, "last", inference=inference)
    method, cfg, payload = build_method_from_checkpoint(path, device, raw_weights=weights == "raw")
    return LoadedModel(method, cfg, payload, path)
