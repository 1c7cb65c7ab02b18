"""A KL-regularised autoencoder with an image-shaped latent (Rombach et al. 2022, "High-resolution
image synthesis with latent diffusion models", section 3 and appendix G), trained as the frozen
first stage of latent EDM and flow matching (``init.from_run``).

Its loss is the reconstruction of a sample of q(z|x) plus a KL to N(0, I) with a very small weight
(their KL-f models: 1e-6 on sums over pixels and latents): the KL only keeps the latent's scale
from drifting, while the image detail is left to the latent; the latent diffusion model then learns
the latents' distribution. Rombach et al. add a perceptual (LPIPS) and a patch-GAN loss; here the
reconstruction is the squared error alone (no pretrained network can be used in genlab's CPU
setting), which gives blurrier first stages than theirs. Its own samples, decoded from N(0, I), are
poor by design: the latent is not regularised into the prior.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.config import OptimConfig, check_positive
from genlab.errors import GenlabError
from genlab.losses.vae import kl_divergence
from genlab.methods import METHODS
from genlab.methods.abilities import Encoder
from genlab.methods.base import Method
from genlab.methods.step import make_optimizer, make_scheduler
from genlab.models.spatial_autoencoder import SpatialDecoder, SpatialEncoder, latent_side, posterior_sample


def _first_stage_optim() -> OptimConfig:
    # Rombach et al. scale a base lr of 4.5e-6 by the batch (5.4e-5 at 12 images per GPU); 1e-4 for
    # genlab's larger batches and much shorter runs
    return OptimConfig(lr=1e-4)


@dataclass
class KLAutoencoderConfig:
    widths: list[int] = field(default_factory=lambda: [64, 128])  # channels per stride-2 step: f = 2^len(widths)
    latent_channels: int = 4  # the latent's channels (their KL-f4/f8 models: 3 or 4)
    kl_weight: float = 1e-6  # weight of KL(q(z|x) || N(0, I)) against the reconstruction, both summed per image
    optim: OptimConfig = field(default_factory=_first_stage_optim)

    def validate(self, prefix: str = "model.") -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise GenlabError(f"config key '{prefix}widths' needs positive channel counts, got {self.widths}")
        check_positive(f"{prefix}latent_channels", self.latent_channels)
        check_positive(f"{prefix}kl_weight", self.kl_weight, allow_zero=True)


@METHODS.register("kl-autoencoder", aliases=("klae",))
class KLAutoencoderMethod(Method, Encoder):
    name = "kl-autoencoder"
    config_class = KLAutoencoderConfig
    has_validation_loss = True
    latent_kind = "image"
    ema_targets = ("encoder", "decoder")

    @classmethod
    def check_config(cls, cfg) -> None:
        f = 2 ** len(cfg.model.widths)
        if cfg.data.size % f:
            raise GenlabError(f"data.size={cfg.data.size}: model.widths has {len(cfg.model.widths)} stride-2 steps "
                              f"(f = {f}), so the side must divide by {f}")

    def __init__(self, cfg: KLAutoencoderConfig, image_shape, device):
        super().__init__(cfg, image_shape, device)
        channels, size, _ = image_shape
        self.nets.encoder = SpatialEncoder(channels, cfg.widths, cfg.latent_channels).to(device)
        self.nets.decoder = SpatialDecoder(channels, cfg.widths, cfg.latent_channels).to(device)
        self.side = latent_side(size, cfg.widths)
        self.opt = make_optimizer(cfg.optim, [*self.encoder.parameters(), *self.decoder.parameters()], device)
        self.sched = make_scheduler(cfg.optim, self.opt)

    def optimizers(self):
        return {"adam": self.opt}

    def schedulers(self):
        return {"lr": self.sched}

    def latent_shape(self):
        return (self.cfg.latent_channels, self.side, self.side)

    def example_inputs(self):
        return {**super().example_inputs(), "decoder": (torch.zeros(1, *self.latent_shape(), device=self.device),)}

    def _losses(self, x, noise):
        mean, logvar = self.encoder(x)
        out = self.decoder(posterior_sample(mean, logvar, noise)).float()
        dims = x[0].numel()
        recon = (out - x).square().flatten(1).sum(1)  # per image, summed over pixels
        kl = kl_divergence(mean.float().flatten(1), logvar.float().flatten(1))
        loss = ((recon + self.cfg.kl_weight * kl) / dims).mean()  # per dimension, so lr does not depend on size
        return {"loss": loss, "mse": (recon / dims).mean().detach(), "kl": kl.mean().detach()}

    def train_step(self, x, step):
        noise = torch.randn(x.shape[0], *self.latent_shape(), device=x.device)
        return self.stepper.minimize(self.opt, self._losses, x, noise, clip=self.cfg.optim.grad_clip,
                                     agc=self.cfg.optim.agc)

    @torch.no_grad()
    def validation_step(self, x, generator):
        noise = torch.randn((x.shape[0], *self.latent_shape()), generator=generator).to(x.device)
        return self._losses(x, noise)

    def encode_latent(self, x):
        """The posterior mean: the deterministic code latent diffusion learns."""
        return self.encoder(x)[0].float()

    def generate(self, z):
        return self.decoder(z).float().clamp(-1, 1)

    @torch.inference_mode()
    def reconstruct(self, x):
        return self.generate(self.encode_latent(x))
