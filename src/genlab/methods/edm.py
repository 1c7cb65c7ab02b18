"""EDM (Karras et al. 2022): a preconditioned denoiser D(x; sigma) trained at log-normal noise levels,
sampled by the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (eq. 3 with sigma(t) = t,
s(t) = 1) with Heun's method over the rho-schedule (Algorithm 1) or the stochastic sampler
(Algorithm 2). Preconditioning and loss: genlab.losses.edm; samplers: genlab.samplers.ode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.errors import GenlabError
from genlab.losses import edm
from genlab.methods import METHODS
from genlab.methods.probability_flow import LIKELIHOOD_KEYS, FlowFamily, ODELikelihood, UNetFlowConfig


@dataclass
class EDMConfig(UNetFlowConfig):
    # Karras et al. 2022, Table 1 ("Ours") and section 5
    sigma_data: float = 0.5  # the data's standard deviation (images in [-1, 1])
    p_mean: float = -1.2  # training: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    # sampling (and the likelihood's interval): the noise levels of eq. 5; changeable at evaluation
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0  # the schedule's curvature: larger rho, shorter steps near sigma_min

    def validate(self, prefix: str = "model.") -> None:
        super().validate(prefix)
        for key in ("sigma_data", "p_std", "sigma_min", "sigma_max"):
            if not getattr(self, key) > 0:
                raise GenlabError(f"config key '{prefix}{key}' must be > 0, got {getattr(self, key)}")
        if self.sigma_min >= self.sigma_max:
            raise GenlabError(f"config keys '{prefix}sigma_min' ({self.sigma_min}) and '{prefix}sigma_max' "
                              f"({self.sigma_max}): sigma_min must be below sigma_max")
        if not self.rho > 0:
            raise GenlabError(f"config key '{prefix}rho' must be > 0 (the schedule's exponent, eq. 5), got {self.rho}")


SAMPLING_KEYS = ("sigma_min", "sigma_max", "rho")


class EDMFlow(FlowFamily):
    """EDM's objective and ODE, in pixel space (``edm``) or a first stage's latent (``latent-edm``)."""

    samplers = ("heun", "euler", "midpoint", "edm-stochastic")
    evaluation_keys = SAMPLING_KEYS
    flow_time_is_sigma = True

    def draw_levels(self, n, generator):
        return edm.sample_sigma(n, self.cfg.p_mean, self.cfg.p_std, self.device, generator)

    def objective(self, x0, noise, sigma):
        return edm.denoising_loss(self.denoiser, x0, noise, sigma, self.cfg.sigma_data)

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma), the preconditioned denoiser (eq. 7)."""
        return edm.denoise(self.denoiser, x, sigma, self.cfg.sigma_data)

    def flow_drift(self, x, t):
        # dx/dsigma = (x - D(x; sigma)) / sigma (eq. 3 with sigma(t) = t, s(t) = 1; Algorithm 1, line 4)
        s = t.view(-1, *([1] * (x.dim() - 1)))
        return (x - self.denoised(x, t)) / s

    def flow_times(self, steps):
        return edm.karras_sigmas(steps, self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.rho)

    def flow_prior_std(self):
        return float(self.cfg.sigma_max)

    def flow_likelihood_interval(self):
        return float(self.cfg.sigma_min), float(self.cfg.sigma_max)


@METHODS.register("edm")
class EDMMethod(EDMFlow, ODELikelihood):
    name = "edm"
    config_class = EDMConfig
    evaluation_keys = LIKELIHOOD_KEYS + SAMPLING_KEYS
