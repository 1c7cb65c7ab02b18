"""Variational autoencoder (Kingma & Welling 2014) with a convolutional encoder and decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from genlab.config import OptimConfig, check_choice, check_positive
from genlab.errors import GenlabError
from genlab.losses.vae import RECONSTRUCTION_LOSSES, kl_divergence
from genlab.methods import METHODS
from genlab.methods.abilities import Likelihood
from genlab.methods.encoder_decoder import PosteriorConfig, PosteriorMethod
from genlab.methods.step import make_optimizer, make_scheduler
from genlab.models.latent_prior import is_mixture, log_density


@dataclass
class VAEConfig(PosteriorConfig):
    dropout: float = 0.0  # dropout after every hidden block of encoder and decoder
    recon_loss: str = "mse"  # mse (decoder output through tanh) | bce (through sigmoid)
    kl_weight: float = 1.0  # weight of the KL term; see genlab.losses.vae for the reduction convention
    decoder_variance: str = "fixed"  # fixed (MSE/BCE + kl_weight * KL) | optimal: sigma-VAE (Rybkin et al. 2021), the
    #                                  Gaussian NLL with sigma^2 = the batch's MSE, + kl_weight * KL / D (the ELBO per
    #                                  dimension at kl_weight 1: no hand-set balance)
    kl_cycle_steps: int = 0  # cyclical KL annealing (Fu et al. 2019): cycle length in steps; 0 = off
    kl_cycle_ratio: float = 0.5  # share of each cycle over which the KL weight rises linearly from 0
    iw_samples: int = 64  # k of the importance-weighted bound on log p(x) that bits per dimension report
    optim: OptimConfig = field(default_factory=OptimConfig)  # Adam, lr 1e-3, betas (0.9, 0.999)

    # Keys of genlab 0.1 presets and checkpoints, and where they live now.
    RENAMED: ClassVar[dict[str, tuple[str, ...]]] = {
        "optimizer": ("optim.name",), "lr": ("optim.lr",), "betas": ("optim.betas",),
        "weight_decay": ("optim.weight_decay",), "lr_gamma": ("optim.lr_gamma",), "grad_clip": ("optim.grad_clip",)}

    def validate(self, prefix: str = "model.") -> None:
        self.validate_shared(prefix)
        check_positive(f"{prefix}kl_cycle_steps", self.kl_cycle_steps, allow_zero=True)
        check_positive(f"{prefix}iw_samples", self.iw_samples)
        if not 0 < self.kl_cycle_ratio <= 1:
            raise GenlabError(f"config key '{prefix}kl_cycle_ratio' must be in (0, 1], got {self.kl_cycle_ratio}")
        check_choice(f"{prefix}recon_loss", self.recon_loss, tuple(RECONSTRUCTION_LOSSES))
        check_choice(f"{prefix}decoder_variance", self.decoder_variance, ("fixed", "optimal"))
        if self.decoder_variance == "optimal" and self.recon_loss != "mse":
            raise GenlabError(f"{prefix}decoder_variance=optimal is a Gaussian decoder's variance; it needs "
                              f"{prefix}recon_loss=mse, got {self.recon_loss}")
        if not 0 <= self.dropout < 1:
            raise GenlabError(f"config key '{prefix}dropout' must be in [0, 1), got {self.dropout}")


@METHODS.register("vae")
class VAEMethod(PosteriorMethod, Likelihood):
    name = "vae"
    config_class = VAEConfig
    evaluation_keys = ("iw_samples",)
    has_validation_loss = True
    accepts_adversary = True  # decoded prior samples also minimise a frozen detector's loss (`genlab detect loop`)

    def __init__(self, cfg: VAEConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        self.build_encoder_decoder(variational=True, dropout=cfg.dropout)
        self.opt = make_optimizer(cfg.optim, [*self.encoder.parameters(), *self.decoder.parameters()], device)
        self.sched = make_scheduler(cfg.optim, self.opt)
        self.recon_loss = RECONSTRUCTION_LOSSES[cfg.recon_loss]
        self.sigmoid_output = cfg.recon_loss == "bce"
        self.decoder_sigma: float | None = None  # the Gaussian decoder's scale, fitted by fit_likelihood

    def optimizers(self):
        return {"adam": self.opt}  # (the key predates AdamW and RMSprop; kept so old checkpoints load)

    def schedulers(self):
        return {"lr": self.sched}

    def kl_beta(self, step: int) -> float:
        """Cyclical annealing (Fu et al. 2019, eq. 6 with a linear f): within each cycle of
        ``kl_cycle_steps`` steps, beta rises linearly from 0 to 1 over the first ``kl_cycle_ratio`` of
        the cycle, then stays 1. Validation always uses beta = 1, so its losses compare across epochs."""
        if not self.cfg.kl_cycle_steps:
            return 1.0
        tau = (step % self.cfg.kl_cycle_steps) / self.cfg.kl_cycle_steps
        return min(1.0, tau / self.cfg.kl_cycle_ratio)

    def _losses(self, x: torch.Tensor, noise: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        mean, logvar = self.encode(x)
        z = mean + (0.5 * logvar).exp() * noise  # reparameterisation trick (Kingma & Welling 2014, eq. 4)
        raw = self.decoder(z)
        out = torch.tanh(raw) if self.cfg.recon_loss == "mse" else raw  # BCE loss takes logits
        kl = kl_divergence(mean, logvar)
        if self.cfg.decoder_variance == "optimal":
            # sigma-VAE (Rybkin et al. 2021, section 3.2): the decoder is N(x^, sigma^2 I) with the
            # maximum-likelihood sigma^2 = the batch's mean squared error (floored at 1e-6); its
            # gradient through sigma is zero at the optimum, so it is taken as a constant. Per
            # dimension: NLL = 0.5 (x - x^)^2 / sigma^2 + log sigma + 0.5 log 2 pi, and KL / D.
            squared = (out.float() - x.float()).square()
            var = squared.mean().detach().clamp(min=1e-6)
            recon = (0.5 * squared / var + 0.5 * torch.log(var) + 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
            loss = recon + beta * self.cfg.kl_weight * kl / x[0].numel()
        else:
            recon = self.recon_loss(out, x)
            loss = recon + beta * self.cfg.kl_weight * kl
        return {"loss": loss.mean(), "recon": recon.mean(), "kl": kl.mean()}

    def _adversarial_losses(self, x, noise, prior, beta):
        """The VAE's losses plus the frozen detector's term on decoded prior samples: what `genlab
        detect loop` fine-tunes, since prior samples are what the VAE generates."""
        out = self._losses(x, noise, beta)
        out["adversary"] = self.adversary_loss(self.generate(prior))
        out["loss"] = out["loss"] + out["adversary"]
        return out

    def train_step(self, x, step):
        noise = torch.randn(x.shape[0], self.cfg.latent_dim, device=x.device)  # for the whole batch, before any split
        beta = self.kl_beta(step)
        if self.adversary is not None:
            prior = torch.randn(x.shape[0], self.cfg.latent_dim, device=x.device)
            stats = self.stepper.minimize(self.opt, lambda x, noise, prior: self._adversarial_losses(x, noise, prior, beta),
                                          x, noise, prior, clip=self.cfg.optim.grad_clip, agc=self.cfg.optim.agc)
        else:
            stats = self.stepper.minimize(self.opt, lambda x, noise: self._losses(x, noise, beta), x, noise,
                                          clip=self.cfg.optim.grad_clip, agc=self.cfg.optim.agc)
        if self.cfg.kl_cycle_steps:
            stats["kl_beta"] = torch.tensor(beta)
        return stats

    @torch.no_grad()
    def validation_step(self, x, generator):
        noise = torch.randn(x.shape[0], self.cfg.latent_dim, generator=generator).to(x.device)
        return self._losses(x, noise)

    @torch.inference_mode()
    def fit_likelihood(self, train_images):
        """The Gaussian decoder's single scale sigma, by maximum likelihood on the reconstructions of
        training images: sigma^2 = mean squared reconstruction error."""
        squared = 0.0
        for i in range(0, len(train_images), 256):
            batch = train_images[i : i + 256]
            squared += (self.reconstruct(batch) - batch).square().sum().item()
        self.decoder_sigma = max((squared / train_images.numel()) ** 0.5, 1e-3)
        self._calibration_count = len(train_images)

    @torch.inference_mode()
    def log_likelihood(self, x):
        """Importance-weighted lower bound on log p(x) (Burda et al. 2016, eq. 8) with k =
        ``model.iw_samples`` samples: log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x). The
        decoder is read as a Gaussian with mean decode(z) and the scale fit_likelihood found."""
        if self.decoder_sigma is None:
            raise GenlabError("the VAE's likelihood needs fit_likelihood(training images) first (its decoder scale)")
        sigma, k = self.decoder_sigma, self.cfg.iw_samples
        mean, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        d = x[0].numel()
        log_w = []
        for _ in range(k):
            eps = torch.randn_like(mean)
            z = mean + std * eps
            recon = self.decode(self.decoder(z)).float()
            log_px = -0.5 * ((x - recon) / sigma).square().flatten(1).sum(1) - d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
            log_pz = self._log_prior(z)
            log_qz = -0.5 * (eps.square() + math.log(2 * math.pi)).sum(1) - (0.5 * logvar).sum(1)
            log_w.append(log_px + log_pz - log_qz)
        bound = torch.logsumexp(torch.stack(log_w), dim=0) - math.log(k)
        return bound, (f"importance-weighted bound (Burda et al. 2016), k={k}, p(z) = {self._prior_name()}, "
                       f"Gaussian decoder sigma={sigma:.4f} (in [-1,1] units, ML fit on {self._calibration_count} "
                       "training images)")

    def _log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of the prior samples are drawn from: N(0, I), or the fitted Gaussian or mixture
        (a bound of the model that samples, not of the one the ELBO trained)."""
        if self.prior_fitted():
            return log_density(self.decoder, z).float()
        return -0.5 * (z.square() + math.log(2 * math.pi)).sum(1)

    def _prior_name(self) -> str:
        if not self.prior_fitted():
            return "N(0, I), the prior samples come from"
        if is_mixture(self.decoder):
            return f"the fitted mixture of {self.cfg.prior_components} Gaussians samples come from"
        return "the fitted full-covariance Gaussian samples come from"
