"""Networks of a GAN in a flat latent space (seed 000's hybrid): a residual MLP generator and a
critic conditioned on the diffusion timestep of the latent it judges (Diffusion-GAN, Wang et al.
2023, section 3: D(y, t))."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.models.unet import timestep_embedding


class LatentGenerator(nn.Module):
    """noise (B, noise_dim) -> latent (B, latent_dim): linear in, residual blocks (LayerNorm,
    LeakyReLU, linear), LayerNorm, linear out. With ``skip`` (noise_dim == latent_dim) the network is
    a correction added to the noise itself, its last layer zero at initialisation: G starts as the
    identity, so its latents start as N(0, I), the Gaussian a fitted-prior VAE samples from, and
    training only has to learn what that Gaussian misses. ``keep`` leading coordinates of the noise pass
    through uncorrected (with ``skip``): over a mixture prior the first one picks the component."""

    def __init__(self, noise_dim: int, latent_dim: int, width: int = 512, blocks: int = 4, skip: bool = False,
                 keep: int = 0):
        super().__init__()
        if skip and noise_dim != latent_dim:
            raise ValueError(f"a skip from noise to latent needs noise_dim == latent_dim, got {noise_dim} and {latent_dim}")
        self.skip = skip
        self.inp = nn.Linear(noise_dim, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.LeakyReLU(0.2), nn.Linear(width, width))
                                    for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.LeakyReLU(0.2), nn.Linear(width, latent_dim))
        if skip:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)
        if keep and not skip:
            raise ValueError("keeping noise coordinates uncorrected needs skip")
        mask = torch.ones(latent_dim)
        mask[:keep] = 0
        # not persistent: a property of the configuration, and checkpoints from before it still load
        self.register_buffer("correction_mask", mask, persistent=False)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        h = self.inp(noise)
        for block in self.blocks:
            h = h + block(h)
        return noise + self.out(h) * self.correction_mask if self.skip else self.out(h)


class LatentCritic(nn.Module):
    """(latent (B, D), timestep (B,)) -> one logit per latent: an MLP with LeakyReLU 0.2 whose hidden
    layers add a learned embedding of t. No normalisation layers, so a gradient penalty is per latent."""

    def __init__(self, latent_dim: int, width: int = 512, blocks: int = 3):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(latent_dim, width)
        self.time = nn.Linear(width, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, 1)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width))
        h = F.leaky_relu(self.inp(z) + emb, 0.2)
        for layer in self.hidden:
            h = F.leaky_relu(layer(h) + emb, 0.2)
        return self.out(h).flatten()
