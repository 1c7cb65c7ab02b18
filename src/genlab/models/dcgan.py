"""DCGAN generator and discriminator (Radford, Metz & Chintala 2016, "Unsupervised representation
learning with deep convolutional GANs", section 3 "architecture guidelines"):

- strided convolutions instead of pooling, transposed convolutions to upsample;
- BatchNorm in both networks except the generator output and the discriminator input layer;
- no fully connected hidden layers: z is projected by a 4x4 transposed convolution, and the
  discriminator ends in a 4x4 convolution to one output;
- ReLU in the generator with tanh at its output; LeakyReLU(0.2) in the discriminator;
- weights drawn from N(0, 0.02) (section 4), normalisation scales from N(1, 0.02).

The stabilisers of later work are options of the same pair, all off by default: another
normalisation per network (instance norm in G as seed 000's WGAN-GP; none, instance or layer norm in
a critic trained with a gradient penalty), spectral normalisation (Miyato et al. 2018) and
self-attention at one resolution (Zhang et al. 2019, SAGAN) in both networks.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from genlab.errors import GenlabError
from genlab.models import GAN_ARCHS
from genlab.models.blocks import (
    SelfAttention,
    activation,
    channel_ladder,
    down_block,
    norm_layer,
    num_resolution_steps,
    spectral_norm_all,
    up_block,
)
from genlab.models.vae import ConvDecoder

BOTTOM = 4  # side of the smallest feature map, in pixels


class DCGANGenerator(nn.Module):
    """z (B, latent_dim) -> image (B, C, S, S) in [-1, 1]."""

    def __init__(self, latent_dim: int, channels: int, widths: list[int], norm: str = "batch", attention_res: int = 0):
        super().__init__()
        widths = list(reversed(widths))  # deepest first
        self.latent_dim = latent_dim
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, widths[0], BOTTOM, 1, 0, bias=norm == "none")]  # 1x1 -> 4x4
        if norm != "none":
            layers.append(norm_layer(norm, widths[0]))
        layers.append(activation("relu"))
        side = BOTTOM
        if attention_res == side:
            layers.append(SelfAttention(widths[0]))
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers.append(up_block(c_in, c_out, "relu", norm=norm))
            side *= 2
            if attention_res == side:
                layers.append(SelfAttention(c_out))
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image (B, C, S, S) -> one output per image (B,). Optional dropout after every hidden layer
    (seed 001 uses 0.1)."""

    def __init__(self, channels: int, widths: list[int], dropout: float = 0.0, norm: str = "batch",
                 attention_res: int = 0, size: int = 0):
        super().__init__()
        layers: list[nn.Module] = [down_block(channels, widths[0], "leaky_relu", norm=False, dropout=dropout)]
        side = size // 2
        if attention_res == side:
            layers.append(SelfAttention(widths[0]))
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers.append(down_block(c_in, c_out, "leaky_relu", norm=norm, dropout=dropout))
            side //= 2
            if attention_res == side:
                layers.append(SelfAttention(c_out))
        layers.append(nn.Conv2d(widths[-1], 1, BOTTOM, 1, 0, bias=False))  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the last hidden layer's activations (B, C, 4, 4): the feature space in which
        a VAE-GAN measures reconstruction (Larsen et al. 2016, section 2.2)."""
        features = self.net[:-1](x)
        return self.net[-1](features).flatten(), features


def dcgan_init_(module: nn.Module) -> None:
    """Initialise in place as DCGAN section 4: conv weights ~ N(0, 0.02), normalisation scales ~ N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def feature_sides(size: int) -> list[int]:
    """The sides of the hidden feature maps of a DCGAN pair for ``size`` x ``size`` images: 4 ... size/2."""
    return [BOTTOM * 2**i for i in range(num_resolution_steps(size))]


@GAN_ARCHS.register("dcgan")
def build_dcgan(cfg, image_shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    """DCGAN's pair for ``image_shape``, widths from ``cfg.g_widths``/``cfg.d_widths`` (shallow first)
    or doubling from ``cfg.base_width``, initialised as the paper's section 4, with the stabilisers
    ``cfg`` switches on."""
    channels, size, _ = image_shape
    steps = num_resolution_steps(size)
    g_widths = cfg.g_widths or channel_ladder(steps, cfg.base_width)
    d_widths = cfg.d_widths or channel_ladder(steps, cfg.base_width)
    for key, widths in (("model.g_widths", g_widths), ("model.d_widths", d_widths)):
        if len(widths) != steps:
            raise GenlabError(f"{key} has {len(widths)} entries; {size}x{size} images need {steps}")
    if cfg.attention_res and cfg.attention_res not in feature_sides(size):
        raise GenlabError(f"model.attention_res={cfg.attention_res}: a {size}x{size} DCGAN has feature maps of "
                          f"{', '.join(map(str, feature_sides(size)))} pixels")
    generator = DCGANGenerator(cfg.latent_dim, channels, g_widths, cfg.g_norm, cfg.attention_res)
    discriminator = DCGANDiscriminator(channels, d_widths, cfg.d_dropout, cfg.d_norm, cfg.attention_res, size)
    dcgan_init_(generator)
    dcgan_init_(discriminator)
    if cfg.g_spectral_norm:
        spectral_norm_all(generator)
    if cfg.d_spectral_norm:
        spectral_norm_all(discriminator)
    return generator, discriminator


class VAEDecoderGenerator(ConvDecoder):
    """A generator that is a VAE's convolutional decoder (the same class, so the same parameter names)
    followed by tanh: a trained VAE run's decoder loads into it as it is (`init.from_run`), the
    generator of the unbalanced GAN (Ham et al. 2020). Matches a VAE trained with recon_loss mse,
    whose images are tanh of the decoder's output."""

    def __init__(self, latent_dim: int, channels: int, widths: list[int], activation: str):
        super().__init__(channels, widths, latent_dim, activation, 0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(z))


@GAN_ARCHS.register("vae-decoder")
def build_vae_decoder_gan(cfg, image_shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    """G: a VAE decoder (widths ``cfg.g_widths``, shallow first, as the VAE's ``widths``; activation
    ``cfg.g_activation``), to be started from a VAE run; D: DCGAN's discriminator."""
    channels, size, _ = image_shape
    steps = num_resolution_steps(size)
    g_widths = cfg.g_widths or channel_ladder(steps, 32)  # the VAE's default widths
    d_widths = cfg.d_widths or channel_ladder(steps, cfg.base_width)
    for key, widths in (("model.g_widths", g_widths), ("model.d_widths", d_widths)):
        if len(widths) != steps:
            raise GenlabError(f"{key} has {len(widths)} entries; {size}x{size} images need {steps}")
    if cfg.attention_res or cfg.g_spectral_norm:
        raise GenlabError("model.arch=vae-decoder: the generator is a VAE's decoder as it is (no attention_res, "
                          "no g_spectral_norm)")
    generator = VAEDecoderGenerator(cfg.latent_dim, channels, g_widths, cfg.g_activation)
    discriminator = DCGANDiscriminator(channels, d_widths, cfg.d_dropout, cfg.d_norm, 0, size)
    dcgan_init_(discriminator)
    if cfg.d_spectral_norm:
        spectral_norm_all(discriminator)
    return generator, discriminator
