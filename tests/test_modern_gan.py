"""R3GAN (RpGAN + R1 + R2, the modernised ResNet, its schedules) and the SN-ResNet of Miyato et al.:
losses against their formulas, penalties against a closed form, shapes and parameter counts,
spectral norm's estimate, a step of each preset, bit-exact resume, and every refused setting."""

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.errors import GenlabError
from genlab.losses.gan import GAN_LOSSES, add_penalties, d_relativistic_loss, g_relativistic_loss
from genlab.methods import METHODS
from genlab.methods.step import Stepper
from genlab.resolve import load_config
from genlab.train.checkpoint import load_checkpoint

CPU = torch.device("cpu")
# The parameter counts docs/families.md states (generator, discriminator), per preset and image side.
PARAMETERS = {("sngan-celeba64", 64): (3_635_395, 9_578_689), ("sngan-celeba64", 32): (1_204_163, 2_367_425),
              ("r3gan-celeba64", 64): (2_333_379, 2_475_137), ("r3gan-celeba64", 32): (1_593_795, 1_735_553)}


def build(preset: str, overrides=(), shape=(3, 64, 64)):
    cfg = load_config(preset, ["data.root=x", *overrides])
    return METHODS.get("gan")(cfg.model, shape, CPU), cfg


def test_rpgan_against_its_formula_on_fixed_logits():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    expected_d = torch.log1p(torch.exp(fake - real))  # -log sigmoid(D(x) - D(G(z)))
    expected_g = torch.log1p(torch.exp(real - fake))
    torch.testing.assert_close(d_relativistic_loss(real, fake), expected_d)
    torch.testing.assert_close(g_relativistic_loss(fake, real), expected_g)
    objective = GAN_LOSSES.get("rpgan")
    assert objective.relativistic and objective.zero_centred and not objective.targets
    # a shift of both outputs changes nothing: only the difference is compared
    torch.testing.assert_close(d_relativistic_loss(real + 3, fake + 3), expected_d)


def test_r1_and_r2_against_a_closed_form_on_a_linear_critic():
    """D(x) = w.x + b has grad_x D = w everywhere: R1 = R2 = ||w||^2 per sample, weighted as given."""
    w = torch.tensor([0.5, -2.0, 1.0])
    critic = lambda x: x.flatten(1) @ w + 0.3  # noqa: E731
    real = torch.randn(4, 3, requires_grad=True)
    fake = torch.randn(4, 3, requires_grad=True)
    loss, stats = add_penalties(torch.tensor(1.0), Stepper().gradients, critic, real, fake, real_out=critic(real),
                                r1_weight=0.5, fake_out=critic(fake), r2_weight=0.25)
    norm2 = w.square().sum()
    torch.testing.assert_close(stats["r1"], norm2)
    torch.testing.assert_close(stats["r2"], norm2)
    torch.testing.assert_close(loss, 1.0 + 0.5 * norm2 + 0.25 * norm2)


@pytest.mark.parametrize("preset, size", sorted(PARAMETERS))
def test_the_networks_have_the_configured_shapes_and_the_stated_parameter_counts(preset, size):
    widths = [] if size == 64 else ["model.g_widths=[64,128,256]", "model.d_widths=[64,128,256]"]
    method, cfg = build(preset, [f"data.size={size}", *widths], (3, size, size))
    z = torch.randn(2, cfg.model.latent_dim)
    with torch.no_grad():
        images = method.generator(z)
        assert images.shape == (2, 3, size, size)
        assert method.discriminator(images).shape == (2,)
    counts = method.num_parameters()
    assert (counts["generator"], counts["discriminator"]) == PARAMETERS[(preset, size)]


def test_spectral_norm_estimate_of_the_sn_resnet_critic():
    method, _ = build("tiny-sngan", shape=(1, 16, 16))
    d = method.discriminator.train()
    with torch.no_grad():
        for _ in range(30):  # one power iteration per forward pass
            d(torch.randn(4, 1, 16, 16))
        d.eval()
        for layer in (d.linear, d.blocks[0].conv1):
            weight = layer.weight.flatten(1)
            assert torch.linalg.matrix_norm(weight, ord=2).item() == pytest.approx(1.0, abs=2e-2)


@pytest.mark.parametrize("preset", ["sngan-celeba64", "r3gan-celeba64", "tiny-sngan", "tiny-r3gan"])
def test_one_training_step_of_each_new_preset_on_tiny_sizes(preset):
    tiny = ["data.size=16", "model.g_widths=[16,16]", "model.d_widths=[16,16]", "model.latent_dim=8"]
    method, _ = build(preset, tiny, (1, 16, 16))
    before = [p.detach().clone() for p in method.discriminator.parameters()]
    stats = method.run_step(torch.rand(8, 1, 16, 16) * 2 - 1, 9)  # step 9: a G step under n_critic 1, 2 and 5
    assert all(torch.isfinite(v) for v in stats.values()) and "loss_d" in stats and "loss_g" in stats
    assert any(not torch.equal(a, b) for a, b in zip(before, method.discriminator.parameters()))
    if "r3gan" in preset:
        assert {"r1", "r2"} <= set(stats)


def test_r3gan_schedules_follow_a_cosine_of_the_step():
    method, cfg = build("r3gan-celeba64", ["model.schedule_steps=100", "data.size=16", "model.g_widths=[16,16]",
                                           "model.d_widths=[16,16]"], (1, 16, 16))
    assert method.schedule(0) == pytest.approx(1.0)
    group = method.opt_d.param_groups[0]
    assert group["lr"] == pytest.approx(2e-4) and group["betas"][1] == pytest.approx(0.99)
    assert method.schedule(50) == pytest.approx(1 + (0.1 - 1) * 0.5)
    assert group["lr"] == pytest.approx(2e-4 * (1 + (0.25 - 1) * 0.5))
    assert method.schedule(100) == pytest.approx(0.1) == method.schedule(500)
    assert group["lr"] == pytest.approx(5e-5) and group["betas"][1] == pytest.approx(0.9)
    assert method.schedule(25) == pytest.approx(1 + (0.1 - 1) * 0.5 * (1 - math.cos(math.pi / 4)))


def test_a_resumed_r3gan_run_is_bit_exact(tmp_path):
    straight = start_training(load_config("tiny-r3gan", ["train.ema_decay=0.9"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config("tiny-r3gan", ["train.ema_decay=0.9", "train.epochs=1"]), tmp_path, CPU,
                           quiet=True)
    resume_training(split, ["train.epochs=2"], CPU, quiet=True)
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, split))
    for net in ("generator", "discriminator"):
        for key, value in a["state"]["networks"][net].items():
            assert torch.equal(value, b["state"]["networks"][net][key]), (net, key)
    for key, value in a["ema"]["networks"]["generator"].items():
        assert torch.equal(value, b["ema"]["networks"]["generator"][key])


@pytest.mark.parametrize("overrides, words", [
    (["model.loss=lsgan", "model.r2_gamma=1"], "R2 is a zero-centred penalty"),
    (["model.loss=hinge", "model.r2_gamma=1"], "not for loss hinge"),
    (["model.r1_gamma=-1"], "r1_gamma"),
    (["model.r2_gamma=-0.5"], "r2_gamma"),
    (["model.g_widths=[8,16,32]"], "has 3 entries; 16x16 images need 2"),
    (["model.group_width=5"], "does not divide into groups"),
    (["model.lr_end=0"], "lr_end"),
    (["model.schedule_steps=0"], "need model.schedule_steps > 0"),
    (["model.arch=dcgan"], "arch dcgan has none"),
    (["model.attention_res=8"], "DCGAN's switches"),
])
def test_bad_modern_gan_settings_are_refused_before_anything_runs(overrides, words):
    with pytest.raises(GenlabError, match=words):
        method, _ = build("tiny-r3gan", overrides, (1, 16, 16))


def test_the_sn_resnet_refuses_extra_blocks_and_the_latent_gan_refuses_rpgan():
    with pytest.raises(GenlabError, match="one residual block per resolution"):
        build("tiny-sngan", ["model.blocks=2"], (1, 16, 16))
    with pytest.raises(GenlabError, match="no real latents to pair"):
        load_config("tiny-hybrid", ["model.loss=rpgan"])
    assert F.softplus(torch.tensor(0.0)).item() == pytest.approx(math.log(2.0))


def test_the_ema_half_life_rule_r3gan_keeps():
    """StyleGAN2-ADA's EMA: decay 0.5 ** (batch / half-life), the half-life at most rampup x images seen."""
    from genlab.train.ema import EMA

    method, cfg = build("tiny-r3gan", shape=(1, 16, 16))
    ema = EMA(method, 0.999, halflife_images=20_000, rampup=0.05, batch_size=64)
    assert ema.current_decay() == 0.0  # nothing seen yet: the average is the weights
    ema.updates = 10  # 640 images: half-life min(20000, 32)
    assert ema.current_decay() == pytest.approx(0.5 ** (64 / 32))
    ema.updates = 10_000  # 640,000 images: the ramp-up allows 32,000, the half-life caps at 20,000
    assert ema.current_decay() == pytest.approx(0.5 ** (64 / 20_000))
    assert load_config("r3gan-celeba64", ["data.root=x"]).train.ema_halflife_kimg == 20
    with pytest.raises(GenlabError, match="set train.ema_halflife_kimg too"):
        load_config("tiny-r3gan", ["train.ema_decay=0.9", "train.ema_rampup=0.05"])
    with pytest.raises(GenlabError, match="train.ema_decay > 0 switches on"):
        load_config("tiny-r3gan", ["train.ema_halflife_kimg=5"])
