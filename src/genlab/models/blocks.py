"""Building blocks shared by the convolutional architectures."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.errors import GenlabError


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=True)  # slope 0.2 as in DCGAN (Radford et al. 2016)
    raise ValueError(f"unknown activation {name!r}")


def num_resolution_steps(size: int, base: int = 4) -> int:
    """How many stride-2 steps take a ``size`` x ``size`` image down to ``base`` x ``base``."""
    steps = int(math.log2(size // base))
    if base * 2**steps != size:
        raise ValueError(f"image size {size} is not {base} times a power of two")
    return steps


def channel_ladder(steps: int, base: int, cap: int = 512) -> list[int]:
    """Channel widths base, 2*base, 4*base, ... (capped), one per resolution step."""
    return [min(base * 2**i, cap) for i in range(steps)]


def widths_for(size: int, widths: list[int], base: int, key: str = "model.widths") -> list[int]:
    """The configured widths (one per stride-2 step from ``size`` down to 4x4), or the ladder from
    ``base`` when none are given; a list of the wrong length is a GenlabError naming ``key``."""
    steps = num_resolution_steps(size)
    widths = list(widths) or channel_ladder(steps, base)
    if len(widths) != steps:
        raise GenlabError(f"{key} has {len(widths)} entries; {size}x{size} images need {steps}")
    return widths


def _norm_kind(norm: bool | str) -> str:
    return {True: "batch", False: "none"}.get(norm, norm) if isinstance(norm, bool) else norm


def down_block(c_in: int, c_out: int, act: str, norm: bool | str = True, dropout: float = 0.0) -> nn.Sequential:
    """4x4 stride-2 convolution (halves the side) + normalisation (True = batch; or a NORMS name) +
    activation + optional dropout. Without normalisation the convolution has a bias."""
    kind = _norm_kind(norm)
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=kind == "none")]
    if kind != "none":
        layers.append(norm_layer(kind, c_out))
    layers.append(activation(act))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def up_block(c_in: int, c_out: int, act: str, norm: bool | str = True, dropout: float = 0.0) -> nn.Sequential:
    """4x4 stride-2 transposed convolution (doubles the side) + normalisation + activation + optional dropout."""
    kind = _norm_kind(norm)
    layers: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=kind == "none")]
    if kind != "none":
        layers.append(norm_layer(kind, c_out))
    layers.append(activation(act))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with normalisation and an identity skip, x + F(x), at constant width and
    size (He et al. 2016): depth that a decoder can add at each resolution without making its
    gradients harder to pass (the deeper decoders of Vahdat & Kautz 2020's NVAE and of VQGAN). The
    second normalisation's scale starts at zero, so each block begins as the identity (Goyal et al.
    2017) and a decoder with blocks starts where the plain one does."""

    def __init__(self, channels: int, act: str, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=norm == "none"), norm_layer(norm, channels), activation(act),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=norm == "none"), norm_layer(norm, channels))
        last = self.body[-1]
        if getattr(last, "weight", None) is not None:
            nn.init.zeros_(last.weight)
        else:  # no normalisation: the last convolution starts at zero instead
            nn.init.zeros_(self.body[-2].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


NORMS = ("batch", "instance", "layer", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """batch (Ioffe & Szegedy 2015), instance (Ulyanov et al. 2016, with a learned scale and shift) or
    layer normalisation over channels and pixels (Ba et al. 2016; GroupNorm with one group), or none."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}")


class SelfAttention(nn.Module):
    """Self-attention over the pixels of a feature map (Zhang et al. 2019, SAGAN, section 3):
    queries and keys of C/8 channels, values of C channels, attention softmax(Q^T K) over all
    positions, and y = gamma * o + x with gamma starting at 0, so the block begins as the identity
    and the network learns how much non-local evidence to use."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1, bias=False)
        self.key = nn.Conv2d(channels, inner, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, C/8)
        k = self.key(x).flatten(2)  # (N, C/8, HW)
        attention = torch.softmax(torch.bmm(q, k), dim=-1)  # (N, HW, HW): each pixel's weights over all pixels
        v = self.value(x).flatten(2)  # (N, C, HW)
        out = torch.bmm(v, attention.transpose(1, 2)).view(n, c, h, w)
        return x + self.gamma * out


def spectral_norm_all(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every convolution and linear layer: each weight
    is divided by its largest singular value, estimated by one power iteration per forward pass, so
    every layer is 1-Lipschitz. (torch's parametrization: the dimension of output channels is found
    for transposed convolutions too.)"""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            spectral_norm(m)
    return module
