"""Augmentations on whole batches, on the device the batch is on, for images in [-1, 1].

Two kinds:
- :class:`BatchAugment`: seed 000's set for real training images (horizontal flip, random
  rotation, Gaussian blur, colour jitter), one random draw per image, applied by the training loop.
- :func:`diff_augment`: DiffAugment (Zhao et al. 2020, "Differentiable augmentation for
  data-efficient GAN training"), differentiable, applied by a GAN to real *and* generated images
  before the discriminator sees them, so the generator is not pushed to reproduce the augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.config import AugmentConfig
from genlab.errors import GenlabError


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype) * (high - low) + low


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def random_rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate each image by U(-degrees, degrees) about its centre; borders repeat the edge pixels."""
    angle = _uniform(x.shape[0], -degrees, degrees, x) * (math.pi / 180)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_gaussian_blur(x: torch.Tensor, max_sigma: float, p: float, min_sigma: float = 0.1) -> torch.Tensor:
    """Blur a share ``p`` of the images with a separable Gaussian, sigma ~ U(min_sigma, max_sigma) each."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    sigma = _uniform(n, min_sigma, max(max_sigma, min_sigma), x)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, k), one per channel
    flat = x.reshape(1, n * c, h, w)  # grouped convolution: each image-channel gets its own kernel
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(n * c, 1, -1, 1), groups=n * c)
    blurred = flat.view(n, c, h, w)
    chosen = torch.rand(n, device=x.device) < p
    return torch.where(chosen.view(-1, 1, 1, 1), blurred, x)


def random_color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by U(1 - s, 1 + s), as torchvision's
    ColorJitter(s, s, s) but drawn per image on the whole batch at once. Works in [0, 1]."""
    n = x.shape[0]
    y = (x + 1) / 2
    factor = lambda: _uniform(n, 1 - strength, 1 + strength, x).view(-1, 1, 1, 1)  # noqa: E731
    y = y * factor()  # brightness
    mean = _grayscale(y).mean((1, 2, 3), keepdim=True)
    y = (y - mean) * factor() + mean  # contrast
    if y.shape[1] == 3:
        gray = _grayscale(y)
        y = (y - gray) * factor() + gray  # saturation
    return y.clamp(0, 1) * 2 - 1


class BatchAugment:
    """The configured augmentations, applied in a fixed order to a batch in [-1, 1]."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @property
    def active(self) -> bool:
        c = self.cfg
        return c.hflip or c.rotate > 0 or c.blur_sigma > 0 or c.color_jitter > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.hflip:
            x = random_hflip(x)
        if c.rotate > 0:
            x = random_rotate(x, c.rotate)
        if c.blur_sigma > 0:
            x = random_gaussian_blur(x, c.blur_sigma, c.blur_p)
        if c.color_jitter > 0:
            x = random_color_jitter(x, c.color_jitter)
        return x


# ---------------------------------------------------------------------------------------------- DiffAugment
# The three policies of Zhao et al. (2020), section 3 and their reference code: "color" (brightness
# +U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)), "translation" (shift by up to 1/8 of
# the side, zero fill) and "cutout" (one square of half the side set to zero). All are
# differentiable with respect to the images.


def _diff_color(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_uniform(n, -0.5, 0.5, x)).view(-1, 1, 1, 1)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * _uniform(n, 0.0, 2.0, x).view(-1, 1, 1, 1) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(n, 0.5, 1.5, x).view(-1, 1, 1, 1) + mean


def _diff_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, -1, 1) - dy  # source row of each output row
    xs = torch.arange(w, device=x.device).view(1, 1, -1) - dx
    inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).unsqueeze(1)
    index = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    moved = x.flatten(2).gather(2, index).view_as(x)
    return moved * inside


def _diff_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device).view(1, -1, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, -1)
    hole = ((ys - cy).abs() * 2 < ch) & ((xs - cx).abs() * 2 < cw)
    return x * (~hole).unsqueeze(1)


DIFF_AUGMENT_POLICIES = {"color": _diff_color, "translation": _diff_translation, "cutout": _diff_cutout}


def parse_policy(policy: str) -> list[str]:
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in DIFF_AUGMENT_POLICIES]
    if unknown:
        raise GenlabError(f"config key 'model.diffaugment': unknown policy {unknown[0]!r}; "
                          f"choose from {', '.join(DIFF_AUGMENT_POLICIES)} (comma-separated)")
    return names


def diff_augment(x: torch.Tensor, policy: list[str]) -> torch.Tensor:
    for name in policy:
        x = DIFF_AUGMENT_POLICIES[name](x)
    return x
