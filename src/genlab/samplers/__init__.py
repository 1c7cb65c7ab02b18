"""Samplers: functions from a trained family and per-image noise to images, apart from the loop.

A sampler is registered with the dataclass of its options (the config's ``sampler`` section, like
``model`` is the family's): ``SAMPLERS.register("latent")(Sampler(latent_sampler, LatentOptions))``.
It is called as ``fn(method, noise, options)`` with a :class:`SeededNoise` that holds one generator
per image, so a sampler that draws noise along the way (ancestral DDPM, temperature sampling)
still gives every image a function of its own seed only, never of the batch it was drawn in.
A family lists the samplers it supports in ``Method.samplers`` (the first is its default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from genlab.registry import Registry
from genlab.samplers.noise import SeededNoise


@dataclass
class SamplerOptions:
    """What every sampler's options have: the sampler's name (the config's ``sampler.name``)."""

    name: str = ""


@dataclass(frozen=True)
class Sampler:
    fn: Callable  # fn(method, noise: SeededNoise, options) -> images in [-1, 1] on the method's device
    options_class: type  # a SamplerOptions subclass: the sampler's own keys, each with its default


SAMPLERS: Registry = Registry("sampler")


def default_options(name: str) -> SamplerOptions:
    """A sampler's options with every default, named."""
    name = SAMPLERS.canonical(name)
    return SAMPLERS.get(name).options_class(name=name)


def describe(options: SamplerOptions) -> str:
    """``latent(temperature=1.0)``: the sampler and its settings, for protocol strings and logs."""
    rest = {k: v for k, v in asdict(options).items() if k != "name"}
    return f"{options.name}({', '.join(f'{k}={v}' for k, v in rest.items())})"


# Importing a sampler registers it.
from genlab.samplers import diffusion, latent, ode  # noqa: E402,F401

__all__ = ["SAMPLERS", "Sampler", "SamplerOptions", "SeededNoise", "default_options", "describe"]
