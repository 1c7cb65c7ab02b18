"""The autoencoder family (seed 003's baseline): its Gaussian over codes, consistent latent maps,
training, save/load and bit-exact resume."""

import torch

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.data.convert import to_model_range
from genlab.methods import build_method
from genlab.models.latent_prior import add_prior_buffers, fit_gaussian, fit_mixture, from_prior, whiten
from genlab.resolve import load_config
from genlab.train.checkpoint import build_method_from_checkpoint, load_checkpoint

CPU = torch.device("cpu")


def test_the_gaussian_fit_recovers_a_known_covariance():
    g = torch.Generator().manual_seed(0)
    true_mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    true_chol = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [-0.3, 0.2, 0.4]], dtype=torch.float64)
    codes = true_mean + torch.randn(200_000, 3, generator=g, dtype=torch.float64) @ true_chol.T
    mean, chol = fit_gaussian(codes, jitter=0.0)
    assert torch.allclose(mean, true_mean, atol=0.01)
    assert torch.allclose(chol @ chol.T, true_chol @ true_chol.T, atol=0.01)
    sample_cov = torch.cov(codes.T, correction=0)  # exactly the ML covariance of these codes
    assert torch.allclose(chol @ chol.T, sample_cov, atol=1e-10)
    few = torch.randn(3, 8, generator=g, dtype=torch.float64)  # fewer codes than dimensions: still factorisable
    assert torch.isfinite(fit_gaussian(few)[1]).all()


def test_training_fits_the_prior_and_the_latent_maps_agree(tmp_path):
    run = start_training(load_config("tiny-ae"), tmp_path, CPU, quiet=True)
    assert_prior_fitted_to_snapshot_codes(run)


def test_with_ema_the_prior_is_fitted_to_the_averaged_encoders_codes(tmp_path):
    run = start_training(load_config("tiny-ae", ["train.ema_decay=0.9", "train.epochs=2"]), tmp_path, CPU, quiet=True)
    assert_prior_fitted_to_snapshot_codes(run)  # the snapshot holds the averages
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    live, averaged = checkpoint["state"]["networks"], checkpoint["ema"]["networks"]
    assert any(not torch.equal(live["encoder"][k], averaged["encoder"][k]) for k in live["encoder"])
    for key in ("prior_mean", "prior_chol"):  # the live decoder (its samples in training) gets the same density
        assert torch.equal(live["decoder"][key], averaged["decoder"][key])


def assert_prior_fitted_to_snapshot_codes(run):
    """The inference snapshot's Gaussian is the fit to its own encoder's codes of the training images,
    and generate(encode_latent(x)) decodes the code."""
    method, cfg, _ = build_method_from_checkpoint(run / "checkpoints" / "last-inference.pt", CPU)
    from genlab.data import build_dataset

    data = build_dataset(cfg.data)
    with torch.no_grad(), method.evaluating():
        codes = torch.cat([method.code(to_model_range(data.train[i:i + 256])) for i in range(0, len(data.train), 256)])
        mean, chol = fit_gaussian(codes)
        assert torch.allclose(method.decoder.prior_mean, mean.float(), atol=1e-5)
        assert torch.allclose(method.decoder.prior_chol, chol.float(), atol=1e-4)
        x = to_model_range(data.val[:6])
        assert torch.allclose(method.generate(method.encode_latent(x)), method.reconstruct(x), atol=1e-4)
    samples = method.sample(8, 0)
    assert samples.shape == (8, 1, 16, 16) and torch.equal(samples, method.sample(8, 0, batch_size=3))


def test_loss_falls_on_a_fixed_batch_and_resume_is_bit_exact(tmp_path):
    cfg = load_config("tiny-ae")
    method = build_method(cfg, (1, 16, 16), CPU)
    torch.manual_seed(0)
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    losses = [method.run_step(x, s)["loss"].item() for s in range(15)]
    assert losses[-1] < 0.7 * losses[0]
    straight = start_training(load_config("tiny-ae", ["train.epochs=3"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config("tiny-ae", ["train.max_steps=7", "train.epochs=3"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.max_steps=null"], CPU, quiet=True)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["state"]["networks"]
    b = load_checkpoint(split / "checkpoints" / "last.pt")["state"]["networks"]
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"


def assert_prior_fitted_to_posterior_means(run):
    """The run's sampling Gaussian equals a refit on its posterior means of the training images, and
    generate(encode_latent(x)) decodes the posterior mean. Returns the run's config."""
    from genlab.data import build_dataset

    method, cfg, _ = build_method_from_checkpoint(run / "checkpoints" / "last-inference.pt", CPU)
    data = build_dataset(cfg.data)
    with torch.no_grad(), method.evaluating():
        means = torch.cat([method.encode(to_model_range(data.train[i:i + 256]))[0] for i in range(0, len(data.train), 256)])
        mean, chol = fit_gaussian(means)
        assert torch.allclose(method.decoder.prior_mean, mean.float(), atol=1e-5)
        assert torch.allclose(method.decoder.prior_chol, chol.float(), atol=1e-4)
        x = to_model_range(data.val[:4])
        assert torch.allclose(method.generate(method.encode_latent(x)), method.reconstruct(x), atol=1e-4)
    return cfg


def test_a_vae_with_a_fitted_prior_samples_from_its_codes_gaussian(tmp_path):
    assert_prior_fitted_to_posterior_means(
        start_training(load_config("tiny-vae", ["model.prior=fitted"]), tmp_path, CPU, quiet=True))
    standard, _, _ = build_method_from_checkpoint(
        start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True) / "checkpoints" / "last.pt", CPU)
    assert "prior_mean" not in standard.decoder.state_dict()  # the standard prior's checkpoints are unchanged


def test_residual_decoder_blocks_start_as_the_identity_and_train():
    from genlab.models.blocks import ResidualBlock
    from genlab.models.vae import ConvDecoder

    torch.manual_seed(0)
    h = torch.randn(2, 8, 4, 4)
    block = ResidualBlock(8, "leaky_relu")
    assert torch.equal(block(h), h)  # zero-initialised last scale: x + 0
    plain = ConvDecoder(1, [8, 16], 4, "leaky_relu", 0.0)
    deep = ConvDecoder(1, [8, 16], 4, "leaky_relu", 0.0, res_blocks=2)
    assert not any("body" in k for k in plain.state_dict())  # res_blocks=0: the old parameter names, old checkpoints load
    assert sum(isinstance(m, ResidualBlock) for m in deep.modules()) == 2 * 1  # two after the one hidden up-sampling
    for family in ("tiny-vae", "tiny-ae", "tiny-vaegan"):
        cfg = load_config(family, ["model.res_blocks=1"])
        method = build_method(cfg, (1, 16, 16), CPU)
        blocks = [m for m in method.decoder.modules() if isinstance(m, ResidualBlock)]
        assert len(blocks) == 1, family
        before = [p.clone() for p in blocks[0].parameters()]
        torch.manual_seed(0)
        x = torch.rand(16, 1, 16, 16) * 2 - 1
        stats = [method.run_step(x, s) for s in range(12)]
        key = "loss_enc" if "loss_enc" in stats[0] else "loss"
        assert stats[-1][key] < stats[0][key], family
        assert any(not torch.equal(a, b) for a, b in zip(before, blocks[0].parameters())), family


def test_a_vaegan_with_a_fitted_prior_samples_and_trains_its_gan_term_from_the_codes_gaussian(tmp_path):
    run = start_training(load_config("tiny-vaegan", ["model.prior=fitted", "train.epochs=1"]), tmp_path, CPU, quiet=True)
    cfg = assert_prior_fitted_to_posterior_means(run)
    # The GAN term's prior samples come from the fitted Gaussian: moving it changes D's loss.
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    losses = []
    for shift in (0.0, 3.0):
        torch.manual_seed(0)
        model = build_method(cfg, (1, 16, 16), CPU)
        model.decoder.prior_mean.fill_(shift)
        torch.manual_seed(1)
        losses.append(model.run_step(x, 0)["loss_d"].item())
    assert losses[0] != losses[1]


def test_bad_residual_block_counts_and_priors_are_refused_before_training(cli, tmp_path):
    for preset, override, message in [
            ("tiny-vae", "model.res_blocks=-1", "config key 'model.res_blocks' must be >= 0, got -1"),
            ("tiny-ae", "model.res_blocks=-2", "config key 'model.res_blocks' must be >= 0, got -2"),
            ("tiny-vaegan", "model.prior=gmm", "config key 'model.prior' must be one of standard, fitted, got 'gmm'"),
            ("tiny-vae", "model.prior_components=0", "config key 'model.prior_components' must be > 0, got 0"),
            ("tiny-ae", "model.prior_components=50+model.prior_images=40", "config key 'model.prior_components' (50) exceeds "
                                                     "model.prior_images (40)"),
            # more components than the data set has training images (161 digits): found when the fit starts
            ("tiny-vae", "model.prior=fitted+model.prior_components=200", "model.prior_components=200: the mixture "
                                                     "is fitted to the codes of the training images, and there are only 161")]:
        code, _, err = cli("train", preset, *override.split("+"), "--runs-dir", tmp_path)
        assert code == 2 and message in err and "Traceback" not in err, (preset, err)
    assert not list(tmp_path.iterdir())


def _mixture_decoder(weights, means, chols):
    decoder = torch.nn.Module()
    add_prior_buffers(decoder, means.shape[1], CPU, components=len(weights))
    decoder.prior_weights.copy_(weights)
    decoder.prior_means.copy_(means)
    decoder.prior_chols.copy_(chols)
    return decoder


def test_the_mixture_fit_recovers_known_components_and_its_latent_map_is_exact():
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.2, 0.5, 0.3])
    means = torch.tensor([[6.0, 0.0], [0.0, 6.0], [-6.0, -6.0]])
    chols = torch.stack([torch.eye(2), torch.tensor([[1.0, 0], [0.5, 0.5]]), 0.5 * torch.eye(2)])
    decoder = _mixture_decoder(weights, means, chols)
    # z ~ N(0, I) through from_prior draws from the mixture: component shares and per-component moments
    codes = from_prior(decoder, torch.randn(100_000, 2, generator=g))
    nearest = (codes[:, None] - means[None]).square().sum(-1).argmin(1)
    for k in range(3):
        mine = codes[nearest == k]
        assert abs(len(mine) / len(codes) - weights[k].item()) < 0.01
        assert torch.allclose(mine.mean(0), means[k], atol=0.03)
        assert torch.allclose(torch.cov(mine.T), chols[k] @ chols[k].T, atol=0.05)
    # whiten inverts it, both ways, and its output is again N(0, I)
    z = torch.randn(2000, 2, generator=g)
    assert torch.allclose(whiten(decoder, from_prior(decoder, z)), z, atol=1e-3)
    white = whiten(decoder, codes)
    assert torch.allclose(from_prior(decoder, white), codes, atol=1e-3)
    assert torch.allclose(white.mean(0), torch.zeros(2), atol=0.02) and torch.allclose(white.std(0), torch.ones(2), atol=0.02)
    # EM on these codes finds the components again (in some order)
    w, m, c = fit_mixture(codes, 3)
    order = [int((m - means[k].double()).square().sum(1).argmin()) for k in range(3)]
    assert torch.allclose(w[order].float(), weights, atol=0.01)
    assert torch.allclose(m[order].float(), means, atol=0.05)
    assert torch.allclose((c @ c.transpose(1, 2))[order].float(), chols @ chols.transpose(1, 2), atol=0.05)


def test_a_vae_with_a_mixture_prior_trains_samples_and_resumes_bit_exactly(tmp_path):
    from genlab.data import build_dataset

    over = ["model.prior=fitted", "model.prior_components=3", "train.epochs=2"]
    run = start_training(load_config("tiny-vae", over), tmp_path, CPU, quiet=True)
    method, cfg, _ = build_method_from_checkpoint(run / "checkpoints" / "last-inference.pt", CPU)
    data = build_dataset(cfg.data)
    with torch.no_grad(), method.evaluating():
        means = torch.cat([method.encode(to_model_range(data.train[i:i + 256]))[0] for i in range(0, len(data.train), 256)])
        weights, centres, chols = fit_mixture(means, 3)
        assert torch.allclose(method.decoder.prior_weights, weights.float(), atol=1e-5)
        assert torch.allclose(method.decoder.prior_means, centres.float(), atol=1e-4)
        x = to_model_range(data.val[:4])
        assert torch.allclose(method.generate(method.encode_latent(x)), method.reconstruct(x), atol=1e-4)
    assert torch.equal(method.sample(6, 0), method.sample(6, 0, batch_size=4))
    split = start_training(load_config("tiny-vae", over + ["train.max_steps=5"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.max_steps=null"], CPU, quiet=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt")["state"]["networks"]["decoder"] for r in (run, split))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for family in ("tiny-ae", "tiny-vaegan"):  # the other encoder families take the same key
        model = build_method(load_config(family, ["model.prior=fitted", "model.prior_components=2"]
                                         if family == "tiny-vaegan" else ["model.prior_components=2"]), (1, 16, 16), CPU)
        assert model.decoder.prior_means.shape == (2, cfg.model.latent_dim if family != "tiny-ae" else model.cfg.latent_dim)
