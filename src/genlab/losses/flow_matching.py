"""Conditional flow matching with the linear (rectified) path (Lipman et al. 2023, section 4.1 with
sigma_min = 0; Liu et al. 2023, "rectified flow"): the path from data to noise, its velocity, and
the training times.

Convention: t = 0 is data and t = 1 is noise, x_t = (1 - t) x_0 + t eps, as in Esser et al. 2024
(eq. 3 with a_t = 1 - t, b_t = t). Sampling integrates dx/dt = v(x, t) from t = 1 down to 0.
"""

from __future__ import annotations

import torch

TIME_SAMPLINGS = ("uniform", "logit-normal")


def path(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x_0 + t eps: the conditional path psi_t(x_0 | eps), a straight line."""
    s = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def target_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """u_t(x_t | x_0, eps) = d x_t / dt = eps - x_0, the same at every t (the path is straight)."""
    return noise - x0


def sample_times(n: int, how: str, mean: float, std: float, device,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times: uniform on (0, 1), or logit-normal, t = sigmoid(m + s u) with u ~ N(0, 1)
    (Esser et al. 2024, section 3.1, eq. 19: more weight on the middle of the path, where the
    velocity is hardest to predict; m = 0, s = 1 in their best setting)."""
    if how == "uniform":
        u = torch.rand(n, generator=generator) if generator is not None else torch.rand(n)
        return u.to(device)
    if how == "logit-normal":
        u = torch.randn(n, generator=generator) if generator is not None else torch.randn(n)
        return torch.sigmoid(mean + std * u).to(device)
    raise ValueError(f"unknown time sampling {how!r}")


def velocity_loss(output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """||v_theta(x_t, t) - (eps - x_0)||^2 per image, averaged over dimensions (Lipman et al. 2023, eq. 9)."""
    return (output.float() - target_velocity(x0, noise)).square().flatten(1).mean(1)
