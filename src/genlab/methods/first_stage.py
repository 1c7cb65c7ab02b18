"""A frozen first stage: the trained encoder run (a VAE, VAE-GAN or autoencoder, ``init.from_run``)
in whose latent space the latent families work (latent diffusion, the latent GAN).

The run's family and model section are recorded in the latent run's config when it starts
(``model.first_stage``), so the latent run rebuilds without it; its networks join the latent
family's as ``first_encoder`` and ``first_decoder`` (their weights come from init.from_run's copy,
then from the latent run's checkpoints), frozen and in eval mode.
"""

from __future__ import annotations

import dataclasses

import torch

from genlab.config import build_dataclass
from genlab.data.convert import to_model_range
from genlab.distributed import unwrap
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.methods.abilities import Encoder
from genlab.methods.base import Method

LATENT_STATISTICS_IMAGES = 1024  # training images whose latents set the latent scale (Rombach et al. 2022)
FIRST_STAGE_NETWORKS = {"first_encoder": "encoder", "first_decoder": "decoder"}  # init.from_run's default mapping


def check_first_stage(cfg, family: str, latent_kind: str = "flat") -> None:
    """The recorded first stage (model.first_stage) is an encoder family with a latent of
    ``latent_kind`` (flat: a vector; image: channels x height x width), trained on images of this
    run's size and channels; nothing to check while a preset names no run yet (refused when the
    model is built, before anything is written)."""
    fs = cfg.model.first_stage
    if not fs:
        return
    base_cls = METHODS.get(fs.get("method", ""))
    if not issubclass(base_cls, Encoder) or base_cls.latent_kind != latent_kind:
        needs = ("a VAE or autoencoder run" if latent_kind == "flat"
                 else "a first stage with an image-shaped latent (a kl-autoencoder run)")
        raise GenlabError(f"init.from_run: its method {base_cls.name!r} has no encoder with a{'' if latent_kind == 'flat' else 'n'} "
                          f"{'flat' if latent_kind == 'flat' else 'image-shaped'} latent; {family} needs {needs}")
    size, channels = fs.get("size"), fs.get("channels")
    if (size, channels) != (cfg.data.size, cfg.data.channels):
        raise GenlabError(f"init.from_run: the first stage was trained on {size}x{size} images with {channels} "
                          f"channels, but data gives {cfg.data.size}x{cfg.data.size} with {cfg.data.channels}")


def record_first_stage(model_cfg, base_config) -> None:
    """Record the init.from_run run's family and model section, so the run rebuilds without it."""
    if model_cfg.first_stage:
        return
    base_cfg = base_config()
    model_cfg.first_stage = {"method": base_cfg.method, "model": _as_dict(base_cfg.model),
                             "size": base_cfg.data.size, "channels": base_cfg.data.channels}


def build_first_stage(fs: dict, image_shape, device, missing: str):
    """The recorded first stage's model, frozen and in eval mode (its weights come from
    init.from_run's copy, or from this run's checkpoints)."""
    if not fs:
        raise GenlabError(missing)
    base_cls = METHODS.get(fs["method"])
    base_model = build_dataclass(base_cls.config_class, fs["model"], "model.first_stage.model.")
    first_stage = base_cls(base_model, image_shape, device)
    for net in first_stage.networks().values():
        net.requires_grad_(False).eval()
    return first_stage


@torch.no_grad()
def latent_scale_of(first_stage, train_images: torch.Tensor, device) -> float:
    """1 / std of the first stage's codes of the first training images (Rombach et al. 2022, 4.3.2)."""
    x = to_model_range(train_images[:LATENT_STATISTICS_IMAGES].to(device))
    z = torch.cat([first_stage.encode_latent(x[i : i + 256]).float() for i in range(0, len(x), 256)])
    return 1.0 / z.std().clamp(min=1e-6).item()


def _as_dict(obj) -> dict:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def attach_first_stage(method: Method, fs: dict, missing: str) -> Method:
    """Build the recorded first stage and add its networks to ``method.nets`` (``first_<name>``)."""
    first_stage = build_first_stage(fs, method.image_shape, method.device, missing)
    for name, net in first_stage.networks().items():
        method.nets[f"first_{name}"] = net
    return first_stage


class ScaledFirstStageLatents:
    """What a family that diffuses a frozen first stage's latents shares: the latents scaled to unit
    variance by 1 / std of the training latents (Rombach et al. 2022, section 4.3.2 and appendix G).
    The scale is a buffer of the denoiser, so checkpoints, inference snapshots and the EMA carry it.
    The family sets ``self.first_stage`` and ``self.nets.denoiser``, then calls ``add_latent_scale``."""

    def add_latent_scale(self) -> None:
        self.denoiser.register_buffer("latent_scale", torch.ones((), device=self.device))

    @torch.no_grad()
    def to_diffused(self, x: torch.Tensor) -> torch.Tensor:
        return self.first_stage.encode_latent(x).float() * unwrap(self.denoiser).latent_scale

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage.generate(z / unwrap(self.denoiser).latent_scale).clamp(-1, 1)

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor) -> None:
        """Scale the latents to unit variance, from the first training images' latents."""
        unwrap(self.denoiser).latent_scale.fill_(latent_scale_of(self.first_stage, train_images, self.device))
