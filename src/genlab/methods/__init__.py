"""Model families. Each registers under the name used by the config's ``method`` key."""

from __future__ import annotations

from genlab.registry import Registry

METHODS: Registry = Registry("method")


def build_method(cfg, image_shape: tuple[int, int, int], device):
    """The family a resolved config names, on ``device``, sampling with the config's sampler."""
    method = METHODS.get(cfg.method)(cfg.model, image_shape, device)
    if cfg.sampler is not None:
        method.sampling = cfg.sampler
    return method


# Importing a family registers it.
from genlab.methods import (  # noqa: E402,F401
    autoencoder,
    diffusion,
    edm,
    flow,
    flow_matching,
    gan,
    kl_autoencoder,
    latent_flow,
    latent_gan,
    vae,
    vaegan,
)

# The detector (a classifier, not a generator) lives with its benchmark in genlab.detect, above this
# layer: named here by module, imported when a config or checkpoint first names it.
METHODS.register_lazy("detector", "genlab.detect.family")

__all__ = ["METHODS", "build_method"]
