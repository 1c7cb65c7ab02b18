"""GAN objectives as pure functions of discriminator logits, named by the side they train.

Each returns one value per sample. With softplus(t) = log(1 + e^t):
-log(sigmoid(t)) = softplus(-t) and -log(1 - sigmoid(t)) = softplus(t), which is the numerically
stable form of the binary cross-entropy of Goodfellow et al. (2014), eq. 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from genlab.registry import Registry


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """Discriminator side of Goodfellow et al. (2014), eq. 1: -log D(x) - log(1 - D(G(z))).

    ``real_label`` < 1 is one-sided label smoothing (Salimans et al. 2016, section 3.4):
    BCE(t, y) = softplus(t) - y * t.
    """
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    return F.softplus(real_logits) - real_label * real_logits + F.softplus(fake_logits)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side, non-saturating form (Goodfellow et al. 2014, section 3): -log D(G(z))."""
    return F.softplus(-fake_logits.float())


def d_least_squares_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """LSGAN discriminator (Mao et al. 2017, eq. 9 with a=0, b=1): 0.5 (D(x) - 1)^2 + 0.5 D(G(z))^2."""
    return 0.5 * (real_logits.float() - real_label).square() + 0.5 * fake_logits.float().square()


def g_least_squares_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN generator (Mao et al. 2017, eq. 9 with c=1): 0.5 (D(G(z)) - 1)^2."""
    return 0.5 * (fake_logits.float() - 1).square()


@dataclass(frozen=True)
class GANObjective:
    d_loss: Callable  # (real_logits, fake_logits, real_label) -> per-sample discriminator loss
    g_loss: Callable  # fake_logits -> per-sample generator loss


# ``model.loss``: the objective a GAN is trained with, apart from its architecture (``model.arch``).
GAN_LOSSES: Registry = Registry("GAN objective")
GAN_LOSSES.register("nonsaturating")(GANObjective(d_logistic_loss, g_nonsaturating_loss))
GAN_LOSSES.register("lsgan")(GANObjective(d_least_squares_loss, g_least_squares_loss))
