"""Latent EDM and latent flow matching (after Rombach et al. 2022): the U-Net families of
genlab.methods.edm and genlab.methods.flow_matching in the image-shaped latent space of a trained,
frozen first stage (a ``kl-autoencoder`` run named by ``init.from_run``), latents scaled to unit
variance. Every grid, sample and metric is decoded to images by the first stage's decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from genlab.distributed import unwrap
from genlab.methods import METHODS
from genlab.methods.edm import EDMConfig, EDMFlow
from genlab.methods.first_stage import (
    FIRST_STAGE_NETWORKS,
    attach_first_stage,
    build_first_stage,
    check_first_stage,
    latent_scale_of,
    record_first_stage,
)
from genlab.methods.flow_matching import FlowMatchingConfig, FlowMatchingFlow
from genlab.models.unet import check_unet_side

NEEDS_FIRST_STAGE = ("latent EDM and latent flow matching work in the latent space of a trained first stage: set "
                     "init.from_run=RUN_DIR (a kl-autoencoder run on the same images)")


class LatentFlow:
    """What both latent families add to their pixel family: the first stage, the scaled latents."""

    init_networks = FIRST_STAGE_NETWORKS
    cfg: Any

    @classmethod
    def check_config(cls, cfg) -> None:
        check_first_stage(cfg, f"method {cls.name}", latent_kind="image")
        fs = cfg.model.first_stage
        if not fs:
            return
        first = build_first_stage(fs, (cfg.data.channels, cfg.data.size, cfg.data.size), torch.device("cpu"),
                                  NEEDS_FIRST_STAGE)
        _, side, _ = first.latent_shape()
        check_unet_side(f"init.from_run: the first stage's latent is {side}x{side}", side, cfg.model.mults)

    @classmethod
    def configure_from_base(cls, model_cfg, base_config) -> None:
        record_first_stage(model_cfg, base_config)

    def attach_first_stage(self) -> None:
        self.first_stage = attach_first_stage(self, self.cfg.first_stage, NEEDS_FIRST_STAGE)

    def finish_setup(self) -> None:
        # 1 / std of the training latents (Rombach et al. 2022, section 4.3.2 and appendix G), a buffer
        # of the denoiser so checkpoints, inference snapshots and the EMA carry it
        self.denoiser.register_buffer("latent_scale", torch.ones((), device=self.device))

    def diffusion_shape(self):
        return tuple(self.first_stage.latent_shape())

    @torch.no_grad()
    def to_diffused(self, x):
        return self.first_stage.encode_latent(x).float() * unwrap(self.denoiser).latent_scale

    def finish(self, z):
        return self.first_stage.generate(z / unwrap(self.denoiser).latent_scale).clamp(-1, 1)

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor) -> None:
        """Scale the latents to unit variance, from the first training images' latents."""
        unwrap(self.denoiser).latent_scale.fill_(latent_scale_of(self.first_stage, train_images, self.device))


@dataclass
class LatentEDMConfig(EDMConfig):
    sigma_data: float = 1.0  # the latents are scaled to unit variance
    first_stage: dict[str, Any] = field(default_factory=dict)  # the frozen first stage's method and model section,
    #   copied from init.from_run's config when training starts, so the run is self-contained


@dataclass
class LatentFlowMatchingConfig(FlowMatchingConfig):
    first_stage: dict[str, Any] = field(default_factory=dict)  # as LatentEDMConfig.first_stage


@METHODS.register("latent-edm")
class LatentEDMMethod(LatentFlow, EDMFlow):
    name = "latent-edm"
    config_class = LatentEDMConfig

    def __init__(self, cfg, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.finish_setup()


@METHODS.register("latent-flow-matching")
class LatentFlowMatchingMethod(LatentFlow, FlowMatchingFlow):
    name = "latent-flow-matching"
    config_class = LatentFlowMatchingConfig

    def __init__(self, cfg, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.finish_setup()
