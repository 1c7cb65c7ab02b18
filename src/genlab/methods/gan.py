"""GANs: one alternating discriminator/generator step per batch, the network pair from
``model.arch`` (DCGAN, Radford et al. 2016, today) and the objective from ``model.loss``.

``method: dcgan`` is an alias of ``method: gan`` (the DCGAN architecture is the default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from genlab.config import OptimConfig, check_positive
from genlab.data.augment import diff_augment, parse_policy
from genlab.errors import GenlabError
from genlab.losses.gan import GAN_LOSSES
from genlab.methods import METHODS
from genlab.methods.base import Method, unwrap
from genlab.methods.step import frozen, make_optimizer, make_scheduler
from genlab.models import GAN_ARCHS


def _gan_optim() -> OptimConfig:
    return OptimConfig(lr=2e-4, betas=[0.5, 0.999])  # DCGAN: Adam, lr 0.0002, beta1 = 0.5


@dataclass
class GANConfig:
    arch: str = "dcgan"  # generator/discriminator pair (genlab.models.GAN_ARCHS)
    loss: str = "nonsaturating"  # objective (genlab.losses.gan.GAN_LOSSES): nonsaturating (Goodfellow et al. 2014) | lsgan (Mao et al. 2017)
    latent_dim: int = 100  # size of z (DCGAN uses 100)
    g_widths: list[int] = field(default_factory=list)  # generator channels per step, shallow first; [] = 64, 128, ...
    d_widths: list[int] = field(default_factory=list)  # discriminator channels per step; [] = 64, 128, ...
    base_width: int = 64  # first width when the lists are empty (DCGAN's ngf = ndf = 64)
    d_dropout: float = 0.0  # dropout after each discriminator layer (seed 001 uses 0.1)
    real_label: float = 1.0  # target for real images; 0.9 is one-sided label smoothing
    diffaugment: str = ""  # DiffAugment policies for real and fake images, e.g. "color,translation,cutout"
    g_optim: OptimConfig = field(default_factory=_gan_optim)  # the generator's optimizer
    d_optim: OptimConfig = field(default_factory=_gan_optim)  # the discriminator's (TTUR: a larger lr here)

    # Keys of genlab 0.1 presets and checkpoints, and where they live now.
    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {
        "lr_g": ("g_optim.lr",), "lr_d": ("d_optim.lr",), "betas": ("g_optim.betas", "d_optim.betas")}

    def validate(self, prefix: str = "model.") -> None:
        GAN_ARCHS.canonical(self.arch)
        GAN_LOSSES.canonical(self.loss)
        check_positive(f"{prefix}latent_dim", self.latent_dim)
        check_positive(f"{prefix}base_width", self.base_width)
        parse_policy(self.diffaugment)
        if not 0 <= self.d_dropout < 1:
            raise GenlabError(f"config key '{prefix}d_dropout' must be in [0, 1), got {self.d_dropout}")


@METHODS.register("gan", aliases=("dcgan",))
class GANMethod(Method):
    name = "gan"
    config_class = GANConfig
    ema_targets = ("generator",)

    def __init__(self, cfg: GANConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        generator, discriminator = GAN_ARCHS.get(cfg.arch)(cfg, image_shape)
        self.generator, self.discriminator = generator.to(device), discriminator.to(device)
        self.opt_g = make_optimizer(cfg.g_optim, self.generator.parameters(), device)
        self.opt_d = make_optimizer(cfg.d_optim, self.discriminator.parameters(), device)
        # Per-epoch decay only where asked for, so runs without one keep checkpoints without schedulers.
        self._schedulers = {name: make_scheduler(c, opt) for name, c, opt in
                            (("generator", cfg.g_optim, self.opt_g), ("discriminator", cfg.d_optim, self.opt_d))
                            if c.lr_gamma != 1.0}
        self.objective = GAN_LOSSES.get(cfg.loss)
        self.policy = parse_policy(cfg.diffaugment)

    def networks(self):
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self):
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def schedulers(self):
        return self._schedulers

    def latent_shape(self):
        return (self.cfg.latent_dim,)

    def discriminate(self, images: torch.Tensor, discriminator=None) -> torch.Tensor:
        """D's logits, after DiffAugment when configured: the same random augmentation family for real
        and generated images (Zhao et al. 2020, eq. 4-5), differentiable so G learns through it."""
        d = self.discriminator if discriminator is None else discriminator
        return d(diff_augment(images, self.policy) if self.policy else images)

    def train_step(self, x, step):
        z = torch.randn(x.shape[0], self.cfg.latent_dim, device=x.device)
        single = self.stepper.accumulate == 1
        # One generator pass serves both steps, as in Radford et al.'s loop. With accumulation, the
        # pass for D's step is made without a graph and G's step recomputes its fakes micro-batch by
        # micro-batch, so no graph for the whole batch is held (G's BatchNorm then sees each batch twice).
        with torch.set_grad_enabled(single):
            fake = self.generator(z)

        # 1. Discriminator: real batch and (detached) fake batch.
        def d_objective(real, fake):
            real_logits, fake_logits = self.discriminate(real), self.discriminate(fake)
            return {"loss": self.objective.d_loss(real_logits, fake_logits, self.cfg.real_label).mean(),
                    "d_real": torch.sigmoid(real_logits.detach().float()).mean(),  # D's mean belief that reals are real
                    "d_fake": torch.sigmoid(fake_logits.detach().float()).mean()}

        d = self.stepper.minimize(self.opt_d, d_objective, x, fake.detach(), clip=self.cfg.d_optim.grad_clip)

        # 2. Generator: through the just-updated discriminator, whose weights are frozen for this pass
        # and used without its DDP wrapper: its gradients are neither computed nor all-reduced.
        plain_d = unwrap(self.discriminator)

        def g_objective(inputs):
            images = inputs if single else self.generator(inputs)
            with frozen(plain_d):
                return self.objective.g_loss(self.discriminate(images, plain_d)).mean()

        g = self.stepper.minimize(self.opt_g, g_objective, fake if single else z, clip=self.cfg.g_optim.grad_clip)
        return {"loss_d": d["loss"], "loss_g": g["loss"], "d_real": d["d_real"], "d_fake": d["d_fake"]}

    def generate(self, z):
        return self.generator(z).float()
