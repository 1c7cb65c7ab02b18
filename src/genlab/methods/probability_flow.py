"""What EDM and flow matching share: a U-Net trained by regression on noised images, sampled by
integrating a probability-flow ODE (genlab.samplers.ode), with a likelihood through the same ODE.

A family here defines its loss (``objective``), its ODE (``flow_drift``, ``flow_times``,
``flow_prior_std``, ``flow_likelihood_interval``) and how training draws its noise levels
(``draw_levels``); the rest is below: networks, optimiser, EMA, validation loss, bits/dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.config import OptimConfig, check_positive
from genlab.errors import GenlabError
from genlab.methods.abilities import Likelihood
from genlab.methods.base import Method
from genlab.methods.step import make_optimizer, make_scheduler
from genlab.models.unet import UNet, check_unet_side
from genlab.samplers.ode import (
    HeunOptions,
    LikelihoodSettings,
    ProbabilityFlow,
    check_likelihood_settings,
    flow_log_likelihood,
    heun_loop,
)

LIKELIHOOD_KEYS = ("divergence", "probes", "ode_rtol", "ode_atol", "ode_solver")


def _flow_optim() -> OptimConfig:
    # Adam at 2e-4 with gradients clipped at norm 1, as genlab's DDPM: Karras et al. 2022 train at 1e-3
    # (Table 7) behind a 10 Mimg learning-rate ramp-up that a CPU run never finishes
    return OptimConfig(lr=2e-4, grad_clip=1.0)


@dataclass
class UNetFlowConfig:
    width: int = 64  # U-Net channels at the first resolution (genlab.models.unet)
    mults: list[int] = field(default_factory=lambda: [1, 2, 2])  # channel multiplier per resolution
    blocks: int = 2  # residual blocks per resolution
    attention: list[int] = field(default_factory=lambda: [16])  # resolutions (sides) with self-attention
    dropout: float = 0.0
    # bits/dim through the probability-flow ODE (genlab eval --metrics bpd; changeable at evaluation)
    divergence: str = "auto"  # exact | hutchinson | auto (exact up to 64 dimensions)
    probes: int = 1  # Hutchinson's Rademacher probes per image
    ode_rtol: float = 1e-5  # the adaptive solver's relative and absolute tolerances
    ode_atol: float = 1e-5
    ode_solver: str = "dopri5"  # a torchdiffeq adaptive method
    optim: OptimConfig = field(default_factory=_flow_optim)

    def validate(self, prefix: str = "model.") -> None:
        for key in ("width", "blocks"):
            check_positive(f"{prefix}{key}", getattr(self, key))
        if not self.mults or any(m < 1 for m in self.mults):
            raise GenlabError(f"config key '{prefix}mults' needs positive multipliers, got {self.mults}")
        if not 0 <= self.dropout < 1:
            raise GenlabError(f"config key '{prefix}dropout' must be in [0, 1), got {self.dropout}")
        check_likelihood_settings(prefix, self.divergence, self.probes, self.ode_rtol, self.ode_atol, self.ode_solver)

    def likelihood_settings(self) -> LikelihoodSettings:
        return LikelihoodSettings(self.divergence, self.probes, self.ode_rtol, self.ode_atol, self.ode_solver)


class FlowFamily(Method, ProbabilityFlow):
    """A U-Net family sampled through its probability-flow ODE, in pixel space or (``LatentFlow``) in
    the image-shaped latent space of a frozen first stage."""

    has_validation_loss = True
    ema_targets = ("denoiser",)
    latent_kind = "image"

    @classmethod
    def check_config(cls, cfg) -> None:
        check_unet_side(f"data.size={cfg.data.size}", cfg.data.size, cfg.model.mults)

    def __init__(self, cfg: UNetFlowConfig, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.attach_first_stage()
        channels, size, _ = self.diffusion_shape()
        self.nets.denoiser = UNet(channels, size, cfg.width, tuple(cfg.mults), cfg.blocks, tuple(cfg.attention),
                                  cfg.dropout).to(device)
        self.opt = make_optimizer(cfg.optim, self.denoiser.parameters(), device)
        self.sched = make_scheduler(cfg.optim, self.opt)

    def attach_first_stage(self) -> None:
        """A latent family's frozen first stage, before the U-Net is sized to its latent (pixel: nothing)."""

    # -- what a flow family defines ----------------------------------------------------------------
    def objective(self, x0: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Per-image training loss at the drawn noise levels (or times)."""
        raise NotImplementedError

    def draw_levels(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Training's noise levels (or times), one per image, on the device."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------
    def optimizers(self):
        return {"denoiser": self.opt}

    def schedulers(self):
        return {"denoiser": self.sched}

    def example_inputs(self):
        inputs = super().example_inputs()
        inputs["denoiser"] = (torch.zeros(1, *self.diffusion_shape(), device=self.device),
                              torch.ones(1, device=self.device))  # (a noise level of 1: EDM's c_noise takes its log)
        if "first_decoder" in inputs:
            inputs["first_decoder"] = (torch.zeros(1, *self.diffusion_shape(), device=self.device),)
        return inputs

    def latent_shape(self):
        return self.diffusion_shape()

    def diffusion_shape(self):
        return self.image_shape

    def to_diffused(self, x: torch.Tensor) -> torch.Tensor:
        """Training images in [-1, 1] -> what the ODE transports (the images, or their scaled latents)."""
        return x

    def finish(self, x):
        return x.clamp(-1, 1)

    def _loss(self, x0, noise, levels):
        return {"loss": self.objective(x0, noise, levels).mean()}

    def train_step(self, x, step):
        x0 = self.to_diffused(x)
        # noise and levels for the whole batch before any micro-batch split, so accumulation changes nothing
        levels = self.draw_levels(x0.shape[0], None)
        noise = torch.randn_like(x0)
        return self.stepper.minimize(self.opt, self._loss, x0, noise, levels,
                                     clip=self.cfg.optim.grad_clip, agc=self.cfg.optim.agc)

    @torch.no_grad()
    def validation_step(self, x, generator):
        x0 = self.to_diffused(x)
        levels = self.draw_levels(x0.shape[0], generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return self._loss(x0, noise, levels)

    def generate(self, z):
        """The deterministic map from a standard normal z to a sample: Heun's method (Algorithm 1) on
        the ODE from its prior end, at the configured sampler's NFE (35 otherwise)."""
        nfe = getattr(self.sampling, "nfe", HeunOptions().nfe)
        steps = max((nfe + 1) // 2, 2)
        return self.finish(heun_loop(self, z.float() * self.flow_prior_std(), self.flow_times(steps).tolist()))



class ODELikelihood(Likelihood):
    """Bits/dim of a pixel-space flow family through its probability-flow ODE."""

    def log_likelihood(self, x):
        return flow_log_likelihood(self, x, self.cfg.likelihood_settings(),
                                   generator=torch.Generator().manual_seed(0))
