"""GANs: the network pair from ``model.arch`` (DCGAN, Radford et al. 2016, with optional spectral
norm, other normalisations and self-attention), the objective from ``model.loss`` (non-saturating,
LSGAN, WGAN-GP, hinge), and every stabiliser the seed reports used as a ``model.*`` switch, all off
by default. The whole discriminator/generator step is :meth:`GANMethod.train_step`, read top to
bottom as in rosinality's ``train()``.

``method: dcgan`` is an alias of ``method: gan`` (the DCGAN architecture is the default)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from genlab.config import ADAM_BETAS, OptimConfig, check_choice, check_positive
from genlab.data.augment import diff_augment, parse_policy
from genlab.distributed import unwrap
from genlab.errors import GenlabError
from genlab.losses.gan import GAN_LOSSES, add_penalties
from genlab.methods import METHODS
from genlab.methods.base import Method
from genlab.methods.step import decay_schedulers, frozen, make_optimizer
from genlab.models import GAN_ARCHS


def _gan_optim() -> OptimConfig:
    return OptimConfig(lr=2e-4, betas=[0.5, 0.999])  # DCGAN: Adam, lr 0.0002, beta1 = 0.5


@dataclass
class GANConfig:
    arch: str = "dcgan"  # generator/discriminator pair (genlab.models.GAN_ARCHS): dcgan | vae-decoder | sn-resnet | r3gan
    loss: str = "nonsaturating"  # objective (genlab.losses.gan.GAN_LOSSES): nonsaturating | lsgan | wgan-gp | hinge | rpgan
    latent_dim: int = 100  # size of z (DCGAN uses 100)
    g_widths: list[int] = field(default_factory=list)  # generator channels per step, shallow first; [] = 64, 128, ...
    d_widths: list[int] = field(default_factory=list)  # discriminator channels per step; [] = 64, 128, ...
    base_width: int = 64  # first width when the lists are empty (DCGAN's ngf = ndf = 64)
    g_norm: str = "batch"  # normalisation in G: batch | instance (seed 000) | none
    g_activation: str = "relu"  # arch vae-decoder: the decoder's activation (a VAE's: leaky_relu by default)
    d_norm: str = "batch"  # normalisation in D: batch | instance | layer | none (no batch norm with a gradient penalty)
    g_spectral_norm: bool = False  # spectral normalisation of every G layer (Zhang et al. 2019 use it in both)
    d_spectral_norm: bool = False  # spectral normalisation of every D layer (Miyato et al. 2018)
    attention_res: int = 0  # side of the feature maps that get a self-attention block in G and D (SAGAN); 0 = none
    d_dropout: float = 0.0  # dropout after each discriminator layer (seed 001 uses 0.1)
    n_critic: int = 1  # discriminator steps per generator step, each on its own batch (WGAN-GP: 5)
    gp_weight: float = 10.0  # lambda of the gradient penalty of loss wgan-gp (Gulrajani et al. 2017)
    r1_gamma: float = 0.0  # gamma of the R1 penalty on real images (Mescheder et al. 2018), with any loss; 0 = off
    r1_every: int = 1  # lazy R1: every k steps, weighted by k (Karras et al. 2020, section 3.1)
    r2_gamma: float = 0.0  # gamma of the R2 penalty on generated images (Mescheder et al. 2018; R3GAN uses R1 + R2); 0 = off
    blocks: int = 1  # residual blocks per resolution (arch r3gan; sn-resnet has one)
    group_width: int = 16  # arch r3gan: channels per group of its grouped 3x3 convolutions (Huang et al. 2024)
    expansion: int = 2  # arch r3gan: the inverted bottleneck's width factor
    schedule_steps: int = 0  # R3GAN's schedules: over this many steps the learning rates and gammas fall (cosine)
    #                          to *_end of their start and Adam's beta2 moves to beta2_end; 0 = constant
    lr_end: float = 1.0  # the learning rates at the schedule's end, as a fraction of their start
    gamma_end: float = 1.0  # r1_gamma and r2_gamma at the schedule's end, as a fraction of their start
    beta2_end: float = 0.0  # Adam's beta2 at the schedule's end (0 = unchanged)
    real_label: float = 1.0  # target for real images; 0.9 is one-sided label smoothing
    label_flip_every: int = 0  # swap real and fake targets in D's loss on every N-th step (seed 002: 16); 0 = never
    label_noise: float = 0.0  # std of Gaussian noise on D's targets, per image (seed 002: 0.1); 0 = off
    instance_noise: float = 0.0  # std of Gaussian noise on D's inputs, real and fake (Sønderby et al. 2017); 0 = off
    instance_noise_steps: int = 0  # the noise falls linearly to 0 over this many steps; 0 = constant
    diffaugment: str = ""  # DiffAugment policies for real and fake images, e.g. "color,translation,cutout"
    g_optim: OptimConfig = field(default_factory=_gan_optim)  # the generator's optimizer
    d_optim: OptimConfig = field(default_factory=_gan_optim)  # the discriminator's (TTUR: a larger lr here)

    # Keys of genlab 0.1 presets and checkpoints, and where they live now.
    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {
        "lr_g": ("g_optim.lr",), "lr_d": ("d_optim.lr",), "betas": ("g_optim.betas", "d_optim.betas")}

    def validate(self, prefix: str = "model.") -> None:
        GAN_ARCHS.canonical(self.arch)
        objective = GAN_LOSSES.get(self.loss)
        self.loss = GAN_LOSSES.canonical(self.loss)
        for key in ("latent_dim", "base_width", "n_critic", "r1_every", "blocks", "group_width", "expansion"):
            if getattr(self, key) < 1:
                raise GenlabError(f"config key '{prefix}{key}' must be at least 1, got {getattr(self, key)}")
        for key in ("gp_weight", "r1_gamma", "r2_gamma", "label_noise", "instance_noise", "instance_noise_steps",
                    "label_flip_every", "attention_res", "schedule_steps"):
            check_positive(f"{prefix}{key}", getattr(self, key), allow_zero=True)
        check_choice(f"{prefix}g_norm", self.g_norm, ("batch", "instance", "none"))
        check_choice(f"{prefix}g_activation", self.g_activation, ("relu", "leaky_relu"))
        check_choice(f"{prefix}d_norm", self.d_norm, ("batch", "instance", "layer", "none"))
        if self.attention_res and (self.attention_res < 4 or self.attention_res & (self.attention_res - 1)):
            raise GenlabError(f"config key '{prefix}attention_res' must be 0 or a power of two >= 4, got {self.attention_res}")
        parse_policy(self.diffaugment)
        if not 0 <= self.d_dropout < 1:
            raise GenlabError(f"config key '{prefix}d_dropout' must be in [0, 1), got {self.d_dropout}")
        if not 0 < self.real_label <= 1:
            raise GenlabError(f"config key '{prefix}real_label' must be in (0, 1], got {self.real_label}")
        if self.r2_gamma and not objective.zero_centred:
            raise GenlabError(f"{prefix}r2_gamma: R2 is a zero-centred penalty on generated images, defined for the "
                              f"logistic objectives (nonsaturating, rpgan; Mescheder et al. 2018), not for loss {self.loss}")
        if self.arch not in ("sn-resnet", "r3gan") and (self.blocks, self.group_width, self.expansion) != (1, 16, 2):
            raise GenlabError(f"{prefix}blocks, group_width and expansion size the residual architectures; "
                              f"arch {self.arch} has none")
        if self.arch in ("sn-resnet", "r3gan") and (self.attention_res or self.d_dropout):
            raise GenlabError(f"{prefix}attention_res and d_dropout are DCGAN's switches; arch {self.arch} has neither")
        for key in ("lr_end", "gamma_end"):
            if not 0 < getattr(self, key) <= 1:
                raise GenlabError(f"config key '{prefix}{key}' must be in (0, 1], got {getattr(self, key)}")
        if not 0 <= self.beta2_end < 1:
            raise GenlabError(f"config key '{prefix}beta2_end' must be in [0, 1) (0 = unchanged), got {self.beta2_end}")
        scheduled = self.lr_end != 1 or self.gamma_end != 1 or self.beta2_end
        if scheduled and not self.schedule_steps:
            raise GenlabError(f"{prefix}lr_end, gamma_end and beta2_end need {prefix}schedule_steps > 0")
        if self.schedule_steps and (self.g_optim.lr_gamma != 1 or self.d_optim.lr_gamma != 1):
            raise GenlabError(f"{prefix}schedule_steps sets the learning rates every step; leave "
                              f"{prefix}g_optim.lr_gamma and d_optim.lr_gamma at 1")
        if self.beta2_end and "rmsprop" in (self.g_optim.name, self.d_optim.name):
            raise GenlabError(f"{prefix}beta2_end: RMSprop has no beta2")
        penalty = "the gradient penalty of wgan-gp" if objective.penalty == "gp" else "R1" if self.r1_gamma else "R2" if self.r2_gamma else ""
        if penalty and self.d_norm == "batch":
            raise GenlabError(f"{prefix}d_norm=batch with {penalty}: a gradient penalty is taken per image, and batch "
                              "norm makes each output depend on the whole batch (Gulrajani et al. 2017, section 4); "
                              f"use {prefix}d_norm=layer, instance or none")
        if not objective.targets:
            tricks = [k for k, off in (("real_label", 1.0), ("label_flip_every", 0), ("label_noise", 0.0))
                      if getattr(self, k) != off]
            if tricks:
                raise GenlabError(f"{prefix}{tricks[0]}: loss {self.loss} has no real/fake targets to smooth, flip or "
                                  "perturb (only nonsaturating and lsgan do)")


@METHODS.register("gan", aliases=("dcgan",))
class GANMethod(Method):
    name = "gan"
    config_class = GANConfig
    has_validation_step = True  # D's and G's losses on held-out reals and fresh fakes (no early stopping on them)
    ema_targets = ("generator",)
    accepts_adversary = True  # the generator's loss also takes a frozen detector's (`genlab detect loop`)

    def __init__(self, cfg: GANConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        generator, discriminator = GAN_ARCHS.get(cfg.arch)(cfg, image_shape)
        self.nets.generator, self.nets.discriminator = generator.to(device), discriminator.to(device)
        self.opt_g = make_optimizer(cfg.g_optim, self.generator.parameters(), device)
        self.opt_d = make_optimizer(cfg.d_optim, self.discriminator.parameters(), device)
        self._schedulers = decay_schedulers(generator=(cfg.g_optim, self.opt_g), discriminator=(cfg.d_optim, self.opt_d))
        self.objective = GAN_LOSSES.get(cfg.loss)
        self.policy = parse_policy(cfg.diffaugment)
        # What D's outputs are called in the logs: probabilities only where they are (Goodfellow's BCE).
        self.score_names = ("d_real", "d_fake") if self.objective.probabilities else ("score_real", "score_fake")

    def optimizers(self):
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def schedulers(self):
        return self._schedulers

    def latent_shape(self):
        return (self.cfg.latent_dim,)

    def initialise_from(self, other, mapping, source):
        """With ``model.arch: vae-decoder`` and no ``init.networks``, G starts as the other run's decoder:
        the unbalanced GAN of Ham et al. (2020), seed 002's "pre-trained with VAE"; D starts fresh."""
        if not mapping and self.cfg.arch == "vae-decoder" and "decoder" in other.networks():
            mapping = {"generator": "decoder"}
        if mapping.get("generator") == "decoder" and self.cfg.arch == "vae-decoder":
            theirs = other.cfg
            if getattr(theirs, "recon_loss", "mse") != "mse" or getattr(theirs, "activation", None) != self.cfg.g_activation:
                raise GenlabError(f"init.from_run={source}: its decoder uses activation {getattr(theirs, 'activation', '?')!r} "
                                  f"and recon_loss {getattr(theirs, 'recon_loss', '?')!r}; this generator uses "
                                  f"model.g_activation={self.cfg.g_activation!r} and tanh (recon_loss mse): set them alike")
        return super().initialise_from(other, mapping, source)

    def example_inputs(self):
        return {**super().example_inputs(), "generator": (torch.zeros(1, self.cfg.latent_dim, device=self.device),)}

    def discriminate(self, images: torch.Tensor, discriminator=None) -> torch.Tensor:
        """D's outputs, after DiffAugment when configured: the same random augmentation family for real
        and generated images (Zhao et al. 2020, eq. 4-5), differentiable so G learns through it."""
        d = self.discriminator if discriminator is None else discriminator
        return d(diff_augment(images, self.policy) if self.policy else images)

    def instance_noise_std(self, step: int) -> float:
        """sigma_t = sigma_0 (1 - t / T), clipped at 0; constant when T = 0 (Sønderby et al. 2017, section 3.2:
        noise on D's inputs makes the real and fake distributions overlap early in training)."""
        cfg = self.cfg
        if not cfg.instance_noise:
            return 0.0
        if not cfg.instance_noise_steps:
            return cfg.instance_noise
        return cfg.instance_noise * max(0.0, 1.0 - step / cfg.instance_noise_steps)

    def label_flipped(self, step: int) -> bool:
        """On every N-th step D is trained with real and fake targets swapped (seed 002's label flipping)."""
        return bool(self.cfg.label_flip_every) and (step + 1) % self.cfg.label_flip_every == 0

    def targets(self, step: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """D's targets for real and fake images: 1 (or real_label) and 0, swapped on flip steps, each
        with Gaussian noise when label_noise is set."""
        real = torch.full((n,), self.cfg.real_label, device=device)
        fake = torch.zeros(n, device=device)
        if self.cfg.label_noise:
            real = real + self.cfg.label_noise * torch.randn(n, device=device)
            fake = fake + self.cfg.label_noise * torch.randn(n, device=device)
        return (fake, real) if self.label_flipped(step) else (real, fake)

    def schedule(self, step: int) -> float:
        """R3GAN's schedules (Huang et al. 2024, section 4 and their config E), a function of the step so
        resume stays exact: over ``schedule_steps`` the learning rates fall to ``lr_end`` of their start
        along a half cosine, and Adam's beta2 moves to ``beta2_end``; returns the gammas' factor."""
        cfg = self.cfg
        if not cfg.schedule_steps:
            return 1.0
        done = 0.5 * (1 - math.cos(math.pi * min(step / cfg.schedule_steps, 1.0)))  # 0 at the start, 1 at the end
        for optimizer, opt_cfg in ((self.opt_g, cfg.g_optim), (self.opt_d, cfg.d_optim)):
            for group in optimizer.param_groups:
                group["lr"] = opt_cfg.lr * (1 + (cfg.lr_end - 1) * done)
                if cfg.beta2_end and "betas" in group:
                    beta1, beta2 = group["betas"][0], (opt_cfg.betas or ADAM_BETAS)[1]
                    group["betas"] = (beta1, beta2 + (cfg.beta2_end - beta2) * done)
        return 1 + (cfg.gamma_end - 1) * done

    def averaged_networks_updated(self, step: int) -> bool:
        return (step + 1) % self.cfg.n_critic == 0  # the generator steps on every n_critic-th batch

    def train_step(self, x, step):
        cfg, n = self.cfg, x.shape[0]
        gamma = self.schedule(step)
        g_step = self.averaged_networks_updated(step)  # D steps on every batch, G on every n_critic-th
        single = self.stepper.accumulate == 1
        # Everything random in the step is drawn here, for the whole batch, so it does not depend on
        # how the batch is cut into micro-batches (`index` picks each micro-batch's share).
        z = torch.randn(n, cfg.latent_dim, device=x.device)
        real_target, fake_target = self.targets(step, n, x.device)
        sigma = self.instance_noise_std(step)
        noise_real = torch.randn_like(x) if sigma else None
        noise_fake = torch.randn_like(x) if sigma else None
        mix = torch.rand(n, 1, 1, 1, device=x.device) if self.objective.penalty == "gp" else None
        r1_due = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
        index = torch.arange(n, device=x.device)
        # One generator pass serves both steps, as in Radford et al.'s loop, with a graph only when G
        # steps now. With accumulation, G's step recomputes its fakes micro-batch by micro-batch, so
        # no graph for the whole batch is held (G's BatchNorm then sees each batch twice).
        with torch.set_grad_enabled(single and g_step):
            fake = self.generator(z)

        # 1. Discriminator (critic): real batch and detached fake batch, plus its penalties.
        def d_objective(real, fake, i):
            if sigma:
                real, fake = real + sigma * noise_real[i], fake + sigma * noise_fake[i]
            if r1_due:
                real = real.detach().requires_grad_(True)
            if cfg.r2_gamma:
                fake = fake.detach().requires_grad_(True)
            real_out, fake_out = self.discriminate(real), self.discriminate(fake)
            adversarial = self.objective.d_loss(real_out, fake_out, real_target[i], fake_target[i]).mean()
            # R1 is lazy, every k steps, so weighted by k (Karras et al. 2020); gamma / 2 as in Mescheder et al.
            loss, out = add_penalties(adversarial, self.stepper.gradients, self.discriminate, real, fake,
                                      None if mix is None else mix[i], cfg.gp_weight, real_out,
                                      0.5 * gamma * cfg.r1_gamma * cfg.r1_every if r1_due else 0.0, fake_out,
                                      0.5 * gamma * cfg.r2_gamma)
            out.update({"loss": loss, "adversarial": adversarial})
            real_score, fake_score = real_out.detach().float(), fake_out.detach().float()
            if self.objective.probabilities:  # D's mean belief that reals (fakes) are real
                real_score, fake_score = torch.sigmoid(real_score), torch.sigmoid(fake_score)
            out[self.score_names[0]], out[self.score_names[1]] = real_score.mean(), fake_score.mean()
            return out

        d = self.stepper.minimize(self.opt_d, d_objective, x, fake.detach(), index,
                                  clip=cfg.d_optim.grad_clip, agc=cfg.d_optim.agc)
        stats = {"loss_d": d.pop("adversarial"), **{k: v for k, v in d.items() if k != "loss"}}
        if not g_step:
            return stats

        # 2. Generator: through the just-updated discriminator, whose weights are frozen for this pass
        # and used without its DDP wrapper: its gradients are neither computed nor all-reduced.
        plain_d = unwrap(self.discriminator)

        def g_objective(inputs, i):
            images = inputs if single else self.generator(inputs)
            if sigma:
                images = images + sigma * noise_fake[i]
            with frozen(plain_d):
                fake_out = self.discriminate(images, plain_d)
                if self.objective.relativistic:  # RpGAN pairs each fake with a real (Huang et al. 2024, eq. 2)
                    real = x[i] + sigma * noise_real[i] if sigma else x[i]
                    with torch.no_grad():
                        real_out = self.discriminate(real, plain_d)
                    loss = self.objective.g_loss(fake_out, real_out).mean()
                else:
                    loss = self.objective.g_loss(fake_out).mean()
            adversary = self.adversary_loss(images)
            if adversary is None:
                return loss
            # fine-tuning against a frozen deepfake detector (`genlab detect loop`): loss_g stays the GAN term
            return {"loss": loss + adversary, "gan": loss, "adversary": adversary}

        g = self.stepper.minimize(self.opt_g, g_objective, fake if single else z, index,
                                  clip=cfg.g_optim.grad_clip, agc=cfg.g_optim.agc)
        stats["loss_g"] = g.get("gan", g["loss"])
        if "adversary" in g:
            stats["loss_adversary"] = g["adversary"]
        return stats

    @torch.no_grad()
    def validation_step(self, x, generator):
        """D's and G's losses on held-out real images and fresh fakes (no label tricks, no penalties),
        so a GAN run has validation curves; D overfitting shows as its validation loss rising."""
        z = torch.randn(x.shape[0], self.cfg.latent_dim, generator=generator).to(x.device)
        real_out, fake_out = self.discriminator(x), self.discriminator(self.generator(z))
        g_loss = self.objective.g_loss(fake_out, real_out) if self.objective.relativistic else self.objective.g_loss(fake_out)
        return {"loss_d": self.objective.d_loss(real_out, fake_out, 1.0, 0.0).mean(), "loss_g": g_loss.mean()}

    def generate(self, z):
        return self.generator(z).float()
