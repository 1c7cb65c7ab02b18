"""The GAN family: every objective against its formula, the penalties against brute force, each
stabiliser doing what it says, the seed reports' presets, and bad combinations refused."""

import math

import pytest
import torch

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.config import OptimConfig
from genlab.errors import GenlabError
from genlab.losses import gan as L
from genlab.methods import METHODS
from genlab.methods.step import Stepper, adaptive_clip_
from genlab.models.blocks import SelfAttention
from genlab.resolve import load_config
from genlab.train.checkpoint import load_checkpoint

CPU = torch.device("cpu")
X = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1


def gan(*overrides, shape=(1, 16, 16)):
    cfg = load_config("tiny-dcgan", list(overrides))
    torch.manual_seed(0)
    return METHODS.get(cfg.method)(cfg.model, shape, CPU)


# ------------------------------------------------------------------------------------------ objectives


def test_every_objective_against_its_formula_on_both_sides():
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([-3.0, 0.0, 1.5])
    sig = torch.sigmoid
    # Goodfellow et al. 2014: -log D(x) - log(1 - D(G(z))); G: -log D(G(z)).
    torch.testing.assert_close(L.d_logistic_loss(real, fake), -torch.log(sig(real)) - torch.log(1 - sig(fake)))
    torch.testing.assert_close(L.g_nonsaturating_loss(fake), -torch.log(sig(fake)))
    smoothed = -(0.9 * torch.log(sig(real)) + 0.1 * torch.log(1 - sig(real))) - torch.log(1 - sig(fake))
    torch.testing.assert_close(L.d_logistic_loss(real, fake, 0.9), smoothed)  # BCE with target 0.9
    # Mao et al. 2017: 0.5 (D(x) - 1)^2 + 0.5 D(G(z))^2; G: 0.5 (D(G(z)) - 1)^2.
    torch.testing.assert_close(L.d_least_squares_loss(real, fake), 0.5 * (real - 1) ** 2 + 0.5 * fake**2)
    torch.testing.assert_close(L.g_least_squares_loss(fake), 0.5 * (fake - 1) ** 2)
    # Wasserstein: D(G(z)) - D(x); G: -D(G(z)).
    torch.testing.assert_close(L.d_wasserstein_loss(real, fake), fake - real)
    torch.testing.assert_close(L.g_wasserstein_loss(fake), -fake)
    # Hinge: max(0, 1 - D(x)) + max(0, 1 + D(G(z))); G: -D(G(z)).
    torch.testing.assert_close(L.d_hinge_loss(real, fake), torch.tensor([0.0 + 0.0, 2.0 + 1.0, 0.5 + 2.5]))
    torch.testing.assert_close(L.g_hinge_loss(fake), -fake)
    # Penalties on hand-made gradients: (||g|| - 1)^2 and ||g||^2.
    g = torch.tensor([[3.0, 4.0], [0.6, 0.8]]).view(2, 1, 1, 2)
    torch.testing.assert_close(L.gradient_penalty(g), torch.tensor([16.0, 0.0]))
    torch.testing.assert_close(L.r1_penalty(g), torch.tensor([25.0, 1.0]))


def test_the_gradient_penalty_matches_brute_force_on_a_tiny_critic():
    """The penalty through the step helper equals one computed from finite differences, per image."""
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    points = torch.randn(3, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = Stepper().gradients(critic(points).flatten(), points)
    got = L.gradient_penalty(grad)
    h = 1e-6
    for i in range(3):
        fd = torch.zeros(6, dtype=torch.float64)
        for j in range(6):
            up, down = points[i].detach().clone().flatten(), points[i].detach().clone().flatten()
            up[j] += h
            down[j] -= h
            fd[j] = (critic(up.view(1, 1, 2, 3)) - critic(down.view(1, 1, 2, 3))).item() / (2 * h)
        assert got[i].item() == pytest.approx((fd.norm().item() - 1) ** 2, rel=1e-6)


def test_wgan_gp_adds_the_weighted_penalty_and_logs_raw_scores():
    m = gan("model.loss=wgan-gp", "model.d_norm=layer", "model.gp_weight=10")
    stats = m.run_step(X, 0)
    assert set(stats) == {"loss_d", "gp", "score_real", "score_fake", "loss_g"}  # raw critic scores, not probabilities
    assert stats["gp"] > 0 and torch.isfinite(stats["loss_d"])
    assert stats["loss_d"].item() == pytest.approx((stats["score_fake"] - stats["score_real"]).item(), rel=1e-5)


def test_lazy_r1_on_reals_every_k_steps():
    m = gan("model.loss=hinge", "model.d_norm=none", "model.r1_gamma=1.0", "model.r1_every=3")
    seen = [step for step in range(7) if "r1" in m.run_step(X, step)]
    assert seen == [0, 3, 6]


# ------------------------------------------------------------------------------------------ stabilisers


def test_spectral_norm_bounds_the_largest_singular_value_of_every_layer():
    m = gan("model.d_spectral_norm=true", "model.g_spectral_norm=true", "model.attention_res=8")
    for step in range(30):  # power iteration: one step per forward pass in training mode
        m.run_step(X, step)
    layers = [mod for net in (m.generator, m.discriminator) for mod in net.modules()
              if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(layers) >= 10
    for layer in layers:
        weight = layer.weight.detach()  # the normalised weight W / sigma(W)
        matrix = weight.transpose(0, 1) if isinstance(layer, torch.nn.ConvTranspose2d) else weight
        top = torch.linalg.svdvals(matrix.flatten(1))[0].item()
        assert top == pytest.approx(1.0, abs=0.05), layer


def test_normalisations_and_self_attention_are_where_they_are_asked_for():
    kinds = lambda net: {type(mod).__name__ for mod in net.modules()}
    m = gan("model.g_norm=instance", "model.d_norm=layer", "model.attention_res=8", "model.loss=hinge")
    assert "InstanceNorm2d" in kinds(m.generator) and "BatchNorm2d" not in kinds(m.generator)
    assert "GroupNorm" in kinds(m.discriminator) and "BatchNorm2d" not in kinds(m.discriminator)
    assert "SelfAttention" in kinds(m.generator) and "SelfAttention" in kinds(m.discriminator)
    none = gan("model.g_norm=none", "model.d_norm=none")
    assert not kinds(none.generator) & {"BatchNorm2d", "InstanceNorm2d", "GroupNorm"}
    attention = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(attention(x), x)  # gamma starts at 0: the block begins as the identity
    with torch.no_grad():
        attention.gamma.fill_(1.0)
    assert attention(x).shape == x.shape and not torch.allclose(attention(x), x)


def test_n_critic_counts_discriminator_and_generator_updates():
    m = gan("model.n_critic=5")
    calls = {"d": 0, "g": 0}
    for key, opt in (("d", m.opt_d), ("g", m.opt_g)):
        original = opt.step
        opt.step = (lambda key, original: lambda *a, **k: calls.__setitem__(key, calls[key] + 1) or original(*a, **k))(key, original)
    g_steps = [step for step in range(10) if "loss_g" in m.run_step(X, step)]
    assert calls == {"d": 10, "g": 2} and g_steps == [4, 9]


def test_label_flipping_happens_exactly_on_the_configured_steps():
    m = gan("model.label_flip_every=16")
    seen = []
    original = m.objective.d_loss
    m.objective = type(m.objective)(lambda r, f, rt, ft: seen.append(float(rt[0])) or original(r, f, rt, ft),
                                    m.objective.g_loss, True, True)
    for step in range(40):
        m.run_step(X, step)
    assert [step for step, target in enumerate(seen) if target == 0.0] == [15, 31]
    assert all(target == 1.0 for step, target in enumerate(seen) if step not in (15, 31))
    noisy = gan("model.label_noise=0.1")
    real, fake = noisy.targets(0, 4000, CPU)
    assert real.mean().item() == pytest.approx(1.0, abs=0.01) and real.std().item() == pytest.approx(0.1, rel=0.1)
    assert fake.mean().item() == pytest.approx(0.0, abs=0.01)


def test_instance_noise_falls_linearly():
    m = gan("model.instance_noise=0.2", "model.instance_noise_steps=100")
    assert [m.instance_noise_std(s) for s in (0, 50, 100, 200)] == [0.2, 0.1, 0.0, 0.0]
    assert torch.isfinite(m.run_step(X, 0)["loss_d"])
    assert gan("model.instance_noise=0.2").instance_noise_std(10_000) == 0.2


def test_adaptive_gradient_clipping_bounds_each_unit():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, 2, 2))
    w.grad = torch.randn(4, 3, 2, 2) * torch.tensor([100.0, 0.001, 5.0, 0.0]).view(4, 1, 1, 1)
    before = w.grad.clone()
    adaptive_clip_([w], factor=0.05)
    ratio = w.grad.flatten(1).norm(dim=1) / w.detach().flatten(1).norm(dim=1)
    assert (ratio <= 0.05 + 1e-6).all() and ratio[0] == pytest.approx(0.05, rel=1e-5)
    torch.testing.assert_close(w.grad[1], before[1])  # a small gradient is left alone


def test_a_gan_has_validation_curves(tmp_path):
    run = start_training(load_config("tiny-dcgan", ["data.val_fraction=0.2"]), tmp_path, CPU, quiet=True)
    import json

    epochs = [r for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(math.isfinite(r["val_loss_d"]) and math.isfinite(r["val_loss_g"]) for r in epochs)
    assert not (run / "checkpoints" / "best.pt").exists()  # validation curves, not a loss to stop on


def test_resume_is_bit_exact_with_ema_n_critic_label_flipping_and_noise(tmp_path):
    over = ["train.ema_decay=0.9", "model.n_critic=2", "model.label_flip_every=3", "model.label_noise=0.1",
            "model.instance_noise=0.1", "model.instance_noise_steps=8"]
    straight = start_training(load_config("tiny-dcgan", over + ["train.epochs=3"]), tmp_path / "a", CPU, quiet=True)
    split = start_training(load_config("tiny-dcgan", over + ["train.epochs=1"]), tmp_path / "b", CPU, quiet=True)
    resume_training(split, ["train.epochs=3"], CPU, quiet=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, split))
    for section in ("state", "ema"):
        for name, weights in a[section]["networks"].items():
            for key, value in weights.items():
                assert torch.equal(value, b[section]["networks"][name][key]), (section, name, key)


# ------------------------------------------------------------------------------------------ presets and bad input

GAN_PRESETS = ["dcgan-celeba64", "dcgan-ck-seed001", "dcgan-digits", "wgangp-celeba64-seed000",
               "lsgan-celeba64-seed002", "gan-celeba64"]


@pytest.mark.parametrize("preset", GAN_PRESETS)
def test_each_gan_preset_takes_finite_first_steps(preset):
    cfg = load_config(preset, ["data.root=unused", "model.base_width=8", "data.size=32"])
    torch.manual_seed(0)
    channels = cfg.data.channels
    m = METHODS.get(cfg.method)(cfg.model, (channels, 32, 32), CPU)
    x = torch.rand(16, channels, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for step in range(2 * cfg.model.n_critic):
        stats = m.run_step(x, step)
        assert all(torch.isfinite(v) for v in stats.values()), (preset, step, stats)
    assert "loss_g" in stats


def test_the_seed_presets_carry_the_reported_settings():
    w = load_config("wgangp-celeba64-seed000").model
    assert (w.loss, w.d_spectral_norm, w.g_norm, w.n_critic, w.gp_weight) == ("wgan-gp", True, "instance", 5, 10.0)
    assert (w.d_optim.name, w.d_optim.lr, w.g_optim.name, w.g_optim.lr) == ("rmsprop", 5e-5, "rmsprop", 5e-5)
    ls = load_config("lsgan-celeba64-seed002")
    assert (ls.model.loss, ls.model.latent_dim, ls.model.label_flip_every, ls.model.label_noise) == ("lsgan", 128, 16, 0.1)
    assert (ls.train.batch_size, ls.model.g_optim.lr) == (128, 5e-3)
    best = load_config("gan-celeba64")
    assert best.model.loss == "hinge" and best.model.d_spectral_norm and best.model.attention_res
    assert best.train.ema_decay > 0 and best.model.d_optim.lr > best.model.g_optim.lr  # TTUR


@pytest.mark.parametrize("overrides, message", [
    (["model.loss=wgan-gp"], "model.d_norm=batch with the gradient penalty of wgan-gp"),
    (["model.r1_gamma=1"], "model.d_norm=batch with R1"),
    (["model.n_critic=0"], "'model.n_critic' must be at least 1"),
    (["model.loss=hinge", "model.label_flip_every=4"], "loss hinge has no real/fake targets"),
    (["model.d_optim.name=rmsprop"], "RMSprop has no betas"),
    (["model.attention_res=6"], "'model.attention_res' must be 0 or a power of two"),
    (["model.g_norm=layer"], "'model.g_norm' must be one of batch, instance, none"),
])
def test_combinations_that_do_not_fit_are_refused_with_the_reason(overrides, message):
    with pytest.raises(GenlabError) as e:
        load_config("tiny-dcgan", overrides)
    assert message in str(e.value)


def test_a_self_attention_resolution_the_network_lacks_is_refused_before_training(tmp_path):
    with pytest.raises(GenlabError, match="model.attention_res=32: a 16x16 DCGAN has feature maps of 4, 8 pixels"):
        start_training(load_config("tiny-dcgan", ["model.attention_res=32"]), tmp_path, CPU, quiet=True)
    assert not list(tmp_path.iterdir())


def test_rmsprop_uses_its_own_constant():
    cfg = load_config("tiny-dcgan", ["model.d_optim.name=rmsprop", "model.d_optim.betas=null", "model.d_optim.alpha=0.9"])
    m = METHODS.get(cfg.method)(cfg.model, (1, 16, 16), CPU)
    assert isinstance(m.opt_d, torch.optim.RMSprop) and m.opt_d.param_groups[0]["alpha"] == 0.9
    assert m.opt_g.param_groups[0]["betas"] == (0.5, 0.999)  # G keeps the GAN's Adam
    from genlab.methods.step import make_optimizer

    plain = make_optimizer(OptimConfig(), [torch.nn.Parameter(torch.zeros(2))], CPU)
    assert plain.param_groups[0]["betas"] == (0.9, 0.999)  # betas null: Adam's own defaults
