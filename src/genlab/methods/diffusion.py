"""Denoising diffusion (Ho et al. 2020) in pixel space (``ddpm``) and in the latent space of a
trained, frozen VAE or autoencoder run (``latent-ddpm``, after Rombach et al. 2022).

Training draws t uniformly and regresses the noise (or v) with L_simple (Ho et al. 2020, eq. 14);
sampling is a registered sampler (genlab.samplers.diffusion: ancestral DDPM, DDIM), which calls
``denoise``, ``diffusion_shape``, ``clip_denoised`` and ``finish`` below. The pixel model's
likelihood is its variational bound (eq. 5) with the discretised decoder (eq. 13).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from genlab.config import OptimConfig, check_choice, check_positive
from genlab.errors import GenlabError
from genlab.losses.diffusion import PREDICTIONS, SCHEDULES, VARIANCES, GaussianDiffusion
from genlab.methods import METHODS
from genlab.methods.abilities import Likelihood
from genlab.methods.base import Method
from genlab.methods.first_stage import (
    FIRST_STAGE_NETWORKS,
    ScaledFirstStageLatents,
    attach_first_stage,
    check_first_stage,
    record_first_stage,
)
from genlab.methods.step import make_optimizer, make_scheduler
from genlab.models.unet import MLPDenoiser, UNet, check_unet_side
from genlab.samplers.diffusion import DDIMOptions, DiffusionChain, check_steps, ddim_loop

NEEDS_BASE_RUN = ("method latent-ddpm diffuses in the latent space of a trained run: set init.from_run=RUN_DIR "
                  "(a VAE or autoencoder run on the same images)")


def _diffusion_optim() -> OptimConfig:
    # Ho et al. 2020: Adam, lr 2e-4 (CIFAR-10), gradients clipped to norm 1
    return OptimConfig(lr=2e-4, grad_clip=1.0)


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T, the length of the forward chain
    schedule: str = "linear"  # linear (Ho et al. 2020) | cosine (Nichol & Dhariwal 2021)
    prediction: str = "eps"  # what the network predicts: eps (the noise) | v (Salimans & Ho 2022)
    variance: str = "small"  # p(x_{t-1}|x_t)'s fixed variance: small (posterior beta_tilde) | large (beta)
    width: int = 64  # U-Net channels at the first resolution
    mults: list[int] = field(default_factory=lambda: [1, 2, 2])  # channel multiplier per resolution
    blocks: int = 2  # residual blocks per resolution
    attention: list[int] = field(default_factory=lambda: [16])  # resolutions (sides) with self-attention
    dropout: float = 0.1
    bound_timesteps: int = 0  # terms of the bound bits/dim evaluates: 0 = all T (the bound itself); k = an
    #                           unbiased estimate from k stratified timesteps (faster, noisier)
    optim: OptimConfig = field(default_factory=_diffusion_optim)

    def validate(self, prefix: str = "model.") -> None:
        for key in ("timesteps", "width", "blocks"):
            check_positive(f"{prefix}{key}", getattr(self, key))
        check_positive(f"{prefix}bound_timesteps", self.bound_timesteps, allow_zero=True)
        check_choice(f"{prefix}schedule", self.schedule, SCHEDULES)
        check_choice(f"{prefix}prediction", self.prediction, PREDICTIONS)
        check_choice(f"{prefix}variance", self.variance, VARIANCES)
        if not self.mults or any(m < 1 for m in self.mults):
            raise GenlabError(f"config key '{prefix}mults' needs positive multipliers, got {self.mults}")
        if not 0 <= self.dropout < 1:
            raise GenlabError(f"config key '{prefix}dropout' must be in [0, 1), got {self.dropout}")
        if self.bound_timesteps > self.timesteps:
            raise GenlabError(f"config key '{prefix}bound_timesteps' ({self.bound_timesteps}) exceeds "
                              f"{prefix}timesteps ({self.timesteps})")


def _check_sampler_steps(cfg) -> None:
    if cfg.sampler is not None and cfg.sampler.name in ("ddpm", "ddim"):
        check_steps(cfg.sampler, cfg.model.timesteps)


class _DiffusionBase(Method, DiffusionChain):
    """What pixel and latent diffusion share: the process, the step, sampling's chain, the EMA."""

    has_validation_loss = True
    samplers = ("ddim", "ddpm")
    ema_targets = ("denoiser",)
    clip_denoised = True

    def _setup(self, cfg, denoiser: torch.nn.Module, device) -> None:
        self.process = GaussianDiffusion(cfg.schedule, cfg.timesteps, cfg.prediction, cfg.variance, device)
        self.nets.denoiser = denoiser.to(device)
        self.opt = make_optimizer(cfg.optim, self.denoiser.parameters(), device)
        self.sched = make_scheduler(cfg.optim, self.opt)

    def optimizers(self):
        return {"denoiser": self.opt}

    def schedulers(self):
        return {"denoiser": self.sched}

    def example_inputs(self):
        inputs = super().example_inputs()
        t = torch.zeros(1, dtype=torch.long, device=self.device)
        inputs["denoiser"] = (torch.zeros(1, *self.diffusion_shape(), device=self.device), t)
        if "first_decoder" in inputs:
            inputs["first_decoder"] = (torch.zeros(1, *self.latent_shape(), device=self.device),)
        return inputs

    def denoise(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoiser(xt, t)

    def to_diffused(self, x: torch.Tensor) -> torch.Tensor:
        """Training images in [-1, 1] -> what is diffused (the images, or their scaled latents)."""
        return x

    def _simple_loss(self, x0, noise, t):
        return {"loss": self.process.simple_loss(self.denoise(self.process.q_sample(x0, t, noise), t), x0, noise, t).mean()}

    def train_step(self, x, step):
        x0 = self.to_diffused(x)
        # t ~ U{0..T-1} and eps ~ N(0, I) for the whole batch before any micro-batch split (Algorithm 1, lines 3-4)
        t = torch.randint(0, self.process.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        return self.stepper.minimize(self.opt, self._simple_loss, x0, noise, t,
                                     clip=self.cfg.optim.grad_clip, agc=self.cfg.optim.agc)

    @torch.no_grad()
    def validation_step(self, x, generator):
        x0 = self.to_diffused(x)
        t = torch.randint(0, self.process.timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return self._simple_loss(x0, noise, t)

    def generate(self, z):
        """The deterministic map from x_T to a sample: DDIM with eta = 0 (the probability-flow ODE,
        Song et al. 2021, section 4.3), with the configured DDIM step count (50 otherwise)."""
        steps = self.sampling.steps if isinstance(self.sampling, DDIMOptions) else DDIMOptions().steps
        return self.finish(ddim_loop(self, z.float(), steps, 0.0))


@METHODS.register("ddpm", aliases=("diffusion",))
class DDPMMethod(_DiffusionBase, Likelihood):
    name = "ddpm"
    config_class = DiffusionConfig
    evaluation_keys = ("bound_timesteps",)
    latent_kind = "image"

    @classmethod
    def check_config(cls, cfg) -> None:
        check_unet_side(f"data.size={cfg.data.size}", cfg.data.size, cfg.model.mults)
        _check_sampler_steps(cfg)

    def __init__(self, cfg: DiffusionConfig, image_shape, device):
        super().__init__(cfg, image_shape, device)
        channels, size, _ = image_shape
        self._setup(cfg, UNet(channels, size, cfg.width, tuple(cfg.mults), cfg.blocks, tuple(cfg.attention),
                              cfg.dropout), device)

    def latent_shape(self):
        return self.image_shape

    def diffusion_shape(self):
        return self.image_shape

    def finish(self, x0):
        return x0.clamp(-1, 1)

    @torch.no_grad()
    def validation_step(self, x, generator):
        """L_simple, and bits/dim of the variational bound estimated with one uniformly drawn term per
        image (T L_t + L_T: unbiased for the bound, the same draws every epoch)."""
        stats = super().validation_step(x, generator)
        t = torch.randint(0, self.process.timesteps, (x.shape[0],), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        xt = self.process.q_sample(x, t, noise)
        nats = self.process.timesteps * self.process.bound_term(x, xt, t, self.denoise(xt, t)) + self.process.prior_kl(x)
        stats["bpd"] = (nats / (x[0].numel() * math.log(2))).mean()
        return stats

    @torch.inference_mode()
    def log_likelihood(self, x):
        """The variational bound on log P of the 8-bit image x falls in (Ho et al. 2020, eq. 5: L_T +
        sum L_{t-1} + L_0 with the discretised decoder), spread uniformly over the image's bin so it is
        a density of dequantised x like every other family's: log p(x) = log P + D log(256 / 2)."""
        levels = ((x.float() + 1) * 128).floor().clamp(0, 255)
        x0 = levels / 127.5 - 1  # the training grid (genlab.data.convert.to_model_range)
        n, d, T = x.shape[0], x[0].numel(), self.process.timesteps
        k = self.cfg.bound_timesteps or T
        total = self.process.prior_kl(x0)
        if k == T:
            chosen = [torch.full((n,), t, dtype=torch.long, device=x.device) for t in range(T)]
            weight = 1.0
        else:  # one timestep drawn uniformly in each of k equal strata: an unbiased estimate of the sum
            edges = torch.linspace(0, T, k + 1)
            chosen = [(edges[i] + torch.rand(n) * (edges[i + 1] - edges[i])).long().clamp(max=T - 1).to(x.device)
                      for i in range(k)]
            weight = T / k
        for t in chosen:
            xt = self.process.q_sample(x0, t, torch.randn_like(x0))
            total = total + weight * self.process.bound_term(x0, xt, t, self.denoise(xt, t).float())
        how = (f"variational bound (Ho et al. 2020, eq. 5; discretised decoder eq. 13; {self.cfg.variance} variance), "
               + ("all T terms" if k == T else f"estimated from {k} stratified timesteps of T={T}"))
        return -total + d * math.log(128.0), how


@dataclass
class LatentDiffusionConfig(DiffusionConfig):
    width: int = 512  # the residual MLP's width (the first stage's latent is a vector)
    blocks: int = 6  # residual MLP blocks
    dropout: float = 0.0
    clip_latents: bool = False  # clip predicted latents to [-1, 1]; off: scaled latents are unbounded
    first_stage: dict[str, Any] = field(default_factory=dict)  # the frozen VAE/autoencoder's method and model
    #   section, copied from init.from_run's config when training starts, so the run is self-contained


@METHODS.register("latent-ddpm", aliases=("ldm",))
class LatentDiffusionMethod(ScaledFirstStageLatents, _DiffusionBase):
    name = "latent-ddpm"
    config_class = LatentDiffusionConfig
    latent_kind = "flat"
    init_networks = FIRST_STAGE_NETWORKS

    @classmethod
    def check_config(cls, cfg) -> None:
        _check_sampler_steps(cfg)
        check_first_stage(cfg, "latent diffusion")
        m = cfg.model
        if m.schedule == "cosine" and m.prediction == "eps" and not m.clip_latents:
            # The cosine schedule's last beta is clipped at 0.999 (Nichol & Dhariwal 2021), so alpha_bar
            # falls 1000-fold in one step; x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a) then multiplies the
            # denoiser's error by ~600 in DDIM's first step, and nothing bounds unclipped latents after it.
            raise GenlabError("model.schedule=cosine with model.prediction=eps on unclipped latents: the "
                              "schedule's last step multiplies the denoiser's error ~600x when sampling; use "
                              "model.schedule=linear, model.prediction=v or model.clip_latents=true")

    @classmethod
    def configure_from_base(cls, model_cfg, base_config) -> None:
        record_first_stage(model_cfg, base_config)

    def __init__(self, cfg: LatentDiffusionConfig, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.first_stage = attach_first_stage(self, cfg.first_stage, NEEDS_BASE_RUN)
        (self.latent_dim,) = self.first_stage.latent_shape()
        self._setup(cfg, MLPDenoiser(self.latent_dim, cfg.width, cfg.blocks, cfg.dropout), device)
        self.add_latent_scale()
        self.clip_denoised = cfg.clip_latents

    def latent_shape(self):
        return (self.latent_dim,)

    def diffusion_shape(self):
        return (self.latent_dim,)

