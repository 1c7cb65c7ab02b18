"""Convolutional VAE encoder and decoder (Kingma & Welling 2014) for square images of any
power-of-two side >= 8, 1 or 3 channels. Shapes are derived from the configuration, never hard-coded."""

from __future__ import annotations

import torch
import torch.nn as nn

from genlab.models.blocks import ResidualBlock, down_block, up_block

BOTTOM = 4  # side of the smallest feature map, in pixels


class ConvEncoder(nn.Module):
    """x (B, C, S, S) -> mean and log-variance of q(z|x), each (B, latent_dim); with
    ``variational=False`` (an autoencoder) the code and None."""

    def __init__(self, channels: int, widths: list[int], latent_dim: int, act: str, dropout: float,
                 variational: bool = True):
        super().__init__()
        blocks, c_in = [], channels
        for width in widths:
            blocks.append(down_block(c_in, width, act, dropout=dropout))
            c_in = width
        self.features = nn.Sequential(*blocks)
        self.flat_dim = widths[-1] * BOTTOM * BOTTOM
        self.to_mean = nn.Linear(self.flat_dim, latent_dim)
        self.to_logvar = nn.Linear(self.flat_dim, latent_dim) if variational else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(x).flatten(1)
        return self.to_mean(h), (self.to_logvar(h) if self.to_logvar is not None else None)


class ConvDecoder(nn.Module):
    """z (B, latent_dim) -> unbounded image-shaped output (B, C, S, S); the method applies the
    output non-linearity that its reconstruction loss needs (tanh for MSE, sigmoid for BCE).
    ``res_blocks`` residual blocks follow each up-sampling step (0: seed 002's plain decoder, with the
    same parameter names as before the option existed)."""

    def __init__(self, channels: int, widths: list[int], latent_dim: int, act: str, dropout: float,
                 res_blocks: int = 0):
        super().__init__()
        widths = list(reversed(widths))  # deepest first
        self.start_shape = (widths[0], BOTTOM, BOTTOM)
        self.project = nn.Linear(latent_dim, widths[0] * BOTTOM * BOTTOM)
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks.append(up_block(c_in, c_out, act, dropout=dropout))
            blocks.extend(ResidualBlock(c_out, act) for _ in range(res_blocks))
        self.features = nn.Sequential(*blocks)
        # The last step to full resolution outputs the image directly (no norm, no activation).
        self.to_image = nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], *self.start_shape)
        return self.to_image(self.features(h))
