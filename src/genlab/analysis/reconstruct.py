"""Held-out images beside their reconstructions, with each one's MSE, PSNR and SSIM in the same
[0, 1] units and through the same code as `genlab eval --metrics recon` (seed 004's table)."""

from __future__ import annotations

import torch

from genlab.data.cache import ImageSplits
from genlab.data.subsets import subset_indices
from genlab.errors import GenlabError
from genlab.methods.abilities import Reconstructs
from genlab.metrics.evaluate import reconstruct_images
from genlab.metrics.image import reconstruction_metrics

UNITS = "[0,1] units (pixels / 255), as genlab eval"


def pick_images(data: ImageSplits, split: str, n: int, seed: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """``n`` images of ``split``: the first ones, or (``seed`` given) a seeded random choice."""
    images = {"train": data.train, "val": data.val, "test": data.test}[split]
    if images is None or len(images) == 0:
        have = [s for s in ("val", "test", "train") if getattr(data, s) is not None and len(getattr(data, s))]
        raise GenlabError(f"the {data.name} data has no {split} split here; choose --split {' or '.join(have)}")
    n = min(n, len(images))
    # a seed draws through the helper every metric uses, so `--random --seed S` shows the images
    # `genlab eval --split SPLIT --seed S` scores
    index = list(range(n)) if seed is None else subset_indices(len(images), n, seed).tolist()
    return images[index], index


def reconstruct_with_metrics(method, originals: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, dict]:
    """uint8 reconstructions of uint8 ``originals`` and their per-image metrics (tensors of length n)."""
    if not isinstance(method, Reconstructs):
        raise GenlabError(f"method {method.name!r} has no encoder; reconstruct needs one (e.g. vae)")
    recon = reconstruct_images(method, originals, device)
    return recon, reconstruction_metrics(originals, recon)
