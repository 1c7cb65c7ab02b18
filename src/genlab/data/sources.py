"""Where images come from. A source reads its layout and returns all images as one uint8 tensor.

Sources register under a name (``data.source`` in the config). The data issue's sources (CelebA in
its official layout, CIFAR-10 batches, a content-keyed cache) register here the same way.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from genlab.config import DataConfig
from genlab.errors import GenlabError
from genlab.registry import Registry

log = logging.getLogger("genlab")

# A source turns the data config into (dataset name, uint8 images N x C x H x W).
Source = Callable[[DataConfig], tuple[str, torch.Tensor]]
SOURCES: Registry[Source] = Registry("data source")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSplits:
    name: str  # short data set name, used in run directory names
    train: torch.Tensor  # uint8 (N, C, H, W)
    val: torch.Tensor | None  # uint8 (M, C, H, W), or None without a validation split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    # RGB -> L with the ITU-R 601-2 luma weights that PIL's convert("L") uses.
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


@SOURCES.register("digits")
def load_digits(cfg: DataConfig) -> tuple[str, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 17 grey levels), shipped inside the
    installed package and never downloaded; upscaled to ``data.size`` with bilinear interpolation."""
    from sklearn.datasets import load_digits as sklearn_digits

    pixels = sklearn_digits().images.astype(np.float32)  # (1797, 8, 8), values 0..16, ink is high
    images = torch.from_numpy(pixels).unsqueeze(1) * (255.0 / 16.0)
    images = F.interpolate(images, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    return "digits", _match_channels(images, cfg.channels)


def _resample(name: str) -> int:
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


def load_image(path: Path, cfg: DataConfig) -> np.ndarray:
    """Decode one file, convert to the configured channel count, centre-crop and resize: (C, H, W) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if cfg.channels == 1 else "RGB")
        w, h = im.size
        side = cfg.crop or min(w, h)
        if side > min(w, h):
            raise ValueError(f"image is {w}x{h}, smaller than the crop {side}")
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        im = im.resize((cfg.size, cfg.size), _resample(cfg.resize_filter))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _dataset_name(root: Path) -> str:
    name = root.name if root.name not in ("", ".") else root.resolve().name
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "folder"


@SOURCES.register("folder")
def load_folder(cfg: DataConfig) -> tuple[str, torch.Tensor]:
    """Every image file below ``data.root``, recursively, in sorted path order.

    Files that cannot be decoded are skipped and counted in the log, never trained on.
    """
    if cfg.root is None:
        raise GenlabError("data.root is not set: give the image folder, e.g. data.root=path/to/images")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise GenlabError(f"data.root: no such folder: {root}")
    if not root.is_dir():
        raise GenlabError(f"data.root: not a folder: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if cfg.limit is not None:
        files = files[: cfg.limit]
    if not files:
        raise GenlabError(f"data.root: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    images, bad = [], []
    for path in files:
        try:
            images.append(load_image(path, cfg))
        except Exception as e:  # PIL raises many types for corrupt or truncated files
            bad.append((path, e))
    for path, e in bad[:10]:
        log.warning("skipped unreadable image %s: %s", path, e)
    if bad:
        log.warning("skipped %d of %d files under %s that could not be decoded", len(bad), len(files), root)
    if not images:
        raise GenlabError(f"data.root: none of the {len(files)} image files under {root} could be decoded")
    return _dataset_name(root), torch.from_numpy(np.stack(images))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random train/validation split of ``n`` items; the same seed gives the same split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def build_dataset(cfg: DataConfig) -> ImageSplits:
    name, images = SOURCES.get(cfg.source)(cfg)
    if cfg.limit is not None:
        images = images[: cfg.limit]
    train_idx, val_idx = split_indices(len(images), cfg.val_fraction, cfg.split_seed)
    if len(train_idx) == 0:
        raise GenlabError(f"data: no training images left from {len(images)} after the validation split")
    val = images[val_idx] if len(val_idx) else None
    log.info(
        "data %s: %d train, %d val images of shape %s", name, len(train_idx), 0 if val is None else len(val), tuple(images.shape[1:])
    )
    return ImageSplits(name=name, train=images[train_idx], val=val)
