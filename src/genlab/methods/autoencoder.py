"""A deterministic convolutional autoencoder (seed 003's baseline): the VAE's encoder and decoder
trained on reconstruction alone.

It has no prior to sample from, so after every epoch it fits one: a Gaussian with full covariance
(or a mixture) to the codes of the training images (the first ``model.prior_images``), kept as
buffers of the decoder so checkpoints, inference snapshots and EMA carry it
(:mod:`genlab.models.latent_prior`). Its latent space, as every family's, is then a standard
Gaussian: ``generate(z)`` decodes mean + L z (L the Cholesky factor of the covariance), and
``encode_latent(x)`` returns the whitened code L^-1 (code - mean), so sampling, interpolation and
latent diffusion over it work as for a VAE. This is the "fit a density to the codes" way of sampling
a plain autoencoder (Ghosh et al. 2020, "From variational to deterministic autoencoders", section 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.config import OptimConfig, check_choice
from genlab.errors import GenlabError
from genlab.losses.vae import RECONSTRUCTION_LOSSES
from genlab.methods import METHODS
from genlab.methods.encoder_decoder import EncoderDecoderConfig, EncoderDecoderMethod
from genlab.methods.step import make_optimizer, make_scheduler


@dataclass
class AutoencoderConfig(EncoderDecoderConfig):
    dropout: float = 0.0
    recon_loss: str = "mse"  # mse (through tanh) | bce (through sigmoid)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self, prefix: str = "model.") -> None:
        self.validate_shared(prefix)
        check_choice(f"{prefix}recon_loss", self.recon_loss, tuple(RECONSTRUCTION_LOSSES))
        if not 0 <= self.dropout < 1:
            raise GenlabError(f"config key '{prefix}dropout' must be in [0, 1), got {self.dropout}")


@METHODS.register("autoencoder", aliases=("ae",))
class AutoencoderMethod(EncoderDecoderMethod):
    name = "autoencoder"
    config_class = AutoencoderConfig
    has_validation_loss = True

    def __init__(self, cfg: AutoencoderConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        self.build_encoder_decoder(variational=False, dropout=cfg.dropout)
        self.opt = make_optimizer(cfg.optim, [*self.encoder.parameters(), *self.decoder.parameters()], device)
        self.sched = make_scheduler(cfg.optim, self.opt)
        self.recon_loss = RECONSTRUCTION_LOSSES[cfg.recon_loss]
        self.sigmoid_output = cfg.recon_loss == "bce"

    def optimizers(self):
        return {"adam": self.opt}

    def schedulers(self):
        return {"lr": self.sched}

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

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
