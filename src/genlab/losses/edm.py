"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"):
the preconditioning of the denoiser, the noise-level distribution of training and the loss weight.

The data are corrupted as x = y + n, n ~ N(0, sigma^2 I), and a network F is wrapped as the denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))      (eq. 7)

with the coefficients of Table 1 ("Ours"), derived in appendix B.6 so that F's inputs and its
effective training target have unit variance whatever sigma is. Everything here is a pure function
of sigma (a tensor broadcastable against the images) and the data's standard deviation sigma_data.
"""

from __future__ import annotations

import torch


def c_skip(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """sigma_data^2 / (sigma^2 + sigma_data^2): how much of the noisy input D passes through (eq. 7)."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """sigma sigma_data / sqrt(sigma^2 + sigma_data^2): the scale of F's output in D."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def c_in(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """1 / sqrt(sigma^2 + sigma_data^2): scales the noisy input to unit variance (appendix B.6, eq. 114)."""
    return 1 / (sigma**2 + sigma_data**2).sqrt()


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """ln(sigma) / 4: the noise level F is told (Table 1)."""
    return sigma.log() / 4


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2 (Table 1): the
    weight that makes F's effective loss unit-weighted at every noise level (eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(n: int, p_mean: float, p_std: float, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """ln(sigma) ~ N(P_mean, P_std^2) (Table 1, "Training: noise distribution"), one per image."""
    normal = torch.randn(n, generator=generator).to(device) if generator is not None else torch.randn(n, device=device)
    return (p_mean + p_std * normal).exp()


def denoise(network, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """D(x; sigma) from the raw network F (eq. 7). ``sigma`` has one value per image, shape (N,)."""
    s = sigma.view(-1, *([1] * (x.dim() - 1)))
    return c_skip(s, sigma_data) * x + c_out(s, sigma_data) * network(c_in(s, sigma_data) * x, c_noise(sigma)).float()


def denoising_loss(network, y: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) ||D(y + sigma n; sigma) - y||^2 per image (eq. 2 with eq. 8's weight), averaged over
    dimensions, written as F's effective regression: ||F(c_in x; c_noise) - (y - c_skip x) / c_out||^2,
    the same value (lambda c_out^2 = 1), without dividing by a c_out near zero at low sigma."""
    s = sigma.view(-1, *([1] * (y.dim() - 1)))
    x = y + s * noise
    target = (y - c_skip(s, sigma_data) * x) / c_out(s, sigma_data)
    output = network(c_in(s, sigma_data) * x, c_noise(sigma)).float()
    return (output - target).square().flatten(1).mean(1)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The discretisation of Algorithm 1 (eq. 5): sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho)
    - sigma_max^(1/rho)))^rho for i < N, then sigma_N = 0; float64, descending, N + 1 values."""
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / max(steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
