"""What the encoder families share (the autoencoder, the VAE, the VAE-GAN): the convolutional
encoder and decoder sized by one set of config fields, the deterministic code, decoding, and the
latent prior a family samples from (N(0, I), or a density fitted to the codes after every epoch:
:mod:`genlab.models.latent_prior`).

Latent space: as for every family, generate(z) takes z ~ N(0, I). With a fitted prior, z is mapped
onto the fitted density before decoding and ``encode_latent`` whitens a code by it, so
generate(encode_latent(x)) decodes x's code: latent families and interpolation work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.config import check_choice, check_positive
from genlab.data.convert import to_model_range
from genlab.distributed import unwrap
from genlab.errors import GenlabError
from genlab.methods.abilities import Encoder, PosteriorEncoder
from genlab.methods.base import Method
from genlab.models.blocks import widths_for
from genlab.data.subsets import subset_indices
from genlab.models.latent_prior import add_prior_buffers, fit_gaussian, fit_mixture, from_prior, whiten
from genlab.models.vae import ConvDecoder, ConvEncoder


PRIOR_SUBSET_SEED = 0  # which training images a fitted prior sees: the same on every epoch and process


@dataclass
class EncoderDecoderConfig:
    """The ``model`` keys every encoder family has."""

    latent_dim: int = 128  # size of the code z (10 to 2048 are sensible; seed 003 compares 10 to 2048)
    widths: list[int] = field(default_factory=list)  # channels per resolution step; [] = 32, 64, ... (cap 512)
    base_width: int = 32  # first width when `widths` is empty
    activation: str = "leaky_relu"  # relu | leaky_relu (slope 0.2)
    res_blocks: int = 0  # residual blocks after each up-sampling step of the decoder (0 = the seeds' plain decoder)
    prior_images: int = 10_000  # a fitted prior: how many training images (a fixed random subset) it is fitted to
    prior_components: int = 1  # a fitted prior: 1 full-covariance Gaussian, or a mixture of K (Ghosh et al. use 10)

    def validate_shared(self, prefix: str) -> None:
        check_positive(f"{prefix}latent_dim", self.latent_dim)
        check_positive(f"{prefix}base_width", self.base_width)
        check_positive(f"{prefix}res_blocks", self.res_blocks, allow_zero=True)
        check_choice(f"{prefix}activation", self.activation, ("relu", "leaky_relu"))
        check_positive(f"{prefix}prior_images", self.prior_images)
        check_positive(f"{prefix}prior_components", self.prior_components)
        if self.prior_components > self.prior_images:  # each component needs codes to fit
            raise GenlabError(f"config key '{prefix}prior_components' ({self.prior_components}) exceeds "
                              f"{prefix}prior_images ({self.prior_images}): each component needs codes to fit")


@dataclass
class PosteriorConfig(EncoderDecoderConfig):
    """The keys of the families whose encoder gives a Gaussian posterior q(z|x) (VAE, VAE-GAN)."""

    prior: str = "standard"  # what samples are drawn from: standard (N(0, I), the VAE's prior) | fitted: a density
    #                          fitted to the posterior means after every epoch (ex-post density estimation, Ghosh
    #                          et al. 2020), so samples come from where the codes are
    logvar_limit: float = 10.0  # |log-variance| of q(z|x) is bounded smoothly by this (0 = unbounded)

    def validate_shared(self, prefix: str) -> None:
        super().validate_shared(prefix)
        check_choice(f"{prefix}prior", self.prior, ("standard", "fitted"))
        check_positive(f"{prefix}logvar_limit", self.logvar_limit, allow_zero=True)


@torch.no_grad()
def codes_of(method: Method, code, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``code(x)`` of uint8 ``images``, batch by batch on the method's device, in eval mode (float32)."""
    with method.evaluating():
        return torch.cat([code(to_model_range(images[i : i + batch].to(method.device))).float()
                          for i in range(0, len(images), batch)])


def refit_prior(method: Method, code, images: torch.Tensor, components: int = 1) -> None:
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


class EncoderDecoderMethod(Method, Encoder):
    """A convolutional encoder (``self.encoder``) and decoder (``self.decoder``) with a latent prior.
    A family says how its code is read (:meth:`code`) and whether its prior is fitted."""

    ema_targets = ("encoder", "decoder")
    sigmoid_output = False  # the decoder's output non-linearity: tanh, or a sigmoid (a BCE reconstruction loss)

    def build_encoder_decoder(self, variational: bool, dropout: float = 0.0) -> list[int]:
        """The encoder, then the decoder (initialised in that order), and the prior's buffers when the
        prior is fitted; returns the widths per resolution step."""
        cfg, (channels, size, _) = self.cfg, self.image_shape
        widths = widths_for(size, cfg.widths, cfg.base_width)
        self.nets.encoder = ConvEncoder(channels, widths, cfg.latent_dim, cfg.activation, dropout,
                                        variational=variational).to(self.device)
        self.nets.decoder = ConvDecoder(channels, widths, cfg.latent_dim, cfg.activation, dropout,
                                        cfg.res_blocks).to(self.device)
        if self.prior_fitted():
            add_prior_buffers(self.decoder, cfg.latent_dim, self.device, cfg.prior_components)
        return widths

    def prior_fitted(self) -> bool:
        """Whether samples come from a density fitted to the codes (else N(0, I))."""
        return True

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code of images in [-1, 1] (a VAE's posterior mean)."""
        raise NotImplementedError

    def latent_shape(self):
        return (self.cfg.latent_dim,)

    def example_inputs(self):
        return {**super().example_inputs(), "decoder": (torch.zeros(1, self.cfg.latent_dim, device=self.device),)}

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in [-1, 1] with the non-linearity the reconstruction loss implies."""
        return torch.sigmoid(raw) * 2 - 1 if self.sigmoid_output else torch.tanh(raw)

    def generate(self, z):
        if self.prior_fitted():
            z = from_prior(self.decoder, z)
        return self.decode(self.decoder(z)).float()

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """x's code in the standard-normal latent space: whitened by the fitted prior when there is one."""
        code = self.code(x)
        return whiten(self.decoder, code) if self.prior_fitted() else code

    @torch.inference_mode()
    def reconstruct(self, x):
        """Decode the deterministic code (a VAE's posterior mean): the deterministic reconstruction."""
        return self.decode(self.decoder(self.code(x))).float()

    @torch.no_grad()
    def fit_prior(self, train_images: torch.Tensor) -> None:
        """The sampling density (a Gaussian, or a mixture of ``model.prior_components``), refitted to
        the codes of ``model.prior_images`` training images, a random subset fixed by PRIOR_SUBSET_SEED
        (the split is stored sorted by key, by class for a folder source: its first images would be
        one class), in eval mode with the current weights."""
        if self.prior_fitted():
            index = subset_indices(len(train_images), self.cfg.prior_images, PRIOR_SUBSET_SEED).to(train_images.device)
            refit_prior(self, self.code, train_images[index], self.cfg.prior_components)

    def prepare(self, train_images: torch.Tensor) -> None:
        self.fit_prior(train_images)  # so grids before the first epoch end decode codes of the right scale


class PosteriorMethod(EncoderDecoderMethod, PosteriorEncoder):
    """An encoder family whose encoder gives q(z|x) = N(mean, exp(logvar)) (the VAE, the VAE-GAN)."""

    def prior_fitted(self) -> bool:
        return self.cfg.prior == "fitted"

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x). The log-variance is bounded smoothly,
        L * tanh(logvar / L): at a high learning rate an unbounded one can run away (exp overflow,
        KL in the billions, seen with seed 002's lr 0.005); tanh keeps a gradient everywhere."""
        mean, logvar = self.encoder(x)
        limit = self.cfg.logvar_limit
        return mean, (limit * torch.tanh(logvar / limit) if limit > 0 else logvar)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]
