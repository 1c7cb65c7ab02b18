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
