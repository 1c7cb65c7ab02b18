"""genlab's Python API (genlab.api) end to end on tiny seeded models, and the contract it rests on:
the end-of-epoch hook, networks in one ModuleDict, the stepper's gradient norm, the latent prior."""

import json

import pytest
import torch

from genlab import api
from genlab.config import EvalSettings
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.methods.abilities import Encoder, Likelihood, PosteriorEncoder, Reconstructs
from genlab.methods.base import Method
from genlab.models.latent_prior import add_prior_buffers, fit_gaussian, fit_mixture, log_density
from genlab.resolve import load_config

CPU = torch.device("cpu")


def test_train_sample_evaluate_reconstruct_and_resume_through_the_api(tmp_path):
    run = api.train("tiny-vae", tmp_path, "cpu", quiet=True, overrides=["train.epochs=1"])
    images, model = api.sample(run, n=6, seed=3, device="cpu")
    assert images.shape == (6, 1, 16, 16) and images.dtype == torch.uint8
    again, _ = api.sample(run, n=2, seed=4, device="cpu")
    assert torch.equal(again, images[1:3])  # image i is a function of seed + i alone
    assert model.config.method == "vae" and model.path.name == "last-inference.pt"
    results = api.evaluate(run, ["swd", "bpd"], EvalSettings(n=32), "cpu", overrides=["model.iw_samples=2"])
    assert results["swd"]["value"] > 0 and "k=2" in results["bpd"]["protocol"]
    recorded = json.loads((run / "metrics.json").read_text())["eval"]
    assert recorded["swd"]["value"] == results["swd"]["value"]
    path, numbers = api.reconstruct(run, n=4, device="cpu")
    assert path.is_file() and len(numbers["images"]) == 4
    api.resume(run, ["train.epochs=2"], "cpu", quiet=True)
    assert json.loads((run / "metrics.json").read_text())["train"]["epochs_completed"] == 2
    with pytest.raises(GenlabError, match="model.latent_dim: method 'vae' takes only sampler"):
        api.evaluate(run, ["swd"], EvalSettings(n=8), "cpu", overrides=["model.latent_dim=3"])
    with pytest.raises(GenlabError, match="overrides go with a preset name"):
        api.train(load_config("tiny-vae"), tmp_path, "cpu", overrides=["train.epochs=1"])


def test_the_end_of_epoch_hook_runs_before_evaluation_on_the_networks_that_sample(tmp_path, monkeypatch):
    from genlab.train.loop import Trainer

    calls = []
    original_hook, original_eval = METHODS.get("autoencoder").end_epoch, Trainer._evaluate
    monkeypatch.setattr(METHODS.get("autoencoder"), "end_epoch",
                        lambda self, images: (calls.append("hook"), original_hook(self, images))[1])
    monkeypatch.setattr(Trainer, "_evaluate", lambda self: (calls.append("eval"), original_eval(self))[1])
    api.train("tiny-ae", tmp_path, "cpu", quiet=True,
              overrides=["train.epochs=2", "eval.every=1", "eval.n=16", "eval.metrics=[swd]", "train.ema_decay=0.9"])
    assert calls == ["hook", "eval", "hook", "eval"]


def test_networks_live_in_one_module_dict_and_swap_without_setattr():
    vae = METHODS.get("vae")(load_config("tiny-vae").model, (1, 16, 16), CPU)
    assert set(vae.nets) == {"encoder", "decoder"} and vae.decoder is vae.nets["decoder"]
    with pytest.raises(TypeError, match="live in self.nets"):
        vae.decoder = torch.nn.Linear(2, 2)
    other = torch.nn.Linear(2, 2)
    with vae.swapped({"decoder": other}):
        assert vae.decoder is other and vae.networks()["decoder"] is other
    assert vae.decoder is not other
    vae.distribute(lambda net: torch.nn.Sequential(net))
    assert isinstance(vae.nets["encoder"], torch.nn.Sequential)


def test_abilities_are_classes_checked_with_isinstance():
    assert issubclass(METHODS.get("vae"), PosteriorEncoder) and issubclass(METHODS.get("vae"), Likelihood)
    assert issubclass(METHODS.get("autoencoder"), Encoder) and not issubclass(METHODS.get("autoencoder"), Likelihood)
    realnvp = METHODS.get("realnvp")
    assert issubclass(realnvp, Reconstructs) and not issubclass(realnvp, Encoder) and issubclass(realnvp, Likelihood)
    assert not issubclass(METHODS.get("gan"), Reconstructs)
    gan = METHODS.get("gan")(load_config("tiny-dcgan").model, (1, 16, 16), CPU)
    assert not hasattr(gan, "encode_latent")
    with pytest.raises(GenlabError, match="has no likelihood"):
        gan.log_likelihood(torch.zeros(1, 1, 16, 16))

    class Claims(Method, Encoder):  # claims an encoder without its methods: cannot be built
        name = "claims"

    with pytest.raises(TypeError, match="abstract"):
        Claims(None, (1, 8, 8), CPU)


def test_the_stepper_returns_the_clipped_gradient_norm_and_a_nan_one_stops_the_run(tmp_path, monkeypatch):
    vae = METHODS.get("vae")(load_config("tiny-vae", ["model.optim.grad_clip=1.0"]).model, (1, 16, 16), CPU)
    stats = vae.run_step(torch.rand(8, 1, 16, 16) * 2 - 1, 0)
    assert "grad_norm" in stats and torch.isfinite(stats["grad_norm"]) and stats["grad_norm"] > 0
    assert "grad_norm" not in METHODS.get("vae")(load_config("tiny-vae").model, (1, 16, 16), CPU).run_step(
        torch.rand(8, 1, 16, 16) * 2 - 1, 0)

    original = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def nan_after_three(params, max_norm, **kw):
        calls["n"] += 1
        norm = original(params, max_norm, **kw)
        return norm * float("nan") if calls["n"] > 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_after_three)
    run = api.train("tiny-vae", tmp_path, "cpu", quiet=True,
                    overrides=["model.optim.grad_clip=1.0", "train.on_divergence=stop", "train.log_every=1"])
    summary = json.loads((run / "metrics.json").read_text())["train"]
    assert summary["stopped_because"] == "non_finite_loss" and summary["steps"] == 4


def test_the_latent_prior_log_density_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(400, 3, generator=g) @ torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 2.0]])
    holder = torch.nn.Module()
    add_prior_buffers(holder, 3, CPU)
    mean, chol = fit_gaussian(codes)
    holder.prior_mean.copy_(mean.float())
    holder.prior_chol.copy_(chol.float())
    x = torch.randn(5, 3, generator=g)
    direct = torch.distributions.MultivariateNormal(mean, scale_tril=chol).log_prob(x.double())
    torch.testing.assert_close(log_density(holder, x), direct, rtol=1e-5, atol=1e-5)

    mixture = torch.nn.Module()
    add_prior_buffers(mixture, 3, CPU, components=2)
    codes = torch.cat([codes, codes + 6])
    weights, means, chols = fit_mixture(codes, 2)
    mixture.prior_weights.copy_(weights.float())
    mixture.prior_means.copy_(means.float())
    mixture.prior_chols.copy_(chols.float())
    direct = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=mixture.prior_weights.double()),
        torch.distributions.MultivariateNormal(mixture.prior_means.double(), scale_tril=mixture.prior_chols.double()))
    torch.testing.assert_close(log_density(mixture, x), direct.log_prob(x.double()), rtol=1e-5, atol=1e-5)
