"""Sliced Wasserstein distance between Laplacian-pyramid patches (Karras et al. 2018, "Progressive
growing of GANs", section 5 and appendix D), the statistic used for CelebA-HQ. No pretrained
network: it compares local image structure at each scale directly.

Per image: a Laplacian pyramid from full resolution down to 16x16 (5-tap binomial filter); from each
level, ``descriptors_per_image`` random 7x7 neighbourhoods (all channels). Each set of descriptors is
normalised per channel (mean 0, std 1 over the set). SWD per level: the mean, over
``directions`` random unit projections, of the 1-D Wasserstein-1 distance between the projected
sets (sorted difference), times 10^3 as in the paper. The mean over levels is the headline number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH = 7
MIN_LEVEL_SIZE = 16
DESCRIPTORS_PER_IMAGE = 64
DIRECTIONS = 512


def _binomial_kernel(channels: int, device, dtype) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype)
    k2 = torch.outer(k, k) / 256.0
    return k2.expand(channels, 1, 5, 5).contiguous()


def _down(x: torch.Tensor) -> torch.Tensor:
    k = _binomial_kernel(x.shape[1], x.device, x.dtype)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, stride=2, groups=x.shape[1])


def _up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = torch.zeros(n, c, h * 2, w * 2, device=x.device, dtype=x.dtype)
    up[:, :, ::2, ::2] = x * 4  # zero insertion, then the same filter: the pyramid's expand step
    k = _binomial_kernel(c, x.device, x.dtype)
    return F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), k, groups=c)


def laplacian_pyramid(x: torch.Tensor, min_size: int = MIN_LEVEL_SIZE) -> list[torch.Tensor]:
    """Finest level first; the last level is the low-pass residual at ``min_size``."""
    levels = []
    while x.shape[-1] > min_size:
        small = _down(x)
        levels.append(x - _up(small))
        x = small
    levels.append(x)
    return levels


def _descriptors(level: torch.Tensor, per_image: int, generator: torch.Generator) -> torch.Tensor:
    n, c, h, w = level.shape
    ys = torch.randint(0, h - PATCH + 1, (n, per_image), generator=generator)
    xs = torch.randint(0, w - PATCH + 1, (n, per_image), generator=generator)
    offsets = torch.arange(PATCH)
    rows = (ys[..., None] + offsets).view(n, per_image, PATCH, 1)
    cols = (xs[..., None] + offsets).view(n, per_image, 1, PATCH)
    batch = torch.arange(n).view(n, 1, 1, 1)
    patches = level.permute(0, 2, 3, 1)[batch, rows, cols]  # (n, per_image, 7, 7, c)
    return patches.reshape(n * per_image, PATCH * PATCH, c)


def _normalise(desc: torch.Tensor) -> torch.Tensor:
    mean = desc.mean(dim=(0, 1), keepdim=True)
    std = desc.std(dim=(0, 1), keepdim=True).clamp_min(1e-8)
    return ((desc - mean) / std).flatten(1)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, generator: torch.Generator) -> float:
    proj = torch.randn(a.shape[1], directions, generator=generator, dtype=a.dtype)
    proj = proj / proj.norm(dim=0, keepdim=True)
    pa, _ = (proj.T @ a.T).sort(dim=1)  # one contiguous row per direction: sorting rows is far faster
    pb, _ = (proj.T @ b.T).sort(dim=1)
    return (pa - pb).abs().mean().item()


def uint8_levels(images: torch.Tensor, batch_size: int = 512) -> list[torch.Tensor]:
    """Pyramids of uint8 images in [-1, 1], concatenated level by level (computed in batches)."""
    per_level: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float() / 127.5 - 1
        for j, level in enumerate(laplacian_pyramid(x)):
            if j == len(per_level):
                per_level.append([])
            per_level[j].append(level)
    return [torch.cat(levels) for levels in per_level]


def sliced_wasserstein_distance(fake: torch.Tensor, real: torch.Tensor, seed: int = 0,
                                descriptors_per_image: int = DESCRIPTORS_PER_IMAGE,
                                directions: int = DIRECTIONS) -> dict:
    """SWD x 10^3 per pyramid level (finest first) and their mean, for two sets of uint8 images."""
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"SWD needs images of one shape, got {tuple(fake.shape[1:])} and {tuple(real.shape[1:])}")
    n = min(len(fake), len(real))  # equal descriptor counts: the 1-D distance compares sorted sets
    fake, real = fake[:n], real[:n]
    generator = torch.Generator().manual_seed(seed)
    per_level = []
    for lf, lr in zip(uint8_levels(fake), uint8_levels(real)):
        state = generator.get_state()
        df = _normalise(_descriptors(lf, descriptors_per_image, generator))
        generator.set_state(state)  # the same patch positions in both sets: identical sets give exactly 0
        dr = _normalise(_descriptors(lr, descriptors_per_image, generator))
        per_level.append(_sliced_wasserstein(df, dr, directions, generator) * 1e3)
    sizes = [fake.shape[-1] // 2**i for i in range(len(per_level))]
    return {"swd": sum(per_level) / len(per_level), "swd_levels": dict(zip([f"{s}px" for s in sizes], per_level))}
