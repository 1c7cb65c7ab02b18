"""VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric"):
a VAE whose decoder is also a GAN generator, and whose reconstruction error is measured in the
discriminator's feature space, where it follows perceptual similarity better than pixels do.

Algorithm 1 of the paper, with X a batch, Z ~ q(z|X), X~ = Dec(Z), Zp ~ N(0, I), Xp = Dec(Zp):

    L_prior = KL(q(z|x) || p(z))
    L_llike = || Dis_l(X) - Dis_l(X~) ||^2          (section 2.2: a Gaussian in Dis's l-th layer)
    L_GAN   = log Dis(X) + log(1 - Dis(X~)) + log(1 - Dis(Xp))

    Enc <- grad(L_prior + L_llike)          Dec <- grad(gamma * L_llike - L_GAN)          Dis <- grad(L_GAN)

Each network steps on its own loss: the encoder's step holds the decoder and discriminator fixed,
the decoder's holds the encoder and discriminator, the discriminator's sees detached images. The
decoder's GAN term uses the non-saturating form (-log Dis(.)), as the paper's code does. Genlab's
conventions: the feature and pixel terms are means over their elements and KL the sum over latent
dimensions (genlab/losses/vae.py), so ``kl_weight`` reads as the VAE family's. Options: a pixel
term beside the feature term (``pixel_weight``), and which fakes the GAN term sees
(``fakes``: both, as the paper, or only reconstructions or only prior samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genlab.config import OptimConfig, check_choice, check_positive
from genlab.distributed import unwrap
from genlab.losses.gan import d_logistic_fake, d_logistic_real, g_nonsaturating_loss
from genlab.losses.vae import kl_divergence
from genlab.methods import METHODS
from genlab.methods.encoder_decoder import PosteriorConfig, PosteriorMethod
from genlab.methods.step import decay_schedulers, frozen, make_optimizer
from genlab.models.blocks import widths_for
from genlab.models.dcgan import DCGANDiscriminator, dcgan_init_
from genlab.models.latent_prior import from_prior


def _optim() -> OptimConfig:
    return OptimConfig(lr=3e-4, betas=[0.5, 0.999])  # Larsen et al.: RMSProp 3e-4; Adam with DCGAN's beta1 here


@dataclass
class VAEGANConfig(PosteriorConfig):
    d_widths: list[int] = field(default_factory=list)  # discriminator channels; [] = the same as widths
    kl_weight: float = 1.0  # weight of L_prior in the encoder's loss (KL summed over dimensions)
    gamma: float = 1.0  # weight of L_llike against L_GAN in the decoder's loss (the paper's gamma)
    pixel_weight: float = 0.0  # a pixel MSE term beside L_llike, in the encoder's and decoder's losses; 0 = off
    fakes: str = "both"  # what the GAN term sees as fake: both (reconstructions and prior samples) | recon | samples
    enc_optim: OptimConfig = field(default_factory=_optim)
    dec_optim: OptimConfig = field(default_factory=_optim)
    d_optim: OptimConfig = field(default_factory=_optim)

    def validate(self, prefix: str = "model.") -> None:
        self.validate_shared(prefix)
        for key in ("kl_weight", "gamma", "pixel_weight"):
            check_positive(f"{prefix}{key}", getattr(self, key), allow_zero=True)
        check_choice(f"{prefix}fakes", self.fakes, ("both", "recon", "samples"))


@METHODS.register("vaegan", aliases=("vae-gan",))
class VAEGANMethod(PosteriorMethod):
    """With ``model.prior=fitted`` the GAN term's prior samples in training come from the fitted
    density too, so the decoder is trained adversarially where it will be sampled."""

    name = "vaegan"
    config_class = VAEGANConfig
    has_validation_step = True  # reconstruction (pixel and feature), KL and D's loss on held-out images

    def __init__(self, cfg: VAEGANConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        widths = self.build_encoder_decoder(variational=True)
        channels, size, _ = image_shape
        d_widths = widths_for(size, cfg.d_widths or widths, cfg.base_width, "model.d_widths")
        # layer norm in D: its features are compared image by image, so no batch coupling
        self.nets.discriminator = DCGANDiscriminator(channels, d_widths, norm="layer", size=size).to(device)
        dcgan_init_(self.discriminator)
        self.opt_enc = make_optimizer(cfg.enc_optim, self.encoder.parameters(), device)
        self.opt_dec = make_optimizer(cfg.dec_optim, self.decoder.parameters(), device)
        self.opt_d = make_optimizer(cfg.d_optim, self.discriminator.parameters(), device)
        self._schedulers = decay_schedulers(encoder=(cfg.enc_optim, self.opt_enc), decoder=(cfg.dec_optim, self.opt_dec),
                                            discriminator=(cfg.d_optim, self.opt_d))

    def optimizers(self):
        return {"encoder": self.opt_enc, "decoder": self.opt_dec, "discriminator": self.opt_d}

    def schedulers(self):
        return self._schedulers

    def _parts(self, x, eps, zp, discriminator):
        """Everything the three losses share, on one micro-batch."""
        mean, logvar = self.encode(x)
        recon = torch.tanh(self.decoder(mean + (0.5 * logvar).exp() * eps))
        prior = torch.tanh(self.decoder(zp))
        real_out, real_feat = discriminator.forward_with_features(x)
        recon_out, recon_feat = discriminator.forward_with_features(recon)
        prior_out = discriminator(prior)
        return {"mean": mean, "logvar": logvar, "recon": recon, "prior": prior, "real_out": real_out,
                "real_feat": real_feat, "recon_out": recon_out, "recon_feat": recon_feat, "prior_out": prior_out}

    def _reconstruction(self, p, x):
        llike = (p["real_feat"].float() - p["recon_feat"].float()).square().flatten(1).mean(1).mean()
        pixel = (p["recon"].float() - x.float()).square().flatten(1).mean(1).mean()
        return llike, pixel

    def _fake_outputs(self, p):
        return {"both": [p["recon_out"], p["prior_out"]], "recon": [p["recon_out"]],
                "samples": [p["prior_out"]]}[self.cfg.fakes]

    def train_step(self, x, step):
        cfg, n = self.cfg, x.shape[0]
        eps = torch.randn(n, cfg.latent_dim, device=x.device)  # drawn for the whole batch, before any split
        zp = torch.randn(n, cfg.latent_dim, device=x.device)
        if self.prior_fitted():  # the GAN term trains the decoder on the codes it will be sampled at
            zp = from_prior(self.decoder, zp).detach()
        plain_d = unwrap(self.discriminator)

        # 1. Discriminator: L_GAN on real images and detached fakes.
        def d_objective(x, eps, zp):
            with torch.no_grad():
                mean, logvar = self.encode(x)
                fakes = {"recon": torch.tanh(self.decoder(mean + (0.5 * logvar).exp() * eps)),
                         "prior": torch.tanh(self.decoder(zp))}
            outs = [self.discriminator(fakes[k]) for k in (("recon", "prior") if cfg.fakes == "both" else
                                                           ("recon",) if cfg.fakes == "recon" else ("prior",))]
            real = self.discriminator(x)
            # L_GAN on the discriminator's side (Goodfellow et al. 2014, eq. 1): -log D(x) - sum log(1 - D(fake))
            loss = d_logistic_real(real).mean() + sum(d_logistic_fake(o).mean() for o in outs)
            return {"loss": loss, "d_real": torch.sigmoid(real.detach().float()).mean(),
                    "d_fake": torch.sigmoid(outs[0].detach().float()).mean()}

        d = self.stepper.minimize(self.opt_d, d_objective, x, eps, zp, clip=cfg.d_optim.grad_clip, agc=cfg.d_optim.agc)

        # 2. Encoder: L_prior + L_llike (+ pixel), decoder and discriminator held.
        def enc_objective(x, eps, zp):
            with frozen(self.decoder, plain_d):
                p = self._parts(x, eps, zp, plain_d)
            kl = kl_divergence(p["mean"], p["logvar"]).mean()
            llike, pixel = self._reconstruction(p, x)
            loss = cfg.kl_weight * kl + llike + cfg.pixel_weight * pixel
            return {"loss": loss, "kl": kl.detach(), "llike": llike.detach(), "pixel": pixel.detach()}

        enc = self.stepper.minimize(self.opt_enc, enc_objective, x, eps, zp, clip=cfg.enc_optim.grad_clip,
                                    agc=cfg.enc_optim.agc)

        # 3. Decoder: gamma * (L_llike + pixel) - L_GAN (non-saturating), encoder and discriminator held.
        def dec_objective(x, eps, zp):
            with frozen(self.encoder, plain_d):
                p = self._parts(x, eps, zp, plain_d)
            llike, pixel = self._reconstruction(p, x)
            fooled = sum(g_nonsaturating_loss(o).mean() for o in self._fake_outputs(p))
            return {"loss": cfg.gamma * (llike + cfg.pixel_weight * pixel) + fooled, "gan": fooled.detach()}

        dec = self.stepper.minimize(self.opt_dec, dec_objective, x, eps, zp, clip=cfg.dec_optim.grad_clip,
                                    agc=cfg.dec_optim.agc)
        return {"loss_d": d["loss"], "d_real": d["d_real"], "d_fake": d["d_fake"], "kl": enc["kl"],
                "llike": enc["llike"], "pixel": enc["pixel"], "loss_enc": enc["loss"], "loss_dec": dec["loss"],
                "gan_g": dec["gan"]}

    @torch.no_grad()
    def validation_step(self, x, generator):
        eps = torch.randn(x.shape[0], self.cfg.latent_dim, generator=generator).to(x.device)
        zp = torch.randn(x.shape[0], self.cfg.latent_dim, generator=generator).to(x.device)
        p = self._parts(x, eps, zp, unwrap(self.discriminator))  # (forward_with_features is not DDP's)
        llike, pixel = self._reconstruction(p, x)
        return {"kl": kl_divergence(p["mean"], p["logvar"]).mean(), "llike": llike, "pixel": pixel}
