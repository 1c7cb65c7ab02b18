"""Images to score that did not come from a run: an ``.npz`` (key ``images``, uint8 N x C x H x W,
as `genlab sample --out x.npz` writes) or a folder of image files, read through the data cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab.config import DataConfig
from genlab.data import load_dataset
from genlab.errors import GenlabError


def load_images(path: Path, channels: int, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images from an .npz or a folder (converted to ``channels`` and ``size``)."""
    if not path.exists():
        raise GenlabError(f"--fake: no such file or folder: {path}")
    if path.suffix == ".npz":
        try:
            images = np.load(path)["images"]
        except Exception as e:
            raise GenlabError(f"--fake {path}: not an .npz with an 'images' array ({e})") from e
        if images.dtype != np.uint8 or images.ndim != 4:
            raise GenlabError(f"--fake {path}: 'images' must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        return torch.from_numpy(images)
    data = load_dataset(DataConfig(source="folder", root=str(path), size=size, channels=channels,
                                   val_fraction=0.0, split="random"))
    return data.train
