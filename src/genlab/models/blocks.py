"""Building blocks shared by the convolutional architectures."""

from __future__ import annotations

import math

import torch.nn as nn


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


def down_block(c_in: int, c_out: int, act: str, norm: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """4x4 stride-2 convolution (halves the side) + optional BatchNorm + activation + optional dropout."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(activation(act))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def up_block(c_in: int, c_out: int, act: str, norm: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """4x4 stride-2 transposed convolution (doubles the side) + BatchNorm + activation + optional dropout."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(activation(act))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
