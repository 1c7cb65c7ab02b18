"""Families between VAE and GAN: the unbalanced GAN whose generator starts from a VAE run's decoder
(Ham et al. 2020, seed 002)."""

import torch

from genlab.api import train as start_training
from genlab.resolve import load_config
from genlab.train.checkpoint import build_method_from_checkpoint, load_checkpoint

CPU = torch.device("cpu")
UNBALANCED = ["model.arch=vae-decoder", "model.g_activation=leaky_relu", "model.latent_dim=8", "model.g_widths=[8,16]"]


def test_the_unbalanced_gan_starts_as_the_vae_decoder_and_copies_nothing_else(tmp_path, cli):
    vae = start_training(load_config("tiny-vae"), tmp_path / "vae", CPU, quiet=True)
    gan = start_training(load_config("tiny-dcgan", UNBALANCED + [f"init.from_run={vae}", "train.max_steps=1"]),
                         tmp_path / "gan", CPU, quiet=True)
    fresh = start_training(load_config("tiny-dcgan", UNBALANCED + ["train.max_steps=1"]), tmp_path / "fresh", CPU, quiet=True)
    log = (gan / "log.txt").read_text()
    assert "generator <- decoder" in log and "discriminator <-" not in log
    # Before its first step the generator is the VAE's decoder map exactly: check on a copy built
    # from the VAE run and a GAN initialised from it (no step taken).
    from genlab.methods import build_method

    vae_model, _, _ = build_method_from_checkpoint(vae / "checkpoints" / "best-inference.pt", CPU)
    cfg = load_config("tiny-dcgan", UNBALANCED + [f"init.from_run={vae}"])
    torch.manual_seed(0)
    model = build_method(cfg, (1, 16, 16), CPU)
    d_before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    assert model.initialise_from(vae_model, {}, str(vae)) == ["generator <- decoder"]
    assert all(torch.equal(v, d_before[k]) for k, v in model.discriminator.state_dict().items())  # D untouched
    z = torch.randn(5, 8)
    with torch.no_grad(), model.evaluating(), vae_model.evaluating():
        assert torch.allclose(model.generate(z), vae_model.generate(z), atol=1e-6)
    # the trained runs differ from a fresh start in G, as they should
    g = load_checkpoint(gan / "checkpoints" / "last.pt")["state"]["networks"]["generator"]
    f = load_checkpoint(fresh / "checkpoints" / "last.pt")["state"]["networks"]["generator"]
    assert not torch.equal(g["project.weight"], f["project.weight"])


def test_an_unbalanced_gan_from_a_vae_that_does_not_fit_is_refused(tmp_path, cli):
    vae = start_training(load_config("tiny-vae"), tmp_path / "vae", CPU, quiet=True)
    code, _, err = cli("train", "tiny-dcgan", *UNBALANCED, "model.latent_dim=16", f"init.from_run={vae}",
                       "--runs-dir", tmp_path / "runs")
    assert code == 2 and "project.weight is [256, 8] there and [256, 16] here" in err
    assert not (tmp_path / "runs").exists()
    code, _, err = cli("train", "tiny-dcgan", *UNBALANCED, "model.g_activation=relu", f"init.from_run={vae}",
                       "--runs-dir", tmp_path / "runs")
    assert code == 2 and "its decoder uses activation 'leaky_relu'" in err
    code, _, err = cli("train", "tiny-dcgan", *UNBALANCED, f"init.from_run={tmp_path / 'nothing'}", "--runs-dir",
                       tmp_path / "runs")
    assert code == 2 and "nothing" in err


def test_the_vaegan_trains_each_network_and_resumes_bit_exactly(tmp_path):
    from genlab.methods import build_method

    cfg = load_config("tiny-vaegan", ["model.pixel_weight=1.0", "model.enc_optim.lr=2e-3", "model.dec_optim.lr=2e-3"])
    torch.manual_seed(0)
    model = build_method(cfg, (1, 16, 16), CPU)
    before = {name: [p.clone() for p in net.parameters()] for name, net in model.networks().items()}
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    stats = [model.run_step(x, s) for s in range(40)]
    for name, net in model.networks().items():  # all three networks step
        assert any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())), name
    assert stats[-1]["loss_enc"] < 0.8 * stats[0]["loss_enc"] and stats[-1]["llike"] < stats[0]["llike"]
    assert {"loss_d", "kl", "llike", "pixel", "loss_enc", "loss_dec", "gan_g"} <= set(stats[0])
    with torch.no_grad(), model.evaluating():
        assert model.reconstruct(x).shape == x.shape and model.generate(torch.randn(3, 8)).shape == (3, 1, 16, 16)
    straight = start_training(load_config("tiny-vaegan", ["train.epochs=3"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config("tiny-vaegan", ["train.epochs=3", "train.max_steps=7"]), tmp_path, CPU, quiet=True)
    from genlab.api import resume as resume_training

    resume_training(split, ["train.max_steps=null"], CPU, quiet=True)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["state"]["networks"]
    b = load_checkpoint(split / "checkpoints" / "last.pt")["state"]["networks"]
    assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])
    # save -> load -> the same samples
    loaded, _, _ = build_method_from_checkpoint(straight / "checkpoints" / "last-inference.pt", CPU)
    again, _, _ = build_method_from_checkpoint(straight / "checkpoints" / "last-inference.pt", CPU)
    assert torch.equal(loaded.sample(6, 3), again.sample(6, 3))


def test_the_vaegan_fakes_option_changes_what_the_discriminator_sees():
    from genlab.methods import build_method

    x = torch.rand(8, 1, 16, 16) * 2 - 1
    results = {}
    for fakes in ("both", "recon", "samples"):
        torch.manual_seed(0)
        model = build_method(load_config("tiny-vaegan", [f"model.fakes={fakes}"]), (1, 16, 16), CPU)
        torch.manual_seed(1)
        results[fakes] = model.run_step(x, 0)["loss_d"].item()
    assert len(set(results.values())) == 3


def test_the_sigma_vae_objective_is_the_gaussian_nll_at_the_optimal_variance():
    import math

    from genlab.methods import build_method

    model = build_method(load_config("tiny-vae", ["model.decoder_variance=optimal"]), (1, 16, 16), CPU)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    noise = torch.zeros(4, 8)
    out = model._losses(x, noise)
    with torch.no_grad():
        mean, logvar = model.encode(x)
        recon = torch.tanh(model.decoder(mean))
        var = (recon - x).square().mean()
        nll = 0.5 * (recon - x).square() / var + 0.5 * torch.log(var) + 0.5 * math.log(2 * math.pi)
        kl = -0.5 * (1 + logvar - mean.square() - logvar.exp()).sum(1)
    assert torch.allclose(out["recon"], nll.flatten(1).mean(1).mean(), atol=1e-5)
    assert torch.allclose(out["loss"], (nll.flatten(1).mean(1) + kl / 256).mean(), atol=1e-5)
    import pytest

    from genlab.errors import GenlabError

    with pytest.raises(GenlabError, match="decoder_variance=optimal is a Gaussian decoder's variance"):
        load_config("tiny-vae", ["model.decoder_variance=optimal", "model.recon_loss=bce"])


# -- seed 000's hybrid: a latent GAN over a frozen VAE ---------------------------------------------------
def _vae_run(tmp_path):
    return start_training(load_config("tiny-vae"), tmp_path / "vae", CPU, quiet=True)


def test_the_latent_corruption_is_q_zt_given_z0_for_a_linear_schedule():
    from genlab.losses.diffusion import GaussianDiffusion
    from genlab.methods.latent_gan import LatentGANMethod  # noqa: F401  (the family's process)

    process = GaussianDiffusion("linear", 1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # Ho et al. 2020's linear schedule
    alpha_bar = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(0)
    z0, e = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    t = torch.tensor([0, 1, 10, 250, 500, 999])
    expected = alpha_bar[t].sqrt()[:, None] * z0 + (1 - alpha_bar[t]).sqrt()[:, None] * e
    assert torch.allclose(process.q_sample(z0, t, e).double(), expected, atol=1e-5)
    # and its moments: mean sqrt(a_t) z0, variance 1 - a_t
    many = torch.randn(200_000, 1, generator=g)
    zt = process.q_sample(torch.full((200_000, 1), 2.0), torch.full((200_000,), 300), many)
    assert abs(zt.mean().item() - 2 * alpha_bar[300].sqrt().item()) < 0.01
    assert abs(zt.var().item() - (1 - alpha_bar[300]).item()) < 0.01


def test_adaptive_gradient_clipping_follows_its_formula():
    from genlab.methods.step import adaptive_clip_

    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    w.grad = torch.tensor([[30.0, 40.0], [1.0, 0.0], [0.001, 0.0]])
    adaptive_clip_([w], 0.1, eps=1e-3)
    # unit 0: |w| 5, |g| 50 > 0.1 * 5 -> scaled to norm 0.5; unit 1: |w| floored at 1e-3 -> norm 1e-4;
    # unit 2: |g| 0.001 < 0.1 * 1 -> unchanged (Brock et al. 2021, eq. 3)
    assert torch.allclose(w.grad[0], torch.tensor([0.3, 0.4]))
    assert torch.allclose(w.grad[1], torch.tensor([1e-4, 0.0]))
    assert torch.allclose(w.grad[2], torch.tensor([0.001, 0.0]))


def test_the_hybrid_trains_keeps_its_vae_frozen_and_resumes_bit_exactly(tmp_path):
    vae = _vae_run(tmp_path)
    over = [f"init.from_run={vae}", "train.epochs=3"]
    straight = start_training(load_config("tiny-hybrid", over), tmp_path / "h", CPU, quiet=True)
    vae_nets = load_checkpoint(vae / "checkpoints" / "best-inference.pt")["state"]["networks"]
    nets = load_checkpoint(straight / "checkpoints" / "last.pt")["state"]["networks"]
    for own, theirs in (("first_encoder", "encoder"), ("first_decoder", "decoder")):
        assert all(torch.equal(nets[own][k], vae_nets[theirs][k]) for k in vae_nets[theirs]), own
    split = start_training(load_config("tiny-hybrid", over + ["train.max_steps=7"]), tmp_path / "h", CPU, quiet=True)
    from genlab.api import resume as resume_training

    resume_training(split, ["train.max_steps=null"], CPU, quiet=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, split))
    assert all(torch.equal(a["state"]["networks"][n][k], b["state"]["networks"][n][k])
               for n in a["state"]["networks"] for k in a["state"]["networks"][n])
    assert a["state"]["extra"] == b["state"]["extra"]
    model, _, _ = build_method_from_checkpoint(straight / "checkpoints" / "last-inference.pt", CPU)
    again, _, _ = build_method_from_checkpoint(straight / "checkpoints" / "last-inference.pt", CPU)
    samples = model.sample(5, 2)
    assert samples.shape == (5, 1, 16, 16) and torch.equal(samples, again.sample(5, 2, batch_size=2))


def test_the_hybrid_discriminator_learns_and_the_noise_level_adapts(tmp_path):
    from genlab.methods import build_method

    vae = _vae_run(tmp_path)
    cfg = load_config("tiny-hybrid", [f"init.from_run={vae}", "model.g_optim.lr=1e-9", "model.ada_interval=2",
                                      "model.ada_step=5"])
    torch.manual_seed(0)
    model = build_method(cfg, (1, 16, 16), CPU)
    other, _, _ = build_method_from_checkpoint(vae / "checkpoints" / "best-inference.pt", CPU)
    model.initialise_from(other, {}, str(vae))
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    model.prepare((x[:, :1].add(1).mul(127.5)).to(torch.uint8))
    stats = [model.run_step(x, s) for s in range(40)]
    assert stats[-1]["loss_d"] < stats[0]["loss_d"]  # D separates fixed reals from a (nearly) fixed G
    # while D is sure of the reals (r_d > 0.6) the noise level rises by ada_step every ada_interval steps
    assert stats[-1]["r_d"] > 0.6 and stats[-1]["t_max"].item() > 0
    assert all(s["t_max"].item() % 5 == 0 for s in stats)


def test_a_hybrid_without_a_vae_or_over_a_gan_is_refused(tmp_path, cli):
    code, _, err = cli("train", "tiny-hybrid", "--runs-dir", tmp_path / "runs")
    assert code == 2 and "set init.from_run=RUN_DIR" in err and not (tmp_path / "runs").exists()
    gan = start_training(load_config("tiny-dcgan"), tmp_path / "gan", CPU, quiet=True)
    code, _, err = cli("train", "tiny-hybrid", f"init.from_run={gan}", "--runs-dir", tmp_path / "runs")
    assert code == 2 and "has no encoder with a flat latent; a latent GAN needs a VAE" in err


def test_a_skip_generator_starts_as_the_identity_and_learns_a_correction(tmp_path, cli):
    from genlab.models.latent_gan import LatentGenerator

    torch.manual_seed(0)
    g = LatentGenerator(8, 8, width=16, blocks=2, skip=True)
    noise = torch.randn(5, 8)
    assert torch.equal(g(noise), noise)  # zero last layer: N(0, I) in, N(0, I) out
    target = torch.randn(5, 8)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = (g(noise) - target).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < (noise - target).square().mean().item() / 2  # the correction is trained
    code, _, err = cli("train", "tiny-hybrid", "model.g_skip=true", "model.noise_dim=4", "--runs-dir", tmp_path / "runs")
    assert code == 2 and "g_skip" in err and "noise_dim" in err and not (tmp_path / "runs").exists()


def test_over_a_mixture_the_skip_generator_keeps_the_component_coordinate(tmp_path, cli):
    from genlab.methods import build_method
    from genlab.models.latent_gan import LatentGenerator

    torch.manual_seed(0)
    g = LatentGenerator(8, 8, width=16, blocks=2, skip=True, keep=1)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    noise, target = torch.randn(5, 8), torch.randn(5, 8)
    for _ in range(30):
        opt.zero_grad()
        (g(noise) - target).square().mean().backward()
        opt.step()
    out = g(noise)
    assert torch.equal(out[:, 0], noise[:, 0])  # the component's coordinate passes through exactly
    assert (out[:, 1:] - noise[:, 1:]).abs().max() > 0.1  # the others are corrected
    # the method keeps it only where the first stage samples from a mixture
    mixture = start_training(load_config("tiny-vae", ["model.prior=fitted", "model.prior_components=3"]),
                             tmp_path / "mix", CPU, quiet=True)
    for first, kept in ((mixture, 0.0), (_vae_run(tmp_path), 1.0)):
        cfg = load_config("tiny-hybrid", [f"init.from_run={first}", "model.g_skip=true", "model.g_keep_component=true"])
        assert build_method(cfg, (1, 16, 16), CPU).generator.correction_mask[0].item() == kept
    code, _, err = cli("train", "tiny-hybrid", "model.g_keep_component=true", "--runs-dir", tmp_path / "runs")
    assert code == 2 and "g_keep_component" in err and "g_skip=true" in err and not (tmp_path / "runs").exists()


def test_lr_gamma_decays_each_optimizer_of_the_vaegan_and_the_hybrid_per_epoch(tmp_path):
    """`lr_gamma` on any of a family's optimizers multiplies that learning rate after every epoch, and
    leaves the others alone (both families once ignored it)."""
    runs = {"vaegan": (start_training(load_config("tiny-vaegan", ["train.epochs=2", "model.dec_optim.lr_gamma=0.5"]),
                                      tmp_path, CPU, quiet=True), "decoder", ("encoder", "discriminator"))}
    vae = _vae_run(tmp_path)
    runs["hybrid"] = (start_training(load_config("tiny-hybrid", [f"init.from_run={vae}", "model.d_optim.lr_gamma=0.5"]),
                                     tmp_path / "h", CPU, quiet=True), "discriminator", ("generator",))
    for family, (run, decayed, constant) in runs.items():
        checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
        cfg, state = checkpoint["config"]["model"], checkpoint["state"]
        lr = {name: opt["param_groups"][0]["lr"] for name, opt in state["optimizers"].items()}
        key = {"encoder": "enc_optim", "decoder": "dec_optim", "discriminator": "d_optim", "generator": "g_optim"}
        assert lr[decayed] == cfg[key[decayed]]["lr"] * 0.25, family  # two epochs
        assert all(lr[name] == cfg[key[name]]["lr"] for name in constant), family
        assert set(state["schedulers"]) == {decayed}, family
