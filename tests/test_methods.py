"""Networks and families on tiny CPU models: shapes, a training step, sampling, state round trips."""

import pytest
import torch
from torch.testing import assert_close

from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.models.dcgan import DCGANDiscriminator, DCGANGenerator
from genlab.models.vae import ConvDecoder, ConvEncoder
from genlab.resolve import load_config

CPU = torch.device("cpu")


def make(preset: str, overrides=(), shape=(1, 16, 16)):
    cfg = load_config(preset, list(overrides))
    torch.manual_seed(0)
    return METHODS.get(cfg.method)(cfg.model, shape, CPU)


@pytest.mark.parametrize("size, widths", [(16, [8, 16]), (32, [8, 16, 32]), (64, [4, 8, 16, 32])])
@pytest.mark.parametrize("channels", [1, 3])
def test_vae_networks_shapes(size, widths, channels):
    enc = ConvEncoder(channels, widths, latent_dim=10, act="leaky_relu", dropout=0.2)
    dec = ConvDecoder(channels, widths, latent_dim=10, act="relu", dropout=0.2)
    mean, logvar = enc(torch.randn(3, channels, size, size))
    assert mean.shape == logvar.shape == (3, 10)
    assert dec(mean).shape == (3, channels, size, size)


@pytest.mark.parametrize("size, widths", [(32, [8, 16, 32]), (64, [4, 8, 16, 32])])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_networks_shapes(size, widths, channels):
    g = DCGANGenerator(100, channels, widths)
    d = DCGANDiscriminator(channels, widths, dropout=0.1)
    img = g(torch.randn(5, 100))
    assert img.shape == (5, channels, size, size)
    assert img.min() >= -1 and img.max() <= 1  # tanh output
    assert d(img).shape == (5,)
    # Radford et al.: no pooling and no fully connected hidden layers.
    kinds = {type(m).__name__ for m in list(g.modules()) + list(d.modules())}
    assert not kinds & {"Linear", "MaxPool2d", "AvgPool2d"}


def test_dcgan_init_is_normal_0_002():
    m = make("dcgan-digits", shape=(1, 32, 32))
    assert m.name == "gan" and m.cfg.arch == "dcgan"  # `dcgan` presets build the GAN family's DCGAN pair
    weights = torch.cat([mod.weight.flatten() for mod in m.generator.modules() if isinstance(mod, torch.nn.ConvTranspose2d)])
    assert abs(weights.mean().item()) < 2e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    slopes = {mod.negative_slope for mod in m.discriminator.modules() if isinstance(mod, torch.nn.LeakyReLU)}
    assert slopes == {0.2}
    assert m.opt_g.param_groups[0]["betas"][0] == 0.5


@pytest.mark.parametrize("preset, keys", [("tiny-vae", {"loss", "recon", "kl"}),
                                          ("tiny-dcgan", {"loss_d", "loss_g", "d_real", "d_fake"})])
def test_train_step_returns_finite_scalars_and_updates(preset, keys):
    m = make(preset)
    before = {k: [p.clone() for p in net.parameters()] for k, net in m.networks().items()}
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    stats = m.run_step(x, 0)
    assert set(stats) == keys
    for v in stats.values():
        assert v.dim() == 0 and torch.isfinite(v) and not v.requires_grad
    for name, net in m.networks().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name


def test_vae_loss_values_on_a_known_case():
    m = make("tiny-vae", ["model.kl_weight=0.5"])
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        noise = torch.zeros(4, 8)
        got = m._losses(x, noise)
        mean, logvar = m.encode(x)
        recon = (torch.tanh(m.decoder(mean)) - x).square().mean((1, 2, 3))
        kl = -0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(1)
    assert_close(got["recon"], recon.mean())
    assert_close(got["kl"], kl.mean())
    assert_close(got["loss"], (recon + 0.5 * kl).mean())


@pytest.mark.parametrize("preset", ["tiny-vae", "tiny-dcgan"])
def test_sample_is_uint8_seeded_and_independent_of_batch_size(preset):
    m = make(preset)
    a = m.sample(10, seed=3, batch_size=10)
    assert a.dtype == torch.uint8 and a.shape == (10, 1, 16, 16)
    assert torch.equal(a, m.sample(10, seed=3, batch_size=3))
    assert torch.equal(a[:4], m.sample(4, seed=3))  # image i depends only on seed + i
    assert torch.equal(a[1:5], m.sample(4, seed=4))
    assert not torch.equal(a, m.sample(10, seed=4))


def test_reconstruct_only_with_an_encoder():
    vae, gan = make("tiny-vae"), make("tiny-dcgan")
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    vae.eval()
    out = vae.reconstruct(x)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    with pytest.raises(GenlabError, match="no encoder"):
        gan.reconstruct(x)


def test_bce_vae_outputs_stay_in_range():
    m = make("tiny-vae", ["model.recon_loss=bce"])
    stats = m.run_step(torch.rand(4, 1, 16, 16) * 2 - 1, 0)
    assert torch.isfinite(stats["loss"])
    img = m.sample(4, seed=0)
    assert img.dtype == torch.uint8


@pytest.mark.parametrize("preset", ["tiny-vae", "tiny-dcgan"])
def test_save_load_gives_the_same_samples(preset):
    a = make(preset)
    a.run_step(torch.rand(8, 1, 16, 16) * 2 - 1, 0)
    torch.manual_seed(123)
    b = METHODS.get(a.name)(a.cfg, (1, 16, 16), CPU)
    assert not torch.equal(a.sample(4, 0), b.sample(4, 0))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample(4, 0), b.sample(4, 0))


def test_state_of_another_family_is_rejected():
    vae, gan = make("tiny-vae"), make("tiny-dcgan")
    with pytest.raises(GenlabError, match="holds networks"):
        vae.load_state_dict(gan.state_dict(), source="x.pt")
    wider = make("tiny-vae", ["model.widths=[16, 32]"])
    with pytest.raises(GenlabError, match="does not fit this model"):
        vae.load_state_dict(wider.state_dict(), source="x.pt")


def test_widths_must_match_the_image_size():
    with pytest.raises(GenlabError, match="16x16 images need 2"):
        make("tiny-vae", ["model.widths=[8, 16, 32]"])


def test_vae_log_variance_is_bounded_smoothly():
    m = make("tiny-vae", ["model.logvar_limit=10"])
    with torch.no_grad():
        m.encoder.to_logvar.bias.fill_(1e4)  # a runaway encoder
    mean, logvar = m.encode(torch.rand(4, 1, 16, 16) * 2 - 1)
    assert logvar.max() <= 10.0 and torch.isfinite(m._losses(torch.zeros(4, 1, 16, 16), torch.zeros(4, 8))["kl"])
    free = make("tiny-vae", ["model.logvar_limit=0"])
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(free.encode(x)[1], free.encoder(x)[1])


def grad_norm_at_step(m) -> float:
    """The global gradient norm the VAE's optimizer sees when it steps."""
    params = [p for g in m.opt.param_groups for p in g["params"]]
    seen = {}
    original = m.opt.step

    def step(*a, **k):
        seen["norm"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()
        return original(*a, **k)

    m.opt.step = step
    torch.manual_seed(0)
    m.run_step(torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1, 0)
    return seen["norm"]


def test_gradient_clipping_scales_the_norm_to_the_bound():
    free = grad_norm_at_step(make("tiny-vae"))
    clipped = grad_norm_at_step(make("tiny-vae", ["model.optim.grad_clip=1e-3"]))
    assert free > 1e-2  # the bound is active...
    assert clipped == pytest.approx(1e-3, rel=1e-4)  # ...and the clipped norm sits on it, not merely below
    loose = grad_norm_at_step(make("tiny-vae", [f"model.optim.grad_clip={free * 10}"]))
    assert loose == pytest.approx(free, rel=1e-6)  # a bound above the norm leaves the gradient alone


def test_cyclical_kl_annealing_follows_its_schedule():
    """The weight is a function of the loop's step alone (so a resumed run continues the schedule)."""
    m = make("tiny-vae", ["model.kl_cycle_steps=8", "model.kl_cycle_ratio=0.5"])
    betas = []
    for step in range(12):
        betas.append(m.kl_beta(step))
        stats = m.run_step(torch.rand(4, 1, 16, 16) * 2 - 1, step)
        assert stats["kl_beta"].item() == betas[-1]
    assert betas == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.0, 0.25, 0.5, 0.75]
    assert make("tiny-vae").kl_beta(3) == 1.0 and "kl_beta" not in make("tiny-vae").run_step(torch.zeros(4, 1, 16, 16), 3)
