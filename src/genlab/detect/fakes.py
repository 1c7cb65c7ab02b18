"""Fake images for a detector, by seed: image ``i`` of a draw starting at seed ``s`` is the generator's
image for seed ``s + i`` (genlab's per-image sampling contract), so the same seeds give the same
fakes whatever the batch size, on every machine, and a detector run can rebuild its training fakes
on resume from its config alone.

A source is a generator run directory (its best, else last, inference snapshot: EMA weights when
it kept them) or an ``.npz`` as `genlab sample --out x.npz` writes it (``images`` uint8 N x C x H x W
and the ``seeds`` they were drawn with; without ``seeds`` image i has seed i). Seed ranges used:
training fakes from 0 (``model.fake_seed``), validation fakes from ``VAL_SEED``, evaluation fakes
from ``EVAL_SEED``, so held-out fakes are never the ones trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.train.checkpoint import load_model

VAL_SEED = 500_000  # first seed of a detector's validation fakes
EVAL_SEED = 1_000_000  # first seed of `genlab detect eval`'s fresh fakes


@dataclass
class FakeSource:
    label: str  # short name in tables: the run directory's or the file's name
    path: Path
    image_shape: tuple[int, int, int]
    method: object | None = None  # a generator run's model
    images: np.ndarray | None = None  # an .npz's images ...
    seeds: np.ndarray | None = None  # ... and their seeds
    family: str = "npz"

    def draw(self, n: int, seed: int, batch_size: int = 256) -> torch.Tensor:
        """uint8 (n, C, H, W) on the CPU: the images of seeds seed .. seed + n - 1."""
        if self.method is not None:
            return self.method.sample(n, seed, batch_size=batch_size)
        wanted = np.arange(seed, seed + n)
        position = {int(s): i for i, s in enumerate(self.seeds)}
        missing = [int(s) for s in wanted if int(s) not in position]
        if missing:
            raise GenlabError(f"{self.path} holds the images of seeds {_ranges(self.seeds)}, but seeds {seed}..{seed + n - 1} "
                              f"are needed; write them with `genlab sample RUN_DIR --seed {seed} --n {n} --out FILE.npz`")
        return torch.from_numpy(self.images[[position[int(s)] for s in wanted]])


def fake_label(path: Path) -> str:
    """A fake source's name in tables: its run directory's name without the run number, or the file's stem."""
    path = Path(path)
    return path.stem if path.suffix == ".npz" else re.sub(r"^\d+-", "", path.name) or path.name


def _ranges(seeds: np.ndarray) -> str:
    s = np.sort(seeds)
    if len(s) and s[-1] - s[0] + 1 == len(s):
        return f"{s[0]}..{s[-1]}"
    return f"{len(s)} seeds from {s[0] if len(s) else '-'} to {s[-1] if len(s) else '-'}"


def _load_npz(path: Path) -> FakeSource:
    try:
        with np.load(path) as f:
            images = f["images"]
            seeds = f["seeds"] if "seeds" in f.files else np.arange(len(images))
    except Exception as e:
        raise GenlabError(f"fake {path}: not an .npz with an 'images' array ({str(e).splitlines()[0]})") from e
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise GenlabError(f"fake {path}: 'images' must be uint8 (N, C, H, W) with C 1 or 3, got {images.dtype} "
                          f"{tuple(images.shape)}")
    if seeds.shape != (len(images),):
        raise GenlabError(f"fake {path}: 'seeds' must hold one seed per image, got shape {tuple(seeds.shape)} for "
                          f"{len(images)} images")
    return FakeSource(fake_label(path), path, tuple(int(d) for d in images.shape[1:]), images=images, seeds=seeds)


def load_fake_source(path: str | Path, device: torch.device) -> FakeSource:
    """A generator run or an .npz; a detector run, a missing path or an unusable file is a GenlabError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GenlabError(f"fake {path}: no such run directory or .npz file")
    if path.suffix == ".npz":
        return _load_npz(path)
    method, cfg, payload, _ = load_model(path, device, prefer="best")
    if not method.samplers:
        raise GenlabError(f"fake {path} is a {cfg.method!r} run, which generates no images; pass generator runs "
                          "(a detector run goes where DETECTOR_RUN is asked for)")
    return FakeSource(fake_label(path), path, tuple(payload["image_shape"]), method=method, family=cfg.method)


def check_same_shape(source: FakeSource, image_shape: tuple[int, ...], real: str) -> None:
    if tuple(source.image_shape) != tuple(image_shape):
        c, h, w = source.image_shape
        rc, rh, rw = image_shape
        raise GenlabError(f"fake {source.path} makes {c}x{h}x{w} images (channels x height x width), but the real images "
                          f"of {real} are {rc}x{rh}x{rw}; set data.size / data.channels to match, or pass other fakes")
