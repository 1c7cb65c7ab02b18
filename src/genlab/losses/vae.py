"""VAE objective (Kingma & Welling 2014, eq. 10): loss = reconstruction + kl_weight * KL(q(z|x) || N(0, I)).

Conventions, stated because peers differ and a weight means nothing without them:
- reconstruction is the *mean over pixels* of each image's squared error (MSE) or binary
  cross-entropy (BCE), so it does not grow with image size;
- KL is the *sum over latent dimensions* of each sample's divergence (eq. 10's closed form).
With these, seed 002's kl_weight 0.00025 and seed 001's 0.01 mean what those reports meant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample: -0.5 * sum(1 + logvar - mean^2 - exp(logvar))."""
    mean, logvar = mean.float(), logvar.float()
    return -0.5 * (1 + logvar - mean.square() - logvar.exp()).sum(dim=1)


def mse_reconstruction(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image; ``output`` and ``target`` both in [-1, 1]."""
    return (output.float() - target.float()).square().flatten(1).mean(dim=1)


def bce_reconstruction(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per image between the decoder's logits and the target mapped to [0, 1]."""
    probs = (target.float() + 1) / 2
    return F.binary_cross_entropy_with_logits(logits.float(), probs, reduction="none").flatten(1).mean(dim=1)


RECONSTRUCTION_LOSSES = {"mse": mse_reconstruction, "bce": bce_reconstruction}
