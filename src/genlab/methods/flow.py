"""RealNVP (Dinh et al. 2017): a normalizing flow trained by exact maximum likelihood.

The model density of a dequantised image x in [-1, 1] is, by the change of variables,
log p(x) = log N(f(g(x)); 0, I) + log|det df/dy| + log|det dg/dx|, where g is the fixed logit
pre-processing (with the [-1, 1] -> [0, 1] map) and f the flow. Training minimises bits per
dimension on the 0-255 scale (genlab.data.convert.bits_per_dim), which is the reported number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from genlab.config import OptimConfig, check_positive
from genlab.data.convert import LEVELS, bits_per_dim, dequantize, to_model_range
from genlab.distributed import unwrap
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.methods.abilities import Likelihood, Reconstructs
from genlab.methods.base import Method
from genlab.methods.step import make_optimizer, make_scheduler
from genlab.models.flow import RealNVP, logit_postprocess, logit_preprocess

PREPARE_IMAGES = 512  # training images whose statistics initialise the activation normalisations


@dataclass
class RealNVPConfig:
    scales: int = 2  # scales of the multi-scale architecture; the image side must divide by 2^(scales-1)
    width: int = 64  # channels of the s/t residual networks at the first scale (doubled at each scale)
    blocks: int = 4  # residual blocks per s/t network
    alpha: float = 0.05  # logit pre-processing: y = logit(alpha + (1 - 2 alpha) x) (Dinh et al. 2017, section 4.1)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=5e-5, grad_clip=100.0))

    def validate(self, prefix: str = "model.") -> None:
        for key in ("scales", "width", "blocks"):
            check_positive(f"{prefix}{key}", getattr(self, key))
        if not 0 < self.alpha < 0.5:
            raise GenlabError(f"config key '{prefix}alpha' must be in (0, 0.5), got {self.alpha}")


@METHODS.register("realnvp")
class RealNVPMethod(Method, Reconstructs, Likelihood):
    name = "realnvp"
    config_class = RealNVPConfig
    # Reconstructs: reconstruct(x) = f^-1(f(x)), exact inversion, not a learned encoder-decoder pair
    has_validation_loss = True
    latent_kind = "image"
    samplers = ("latent",)  # z ~ N(0, T^2 I) through the inverse flow; T is sampler.temperature
    ema_targets = ("flow",)

    @classmethod
    def check_config(cls, cfg) -> None:
        need = 2 ** cfg.model.scales
        if cfg.data.size % need:
            raise GenlabError(f"data.size={cfg.data.size}: RealNVP with model.scales={cfg.model.scales} squeezes "
                              f"{cfg.model.scales - 1} times and its checkerboards need an even side, so the side "
                              f"must divide by {need}")

    def __init__(self, cfg: RealNVPConfig, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.nets.flow = RealNVP(image_shape[0], cfg.scales, cfg.width, cfg.blocks).to(device)
        self.opt = make_optimizer(cfg.optim, self.flow.parameters(), device)
        self.sched = make_scheduler(cfg.optim, self.opt)
        self.dims = math.prod(image_shape)

    def optimizers(self):
        return {"flow": self.opt}

    def schedulers(self):
        return {"flow": self.sched}

    def latent_shape(self):
        return self.image_shape

    # -- the density --------------------------------------------------------------------------------
    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats for continuous x in [-1, 1]: the Gaussian prior at f(g(x)) plus both
        log-determinants and the log(1/2) per dimension of [-1, 1] -> [0, 1]."""
        y, pre_logdet = logit_preprocess((x.float() + 1) / 2, self.cfg.alpha)
        z, flow_logdet = self.flow(y)
        log_prior = -0.5 * (z.float().square() + math.log(2 * math.pi)).flatten(1).sum(1)
        return log_prior + flow_logdet.float() + pre_logdet - self.dims * math.log(2.0)

    def _dequantise(self, x: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """Model-range training images (8-bit values) -> uniformly dequantised values (data/convert.py)."""
        levels = ((x + 1) * 127.5).round().clamp(0, LEVELS - 1)
        return dequantize(levels, uniform)

    def _bpd(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bpd = bits_per_dim(self.log_density(x), self.dims).float().mean()
        return {"loss": bpd, "bpd": bpd.detach()}

    def train_step(self, x, step):
        x = self._dequantise(x, torch.rand(x.shape, device=x.device))
        stats = self.stepper.minimize(self.opt, self._bpd, x, clip=self.cfg.optim.grad_clip, agc=self.cfg.optim.agc)
        return {"bpd": stats["bpd"]}

    @torch.no_grad()
    def validation_step(self, x, generator):
        """Bits per dimension of the validation images (one fixed dequantisation per epoch)."""
        bpd = bits_per_dim(self.log_density(self._dequantise(x, torch.rand(x.shape, generator=generator).to(x.device))),
                           self.dims).float()
        return {"loss": bpd.mean(), "bpd": bpd.mean()}

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor) -> None:
        """Data-dependent initialisation of every activation normalisation (Kingma & Dhariwal 2018):
        one pass over the first training images, the same on every process."""
        x = to_model_range(train_images[:PREPARE_IMAGES].to(self.device))
        x = self._dequantise(x, torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(self.device))
        modes = self.flow.training
        self.flow.train()
        self.log_density(x)
        self.flow.train(modes)

    # -- the abilities ---------------------------------------------------------------------------
    @torch.inference_mode()
    def log_likelihood(self, x):
        return self.log_density(x), (f"exact (change of variables through the flow and the logit pre-processing, "
                                     f"alpha={self.cfg.alpha}, Jacobians counted)")

    def generate(self, z):
        """x = g^-1(f^-1(z)): the inverse flow, then the inverse logit, in [-1, 1]."""
        x01 = logit_postprocess(unwrap(self.flow).inverse(z.float()), self.cfg.alpha)  # (not DDP's forward)
        return (x01 * 2 - 1).clamp(-1, 1)

    @torch.inference_mode()
    def reconstruct(self, x):
        """f^-1(f(x)) through the pre-processing: exact inversion (equal to x up to float rounding)."""
        y, _ = logit_preprocess((x.float() + 1) / 2, self.cfg.alpha)
        z, _ = self.flow(y)
        return self.generate(z)
