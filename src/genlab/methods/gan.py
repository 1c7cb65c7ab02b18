"""DCGAN (Radford et al. 2016): one alternating discriminator/generator step per batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.config import check_choice, check_positive
from genlab.data.augment import diff_augment, parse_policy
from genlab.errors import GenlabError
from genlab.losses.gan import GAN_LOSSES
from genlab.methods import METHODS
from genlab.methods.base import Method, make_optimizer
from genlab.models.blocks import channel_ladder, num_resolution_steps
from genlab.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init_


@dataclass
class GANConfig:
    latent_dim: int = 100  # size of z (DCGAN uses 100)
    g_widths: list[int] = field(default_factory=list)  # generator channels per step, shallow first; [] = 64, 128, ...
    d_widths: list[int] = field(default_factory=list)  # discriminator channels per step; [] = 64, 128, ...
    base_width: int = 64  # first width when the lists are empty (DCGAN's ngf = ndf = 64)
    d_dropout: float = 0.0  # dropout after each discriminator layer (seed 001 uses 0.1)
    loss: str = "nonsaturating"  # nonsaturating (BCE, Goodfellow et al. 2014) | lsgan (Mao et al. 2017)
    real_label: float = 1.0  # target for real images; 0.9 is one-sided label smoothing
    lr_g: float = 2e-4  # generator learning rate (DCGAN: 0.0002)
    lr_d: float = 2e-4  # discriminator learning rate (TTUR uses a larger one here)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam; DCGAN: beta1 = 0.5
    diffaugment: str = ""  # DiffAugment policies for real and fake images, e.g. "color,translation,cutout"

    def validate(self) -> None:
        check_positive("model.latent_dim", self.latent_dim)
        check_positive("model.base_width", self.base_width)
        check_positive("model.lr_g", self.lr_g)
        check_positive("model.lr_d", self.lr_d)
        check_choice("model.loss", self.loss, tuple(GAN_LOSSES))
        parse_policy(self.diffaugment)
        if not 0 <= self.d_dropout < 1:
            raise GenlabError(f"config key 'model.d_dropout' must be in [0, 1), got {self.d_dropout}")
        if len(self.betas) != 2:
            raise GenlabError(f"config key 'model.betas' needs two values, got {self.betas}")


@METHODS.register("dcgan")
class GANMethod(Method):
    name = "dcgan"
    config_class = GANConfig

    def __init__(self, cfg: GANConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        channels, size, _ = image_shape
        steps = num_resolution_steps(size)
        g_widths = cfg.g_widths or channel_ladder(steps, cfg.base_width)
        d_widths = cfg.d_widths or channel_ladder(steps, cfg.base_width)
        for key, widths in (("model.g_widths", g_widths), ("model.d_widths", d_widths)):
            if len(widths) != steps:
                raise GenlabError(f"{key} has {len(widths)} entries; {size}x{size} images need {steps}")
        self.generator = DCGANGenerator(cfg.latent_dim, channels, g_widths).to(device)
        self.discriminator = DCGANDiscriminator(channels, d_widths, cfg.d_dropout).to(device)
        dcgan_init_(self.generator)
        dcgan_init_(self.discriminator)
        self.opt_g = make_optimizer("adam", self.generator.parameters(), cfg.lr_g, cfg.betas, 0.0, device)
        self.opt_d = make_optimizer("adam", self.discriminator.parameters(), cfg.lr_d, cfg.betas, 0.0, device)
        self.d_loss, self.g_loss = GAN_LOSSES[cfg.loss]
        self.policy = parse_policy(cfg.diffaugment)

    def discriminate(self, images: torch.Tensor) -> torch.Tensor:
        """D's logits, after DiffAugment when configured: the same random augmentation family for real
        and generated images (Zhao et al. 2020, eq. 4-5), differentiable so G learns through it."""
        return self.discriminator(diff_augment(images, self.policy) if self.policy else images)

    def networks(self):
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self):
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def latent_shape(self):
        return (self.cfg.latent_dim,)

    def train_step(self, x):
        z = torch.randn(x.shape[0], self.cfg.latent_dim, device=x.device)
        fake = self.generator(z)

        # 1. Discriminator: real batch and (detached) fake batch, as in Radford et al.'s training.
        real_logits = self.discriminate(x)
        fake_logits = self.discriminate(fake.detach())
        loss_d = self.d_loss(real_logits, fake_logits, self.cfg.real_label).mean()
        self.backward_step(loss_d, self.opt_d)

        # 2. Generator: through the just-updated discriminator.
        gen_logits = self.discriminate(fake)
        loss_g = self.g_loss(gen_logits).mean()
        self.backward_step(loss_g, self.opt_g)

        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),  # D's mean belief that reals are real
            "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
        }

    def generate(self, z):
        return self.generator(z).float()
