"""The density a latent family samples its codes from, fitted to the training data: one
full-covariance Gaussian, or a mixture of K of them (ex-post density estimation, Ghosh et al. 2020,
"From variational to deterministic autoencoders", section 4). Used by every encoder family (the
autoencoder always, the VAE and VAE-GAN with ``model.prior=fitted``) and read by the latent families
built on them.

The density is kept as buffers of the module that decodes codes (the decoder), so every checkpoint,
inference snapshot and EMA carries it: ``prior_mean``/``prior_chol`` for a Gaussian,
``prior_weights``/``prior_means``/``prior_chols`` for a mixture. Its latent space stays a standard
Gaussian, as every family's: :func:`from_prior` maps z ~ N(0, I) to a code of the density and
:func:`whiten` maps a code back, so sampling, interpolation and latent diffusion work unchanged.
"""

from __future__ import annotations

import math

import torch

from genlab.distributed import unwrap
from genlab.errors import GenlabError


def fit_gaussian(codes: torch.Tensor, jitter: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum-likelihood mean and the Cholesky factor of the covariance (divided by N, plus
    ``jitter`` times the mean variance on the diagonal, so it stays positive definite when there
    are fewer codes than dimensions), in float64 for the factorisation."""
    codes = codes.double()
    mean = codes.mean(0)
    centred = codes - mean
    cov = centred.T @ centred / len(codes)
    cov = cov + jitter * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(len(mean), dtype=cov.dtype, device=cov.device)
    return mean, torch.linalg.cholesky(cov)


def fit_mixture(codes: torch.Tensor, components: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A mixture of ``components`` full-covariance Gaussians fitted to ``codes`` by EM (scikit-learn's
    GaussianMixture, k-means initialisation, seeded): weights (K,), means (K, D) and the Cholesky
    factors of the covariances (K, D, D), float64. Ghosh et al. 2020 (section 4) sample their
    autoencoders from such a mixture (10 components) fitted after training. The codes are scaled to
    unit variance for the fit, so the covariance floor is relative, as ``fit_gaussian``'s jitter."""
    from sklearn.mixture import GaussianMixture  # deferred: scikit-learn takes ~1 s to import, needed here only

    if len(codes) < components:
        raise GenlabError(f"model.prior_components={components}: the mixture is fitted to the codes of the "
                          f"training images, and there are only {len(codes)}; use at most that many components")
    codes = codes.double().cpu()
    scale = codes.std().clamp(min=1e-12)
    mixture = GaussianMixture(components, covariance_type="full", reg_covar=1e-5, random_state=seed)
    mixture.fit((codes / scale).numpy())
    covariances = torch.from_numpy(mixture.covariances_) * scale**2
    return (torch.from_numpy(mixture.weights_), torch.from_numpy(mixture.means_) * scale,
            torch.linalg.cholesky(covariances))


@torch.no_grad()
def add_prior_buffers(decoder: torch.nn.Module, latent_dim: int, device: torch.device, components: int = 1) -> None:
    """The sampling density over codes, kept as buffers of the decoder so every snapshot and the EMA
    carry it: one Gaussian (mean, Cholesky factor of the covariance; N(0, I) until fitted), or with
    ``components`` > 1 a mixture (weights, means, Cholesky factors; equal N(0, I) components until fitted)."""
    if components == 1:
        decoder.register_buffer("prior_mean", torch.zeros(latent_dim, device=device))
        decoder.register_buffer("prior_chol", torch.eye(latent_dim, device=device))
        return
    decoder.register_buffer("prior_weights", torch.full((components,), 1 / components, device=device))
    decoder.register_buffer("prior_means", torch.zeros(components, latent_dim, device=device))
    decoder.register_buffer("prior_chols", torch.eye(latent_dim, device=device).repeat(components, 1, 1))


def is_mixture(holder: torch.nn.Module) -> bool:
    """Whether the density ``holder`` carries is a mixture (else one Gaussian): its buffers say which."""
    return "prior_weights" in dict(unwrap(holder).named_buffers(recurse=False))


# A mixture's latent space stays a standard Gaussian, as every family's: the first coordinate of z
# chooses the component and is then reused. u = Phi(z_0) falls in component k's share
# [c_k - w_k, c_k) of [0, 1) with probability w_k, and within it (u - c_k + w_k) / w_k is again
# uniform and independent of k, so z_0' = Phi^-1 of it and z_1.. are N(0, I) given k: the map
# z -> mean_k + L_k z' draws exactly from the mixture, and whiten() inverts it code by code (with
# the component of highest responsibility).
_EDGE = 1e-12  # keeps Phi^-1's argument inside (0, 1)


def _mixture_shares(decoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each component's share of [0, 1) starts, and its width (the normalised weights), float64."""
    weights = decoder.prior_weights.double()
    weights = weights / weights.sum()
    return weights.cumsum(0) - weights, weights


def from_prior(decoder: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Standard-normal ``z`` -> a code of the decoder's fitted density: mean + L z for the Gaussian;
    for a mixture, mean_k + L_k z' with the component k and z' read from z (above)."""
    decoder = unwrap(decoder)
    if not is_mixture(decoder):
        return decoder.prior_mean + z.float() @ decoder.prior_chol.T
    starts, widths = _mixture_shares(decoder)
    u = torch.special.ndtr(z[:, 0].double())
    k = torch.searchsorted(starts + widths, u.contiguous(), right=True).clamp(max=len(widths) - 1)
    first = torch.special.ndtri(((u - starts[k]) / widths[k]).clamp(_EDGE, 1 - _EDGE)).float()
    z = torch.cat([first[:, None], z[:, 1:].float()], dim=1)
    return decoder.prior_means[k] + (decoder.prior_chols[k] @ z[:, :, None])[:, :, 0]


def whiten(decoder, codes: torch.Tensor) -> torch.Tensor:
    """The inverse of from_prior: L^-1 (code - mean) for the Gaussian; for a mixture, the same with
    the component of highest responsibility, its first coordinate put back into that component's
    share of z_0 (see from_prior)."""
    decoder = unwrap(decoder)
    if not is_mixture(decoder):
        centred = (codes.float() - decoder.prior_mean)[:, :, None]
        return torch.linalg.solve_triangular(decoder.prior_chol, centred, upper=False)[:, :, 0]
    # one triangular solve per component with the N codes as its right-hand sides: (K, D, N);
    # broadcasting L_k over the codes instead copied a D x D factor per code (120 ms for 64 codes at D 128, K 50)
    centred = codes.float().T[None] - decoder.prior_means[:, :, None]
    white = torch.linalg.solve_triangular(decoder.prior_chols, centred, upper=False).permute(2, 0, 1)  # (N, K, D)
    log_det = decoder.prior_chols.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # log |L_k|
    log_resp = decoder.prior_weights.log() - log_det - 0.5 * white.square().sum(-1)
    k = log_resp.argmax(1)
    z = white[torch.arange(len(k), device=k.device), k]
    starts, widths = _mixture_shares(decoder)
    u = starts[k] + widths[k] * torch.special.ndtr(z[:, 0].double())
    first = torch.special.ndtri(u.clamp(_EDGE, 1 - _EDGE)).float()
    return torch.cat([first[:, None], z[:, 1:]], dim=1)


def log_density(holder: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """log p(code) under the density ``holder`` carries (nats, one per code): N(mean, L L^T) for the
    Gaussian, log sum_k w_k N(code; mean_k, L_k L_k^T) for a mixture, in float64."""
    holder = unwrap(holder)
    codes = codes.double()
    d = codes.shape[1]
    if not is_mixture(holder):
        means, chols, log_w = holder.prior_mean.double()[None], holder.prior_chol.double()[None], codes.new_zeros(1)
    else:
        weights = holder.prior_weights.double()
        means, chols, log_w = holder.prior_means.double(), holder.prior_chols.double(), (weights / weights.sum()).log()
    centred = codes.T[None] - means[:, :, None]  # (K, D, N)
    white = torch.linalg.solve_triangular(chols, centred, upper=False)  # L_k^-1 (code - mean_k)
    log_det = chols.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # log |L_k| = 0.5 log |Sigma_k|
    per_component = -0.5 * white.square().sum(1) - log_det[:, None] - 0.5 * d * math.log(2 * math.pi)  # (K, N)
    return torch.logsumexp(log_w[:, None] + per_component, dim=0)
