"""The one place where images change range: datasets hold uint8 [0, 255], models see float [-1, 1].

Dequantisation lives here too: a density model (a flow, a VAE's bound) is a density over
continuous values, so 8-bit images are spread over their bins before any likelihood is taken
(Theis et al. 2016, "A note on the evaluation of generative models", section 3.1).
"""

import math

import torch

LEVELS = 256  # 8-bit images


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the range of a tanh output)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level as an image file would store it."""
    return images.float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def dequantize(images: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Uniform dequantisation into the model's range: x_c = (x + u) / 256 with u ~ U[0, 1)^D gives a
    continuous x_c in [0, 1), mapped to [-1, 1). ``uniform`` holds u (drawn by the caller, so the
    draw is seeded where it must be). Then -log2 P(x) <= -log2 p(x_c) + D log2 256 on the [0, 1) scale."""
    return (images.float() + uniform) / LEVELS * 2 - 1


def bits_per_dim(log_density_model_range: torch.Tensor, dims: int) -> torch.Tensor:
    """Bits per dimension of 8-bit images from the log-density (nats) of their dequantised values in
    the model's [-1, 1] range: the density on [0, 1) is 2^D times larger (the Jacobian of x -> 2x - 1),
    and each of the 256 bins has width 1/256, so bpd = (-log p_[0,1)(x_c) + D log 256) / (D log 2)."""
    log_density_unit = log_density_model_range.double() + dims * math.log(2.0)
    return (-log_density_unit + dims * math.log(LEVELS)) / (dims * math.log(2.0))
