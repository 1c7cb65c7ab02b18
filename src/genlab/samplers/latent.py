"""The sampler of every family with a latent prior: z ~ N(0, T^2 I), one z per image, then
``method.generate(z)``. T < 1 is the "temperature" or reduced-variance sampling of Kingma &
Dhariwal (2018, section 5) and of the truncation trick's simplest form (Brock et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from genlab.config import check_positive
from genlab.samplers import SAMPLERS, Sampler, SamplerOptions


@dataclass
class LatentOptions(SamplerOptions):
    temperature: float = 1.0  # standard deviation of the latent prior (1 = the prior the model was trained with)

    def validate(self, prefix: str = "") -> None:
        check_positive(f"{prefix}temperature", self.temperature)


def latent_sampler(method, noise, options: LatentOptions):
    z = noise.randn(*method.latent_shape())
    if options.temperature != 1.0:
        z = z * options.temperature
    return method.generate(z)


SAMPLERS.register("latent")(Sampler(latent_sampler, LatentOptions))
