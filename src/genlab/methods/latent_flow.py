"""Latent EDM and latent flow matching (after Rombach et al. 2022): the U-Net families of
genlab.methods.edm and genlab.methods.flow_matching in the image-shaped latent space of a trained,
frozen first stage (a ``kl-autoencoder`` run named by ``init.from_run``), latents scaled to unit
variance. Every grid, sample and metric is decoded to images by the first stage's decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from genlab.methods import METHODS
from genlab.methods.edm import EDMConfig, EDMFlow
from genlab.methods.first_stage import (
    FIRST_STAGE_NETWORKS,
    ScaledFirstStageLatents,
    attach_first_stage,
    build_first_stage,
    check_first_stage,
    record_first_stage,
)
from genlab.methods.flow_matching import FlowMatchingConfig, FlowMatchingFlow
from genlab.models.unet import check_unet_side

NEEDS_FIRST_STAGE = ("latent EDM and latent flow matching work in the latent space of a trained first stage: set "
                     "init.from_run=RUN_DIR (a kl-autoencoder run on the same images)")


class LatentFlow(ScaledFirstStageLatents):
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
        self.add_latent_scale()

    def diffusion_shape(self):
        return tuple(self.first_stage.latent_shape())


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
