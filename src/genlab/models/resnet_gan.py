"""Residual GAN architectures beside DCGAN's, each a ``model.arch`` usable with every objective.

``sn-resnet``: the ResNet of Miyato et al. (2018, "Spectral normalization for GANs", appendix B,
tables 4 and 6), the SNGAN rows of mimicry and StudioGAN. G: a linear layer to 4x4, residual
up-blocks (BatchNorm, ReLU, nearest 2x upsampling, 3x3 convolutions; a 1x1 shortcut), then
BatchNorm, ReLU, a 3x3 convolution and tanh. D: residual down-blocks (ReLU, 3x3 convolutions, 2x2
average pooling; the first block "optimised", without the leading ReLU), one block at 4x4 without
pooling, ReLU, a global sum and a linear layer; spectral normalisation in every layer of D.

``r3gan``: the modernised ResNet of Huang et al. (2024, "The GAN is dead; long live the GAN! A modern
GAN baseline", section 4, config E): no normalisation, residual blocks that are inverted bottlenecks
(1x1 expansion by ``model.expansion``, a grouped 3x3 convolution with ``model.group_width`` channels
per group, a 1x1 projection, leaky ReLU 0.2 between), transitions by bilinear resampling and 1x1
convolutions, and fix-up initialisation (Zhang et al. 2019): the last convolution of every block
starts at zero and the others are scaled by L^(-1/4) for L blocks, so every block starts as the
identity and training is stable without normalisation. G starts from a linear layer to 4x4, D ends
with a 4x4 depthwise convolution and a linear layer. Outputs are not squashed (no tanh), as the paper's.

Widths are given per resolution step, shallow first (``model.g_widths``/``model.d_widths``), or double
from ``model.base_width``; ``model.blocks`` residual blocks per step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.errors import GenlabError
from genlab.models import GAN_ARCHS
from genlab.models.blocks import channel_ladder, num_resolution_steps, spectral_norm_all

BOTTOM = 4  # side of the smallest feature map, in pixels


def _widths(cfg, key: str, widths: list[int], size: int) -> list[int]:
    steps = num_resolution_steps(size)
    widths = widths or channel_ladder(steps, cfg.base_width)
    if len(widths) != steps:
        raise GenlabError(f"model.{key} has {len(widths)} entries; {size}x{size} images need {steps}")
    return list(widths)


def _check_size(size: int, arch: str) -> None:
    if size < 2 * BOTTOM or size & (size - 1):
        raise GenlabError(f"model.arch={arch} needs a power-of-two image side of at least {2 * BOTTOM}, got {size}")


# -- SN-ResNet (Miyato et al. 2018) -----------------------------------------------------------------
class SNGBlock(nn.Module):
    """BN, ReLU, 2x nearest upsampling, 3x3 conv, BN, ReLU, 3x3 conv; shortcut: upsampling and a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class SNDBlock(nn.Module):
    """(ReLU,) 3x3 conv, ReLU, 3x3 conv, (2x2 average pooling); shortcut: a 1x1 conv (and pooling).
    The first block of D (``first``) has no leading ReLU and pools its shortcut before the conv."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False):
        super().__init__()
        self.down, self.first = down, first
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, 1, 1), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (c_in != c_out or down) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first and self.down:
            s = self.shortcut(F.avg_pool2d(s, 2))
        else:
            s = self.shortcut(s)
            if self.down:
                s = F.avg_pool2d(s, 2)
        return h + s


class SNResNetGenerator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, widths: list[int]):
        super().__init__()
        deep = list(reversed(widths))  # deepest first; one up-block per resolution step, 4x4 -> size
        self.latent_dim, self.start = latent_dim, deep[0]
        self.project = nn.Linear(latent_dim, BOTTOM * BOTTOM * deep[0])
        self.blocks = nn.Sequential(*(SNGBlock(c_in, c_out) for c_in, c_out in zip(deep, deep[1:] + deep[-1:])))
        self.out = nn.Sequential(nn.BatchNorm2d(deep[-1]), nn.ReLU(), nn.Conv2d(deep[-1], channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], self.start, BOTTOM, BOTTOM)
        return self.out(self.blocks(h))


class SNResNetDiscriminator(nn.Module):
    def __init__(self, channels: int, widths: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(widths):  # one down-block per resolution step, size -> 4x4
            layers.append(SNDBlock(c_in, c_out, down=True, first=i == 0))
            c_in = c_out
        layers.append(SNDBlock(c_in, c_in, down=False))  # the block at 4x4 (Miyato et al., table 4)
        self.blocks = nn.Sequential(*layers)
        self.linear = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling
        return self.linear(h).flatten()


@GAN_ARCHS.register("sn-resnet")
def build_sn_resnet(cfg, image_shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    channels, size, _ = image_shape
    _check_size(size, "sn-resnet")
    if cfg.blocks != 1:
        raise GenlabError(f"model.blocks={cfg.blocks}: sn-resnet has one residual block per resolution (Miyato et al. "
                          "2018, table 4); model.blocks is r3gan's")
    generator = SNResNetGenerator(cfg.latent_dim, channels, _widths(cfg, "g_widths", cfg.g_widths, size))
    discriminator = spectral_norm_all(SNResNetDiscriminator(channels, _widths(cfg, "d_widths", cfg.d_widths, size)))
    if cfg.g_spectral_norm:
        spectral_norm_all(generator)
    return generator, discriminator


# -- R3GAN (Huang et al. 2024) --------------------------------------------------------------------
class InvertedBottleneck(nn.Module):
    """x + conv1x1(lrelu(grouped conv3x3(lrelu(conv1x1_expand(x))))), no normalisation (config E)."""

    def __init__(self, channels: int, expansion: int, group_width: int, scale: float):
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Conv2d(channels, hidden, 1, bias=True)
        self.spatial = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden // group_width, bias=True)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        # fix-up (Zhang et al. 2019, section 3): He init scaled by L^(-1/(2m-2)) with m = 3 layers per
        # branch, and the branch's last layer at zero, so the block starts as the identity
        for conv in (self.expand, self.spatial):
            nn.init.kaiming_normal_(conv.weight, a=0.2, nonlinearity="leaky_relu")
            conv.weight.data.mul_(scale)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.project.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.expand(x), 0.2)
        h = F.leaky_relu(self.spatial(h), 0.2)
        return x + self.project(h)


def _stage_blocks(channels: int, blocks: int, cfg, scale: float) -> list[nn.Module]:
    return [InvertedBottleneck(channels, cfg.expansion, cfg.group_width, scale) for _ in range(blocks)]


class R3GANGenerator(nn.Module):
    def __init__(self, cfg, channels: int, widths: list[int]):
        super().__init__()
        deep = list(reversed(widths))  # deepest first: one stage per resolution from 4x4 up to size/2
        scale = (cfg.blocks * (len(deep) + 1)) ** -0.25
        self.latent_dim, self.start = cfg.latent_dim, deep[0]
        self.basis = nn.Linear(cfg.latent_dim, BOTTOM * BOTTOM * deep[0])
        stages: list[nn.Module] = [nn.Sequential(*_stage_blocks(deep[0], cfg.blocks, cfg, scale))]
        for c_in, c_out in zip(deep, deep[1:] + deep[-1:]):  # transition: bilinear 2x up, 1x1 conv
            stages.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                        nn.Conv2d(c_in, c_out, 1), *_stage_blocks(c_out, cfg.blocks, cfg, scale)))
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Conv2d(deep[-1], channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.basis(z).view(z.shape[0], self.start, BOTTOM, BOTTOM)
        return self.to_image(self.stages(h))


class R3GANDiscriminator(nn.Module):
    def __init__(self, cfg, channels: int, widths: list[int]):
        super().__init__()
        scale = (cfg.blocks * (len(widths) + 1)) ** -0.25
        self.from_image = nn.Conv2d(channels, widths[0], 1)
        stages: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:] + widths[-1:]):  # blocks, then 1x1 conv and bilinear 2x down
            stages.append(nn.Sequential(*_stage_blocks(c_in, cfg.blocks, cfg, scale), nn.Conv2d(c_in, c_out, 1),
                                        nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False)))
        stages.append(nn.Sequential(*_stage_blocks(widths[-1], cfg.blocks, cfg, scale)))
        self.stages = nn.Sequential(*stages)
        self.basis = nn.Conv2d(widths[-1], widths[-1], BOTTOM, groups=widths[-1])  # 4x4 depthwise -> 1x1
        self.linear = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.basis(self.stages(self.from_image(x))).flatten(1)
        return self.linear(h).flatten()


@GAN_ARCHS.register("r3gan")
def build_r3gan(cfg, image_shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    channels, size, _ = image_shape
    _check_size(size, "r3gan")
    g_widths, d_widths = _widths(cfg, "g_widths", cfg.g_widths, size), _widths(cfg, "d_widths", cfg.d_widths, size)
    for key, widths in (("g_widths", g_widths), ("d_widths", d_widths)):
        bad = [w for w in widths if (w * cfg.expansion) % cfg.group_width]
        if bad:
            raise GenlabError(f"model.{key}: a width of {bad[0]} expands to {bad[0] * cfg.expansion} channels "
                              f"(model.expansion={cfg.expansion}), which model.group_width={cfg.group_width} does "
                              "not divide into groups")
    generator, discriminator = R3GANGenerator(cfg, channels, g_widths), R3GANDiscriminator(cfg, channels, d_widths)
    if cfg.g_spectral_norm:
        spectral_norm_all(generator)
    if cfg.d_spectral_norm:
        spectral_norm_all(discriminator)
    return generator, discriminator
