"""GAN objectives as pure functions of discriminator outputs, named by the side they train, and the
gradient penalties as pure functions of the discriminator's input gradients.

Each returns one value per sample; the method reduces them. With softplus(t) = log(1 + e^t):
-log(sigmoid(t)) = softplus(-t) and -log(1 - sigmoid(t)) = softplus(t), the numerically stable form
of the binary cross-entropy of Goodfellow et al. (2014), eq. 1. Discriminator losses take the
targets of real and fake images (tensors or floats): 1 and 0 unless label smoothing, flipping or
noise change them; objectives without targets (Wasserstein, hinge) take and ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from genlab.registry import Registry


def d_logistic_real(real_logits: torch.Tensor, target=1.0) -> torch.Tensor:
    """The real images' term of Goodfellow et al. (2014), eq. 1: -log D(x), as the binary
    cross-entropy BCE(t, y) = softplus(t) - y t with target y (1; 0.9 is one-sided label smoothing,
    Salimans et al. 2016, section 3.4)."""
    real_logits = real_logits.float()
    return F.softplus(real_logits) - target * real_logits


def d_logistic_fake(fake_logits: torch.Tensor, target=0.0) -> torch.Tensor:
    """The generated images' term of Goodfellow et al. (2014), eq. 1: -log(1 - D(G(z))), as BCE with target y (0)."""
    fake_logits = fake_logits.float()
    return F.softplus(fake_logits) - target * fake_logits


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target=1.0, fake_target=0.0) -> torch.Tensor:
    """Discriminator side of Goodfellow et al. (2014), eq. 1: -log D(x) - log(1 - D(G(z))), the sum of
    the two terms above (written out, in the order they were summed before the split)."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    return F.softplus(real_logits) - real_target * real_logits + F.softplus(fake_logits) - fake_target * fake_logits


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side, non-saturating form (Goodfellow et al. 2014, section 3): -log D(G(z))."""
    return F.softplus(-fake_logits.float())


def d_least_squares_loss(real_out: torch.Tensor, fake_out: torch.Tensor, real_target=1.0, fake_target=0.0) -> torch.Tensor:
    """LSGAN discriminator (Mao et al. 2017, eq. 9 with a = 0, b = 1): 0.5 (D(x) - b)^2 + 0.5 (D(G(z)) - a)^2."""
    return 0.5 * (real_out.float() - real_target).square() + 0.5 * (fake_out.float() - fake_target).square()


def g_least_squares_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """LSGAN generator (Mao et al. 2017, eq. 9 with c = 1): 0.5 (D(G(z)) - 1)^2."""
    return 0.5 * (fake_out.float() - 1).square()


def d_wasserstein_loss(real_out: torch.Tensor, fake_out: torch.Tensor, real_target=None, fake_target=None) -> torch.Tensor:
    """Critic side of the Wasserstein GAN (Arjovsky et al. 2017, eq. 3; Gulrajani et al. 2017,
    algorithm 1, line 7 without its penalty): D(G(z)) - D(x). Targets do not apply."""
    return fake_out.float() - real_out.float()


def g_wasserstein_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Generator side of the Wasserstein GAN (Gulrajani et al. 2017, algorithm 1, line 12): -D(G(z))."""
    return -fake_out.float()


def d_hinge_loss(real_out: torch.Tensor, fake_out: torch.Tensor, real_target=None, fake_target=None) -> torch.Tensor:
    """Hinge discriminator (Lim & Ye 2017; Miyato et al. 2018, eq. 16): max(0, 1 - D(x)) + max(0, 1 + D(G(z)))."""
    return F.relu(1.0 - real_out.float()) + F.relu(1.0 + fake_out.float())


def g_hinge_loss(fake_out: torch.Tensor) -> torch.Tensor:
    """Hinge generator (Miyato et al. 2018, eq. 17): -D(G(z))."""
    return -fake_out.float()


def d_relativistic_loss(real_out: torch.Tensor, fake_out: torch.Tensor, real_target=None, fake_target=None) -> torch.Tensor:
    """RpGAN's discriminator (Jolicoeur-Martineau 2019; Huang et al. 2024, "The GAN is dead; long live the
    GAN!", eq. 2) on paired real and fake samples: f(D(G(z)) - D(x)) with f(t) = softplus(t) = -log
    sigmoid(-t). Targets do not apply."""
    return F.softplus(fake_out.float() - real_out.float())


def g_relativistic_loss(fake_out: torch.Tensor, real_out: torch.Tensor) -> torch.Tensor:
    """RpGAN's generator (Huang et al. 2024, eq. 2, the same pairs with the roles swapped):
    f(D(x) - D(G(z))). It needs D's outputs on reals too (``GANObjective.relativistic``)."""
    return F.softplus(real_out.float() - fake_out.float())


def gradient_penalty(gradients: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017, eq. 3) per sample: (||grad_x D(x^)||_2 - 1)^2, where
    the gradients are taken at random interpolates x^ = e x + (1 - e) G(z), e ~ U[0, 1]."""
    return (gradients.flatten(1).norm(2, dim=1) - target).square()


def r1_penalty(gradients: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, eq. 9) per sample: ||grad_x D(x)||^2 on real images; the method
    weights it by gamma / 2."""
    return gradients.flatten(1).square().sum(1)


def r2_penalty(gradients: torch.Tensor) -> torch.Tensor:
    """R2 (Mescheder et al. 2018, eq. 10) per sample: ||grad_x D(x)||^2 on generated images; with R1,
    what makes RpGAN converge locally (Huang et al. 2024, section 3); weighted by gamma / 2."""
    return gradients.flatten(1).square().sum(1)


def add_penalties(loss: torch.Tensor, gradients: Callable, critic: Callable, real: torch.Tensor, fake: torch.Tensor,
                  mix: torch.Tensor | None = None, gp_weight: float = 0.0, real_out: torch.Tensor | None = None,
                  r1_weight: float = 0.0, fake_out: torch.Tensor | None = None,
                  r2_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A discriminator's batch loss plus its gradient penalties, and each penalty's batch mean:
    WGAN-GP's (weight ``gp_weight``) on the interpolates mix * real + (1 - mix) * fake when ``mix`` is
    given, R1 (weight ``r1_weight``) on the real inputs, whose outputs ``real_out`` = critic(real)
    were computed with ``real`` requiring a gradient, and R2 (weight ``r2_weight``) likewise on the
    fake inputs and ``fake_out``. ``gradients(outputs, inputs)`` takes the gradients (the step
    helper's, correct under the fp16 scaler); ``critic(inputs)`` is D's output."""
    stats = {}
    if mix is not None:  # WGAN-GP: the critic's gradient norm pulled to 1 on random interpolates
        between = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
        (grad,) = gradients(critic(between), between)
        stats["gp"] = gradient_penalty(grad).mean()
        loss = loss + gp_weight * stats["gp"]
    if r1_weight:  # R1: the gradient on reals pulled to 0
        (grad,) = gradients(real_out, real)
        stats["r1"] = r1_penalty(grad).mean()
        loss = loss + r1_weight * stats["r1"]
    if r2_weight:  # R2: the gradient on fakes pulled to 0
        (grad,) = gradients(fake_out, fake)
        stats["r2"] = r2_penalty(grad).mean()
        loss = loss + r2_weight * stats["r2"]
    return loss, stats


@dataclass(frozen=True)
class GANObjective:
    d_loss: Callable  # (real_out, fake_out, real_target, fake_target) -> per-sample discriminator loss
    g_loss: Callable  # fake_out -> per-sample generator loss
    targets: bool  # takes real/fake targets: label smoothing, flipping and noise apply
    probabilities: bool  # D's outputs are logits of the probability that an image is real
    penalty: str = ""  # "gp": the objective includes WGAN-GP's gradient penalty (model.gp_weight)
    relativistic: bool = False  # G's loss takes D's outputs on reals too: g_loss(fake_out, real_out)
    zero_centred: bool = False  # R2 (a zero-centred penalty on fakes) is defined for it (Mescheder et al. 2018)


# ``model.loss``: the objective a GAN is trained with, apart from its architecture (``model.arch``).
GAN_LOSSES: Registry = Registry("GAN objective")
GAN_LOSSES.register("nonsaturating")(GANObjective(d_logistic_loss, g_nonsaturating_loss, targets=True, probabilities=True,
                                                  zero_centred=True))
GAN_LOSSES.register("lsgan")(GANObjective(d_least_squares_loss, g_least_squares_loss, targets=True, probabilities=False))
GAN_LOSSES.register("wgan-gp", aliases=("wgangp",))(
    GANObjective(d_wasserstein_loss, g_wasserstein_loss, targets=False, probabilities=False, penalty="gp"))
GAN_LOSSES.register("hinge")(GANObjective(d_hinge_loss, g_hinge_loss, targets=False, probabilities=False))
GAN_LOSSES.register("rpgan")(
    GANObjective(d_relativistic_loss, g_relativistic_loss, targets=False, probabilities=False, relativistic=True,
                 zero_centred=True))
