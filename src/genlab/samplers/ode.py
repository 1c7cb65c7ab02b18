"""Samplers and likelihoods of families defined by a probability-flow ODE dx/dt = f(x, t): EDM
(Karras et al. 2022, t = sigma) and flow matching (Lipman et al. 2023, t in [0, 1]).

A family states the contract with :class:`ProbabilityFlow`; the samplers here are generic over it:
``euler``, ``heun`` (Karras et al. 2022, Algorithm 1), ``midpoint`` and ``edm-stochastic``
(Algorithm 2, for flows whose time is the noise level). Every sampler is asked for a number of
network evaluations (``sampler.nfe``), the cost by which samplers are compared, and takes the
steps that spend exactly that many. :func:`flow_log_likelihood` integrates the same ODE from the
data to the prior with the instantaneous change of variables (Chen et al. 2018, theorem 1; Song et
al. 2021, section 4.3 and appendix D.2) through torchdiffeq's adaptive solvers.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from genlab.config import check_choice, check_positive
from genlab.errors import GenlabError
from genlab.samplers import SAMPLERS, Sampler, SamplerOptions

DIVERGENCES = ("auto", "exact", "hutchinson")
ODE_SOLVERS = ("dopri5", "bosh3", "adaptive_heun", "dopri8")  # torchdiffeq's adaptive methods
EXACT_DIVERGENCE_MAX_DIMS = 64  # divergence "auto": exact up to this many dimensions (8x8 grey), Hutchinson above


class ProbabilityFlow(abc.ABC):
    """What the ODE samplers and likelihood need of a family."""

    flow_time_is_sigma: bool = False  # x_t = x_0 + t n (EDM's sigma(t) = t, s(t) = 1): Algorithm 2's churn applies

    @abc.abstractmethod
    def flow_times(self, steps: int) -> torch.Tensor:
        """``steps + 1`` times, float64, descending from the prior's end to the data's (the last is 0)."""

    @abc.abstractmethod
    def flow_drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dx/dt at x for per-image times t (N,), in float32."""

    @abc.abstractmethod
    def flow_prior_std(self) -> float:
        """The prior's end: x ~ N(0, s^2 I) there."""

    @abc.abstractmethod
    def flow_likelihood_interval(self) -> tuple[float, float]:
        """(data end, prior end) of the likelihood's integration: the density at the data end is the
        one reported (EDM: sigma_min > 0, where the drift is defined)."""

    @abc.abstractmethod
    def diffusion_shape(self) -> tuple[int, ...]:
        """One sample's shape."""

    @abc.abstractmethod
    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The ODE's end at t = 0 -> images in [-1, 1]."""


def _flow(method) -> ProbabilityFlow:
    if not isinstance(method, ProbabilityFlow):
        raise GenlabError(f"method {method.name!r} has no probability-flow ODE; the euler, heun, midpoint and "
                          "edm-stochastic samplers need one")
    return method


# -- options ------------------------------------------------------------------------------------------
@dataclass
class EulerOptions(SamplerOptions):
    nfe: int = 35  # network evaluations = steps (first order)

    def validate(self, prefix: str = "") -> None:
        check_positive(f"{prefix}nfe", self.nfe)

    def steps(self) -> int:
        return self.nfe


@dataclass
class HeunOptions(SamplerOptions):
    nfe: int = 35  # network evaluations: N steps make 2N - 1 (the last step, to t = 0, is Euler's); 35 = EDM's 18 steps

    def validate(self, prefix: str = "") -> None:
        check_positive(f"{prefix}nfe", self.nfe)
        if self.nfe < 3 or self.nfe % 2 == 0:
            raise GenlabError(f"config key '{prefix}nfe' = {self.nfe}: Heun's method makes 2N - 1 network evaluations "
                              "for N steps (Karras et al. 2022, Algorithm 1; its last step is Euler's), and needs "
                              "at least 2 steps: ask for an odd nfe >= 3, or sampler.name=euler for fewer")

    def steps(self) -> int:
        return (self.nfe + 1) // 2


@dataclass
class MidpointOptions(SamplerOptions):
    nfe: int = 36  # network evaluations: 2 per step (the midpoint never evaluates at t = 0)

    def validate(self, prefix: str = "") -> None:
        check_positive(f"{prefix}nfe", self.nfe)
        if self.nfe % 2:
            raise GenlabError(f"config key '{prefix}nfe' = {self.nfe}: the midpoint method makes 2 network "
                              "evaluations per step: ask for an even nfe")

    def steps(self) -> int:
        return self.nfe // 2


@dataclass
class StochasticOptions(HeunOptions):
    # Algorithm 2's settings; defaults are Karras et al. 2022's ImageNet-64 ones (Table 5; their
    # CIFAR-10 models sampled best deterministically, s_churn = 0, which is Algorithm 1 exactly)
    s_churn: float = 40.0  # total noise added over the chain: gamma_i = min(s_churn / N, sqrt(2) - 1)
    s_tmin: float = 0.05  # churn only where s_tmin <= t_i <= s_tmax
    s_tmax: float = 50.0
    s_noise: float = 1.003  # the added noise's std relative to the one that keeps the marginal (section 4)

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        for key in ("s_churn", "s_tmin", "s_noise"):
            check_positive(f"{prefix}{key}", getattr(self, key), allow_zero=key != "s_noise")
        if self.s_tmax < self.s_tmin:
            raise GenlabError(f"config key '{prefix}s_tmax' ({self.s_tmax}) is below {prefix}s_tmin ({self.s_tmin})")


# -- samplers ---------------------------------------------------------------------------------------
def _times(method, options) -> list[float]:
    return _flow(method).flow_times(options.steps()).tolist()


def _drift(method, x: torch.Tensor, t: float) -> torch.Tensor:
    return method.flow_drift(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32))


def euler_loop(method, x: torch.Tensor, times: list[float]) -> torch.Tensor:
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * _drift(method, x, t)
    return x


def heun_loop(method, x: torch.Tensor, times: list[float]) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 1 (deterministic, 2nd order), lines 3-8, for any flow."""
    for t, t_next in zip(times[:-1], times[1:]):  # 3: for i in 0 .. N-1
        d = _drift(method, x, t)  # 4: d_i = (x_i - D(x_i; t_i)) / t_i  (EDM's drift)
        x_next = x + (t_next - t) * d  # 5: Euler step from t_i to t_{i+1}
        if t_next != 0:  # 6: unless the step ends at t = 0, apply the 2nd-order correction
            d_next = _drift(method, x_next, t_next)  # 7: d'_i at the Euler step's end
            x_next = x + (t_next - t) * (0.5 * d + 0.5 * d_next)  # 8: the trapezoidal rule
        x = x_next
    return x  # 9: return x_N


def midpoint_loop(method, x: torch.Tensor, times: list[float]) -> torch.Tensor:
    """The explicit midpoint rule: the drift at half a step's Euler prediction, then the full step."""
    for t, t_next in zip(times[:-1], times[1:]):
        t_mid = 0.5 * (t + t_next)
        x_mid = x + (t_mid - t) * _drift(method, x, t)
        x = x + (t_next - t) * _drift(method, x_mid, t_mid)
    return x


def _prior(method, noise) -> torch.Tensor:
    return noise.randn(*method.diffusion_shape()) * method.flow_prior_std()  # 1: x_0 ~ N(0, t_0^2 I)


@torch.no_grad()
def euler_sampler(method, noise, options: EulerOptions) -> torch.Tensor:
    return method.finish(euler_loop(method, _prior(_flow(method), noise), _times(method, options)))


@torch.no_grad()
def heun_sampler(method, noise, options: HeunOptions) -> torch.Tensor:
    return method.finish(heun_loop(method, _prior(_flow(method), noise), _times(method, options)))


@torch.no_grad()
def midpoint_sampler(method, noise, options: MidpointOptions) -> torch.Tensor:
    return method.finish(midpoint_loop(method, _prior(_flow(method), noise), _times(method, options)))


@torch.no_grad()
def edm_stochastic_sampler(method, noise, options: StochasticOptions) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2 (stochastic, 2nd order), for flows whose time is the noise
    level sigma (x_t = x_0 + t n): each step first raises the noise level by gamma_i and adds the
    matching fresh noise ("churn"), then takes a Heun step down. Noise comes from each image's generator."""
    if not _flow(method).flow_time_is_sigma:
        raise GenlabError(f"sampler edm-stochastic adds noise to raise the noise level, which needs a flow whose "
                          f"time is sigma (EDM); method {method.name!r} samples with euler, heun or midpoint")
    times = _times(method, options)
    n_steps = len(times) - 1
    x = _prior(method, noise)
    for t, t_next in zip(times[:-1], times[1:]):  # 3: for i in 0 .. N-1
        # 4: gamma_i = min(S_churn / N, sqrt(2) - 1) if t_i in [S_tmin, S_tmax], else 0
        gamma = min(options.s_churn / n_steps, math.sqrt(2) - 1) if options.s_tmin <= t <= options.s_tmax else 0.0
        eps = noise.randn(*method.diffusion_shape()) * options.s_noise  # 5: eps_i ~ N(0, S_noise^2 I)
        t_hat = t + gamma * t  # 6: t^_i = t_i + gamma_i t_i
        x_hat = x + math.sqrt(max(t_hat**2 - t**2, 0.0)) * eps  # 7: x^_i = x_i + sqrt(t^_i^2 - t_i^2) eps_i
        d = _drift(method, x_hat, t_hat)  # 8: d_i = (x^_i - D(x^_i; t^_i)) / t^_i
        x_next = x_hat + (t_next - t_hat) * d  # 9: Euler step from t^_i to t_{i+1}
        if t_next != 0:  # 10: 2nd-order correction unless the step ends at t = 0
            d_next = _drift(method, x_next, t_next)  # 11
            x_next = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d_next)  # 12
        x = x_next
    return method.finish(x)  # 13: return x_N


SAMPLERS.register("euler")(Sampler(euler_sampler, EulerOptions))
SAMPLERS.register("heun")(Sampler(heun_sampler, HeunOptions))
SAMPLERS.register("midpoint")(Sampler(midpoint_sampler, MidpointOptions))
SAMPLERS.register("edm-stochastic")(Sampler(edm_stochastic_sampler, StochasticOptions))


# -- likelihood ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LikelihoodSettings:
    divergence: str = "auto"  # exact | hutchinson | auto (exact up to EXACT_DIVERGENCE_MAX_DIMS dimensions)
    probes: int = 1  # Hutchinson's probe vectors per image (Rademacher), fixed along the whole solve
    rtol: float = 1e-5  # the adaptive solver's relative tolerance
    atol: float = 1e-5  # and absolute tolerance
    solver: str = "dopri5"  # torchdiffeq method (Dormand-Prince 5(4) by default)

    def resolved_divergence(self, dims: int) -> str:
        if self.divergence != "auto":
            return self.divergence
        return "exact" if dims <= EXACT_DIVERGENCE_MAX_DIMS else "hutchinson"


def check_likelihood_settings(prefix: str, divergence: str, probes: int, rtol: float, atol: float, solver: str) -> None:
    check_choice(f"{prefix}divergence", divergence, DIVERGENCES)
    check_choice(f"{prefix}ode_solver", solver, ODE_SOLVERS)
    check_positive(f"{prefix}probes", probes)
    for key, value in (("ode_rtol", rtol), ("ode_atol", atol)):
        if not value > 0:
            raise GenlabError(f"config key '{prefix}{key}' must be > 0 (an adaptive solver's tolerance), got {value}")


def divergence(output: torch.Tensor, x: torch.Tensor, how: str, probes: torch.Tensor | None = None,
               create_graph: bool = False) -> torch.Tensor:
    """div_x f per image, for ``output`` = f(x) computed with ``x`` requiring grad: exact (one
    vector-Jacobian product per dimension, batched) or Hutchinson's estimate E_v[v^T (df/dx) v]
    (Hutchinson 1989; Grathwohl et al. 2019, eq. 7) averaged over the given probes (P, N, ...)."""
    n = x.shape[0]
    if how == "exact":
        flat = output.flatten(1)
        dims = flat.shape[1]
        basis = torch.eye(dims, device=x.device, dtype=flat.dtype).unsqueeze(1).expand(dims, n, dims)
        rows = torch.autograd.grad(flat, x, grad_outputs=basis, is_grads_batched=True, retain_graph=True,
                                   create_graph=create_graph)[0]
        return rows.flatten(2).diagonal(dim1=0, dim2=2).sum(-1)  # sum_i d f_i / d x_i
    total = torch.zeros(n, device=x.device)
    for v in probes:
        vjp = torch.autograd.grad(output, x, grad_outputs=v, retain_graph=True, create_graph=create_graph)[0]
        total = total + (vjp * v).flatten(1).sum(1)
    return total / len(probes)


def flow_log_likelihood(method, x: torch.Tensor, settings: LikelihoodSettings,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, str]:
    """log p(x) in nats per image, by integrating [x, delta] from the data end to the prior end of the
    family's ODE with d delta/dt = div f(x, t): log p_data_end(x) = log N(x_end; 0, s^2 I) + delta_end
    (the instantaneous change of variables). Returns the values and how they were obtained."""
    flow = _flow(method)
    t0, t1 = flow.flow_likelihood_interval()
    dims = x[0].numel()
    how = settings.resolved_divergence(dims)
    probes = None
    if how == "hutchinson":  # Rademacher probes, one set per solve (Grathwohl et al. 2019, section 3.1)
        probes = (torch.randint(0, 2, (settings.probes, *x.shape), generator=generator).float() * 2 - 1).to(x.device)
    calls = [0]

    def dynamics(t, state):
        calls[0] += 1
        y = state[0].detach().requires_grad_(True)
        with torch.enable_grad():
            drift = flow.flow_drift(y, t.float().expand(y.shape[0]).to(y.device))
            div = divergence(drift, y, how, probes)
        return drift.detach(), div.detach()

    with torch.inference_mode(False), torch.no_grad():
        start = (x.detach().clone().float(), torch.zeros(x.shape[0], device=x.device))
        times = torch.tensor([t0, t1], dtype=torch.float64, device=x.device)
        x_end, delta = (s[-1] for s in odeint(dynamics, start, times, rtol=settings.rtol, atol=settings.atol,
                                             method=settings.solver))
        s = flow.flow_prior_std()
        prior = -0.5 * (x_end / s).square().flatten(1).sum(1) - dims * (math.log(s) + 0.5 * math.log(2 * math.pi))
    estimate = ("exact divergence" if how == "exact"
                else f"Hutchinson's divergence estimate, {settings.probes} Rademacher probe(s) per image")
    protocol = (f"probability-flow ODE from t={t0:g} to t={t1:g} (instantaneous change of variables), {estimate}, "
                f"torchdiffeq {settings.solver} rtol={settings.rtol:g} atol={settings.atol:g}, "
                f"{calls[0]} drift evaluations for this batch")
    return prior + delta, protocol
