"""Samplers of diffusion families: ancestral DDPM (Ho et al. 2020, Algorithm 2) and DDIM (Song et
al. 2021, eq. 12), each drawing every noise of an image's chain from that image's own generator.

What they ask of a family is :class:`DiffusionChain`, which the diffusion families subclass.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from genlab.config import check_positive
from genlab.errors import GenlabError
from genlab.samplers import SAMPLERS, Sampler, SamplerOptions


class DiffusionChain(abc.ABC):
    """What a diffusion sampler needs of a family: its forward process, its network's output, the
    shape it diffuses and the last step back to images. A family that samples with ``ddpm`` or
    ``ddim`` subclasses it; the samplers refuse any other."""

    process: object  # the forward process (genlab.losses.diffusion.GaussianDiffusion): schedule, posterior, T
    clip_denoised: bool = True  # clip the predicted x_0 to [-1, 1] (pixel space; off for unbounded latents)

    @abc.abstractmethod
    def denoise(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output (eps or v) for x_t at timesteps t."""

    @abc.abstractmethod
    def diffusion_shape(self) -> tuple[int, ...]:
        """The shape of one diffused sample: an image (C, H, W) or a latent (D,)."""

    @abc.abstractmethod
    def finish(self, x0: torch.Tensor) -> torch.Tensor:
        """The chain's end x_0 -> images in [-1, 1] (clamped, or decoded by a first stage)."""


def _chain(method) -> DiffusionChain:
    if not isinstance(method, DiffusionChain):
        raise GenlabError(f"method {method.name!r} has no diffusion chain; the ddpm and ddim samplers need one")
    return method


@dataclass
class DDPMOptions(SamplerOptions):
    steps: int = 0  # 0 = every step of the chain the model was trained with (model.timesteps): the paper's sampler

    def validate(self, prefix: str = "") -> None:
        check_positive(f"{prefix}steps", self.steps, allow_zero=True)


@dataclass
class DDIMOptions(SamplerOptions):
    steps: int = 50  # denoising steps, 1 .. model.timesteps (evenly spaced through the chain)
    eta: float = 0.0  # 0 = deterministic (the probability-flow ODE's discretisation); 1 = DDPM-like noise

    def validate(self, prefix: str = "") -> None:
        check_positive(f"{prefix}steps", self.steps)
        if not 0.0 <= self.eta <= 1.0:
            raise GenlabError(f"config key '{prefix}eta' must be in [0, 1], got {self.eta}")


def check_steps(options: SamplerOptions, timesteps: int) -> None:
    """A step count the trained chain cannot give is refused before sampling starts."""
    steps = getattr(options, "steps", 0)
    if steps > timesteps or (options.name == "ddim" and steps < 1):
        raise GenlabError(f"sampler.steps={steps}: the model was trained with {timesteps} diffusion steps, so "
                          f"{options.name} takes 1 to {timesteps}")
    if options.name == "ddpm" and steps not in (0, timesteps):
        raise GenlabError(f"sampler.steps={steps}: ancestral DDPM runs the whole chain ({timesteps} steps; leave "
                          "sampler.steps=0); use sampler.name=ddim for fewer steps")


def _timesteps(n: int, device) -> torch.Tensor:
    return torch.full((n,), 0, dtype=torch.long, device=device)


@torch.no_grad()
def ddpm_sampler(method, noise, options: DDPMOptions) -> torch.Tensor:
    process = _chain(method).process
    check_steps(options, process.timesteps)
    x = noise.randn(*method.diffusion_shape())  # 1: x_T ~ N(0, I)
    t_batch = _timesteps(len(noise), x.device)
    for t in reversed(range(process.timesteps)):  # 2: for t = T, ..., 1
        # 3: z ~ N(0, I) if t > 1, else z = 0 (drawn from each image's generator, every step)
        z = noise.randn(*method.diffusion_shape()) if t > 0 else None
        t_batch.fill_(t)
        # 4: x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z, written through
        #    the posterior mean at the predicted x_0 (the same value; it allows clipping x_0 and v-prediction)
        mean, logvar, _ = process.p_mean_variance(x, t_batch, method.denoise(x, t_batch).float(), method.clip_denoised)
        x = mean + (0.5 * logvar).exp() * z if z is not None else mean
    return method.finish(x)  # 6: return x_0


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps evenly spaced through 0 .. T-1, ascending and always starting the
    chain at T-1, where x_T ~ N(0, I) holds (Song et al. 2021, section 4.2, the linear sub-sequence)."""
    return sorted(timesteps - 1 - (i * timesteps) // steps for i in range(steps))


def ddim_step(process, x: torch.Tensor, t: int, t_prev: int, output: torch.Tensor, eta: float, clip: bool,
              z: torch.Tensor | None) -> torch.Tensor:
    """One DDIM update x_t -> x_{t_prev} (Song et al. 2021, eq. 12); t_prev = -1 means alpha_bar = 1."""
    n = x.shape[0]
    t_batch = torch.full((n,), t, dtype=torch.long, device=x.device)
    x0, eps = process.split_prediction(x, t_batch, output)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - process.sqrt_alpha_bar[t] * x0) / process.sqrt_one_minus_alpha_bar[t]
    a_t = process.alpha_bar[t]
    a_prev = process.alpha_bar[t_prev] if t_prev >= 0 else torch.ones((), device=x.device)
    # sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)   (eq. 16)
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z   (eq. 12: "predicted x_0",
    #          "direction pointing to x_t", "random noise")
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0 and z is not None:
        x_prev = x_prev + sigma * z
    return x_prev


def ddim_invert_step(process, x_prev: torch.Tensor, t_prev: int, t: int, output: torch.Tensor) -> torch.Tensor:
    """The reverse of an eta = 0 step, x_{t_prev} -> x_t, with eps evaluated at x_{t_prev} (the usual
    DDIM inversion): exact as the step size goes to zero, with an error of the ODE solver's order."""
    n = x_prev.shape[0]
    tp = torch.full((n,), max(t_prev, 0), dtype=torch.long, device=x_prev.device)
    if t_prev >= 0:
        x0, eps = process.split_prediction(x_prev, tp, output)
    else:
        x0, eps = x_prev, output
    return process.sqrt_alpha_bar[t] * x0 + process.sqrt_one_minus_alpha_bar[t] * eps


@torch.no_grad()
def ddim_loop(method, x: torch.Tensor, steps: int, eta: float, noise=None) -> torch.Tensor:
    """x_T -> x_0 in ``steps`` DDIM updates; with eta > 0 each update's noise comes from ``noise``
    (each image's own generator)."""
    process = method.process
    taus = ddim_timesteps(process.timesteps, steps)
    for i in reversed(range(len(taus))):
        t, t_prev = taus[i], (taus[i - 1] if i > 0 else -1)
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        z = noise.randn(*method.diffusion_shape()) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(process, x, t, t_prev, method.denoise(x, t_batch).float(), eta, method.clip_denoised, z)
    return x


@torch.no_grad()
def ddim_sampler(method, noise, options: DDIMOptions) -> torch.Tensor:
    check_steps(options, _chain(method).process.timesteps)
    x = noise.randn(*method.diffusion_shape())  # x_T ~ N(0, I)
    return method.finish(ddim_loop(method, x, options.steps, options.eta, noise))


SAMPLERS.register("ddpm")(Sampler(ddpm_sampler, DDPMOptions))
SAMPLERS.register("ddim")(Sampler(ddim_sampler, DDIMOptions))
