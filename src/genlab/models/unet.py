"""Denoisers for diffusion: the U-Net of Ho et al. (2020, appendix B) for images, and a residual
MLP for flat latents (a VAE's latent vector has no spatial layout for convolutions to exploit)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.errors import GenlabError


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, section 3.5), as DDPM uses."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in DDPM; fewer when a tiny test model has fewer channels than that
    return nn.GroupNorm(math.gcd(32, channels), channels)


def check_unet_side(what: str, side: int, mults) -> None:
    """A side the U-Net's stride-2 steps (one fewer than its resolutions) divide exactly, or a
    GenlabError that starts with ``what`` (the key or input that set the side)."""
    need = 2 ** (len(mults) - 1)
    if side % need:
        raise GenlabError(f"{what}: a U-Net with {len(mults)} resolutions (model.mults) halves the side "
                          f"{len(mults) - 1} times, so it must divide by {need}")


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, + projected time embedding, GroupNorm, SiLU, dropout, 3x3 conv
    (zero-initialised so every block starts as the identity), and a residual connection."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.dropout = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over pixels with a residual connection (DDPM's 16x16 attention)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, emb=None):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.out(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """Ho et al. (2020)'s U-Net: ``width * mult`` channels per resolution, ``blocks`` residual blocks
    per resolution (one more on the way up, taking the skip connections), self-attention at the
    resolutions in ``attention``, stride-2 convolutions down and nearest upsampling + conv up."""

    def __init__(self, channels: int, size: int, width: int = 64, mults: tuple[int, ...] = (1, 2, 2),
                 blocks: int = 2, attention: tuple[int, ...] = (16,), dropout: float = 0.1):
        super().__init__()
        emb_dim = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips, c, res = [width], width, size
        for level, mult in enumerate(mults):
            for _ in range(blocks):
                layer = nn.ModuleList([ResBlock(c, width * mult, emb_dim, dropout)])
                c = width * mult
                if res in attention:
                    layer.append(AttentionBlock(c))
                self.down.append(layer)
                skips.append(c)
            if level < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                res //= 2
        self.middle = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), AttentionBlock(c), ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(blocks + 1):
                layer = nn.ModuleList([ResBlock(c + skips.pop(), width * mult, emb_dim, dropout)])
                c = width * mult
                if res in attention:
                    layer.append(AttentionBlock(c))
                self.up.append(layer)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]))
                res *= 2
        self.out = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layer: nn.ModuleList, h, emb):
        for module in layer:
            h = module(h, emb) if isinstance(module, (ResBlock, AttentionBlock)) else module(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.width))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            hs.append(h)
        for module in self.middle:
            h = module(h, emb)
        for layer in self.up:
            if isinstance(layer[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layer, h, emb)
        return self.out(h)


class MLPDenoiser(nn.Module):
    """Residual MLP for flat latents: LayerNorm, SiLU, linear, + time embedding, SiLU, linear (zero-
    initialised), per block."""

    def __init__(self, dim: int, width: int = 512, blocks: int = 4, dropout: float = 0.0):
        super().__init__()
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            block = nn.ModuleDict({"norm": nn.LayerNorm(width), "fc1": nn.Linear(width, width),
                                   "emb": nn.Linear(width, width), "fc2": nn.Linear(width, width),
                                   "drop": nn.Dropout(dropout)})
            nn.init.zeros_(block["fc2"].weight)
            nn.init.zeros_(block["fc2"].bias)
            self.blocks.append(block)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.width))
        h = self.inp(x)
        for b in self.blocks:
            r = b["fc1"](F.silu(b["norm"](h))) + b["emb"](F.silu(emb))
            h = h + b["fc2"](b["drop"](F.silu(r)))
        return self.out(h)
