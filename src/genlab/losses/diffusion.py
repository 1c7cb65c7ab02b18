"""Gaussian diffusion (Ho et al. 2020, "DDPM"): the forward process, its posterior, what the
denoiser predicts, the training loss and the terms of the variational bound.

Notation follows the paper: betas beta_t, alphas alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t}
alpha_s, with t = 0 .. T-1 here standing for the paper's 1 .. T. Everything is precomputed in
float64 and stored in float32 on the device; per-batch values are gathered with ``_at``.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
VARIANCES = ("small", "large")


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """linear: beta from 1e-4 to 0.02 over 1000 steps (Ho et al. 2020, section 4), rescaled so a
    shorter chain ends at the same alpha_bar scale; cosine: alpha_bar(t) = cos^2((t/T + s)/(1 + s) pi/2)
    with s = 0.008 and betas clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17). Linear betas are
    clipped there too: a chain shorter than 50 steps would otherwise reach beta = 1 (alpha_bar = 0)."""
    if schedule == "linear":
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=0.999)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}")


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2).square() * (-logvar2).exp())


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation of Phi that Ho et al.'s code uses; accurate to ~1e-3 and smooth.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of 8-bit data x in {-1, -1 + 2/255, ..., 1} under a Gaussian integrated over each
    value's bin of width 2/255, the end bins reaching to -inf and +inf (Ho et al. 2020, eq. 13)."""
    centered = x - mean
    inv_std = (-log_scale).exp()
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255))
    cdf_minus = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_minus).clamp(min=1e-12).log()
    cdf_delta = cdf_plus - cdf_minus
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, cdf_delta.clamp(min=1e-12).log()))


class GaussianDiffusion:
    def __init__(self, schedule: str, timesteps: int, prediction: str = "eps", variance: str = "small",
                 device: torch.device | str = "cpu"):
        self.timesteps, self.prediction, self.variance = timesteps, prediction, variance
        betas = make_betas(schedule, timesteps)
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde_t I) (Ho et al. 2020, eq. 6-7).
        beta_tilde = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        table = {
            "betas": betas, "alpha_bar": alpha_bar, "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(), "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "posterior_variance": beta_tilde,
            # beta_tilde_0 is 0; its log is clipped to beta_tilde_1 as in Ho et al.'s code
            "posterior_log_variance": torch.cat([beta_tilde[1:2], beta_tilde[1:]]).log(),
            "posterior_coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_coef_xt": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
            # p(x_{t-1} | x_t)'s fixed variance: beta_tilde_t ("small") or beta_t ("large"), section 3.2
            "model_log_variance": (torch.cat([beta_tilde[1:2], beta_tilde[1:]]) if variance == "small"
                                   else torch.cat([beta_tilde[1:2], betas[1:]])).log(),
        }
        for name, values in table.items():
            setattr(self, name, values.to(device=device, dtype=torch.float32))

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped to broadcast against ``like`` (N, ...)."""
        return values[t].view(-1, *([1] * (like.dim() - 1)))

    # -- forward process ------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (eq. 4), reparameterised."""
        return self._at(self.sqrt_alpha_bar, t, x0) * x0 + self._at(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x_0) (eq. 6-7)."""
        mean = self._at(self.posterior_coef_x0, t, xt) * x0 + self._at(self.posterior_coef_xt, t, xt) * xt
        return mean, self._at(self.posterior_log_variance, t, xt).expand_as(xt)

    # -- what the network predicts ----------------------------------------------------------------
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target: eps (Ho et al. 2020, eq. 14) or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
        (Salimans & Ho 2022, section 4)."""
        if self.prediction == "eps":
            return noise
        return self._at(self.sqrt_alpha_bar, t, x0) * noise - self._at(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def split_prediction(self, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output at (x_t, t) -> (predicted x_0, predicted eps)."""
        a, s = self._at(self.sqrt_alpha_bar, t, xt), self._at(self.sqrt_one_minus_alpha_bar, t, xt)
        if self.prediction == "eps":
            eps = output
            x0 = (xt - s * eps) / a
        else:  # v: x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v, eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v
            x0 = a * xt - s * output
            eps = s * xt + a * output
        return x0, eps

    def p_mean_variance(self, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor,
                        clip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p(x_{t-1} | x_t): mean (the posterior mean at the predicted x_0, clipped to [-1, 1] when
        ``clip``), log-variance, and the predicted x_0."""
        x0, _ = self.split_prediction(xt, t, output)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, xt, t)
        return mean, self._at(self.model_log_variance, t, xt).expand_as(xt), x0

    # -- training and the bound ---------------------------------------------------------------------
    def simple_loss(self, output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """L_simple (eq. 14): per-image mean squared error of the prediction against its target."""
        return (output.float() - self.target(x0, noise, t)).square().flatten(1).mean(1)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in nats."""
        t = torch.full((x0.shape[0],), self.timesteps - 1, device=x0.device, dtype=torch.long)
        mean = self._at(self.sqrt_alpha_bar, t, x0) * x0
        logvar = self._at((1 - self.alpha_bar).log(), t, x0).expand_as(x0)
        return normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)

    def bound_term(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and L_0 = -log p(x_0 | x_1)
        under the discretised decoder for t = 0 (eq. 5), per image, in nats (x_0 on the 8-bit grid)."""
        true_mean, true_logvar = self.q_posterior(x0, xt, t)
        mean, logvar, _ = self.p_mean_variance(xt, t, output.float(), clip=False)
        kl = normal_kl(true_mean, true_logvar, mean, logvar).flatten(1).sum(1)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).flatten(1).sum(1)
        return torch.where(t == 0, nll, kl)
