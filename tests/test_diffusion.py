"""Diffusion: the forward process and posterior against the paper's formulas, the discretised
decoder, DDIM's determinism and inversion, per-image sampling, every variant's training step,
save/load, exact resume with EMA, latent diffusion over a VAE run, and refusals."""

import json
import shutil

import pytest
import torch

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.errors import GenlabError
from genlab.losses.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, make_betas
from genlab.methods import build_method
from genlab.resolve import load_config
from genlab.samplers.diffusion import DDIMOptions, DDPMOptions, ddim_invert_step, ddim_step, ddim_timesteps
from genlab.train.checkpoint import build_method_from_checkpoint, load_checkpoint

CPU = torch.device("cpu")


def test_the_forward_process_matches_its_closed_form():
    process = GaussianDiffusion("linear", 100)
    betas = make_betas("linear", 100)
    t = 37
    alpha_bar = torch.prod(1 - betas[: t + 1]).item()
    assert process.alpha_bar[t].item() == pytest.approx(alpha_bar, rel=1e-5)
    x0 = torch.full((20000, 1), 0.7)
    xt = process.q_sample(x0, torch.full((20000,), t), torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)))
    assert xt.mean().item() == pytest.approx(alpha_bar**0.5 * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - alpha_bar, rel=0.03)
    # x_t from x_{t-1} one step at a time has the same law as q(x_t | x_0) (eq. 2 and 4)
    g = torch.Generator().manual_seed(1)
    x = torch.full((20000,), 0.7, dtype=torch.float64)
    for s in range(t + 1):
        x = (1 - betas[s]).sqrt() * x + betas[s].sqrt() * torch.randn(20000, generator=g, dtype=torch.float64)
    assert x.var().item() == pytest.approx(1 - alpha_bar, rel=0.03)
    for schedule in ("linear", "cosine"):
        b = make_betas(schedule, 1000)
        assert (b > 0).all() and (b < 1).all() and torch.cumprod(1 - b, 0)[-1] < 1e-3


def test_the_posterior_is_bayes_rule_and_the_paper_mean():
    process = GaussianDiffusion("cosine", 50)
    t = torch.tensor([10, 30])
    x0 = torch.tensor([[0.3], [-0.8]])
    xt = torch.tensor([[1.1], [0.2]])
    mean, logvar = process.q_posterior(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        beta = process.betas[step].double()
        a_prev = process.alpha_bar_prev[step].double()
        # q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(1-beta) x_{t-1}, beta) N(x_{t-1}; sqrt(a_prev) x_0, 1-a_prev)
        precision = (1 - beta) / beta + 1 / (1 - a_prev)
        bayes_mean = ((1 - beta).sqrt() * xt[i] / beta + a_prev.sqrt() * x0[i] / (1 - a_prev)) / precision
        assert mean[i].item() == pytest.approx(bayes_mean.item(), rel=1e-4)
        assert logvar[i].exp().item() == pytest.approx((1 / precision).item(), rel=1e-4)
    # Ho et al. eq. 11: with x_0 from eps, the mean is (x_t - beta / sqrt(1 - alpha_bar) eps) / sqrt(alpha)
    eps = torch.tensor([[0.5], [-1.2]])
    x0_from_eps, eps_back = process.split_prediction(xt, t, eps)
    assert torch.allclose(eps_back, eps, atol=1e-5)
    mean, _ = process.q_posterior(x0_from_eps, xt, t)
    for i, step in enumerate(t.tolist()):
        beta, a_bar = process.betas[step], process.alpha_bar[step]
        expected = (xt[i] - beta / (1 - a_bar).sqrt() * eps[i]) / (1 - beta).sqrt()
        assert mean[i].item() == pytest.approx(expected.item(), rel=1e-4)


def test_v_prediction_recovers_x0_and_eps():
    process = GaussianDiffusion("linear", 100, prediction="v")
    x0, eps, t = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 50, 99])
    xt = process.q_sample(x0, t, eps)
    x0_hat, eps_hat = process.split_prediction(xt, t, process.target(x0, eps, t))
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-4)


def test_the_discretised_decoder_is_a_distribution_over_the_256_values():
    values = torch.arange(256, dtype=torch.float32) / 127.5 - 1
    for mean, log_scale in ((0.1, -3.0), (-0.9, -1.0), (0.99, -5.0)):
        log_p = discretized_gaussian_log_likelihood(values, torch.full((256,), mean), torch.full((256,), log_scale))
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def tiny(*overrides, shape=(1, 16, 16)):
    cfg = load_config("tiny-ddpm", list(overrides))
    torch.manual_seed(0)  # the same network whatever ran before (a test's tolerance must not depend on the order)
    method = build_method(cfg, shape, CPU)
    with torch.no_grad():  # the output convolution starts at zero; make the network predict something
        g = torch.Generator().manual_seed(0)
        last = method.denoiser.out[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.05)
    return method.eval() or method


def test_a_ddim_step_with_eta_zero_is_deterministic_and_inverts_to_its_order():
    method = tiny("model.timesteps=1000")
    process = method.process
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    errors = []
    for gap in (40, 10):
        t, t_prev = 500, 500 - gap
        with torch.no_grad():
            out = method.denoise(x, torch.full((2,), t))
            a = ddim_step(process, x, t, t_prev, out, 0.0, False, torch.randn_like(x))
            b = ddim_step(process, x, t, t_prev, out, 0.0, False, torch.randn_like(x))
            assert torch.equal(a, b)  # eta = 0: no noise enters
            back = ddim_invert_step(process, a, t_prev, t, method.denoise(a, torch.full((2,), t_prev)))
        errors.append((back - x).abs().max().item())
    assert errors[1] < 5e-3  # of x ~ N(0, I); over 12 initialisations the largest was 1.7e-3
    assert errors[1] < errors[0] / 4  # a quarter of the step: a first-order local error falls by 16


def test_ddim_timesteps_start_at_the_end_of_the_chain():
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(10, 10) == list(range(10))
    taus = ddim_timesteps(1000, 50)
    assert len(taus) == 50 and taus[-1] == 999 and len(set(taus)) == 50


@pytest.mark.parametrize("options", [DDPMOptions(name="ddpm"), DDIMOptions(name="ddim", steps=4, eta=0.5),
                                     DDIMOptions(name="ddim", steps=4, eta=0.0)])
def test_samples_do_not_depend_on_the_batch_size(options):
    method = tiny()
    whole = method.sample(5, seed=11, batch_size=5, options=options)
    assert torch.equal(method.sample(5, seed=11, batch_size=2, options=options), whole)
    assert torch.equal(method.sample(2, seed=14, options=options), whole[3:])
    assert not torch.equal(whole[0], whole[1])


@pytest.mark.parametrize("overrides", [
    [], ["model.prediction=v"], ["model.schedule=cosine", "model.variance=large"],
    ["train.accumulate=2"], ["model.bound_timesteps=5"]])
def test_every_variant_takes_a_training_step_and_gives_finite_numbers(overrides):
    cfg = load_config("tiny-ddpm", overrides)
    method = build_method(cfg, (1, 16, 16), CPU)
    method.stepper.configure(accumulate=cfg.train.accumulate)
    before = [p.detach().clone() for p in method.denoiser.parameters()]
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    stats = method.run_step(x, 0)
    assert torch.isfinite(stats["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.denoiser.parameters()))
    method.eval()
    val = method.validation_step(x, torch.Generator().manual_seed(0))
    assert torch.isfinite(val["loss"]) and torch.isfinite(val["bpd"]) and val["bpd"] > 0
    log_p, how = method.log_likelihood(x)
    assert torch.isfinite(log_p).all() and "bound" in how


def test_the_stratified_bound_estimate_is_unbiased(monkeypatch):
    """With a term that depends on t alone, the full bound is a known sum; the k-timestep estimate
    must average to it (stratum weights T/k, every timestep reachable)."""
    method = tiny("model.timesteps=20")
    process = method.process
    monkeypatch.setattr(process, "prior_kl", lambda x0: torch.zeros(x0.shape[0]))
    monkeypatch.setattr(process, "bound_term", lambda x0, xt, t, out: (t.float() + 1) ** 2)
    x = torch.rand(64, 1, 16, 16) * 2 - 1
    offset = 256 * torch.log(torch.tensor(128.0)).item()  # log p = -bound + D log 128
    full = -(method.log_likelihood(x)[0] - offset)
    assert torch.allclose(full, torch.full((64,), float(sum((t + 1) ** 2 for t in range(20)))))
    method.cfg.bound_timesteps = 4
    torch.manual_seed(0)
    estimates = torch.stack([-(method.log_likelihood(x)[0] - offset) for _ in range(50)])
    assert estimates.mean().item() == pytest.approx(full[0].item(), rel=0.01)
    assert estimates.std().item() > 0  # it is an estimate, not the sum


def test_save_load_same_samples_and_exact_resume_with_ema(tmp_path):
    straight = start_training(load_config("tiny-ddpm", ["train.epochs=2"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config("tiny-ddpm", ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.epochs=2"], CPU, quiet=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, split))
    for name, tensor in a["state"]["networks"]["denoiser"].items():
        assert torch.equal(tensor, b["state"]["networks"]["denoiser"][name]), name
    for name, tensor in a["ema"]["networks"]["denoiser"].items():
        assert torch.equal(tensor, b["ema"]["networks"]["denoiser"][name]), name
    m1, _, _ = build_method_from_checkpoint(straight / "checkpoints" / "last.pt", CPU)
    m2, _, payload = build_method_from_checkpoint(straight / "checkpoints" / "last-inference.pt", CPU)
    assert payload["weights_used"] == "ema"
    assert torch.equal(m1.sample(6, seed=0), m2.sample(6, seed=0))


def test_latent_diffusion_over_a_vae_run_keeps_it_frozen_and_stands_alone(tmp_path, cli):
    vae = start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    overrides = ["method=latent-ddpm", f"init.from_run={vae}", "model.timesteps=20", "model.width=32",
                 "model.blocks=2", "sampler.steps=5", "train.ema_decay=0.9", "train.epochs=2", "model={}"]
    cfg = load_config("tiny-ddpm", overrides)
    assert cfg.model.first_stage["method"] == "vae" and cfg.model.first_stage["model"]["latent_dim"] == 8
    run = start_training(cfg, tmp_path, CPU, quiet=True)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    vae_ckpt = load_checkpoint(vae / "checkpoints" / "last.pt")
    for ours, theirs in (("first_encoder", "encoder"), ("first_decoder", "decoder")):
        for k, v in vae_ckpt["state"]["networks"][theirs].items():
            assert torch.equal(ckpt["state"]["networks"][ours][k], v), (ours, k)  # copied and never trained
    scale = ckpt["state"]["networks"]["denoiser"]["latent_scale"].item()
    assert scale != 1.0 and scale > 0
    assert (run / "samples" / "epoch-0002.png").is_file()
    # the run holds its first stage: it samples and resumes with the VAE run gone
    shutil.move(str(vae), str(tmp_path / "elsewhere"))
    code, out, err = cli("sample", run, "--n", "4", "--out", tmp_path / "s.npz")
    assert code == 0, err
    import numpy as np

    assert np.load(tmp_path / "s.npz")["images"].shape == (4, 1, 16, 16)
    resume_training(run, ["train.epochs=3"], CPU, quiet=True)
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]


def test_latent_diffusion_refuses_a_base_without_an_encoder_or_of_another_size(tmp_path):
    gan = start_training(load_config("tiny-dcgan"), tmp_path, CPU, quiet=True)
    with pytest.raises(GenlabError, match="no encoder"):
        load_config("tiny-ddpm", ["method=latent-ddpm", f"init.from_run={gan}", "model={}"])
    vae = start_training(load_config("tiny-vae", ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    with pytest.raises(GenlabError, match="16x16 images"):
        load_config("tiny-ddpm", ["method=latent-ddpm", f"init.from_run={vae}", "model={}", "data.size=32"])
    unnamed = load_config("tiny-ddpm", ["method=latent-ddpm", "model={}"])  # (a preset resolves without its run)
    with pytest.raises(GenlabError, match="init.from_run=RUN_DIR"):
        start_training(unnamed, tmp_path / "runs", CPU, quiet=True)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(GenlabError, match="not a genlab run directory"):
        load_config("tiny-ddpm", ["method=latent-ddpm", f"init.from_run={tmp_path / 'nope'}", "model={}"])


@pytest.mark.parametrize("overrides, words", [
    (["sampler.steps=21"], "trained with 20 diffusion steps"),
    (["sampler.steps=0"], "sampler.steps"),
    (["sampler.name=ddpm", "sampler.steps=5"], "whole chain"),
    (["data.size=8", "model.mults=[1,2,2,2,2]"], "must divide by 16"),
    (["model.bound_timesteps=50"], "bound_timesteps"),
])
def test_bad_diffusion_settings_are_refused_before_anything_runs(overrides, words):
    with pytest.raises(GenlabError, match=words):
        load_config("tiny-ddpm", overrides)


def test_cli_trains_evaluates_and_samples_a_ddpm_with_sampler_settings(tmp_path, cli):
    code, _, err = cli("train", "tiny-ddpm", "--runs-dir", tmp_path, "--quiet", "train.epochs=1")
    assert code == 0, err
    run = next(tmp_path.iterdir())
    code, out, err = cli("eval", run, "--metrics", "bpd,swd", "--n", "16", "--json", "sampler.steps=3",
                         "--bound-timesteps", "4")
    assert code == 0, err
    results = json.loads(out)
    assert "ddim(steps=3, eta=0.0)" in results["swd"]["protocol"]
    assert "estimated from 4 stratified timesteps of T=20" in results["bpd"]["protocol"]
    assert results["bpd"]["value"] > 0
    code, _, err = cli("eval", run, "--metrics", "swd", "--n", "8", "sampler.steps=99")
    assert code == 2 and "trained with 20 diffusion steps" in err
    code, _, err = cli("eval", run, "--metrics", "swd", "--n", "8", "data.size=32")
    assert code == 2 and "only sampler.* keys" in err
    code, _, err = cli("sample", run, "--n", "4", "--out", tmp_path / "a.png", "sampler.name=ddpm")
    assert code == 0, err and (tmp_path / "a.png").is_file()


def test_max_minutes_stops_training_and_keeps_the_position(tmp_path):
    run = start_training(load_config("tiny-ddpm", ["train.max_minutes=0.0001", "train.epochs=50", "train.log_every=1"]),
                         tmp_path, CPU, quiet=True)
    summary = json.loads((run / "metrics.json").read_text())["train"]
    assert summary["stopped_because"] == "max_minutes" and 1 <= summary["steps"] < 50 * 5
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == summary["steps"]


def test_init_from_run_copies_networks_by_name_and_refuses_what_does_not_fit(tmp_path):
    from genlab.data import build_dataset
    from genlab.train.session import initialise_from_run

    base = start_training(load_config("tiny-dcgan", ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    cfg = load_config("tiny-dcgan", [f"init.from_run={base}", "train.seed=5"])
    data = build_dataset(cfg.data)
    method = build_method(cfg, data.image_shape, CPU)
    initialise_from_run(method, cfg, data, CPU)
    saved = load_checkpoint(base / "checkpoints" / "last-inference.pt")["state"]["networks"]
    for name in ("generator", "discriminator"):
        for k, v in method.networks()[name].state_dict().items():
            assert torch.equal(v, saved[name][k]), (name, k)
    wider = load_config("tiny-dcgan", [f"init.from_run={base}", "model.latent_dim=7"])
    with pytest.raises(GenlabError, match="does not fit"):
        initialise_from_run(build_method(wider, data.image_shape, CPU), wider, data, CPU)
    only_g = load_config("tiny-dcgan", [f"init.from_run={base}", "init.networks=[generator]"])
    method = build_method(only_g, data.image_shape, CPU)
    d_before = {k: v.clone() for k, v in method.discriminator.state_dict().items()}
    initialise_from_run(method, only_g, data, CPU)
    assert all(torch.equal(v, method.discriminator.state_dict()[k]) for k, v in d_before.items())
    with pytest.raises(GenlabError, match="no run to copy"):
        load_config("tiny-dcgan", ["init.networks=[generator]"])


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("options", [DDPMOptions(name="ddpm"), DDIMOptions(name="ddim", steps=7, eta=0.0),
                                     DDIMOptions(name="ddim", steps=3, eta=1.0)])
def test_with_an_oracle_denoiser_every_sampler_lands_on_the_data(monkeypatch, prediction, options):
    """When the data is one image x*, the best prediction is known in closed form (eps = (x_t -
    sqrt(abar) x*) / sqrt(1 - abar)); fed it, DDPM and DDIM must end exactly at x*, whatever the steps."""
    method = tiny(f"model.prediction={prediction}", "model.timesteps=50", "model.schedule=cosine")
    process = method.process
    target = torch.linspace(-0.9, 0.9, 256).view(1, 1, 16, 16)

    def oracle(xt, t):
        a = process.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
        s = process.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
        eps = (xt - a * target) / s
        return eps if prediction == "eps" else a * eps - s * target

    monkeypatch.setattr(method, "denoise", oracle)
    images = method.sample(3, seed=0, options=options)
    expected = ((target + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).expand(3, -1, -1, -1)
    assert (images.int() - expected.int()).abs().max().item() <= 1


def ddim_error_gain(schedule: str, timesteps: int, steps: int) -> list[float]:
    """Per DDIM (eta 0) step, how much an error d in the predicted eps moves x_prev when the predicted x_0
    is not clipped: x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), so x_prev moves by
    |sqrt(1 - a_prev) - sqrt(a_prev) sqrt(1 - a_t) / sqrt(a_t)| d."""
    alpha_bar = torch.cumprod(1 - make_betas(schedule, timesteps), 0)
    taus = ddim_timesteps(timesteps, steps)
    gains = []
    for i in reversed(range(len(taus))):
        a_t = alpha_bar[taus[i]]
        a_prev = alpha_bar[taus[i - 1]] if i > 0 else torch.tensor(1.0, dtype=alpha_bar.dtype)
        gains.append(abs((1 - a_prev).sqrt() - a_prev.sqrt() * (1 - a_t).sqrt() / a_t.sqrt()).item())
    return gains


def test_latent_diffusion_preset_schedule_keeps_unclipped_ddim_stable():
    # Latents are not clipped, so an eps error is not bounded by x_0's range as in pixel space. The
    # cosine schedule's last beta is clipped at 0.999 (Nichol & Dhariwal 2021), so alpha_bar falls from
    # 2.4e-6 to 2.4e-9 in its last step: the first DDIM step multiplied the denoiser's error by ~630
    # and the ldm-celeba64 samples came out as saturated noise (latents of std ~2,500). The linear
    # schedule, Rombach et al. 2022's, has no such step.
    cfg = load_config("ldm-celeba64", [])
    assert cfg.model.prediction == "eps" and not cfg.model.clip_latents
    for steps in (10, cfg.sampler.steps, 250):
        assert max(ddim_error_gain(cfg.model.schedule, cfg.model.timesteps, steps)) < 2.0  # cosine: 631
    assert ddim_error_gain("cosine", 1000, 50)[0] > 100  # what the preset had, for the record
    with pytest.raises(GenlabError, match="model.schedule=cosine with model.prediction=eps"):
        load_config("ldm-celeba64", ["model.schedule=cosine"])
    for fix in ("model.prediction=v", "model.clip_latents=true"):  # x_0 = sqrt(a) x_t - sqrt(1 - a) v is well posed
        assert load_config("ldm-celeba64", ["model.schedule=cosine", fix]).model.schedule == "cosine"
