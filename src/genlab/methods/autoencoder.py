"""A deterministic convolutional autoencoder (seed 003's baseline): the VAE's encoder and decoder
trained on reconstruction alone.

It has no prior to sample from, so after every epoch it fits one: a Gaussian with full covariance
to the codes of the training images (the first ``model.prior_images``), kept as buffers of the
decoder so checkpoints, inference snapshots and EMA carry it. Its latent space, as every family's,
is then a standard Gaussian: ``generate(z)`` decodes mean + L z (L the Cholesky factor of the
covariance), and ``encode_latent(x)`` returns the whitened code L^-1 (code - mean), so sampling,
interpolation and latent diffusion over it work as for a VAE. This is the "fit a density to the
codes" way of sampling a plain autoencoder (as in Ghosh et al. 2020, "From variational to
deterministic autoencoders", section 4), with the simplest density.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.config import OptimConfig, check_choice, check_positive
from genlab.data.convert import to_model_range
from genlab.errors import GenlabError
from genlab.losses.vae import RECONSTRUCTION_LOSSES
from genlab.methods import METHODS
from genlab.methods.base import Method, unwrap
from genlab.methods.step import make_optimizer, make_scheduler
from genlab.models.blocks import widths_for
from genlab.models.vae import ConvDecoder, ConvEncoder


@dataclass
class AutoencoderConfig:
    latent_dim: int = 128  # size of the code (seed 003 compares 10 to 2048)
    widths: list[int] = field(default_factory=list)  # channels per resolution step; [] = 32, 64, ... (cap 512)
    base_width: int = 32  # first width when `widths` is empty
    activation: str = "leaky_relu"  # relu | leaky_relu (slope 0.2)
    dropout: float = 0.0
    recon_loss: str = "mse"  # mse (through tanh) | bce (through sigmoid)
    res_blocks: int = 0  # residual blocks after each up-sampling step of the decoder (0 = seed 003's plain decoder)
    prior_images: int = 10_000  # training images whose codes the sampling Gaussian is fitted to, each epoch
    prior_components: int = 1  # 1: one full-covariance Gaussian; K > 1: a mixture of K (Ghosh et al. 2020 use 10)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self, prefix: str = "model.") -> None:
        check_positive(f"{prefix}latent_dim", self.latent_dim)
        check_positive(f"{prefix}base_width", self.base_width)
        check_positive(f"{prefix}prior_images", self.prior_images)
        check_prior_components(self, prefix)
        check_positive(f"{prefix}res_blocks", self.res_blocks, allow_zero=True)
        check_choice(f"{prefix}activation", self.activation, ("relu", "leaky_relu"))
        check_choice(f"{prefix}recon_loss", self.recon_loss, tuple(RECONSTRUCTION_LOSSES))
        if not 0 <= self.dropout < 1:
            raise GenlabError(f"config key '{prefix}dropout' must be in [0, 1), got {self.dropout}")


def check_prior_components(cfg, prefix: str) -> None:
    """A mixture needs at least as many codes to fit as components."""
    check_positive(f"{prefix}prior_components", cfg.prior_components)
    if cfg.prior_components > cfg.prior_images:
        raise GenlabError(f"config key '{prefix}prior_components' ({cfg.prior_components}) exceeds "
                          f"{prefix}prior_images ({cfg.prior_images}): each component needs codes to fit")


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
    if not hasattr(decoder, "prior_weights"):
        return decoder.prior_mean + z.float() @ decoder.prior_chol.T
    starts, widths = _mixture_shares(decoder)
    u = torch.special.ndtr(z[:, 0].double())
    k = torch.searchsorted(starts + widths, u.contiguous(), right=True).clamp(max=len(widths) - 1)
    first = torch.special.ndtri(((u - starts[k]) / widths[k]).clamp(_EDGE, 1 - _EDGE)).float()
    z = torch.cat([first[:, None], z[:, 1:].float()], dim=1)
    return decoder.prior_means[k] + (decoder.prior_chols[k] @ z[:, :, None])[:, :, 0]


@torch.no_grad()
def codes_of(method, code, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``code(x)`` of uint8 ``images``, batch by batch on the method's device, in eval mode (float32)."""
    with method.evaluating():
        return torch.cat([code(to_model_range(images[i : i + batch].to(method.device))).float()
                          for i in range(0, len(images), batch)])


def refit_prior(method, code, images: torch.Tensor, components: int = 1) -> None:
    """Fit the density to ``code(x)`` of uint8 ``images`` (eval mode) into the decoder's buffers:
    a Gaussian, or a mixture of ``components`` Gaussians (seeded, so a resumed run refits the same)."""
    codes = codes_of(method, code, images)
    decoder = unwrap(method.decoder)
    if components == 1:
        mean, chol = fit_gaussian(codes)
        decoder.prior_mean.copy_(mean.float())
        decoder.prior_chol.copy_(chol.float())
        return
    weights, means, chols = fit_mixture(codes, components)
    decoder.prior_weights.copy_(weights.float())
    decoder.prior_means.copy_(means.float())
    decoder.prior_chols.copy_(chols.float())


class PosteriorPrior:
    """`model.prior` (standard | fitted), `model.prior_components` and `model.prior_images` for a family whose ``encode(x)``
    returns q(z|x)'s mean and log-variance (the VAE, the VAE–GAN): with ``fitted``, the sampling
    Gaussian is refitted to the posterior means (buffers of the decoder, `add_prior_buffers`) and
    ``encode_latent`` whitens by it, so generate(encode_latent(x)) decodes the posterior mean."""

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.encode(x)[0]
        return whiten(unwrap(self.decoder), mean) if self.cfg.prior == "fitted" else mean

    @torch.no_grad()
    def fit_prior(self, train_images: torch.Tensor) -> None:
        if self.cfg.prior == "fitted":
            refit_prior(self, lambda x: self.encode(x)[0], train_images[: self.cfg.prior_images],
                        self.cfg.prior_components)

    def prepare(self, train_images: torch.Tensor) -> None:
        self.fit_prior(train_images)


def whiten(decoder, codes: torch.Tensor) -> torch.Tensor:
    """The inverse of from_prior: L^-1 (code - mean) for the Gaussian; for a mixture, the same with
    the component of highest responsibility, its first coordinate put back into that component's
    share of z_0 (see from_prior)."""
    if not hasattr(decoder, "prior_weights"):
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


@METHODS.register("autoencoder", aliases=("ae",))
class AutoencoderMethod(Method):
    name = "autoencoder"
    config_class = AutoencoderConfig
    has_encoder = True
    has_validation_loss = True
    ema_targets = ("encoder", "decoder")

    def __init__(self, cfg: AutoencoderConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        channels, size, _ = image_shape
        widths = widths_for(size, cfg.widths, cfg.base_width)
        self.encoder = ConvEncoder(channels, widths, cfg.latent_dim, cfg.activation, cfg.dropout,
                                   variational=False).to(device)
        self.decoder = ConvDecoder(channels, widths, cfg.latent_dim, cfg.activation, cfg.dropout,
                                   cfg.res_blocks).to(device)
        add_prior_buffers(self.decoder, cfg.latent_dim, device, cfg.prior_components)
        self.opt = make_optimizer(cfg.optim, [*self.encoder.parameters(), *self.decoder.parameters()], device)
        self.sched = make_scheduler(cfg.optim, self.opt)
        self.recon_loss = RECONSTRUCTION_LOSSES[cfg.recon_loss]

    def networks(self):
        return {"encoder": self.encoder, "decoder": self.decoder}

    def optimizers(self):
        return {"adam": self.opt}

    def schedulers(self):
        return {"lr": self.sched}

    def latent_shape(self):
        return (self.cfg.latent_dim,)

    def example_inputs(self):
        return {**super().example_inputs(), "decoder": (torch.zeros(1, self.cfg.latent_dim, device=self.device),)}

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.tanh(raw) if self.cfg.recon_loss == "mse" else torch.sigmoid(raw) * 2 - 1

    def _losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self.decoder(self.code(x))
        out = torch.tanh(raw) if self.cfg.recon_loss == "mse" else raw  # BCE takes logits
        recon = self.recon_loss(out, x).mean()
        return {"loss": recon, "recon": recon.detach()}

    def train_step(self, x, step):
        return self.stepper.minimize(self.opt, self._losses, x, clip=self.cfg.optim.grad_clip, agc=self.cfg.optim.agc)

    @torch.no_grad()
    def validation_step(self, x, generator):
        return self._losses(x)

    @torch.no_grad()
    def fit_prior(self, train_images: torch.Tensor) -> None:
        """The sampling density (a Gaussian, or a mixture of ``model.prior_components``), refitted to
        the codes of the first ``model.prior_images`` training images (eval mode, the current weights)."""
        refit_prior(self, self.code, train_images[: self.cfg.prior_images], self.cfg.prior_components)

    def prepare(self, train_images):
        self.fit_prior(train_images)  # so grids before the first epoch end decode codes of the right scale

    def generate(self, z):
        return self.decode(self.decoder(from_prior(self.decoder, z))).float()

    def encode_latent(self, x):
        """The whitened code L^-1 (code - mean): where generate() maps it back to this image."""
        return whiten(unwrap(self.decoder), self.code(x))

    @torch.inference_mode()
    def reconstruct(self, x):
        return self.decode(self.decoder(self.code(x))).float()
