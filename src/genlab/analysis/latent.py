"""Walks in a model's latent space: interpolation between two seeds or two real images, "one sample
with variations" (seed 002), and a traversal of each latent dimension of an encoder family ordered
by its mean KL (the informative dimensions first).

Every family's prior over its latent is a standard Gaussian (the VAE's and GAN's z, a flow's base
distribution, a diffusion model's x_T), so a path between two prior draws is spherical (slerp,
Shoemake 1985; White 2016, "Sampling generative networks"): a straight line would pass through
latents of atypically small norm. Codes of real images (a VAE's posterior means) are not prior
draws, and are joined by straight lines.
"""

from __future__ import annotations

import torch

from genlab.data.convert import to_model_range, to_uint8
from genlab.errors import GenlabError
from genlab.methods.abilities import Encoder, PosteriorEncoder
from genlab.samplers import SeededNoise


def check_latent(method) -> None:
    if method.latent_kind not in ("flat", "image"):
        raise GenlabError(f"method {method.name!r} has no latent space that generate(z) maps to images "
                          f"(latent_kind {method.latent_kind!r})")


def seed_latents(method, seeds: list[int]) -> torch.Tensor:
    """The prior latents the latent sampler draws for ``seeds`` (image i of `genlab sample --seed s`
    is generate(seed_latents([s + i])))."""
    return SeededNoise(seeds, method.device).randn(*method.latent_shape())


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of flattened latents a, b (each (D,)) at fractions t (T,): (T, D)."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    omega = torch.arccos(cos.clamp(-1, 1))
    t = t.double()[:, None]
    if omega.abs() < 1e-6:  # (nearly) parallel: slerp tends to the straight line
        out = (1 - t) * a_flat + t * b_flat
    else:
        out = (torch.sin((1 - t) * omega) * a_flat + torch.sin(t * omega) * b_flat) / torch.sin(omega)
    return out.float().reshape(len(t), *a.shape)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, *([1] * a.dim())).to(a)
    return (1 - t) * a + t * b


@torch.inference_mode()
def interpolate(method, start: torch.Tensor, end: torch.Tensor, steps: int, spherical: bool) -> torch.Tensor:
    """uint8 images along the path from latent ``start`` to ``end`` (both included), ``steps`` of them."""
    check_latent(method)
    t = torch.linspace(0, 1, steps)
    path = slerp(start, end, t) if spherical else lerp(start, end, t)
    with method.evaluating():
        return to_uint8(method.generate(path.to(method.device))).cpu()


@torch.inference_mode()
def encode_images(method, images: torch.Tensor) -> torch.Tensor:
    """Deterministic codes of uint8 images (a VAE's posterior means)."""
    if not isinstance(method, Encoder):
        raise GenlabError(f"method {method.name!r} has no encoder with a latent code; interpolate between seeds instead")
    with method.evaluating():
        return method.encode_latent(to_model_range(images.to(method.device))).float()


@torch.inference_mode()
def variations(method, seed: int, n: int, scale: float, noise_seed: int = 1_000_000) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample of ``seed`` followed by ``n`` variations z + scale * e_i, e_i ~ N(0, I) from seeds
    noise_seed + i; uint8 images and each variation's RMS pixel distance (0-255) from the sample."""
    check_latent(method)
    z = seed_latents(method, [seed])
    e = SeededNoise(range(noise_seed, noise_seed + n), method.device).randn(*method.latent_shape())
    with method.evaluating():
        images = to_uint8(method.generate(torch.cat([z, z + scale * e]))).cpu()
    distance = (images[1:].float() - images[:1].float()).square().flatten(1).mean(1).sqrt()
    return images, distance


@torch.inference_mode()
def dimension_kl(method, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean over ``images`` of each latent dimension's KL(q(z_j|x) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - log s^2)."""
    if not isinstance(method, PosteriorEncoder):
        raise GenlabError(f"method {method.name!r} has no posterior q(z|x) to rank latent dimensions by KL; "
                          "latent traversal needs an encoder family with one (vae)")
    total = None
    with method.evaluating():
        for i in range(0, len(images), batch_size):
            mean, logvar = method.encode(to_model_range(images[i : i + batch_size].to(method.device)))
            kl = 0.5 * (mean.float().square() + logvar.float().exp() - 1 - logvar.float())
            total = kl.sum(0) if total is None else total + kl.sum(0)
    return (total / len(images)).cpu()


@torch.inference_mode()
def traversal(method, images: torch.Tensor, base: torch.Tensor, dims: int, span: float = 3.0,
              steps: int = 9) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """One row per latent dimension, the ``dims`` with the largest mean KL over ``images`` first:
    the code of ``base`` (one uint8 image) with that dimension set to each of ``steps`` values in
    [-span, span]. Returns uint8 images (rows x steps), the dimensions in order, and every
    dimension's mean KL."""
    kl = dimension_kl(method, images)
    order = kl.argsort(descending=True)[: min(dims, len(kl))].tolist()
    code = encode_images(method, base[None])[0]
    values = torch.linspace(-span, span, steps, device=code.device)
    rows = []
    for d in order:
        z = code.repeat(steps, 1)
        z[:, d] = values
        rows.append(z)
    with method.evaluating():
        out = to_uint8(method.generate(torch.cat(rows))).cpu()
    return out, order, kl
