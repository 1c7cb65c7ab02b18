import math

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from genlab.losses.gan import d_least_squares_loss, d_logistic_loss, g_least_squares_loss, g_nonsaturating_loss
from genlab.losses.vae import bce_reconstruction, kl_divergence, mse_reconstruction


def test_kl_is_zero_for_the_prior_and_matches_closed_form():
    mean, logvar = torch.zeros(3, 5), torch.zeros(3, 5)
    assert_close(kl_divergence(mean, logvar), torch.zeros(3))
    # N(1, e^1) vs N(0, 1) per dimension: 0.5 * (e + 1 - 1 - 1) = 0.5 * (e - 1)
    kl = kl_divergence(torch.ones(2, 4), torch.ones(2, 4))
    assert_close(kl, torch.full((2,), 4 * 0.5 * (math.e - 1)))


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mean, logvar = torch.randn(6, 7), torch.randn(6, 7)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    assert_close(kl_divergence(mean, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_reconstruction_losses_are_per_image_means():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    y[1] = 1.0
    assert_close(mse_reconstruction(y, x), torch.tensor([0.0, 1.0]))
    torch.manual_seed(1)
    logits, target = torch.randn(3, 2, 4, 4), torch.rand(3, 2, 4, 4) * 2 - 1
    ref = F.binary_cross_entropy(torch.sigmoid(logits), (target + 1) / 2, reduction="none").mean((1, 2, 3))
    assert_close(bce_reconstruction(logits, target), ref)


def test_logistic_gan_losses_match_bce():
    torch.manual_seed(2)
    real, fake = torch.randn(8), torch.randn(8)
    ones, zeros = torch.ones(8), torch.zeros(8)
    ref_d = F.binary_cross_entropy_with_logits(real, ones, reduction="none") + \
        F.binary_cross_entropy_with_logits(fake, zeros, reduction="none")
    assert_close(d_logistic_loss(real, fake), ref_d)
    smooth = F.binary_cross_entropy_with_logits(real, ones * 0.9, reduction="none") + \
        F.binary_cross_entropy_with_logits(fake, zeros, reduction="none")
    assert_close(d_logistic_loss(real, fake, real_target=0.9), smooth)
    flipped = F.binary_cross_entropy_with_logits(real, zeros, reduction="none") + \
        F.binary_cross_entropy_with_logits(fake, ones, reduction="none")
    assert_close(d_logistic_loss(real, fake, zeros, ones), flipped)  # label flipping: targets swapped
    assert_close(g_nonsaturating_loss(fake), -torch.log(torch.sigmoid(fake)))


def test_least_squares_losses():
    assert_close(d_least_squares_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))
    assert_close(g_least_squares_loss(torch.tensor([1.0, 0.0, 3.0])), torch.tensor([0.0, 0.5, 2.0]))


def test_extreme_logits_stay_finite():
    big = torch.tensor([1e4, -1e4])
    assert torch.isfinite(d_logistic_loss(big, -big)).all()
    assert torch.isfinite(g_nonsaturating_loss(big)).all()
