"""What a caller may rely on a family for beyond training and sampling, as explicit abilities.

A family states an ability by subclassing it beside :class:`~genlab.methods.base.Method`, and a
caller asks with ``isinstance`` (a built model) or ``issubclass`` (a registered class, when a config
is resolved, so asking a family for what it cannot do is refused before anything runs). Each
ability's methods are abstract: a family that claims one and lacks a method cannot be built.
Diffusion's sampling contract lives with its samplers (:class:`genlab.samplers.diffusion.DiffusionChain`).
"""

from __future__ import annotations

import abc

import torch


class Reconstructs(abc.ABC):
    """Images back from themselves: `genlab reconstruct`, the ``recon`` metric, reconstruction grids."""

    @abc.abstractmethod
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> their reconstructions in [-1, 1]."""


class Encoder(Reconstructs):
    """A learned encoder into the family's latent space (a standard Gaussian, as for sampling)."""

    @abc.abstractmethod
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """A deterministic code of ``x`` such that ``generate(encode_latent(x))`` is its reconstruction:
        what latent families (latent diffusion, the latent GAN) build on and analyses interpolate."""


class PosteriorEncoder(Encoder):
    """An encoder that gives a Gaussian posterior q(z|x) (the VAE family): a latent traversal ranks
    dimensions by their KL."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x)."""


class Likelihood(abc.ABC):
    """A log-density of images: bits per dimension (the ``bpd`` metric)."""

    @abc.abstractmethod
    def log_likelihood(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Per-image log-density (nats) of continuous (dequantised) images ``x`` in [-1, 1], and how it
        was obtained ("exact", or the bound used). Options such as a bound's sample count are in the
        family's config (see ``Method.evaluation_keys``)."""

    def fit_likelihood(self, train_images: torch.Tensor) -> None:
        """Called once before :meth:`log_likelihood` with training images in [-1, 1], for a likelihood
        that needs statistics of the training data (a VAE's decoder scale); never the evaluated images."""
