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
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self, prefix: str = "model.") -> None:
        check_positive(f"{prefix}latent_dim", self.latent_dim)
        check_positive(f"{prefix}base_width", self.base_width)
        check_positive(f"{prefix}prior_images", self.prior_images)
        check_positive(f"{prefix}res_blocks", self.res_blocks, allow_zero=True)
        check_choice(f"{prefix}activation", self.activation, ("relu", "leaky_relu"))
        check_choice(f"{prefix}recon_loss", self.recon_loss, tuple(RECONSTRUCTION_LOSSES))
        if not 0 <= self.dropout < 1:
            raise GenlabError(f"config key '{prefix}dropout' must be in [0, 1), got {self.dropout}")


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


@torch.no_grad()
def add_prior_buffers(decoder: torch.nn.Module, latent_dim: int, device: torch.device) -> None:
    """The sampling Gaussian over codes (mean, Cholesky factor of the covariance), N(0, I) until
    fitted: buffers of the decoder, so every snapshot and the EMA carry them."""
    decoder.register_buffer("prior_mean", torch.zeros(latent_dim, device=device))
    decoder.register_buffer("prior_chol", torch.eye(latent_dim, device=device))


def from_prior(decoder: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Standard-normal ``z`` -> a code of the decoder's fitted Gaussian, mean + L z."""
    decoder = unwrap(decoder)
    return decoder.prior_mean + z.float() @ decoder.prior_chol.T


def refit_prior(method, code, images: torch.Tensor) -> None:
    """Fit the Gaussian to ``code(x)`` of uint8 ``images`` (eval mode) into the decoder's buffers."""
    with method.evaluating():
        codes = torch.cat([code(to_model_range(images[i : i + 256].to(method.device))).float()
                           for i in range(0, len(images), 256)])
    mean, chol = fit_gaussian(codes)
    decoder = unwrap(method.decoder)
    decoder.prior_mean.copy_(mean.float())
    decoder.prior_chol.copy_(chol.float())


class PosteriorPrior:
    """`model.prior` (standard | fitted) and `model.prior_images` for a family whose ``encode(x)``
    returns q(z|x)'s mean and log-variance (the VAE, the VAE–GAN): with ``fitted``, the sampling
    Gaussian is refitted to the posterior means (buffers of the decoder, `add_prior_buffers`) and
    ``encode_latent`` whitens by it, so generate(encode_latent(x)) decodes the posterior mean."""

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.encode(x)[0]
        return whiten(unwrap(self.decoder), mean) if self.cfg.prior == "fitted" else mean

    @torch.no_grad()
    def fit_prior(self, train_images: torch.Tensor) -> None:
        if self.cfg.prior == "fitted":
            refit_prior(self, lambda x: self.encode(x)[0], train_images[: self.cfg.prior_images])

    def prepare(self, train_images: torch.Tensor) -> None:
        self.fit_prior(train_images)


def whiten(decoder, codes: torch.Tensor) -> torch.Tensor:
    """L^-1 (code - mean) with the decoder's fitted Gaussian."""
    centred = (codes.float() - decoder.prior_mean)[:, :, None]
    return torch.linalg.solve_triangular(decoder.prior_chol, centred, upper=False)[:, :, 0]


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
        add_prior_buffers(self.decoder, cfg.latent_dim, device)
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
        """The sampling Gaussian, refitted to the codes of the first ``model.prior_images`` training
        images (eval mode, the current weights)."""
        refit_prior(self, self.code, train_images[: self.cfg.prior_images])

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
