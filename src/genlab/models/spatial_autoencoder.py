"""An autoencoder with an image-shaped latent, the first stage of latent diffusion (Rombach et al.
2022, section 3 and appendix G: the KL-regularised "f" models): each stride-2 step halves the side,
so ``len(widths)`` steps give a downsampling factor f = 2^len(widths) and a latent of
``latent_channels`` x size/f x size/f (4x8x8 at 32 px with f = 4, as their KL-f4 model's 4 channels).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.models.unet import group_norm


class PlainResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, with a residual connection (the U-Net's block without time)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class SpatialEncoder(nn.Module):
    """Image -> (mean, log-variance) of q(z|x), each latent_channels x size/f x size/f."""

    def __init__(self, channels: int, widths: list[int], latent_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        c = widths[0]
        for width in widths:
            layers += [PlainResBlock(c, width), nn.Conv2d(width, width, 3, stride=2, padding=1)]
            c = width
        layers += [PlainResBlock(c, c), group_norm(c), nn.SiLU(), nn.Conv2d(c, 2 * latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class SpatialDecoder(nn.Module):
    """Latent (latent_channels x size/f x size/f) -> image, unbounded (clamped to [-1, 1] by the family)."""

    def __init__(self, channels: int, widths: list[int], latent_channels: int):
        super().__init__()
        c = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, c, 3, padding=1), PlainResBlock(c, c)]
        for width in reversed(widths):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, width, 3, padding=1),
                       PlainResBlock(width, width)]
            c = width
        layers += [group_norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


def latent_side(size: int, widths: list[int]) -> int:
    return size // 2 ** len(widths)


def posterior_sample(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return mean + (0.5 * logvar).exp() * noise
