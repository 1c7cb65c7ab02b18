"""Families between VAE and GAN: the unbalanced GAN whose generator starts from a VAE run's decoder
(Ham et al. 2020, seed 002)."""

import torch

from genlab.resolve import load_config
from genlab.train.checkpoint import build_method_from_checkpoint, load_checkpoint
from genlab.train.loop import start_training

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
    from genlab.train.loop import resume_training

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
    from genlab.errors import GenlabError
    import pytest

    with pytest.raises(GenlabError, match="decoder_variance=optimal is a Gaussian decoder's variance"):
        load_config("tiny-vae", ["model.decoder_variance=optimal", "model.recon_loss=bce"])
