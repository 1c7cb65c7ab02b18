"""Flow matching (Lipman et al. 2023) on the linear path x_t = (1 - t) x_0 + t eps (rectified flow,
Liu et al. 2023): a U-Net regresses the velocity eps - x_0 at uniform or logit-normal times (Esser
et al. 2024), and samples integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) with Euler,
Heun or the midpoint rule. Path and loss: genlab.losses.flow_matching; samplers: genlab.samplers.ode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.config import check_choice
from genlab.errors import GenlabError
from genlab.losses import flow_matching as fm
from genlab.methods import METHODS
from genlab.methods.probability_flow import LIKELIHOOD_KEYS, FlowFamily, ODELikelihood, UNetFlowConfig


@dataclass
class FlowMatchingConfig(UNetFlowConfig):
    time_sampling: str = "logit-normal"  # uniform | logit-normal (Esser et al. 2024, eq. 19: their best)
    time_mean: float = 0.0  # logit-normal's location m and scale s
    time_std: float = 1.0

    def validate(self, prefix: str = "model.") -> None:
        super().validate(prefix)
        check_choice(f"{prefix}time_sampling", self.time_sampling, fm.TIME_SAMPLINGS)
        if not self.time_std > 0:
            raise GenlabError(f"config key '{prefix}time_std' must be > 0, got {self.time_std}")


class FlowMatchingFlow(FlowFamily):
    """Flow matching's objective and ODE, in pixel space (``flow-matching``) or a first stage's latent
    (``latent-flow-matching``)."""

    samplers = ("heun", "euler", "midpoint")
    evaluation_keys = ()

    def draw_levels(self, n, generator):
        return fm.sample_times(n, self.cfg.time_sampling, self.cfg.time_mean, self.cfg.time_std, self.device, generator)

    def objective(self, x0, noise, t):
        return fm.velocity_loss(self.velocity(fm.path(x0, noise, t), t), x0, noise)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_theta(x, t); the U-Net's time input is 1000 t, the scale of the DDPM timesteps its sinusoidal
        embedding was built for."""
        return self.denoiser(x, 1000 * t).float()

    def flow_drift(self, x, t):
        return self.velocity(x, t)

    def flow_times(self, steps):
        return torch.linspace(1, 0, steps + 1, dtype=torch.float64)

    def flow_prior_std(self):
        return 1.0

    def flow_likelihood_interval(self):
        return 0.0, 1.0


@METHODS.register("flow-matching", aliases=("rectified-flow",))
class FlowMatchingMethod(FlowMatchingFlow, ODELikelihood):
    name = "flow-matching"
    config_class = FlowMatchingConfig
    evaluation_keys = LIKELIHOOD_KEYS
