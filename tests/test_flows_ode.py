"""EDM and flow matching: EDM's preconditioning identities, the flow-matching path, every ODE sampler
against closed-form solutions (an oracle denoiser for one data point, the exact denoiser and
velocity of Gaussian data), probability-flow likelihoods against the Gaussian's density, Hutchinson's
estimator against the exact divergence, batch-size independence, save -> load -> same samples,
bit-exact resume, the CLI end to end and the refusals."""

import math

import numpy as np
import pytest
import torch

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.errors import GenlabError
from genlab.losses import edm
from genlab.losses import flow_matching as fm
from genlab.methods import METHODS
from genlab.resolve import load_config
from genlab.samplers import default_options
from genlab.samplers.noise import SeededNoise
from genlab.samplers.ode import LikelihoodSettings, divergence, flow_log_likelihood
from genlab.train.checkpoint import build_method_from_checkpoint, load_checkpoint

CPU = torch.device("cpu")
SHAPE = (1, 4, 4)  # one 4x4 grey "image": 16 dimensions, small enough for exact divergences


def family(name: str, **model):
    cls = METHODS.get(name)
    cfg = cls.config_class(width=8, mults=[1], blocks=1, attention=[], **model)
    return cls(cfg, SHAPE, CPU)


def sample_with(method, sampler: str, n: int = 256, seed: int = 0, **options):
    opts = default_options(sampler)
    for key, value in options.items():
        setattr(opts, key, value)
    opts.validate("sampler.")
    with torch.no_grad():
        return method.sample_batch(range(seed, seed + n), opts)


def gaussian_edm_denoiser(mu: float, s: float):
    """The exact D(x; sigma) = E[y | y + sigma n = x] for y ~ N(mu, s^2 I)."""
    return lambda x, sigma: mu + (s**2 / (s**2 + sigma.view(-1, 1, 1, 1) ** 2)) * (x - mu)


def gaussian_velocity(mu: float, s: float):
    """The exact marginal velocity E[eps - x_0 | x_t = x] of the linear path for x_0 ~ N(mu, s^2 I):
    x_t ~ N(a mu, (a^2 s^2 + b^2) I) with a = 1 - t, b = t, and v = (b - a s^2) / var_t (x - a mu) - mu."""
    def velocity(x, t):
        a, b = (1 - t).view(-1, 1, 1, 1), t.view(-1, 1, 1, 1)
        var = a**2 * s**2 + b**2
        return (b - a * s**2) / var * (x - a * mu) - mu
    return velocity


# -- EDM: preconditioning and loss ----------------------------------------------------------------
def test_edm_preconditioning_identities():
    sigma_data = 0.5
    tiny = torch.tensor([1e-6])
    assert edm.c_skip(tiny, sigma_data).item() == pytest.approx(1.0, abs=1e-9)
    assert edm.c_out(tiny, sigma_data).item() == pytest.approx(0.0, abs=1e-5)
    # at sigma -> 0 the denoiser is the identity through c_skip, whatever the network says
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    wild = lambda inp, noise: torch.full_like(inp, 7.0)
    torch.testing.assert_close(edm.denoise(wild, x, torch.full((3,), 1e-7), sigma_data), x, atol=1e-5, rtol=0)
    # c_in scales y + sigma n to unit variance when y has the data's std, at every noise level
    g = torch.Generator().manual_seed(1)
    for sigma in (0.01, 0.5, 3.0, 80.0):
        y = sigma_data * torch.randn(200_000, generator=g)
        noisy = y + sigma * torch.randn(200_000, generator=g)
        assert (edm.c_in(torch.tensor(sigma), sigma_data) * noisy).var().item() == pytest.approx(1.0, rel=0.02)
    # lambda(sigma) = 1 / c_out^2, so the loss as written equals lambda ||D - y||^2 (eq. 2, 8)
    sigma = torch.tensor([0.05, 1.0, 20.0])
    torch.testing.assert_close(edm.loss_weight(sigma, sigma_data) * edm.c_out(sigma, sigma_data) ** 2,
                               torch.ones(3), rtol=1e-6, atol=0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    network = lambda inp, noise: net(inp)
    y, n = torch.randn(3, *SHAPE, generator=g), torch.randn(3, *SHAPE, generator=g)
    direct = edm.loss_weight(sigma, sigma_data) * (
        edm.denoise(network, y + sigma.view(-1, 1, 1, 1) * n, sigma, sigma_data) - y).square().flatten(1).mean(1)
    torch.testing.assert_close(edm.denoising_loss(network, y, n, sigma, sigma_data), direct, rtol=1e-4, atol=1e-6)


def test_edm_noise_levels_and_schedule_follow_the_paper():
    sigma = edm.sample_sigma(100_000, -1.2, 1.2, CPU, torch.Generator().manual_seed(0))
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.02)
    assert sigma.log().std().item() == pytest.approx(1.2, rel=0.02)
    sigmas = edm.karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002)
    assert bool((sigmas[:-1] > sigmas[1:]).all())
    i = 5  # eq. 5 at one step
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert sigmas[i].item() == pytest.approx(expected, rel=1e-12)


# -- EDM: samplers against closed forms --------------------------------------------------------------
@pytest.mark.parametrize("sampler,nfe", [("euler", 4), ("heun", 5), ("midpoint", 4), ("edm-stochastic", 9)])
def test_every_edm_sampler_lands_on_a_single_data_point_under_its_oracle_denoiser(sampler, nfe):
    method = family("edm")
    point = torch.linspace(-0.8, 0.8, 16).view(*SHAPE)
    method.denoised = lambda x, sigma: point.expand_as(x)  # the exact denoiser of a one-point data set
    method.finish = lambda x: x  # no clamp: compare the ODE's end itself
    out = sample_with(method, sampler, n=8, nfe=nfe)
    # the ODE x(sigma) = point + sigma / sigma_max (x_T - point) is linear in sigma: every step is exact,
    # and the stochastic sampler's churn is undone by the same linear map
    torch.testing.assert_close(out, point.expand_as(out), atol=1e-4, rtol=0)


def test_heun_on_gaussian_data_converges_to_the_exact_ode_at_second_order_and_recovers_the_data():
    mu, s = 0.3, 0.4
    method = family("edm")
    method.denoised = gaussian_edm_denoiser(mu, s)
    method.finish = lambda x: x
    n = 4096
    x_T = SeededNoise(range(n)).randn(*SHAPE) * 80.0
    # the probability-flow ODE's closed form: x(sigma) = mu + sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2)) (x_T - mu)
    exact = mu + math.sqrt(s**2 / (s**2 + 80.0**2)) * (x_T - mu)
    error = {nfe: (sample_with(method, "heun", n=256, nfe=nfe) - exact[:256]).abs().max().item() for nfe in (35, 139)}
    assert error[35] < 0.1 and error[139] < 0.01
    assert error[35] / error[139] > 8  # 4x the steps, over 8x less error: second order (16x in the limit)
    out = sample_with(method, "heun", n=n, nfe=139)
    # so the samples have the data's mean and variance (at 35 NFE the variance is still ~12% high on
    # this narrow Gaussian; the N(0, sigma_max^2) prior costs about mu / sigma_max in the mean)
    assert out.mean().item() == pytest.approx(mu, abs=4 * s / math.sqrt(out.numel()) + 0.01)
    assert out.var().item() == pytest.approx(s**2, rel=0.03)


# -- flow matching ------------------------------------------------------------------------------------
def test_flow_matching_path_and_target_velocity_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, *SHAPE, generator=g), torch.randn(5, *SHAPE, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    xt = fm.path(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[-1], noise[-1])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    # the target is d x_t / dt, checked by a finite difference along the path
    h = 1e-3
    inner = slice(1, 4)
    derivative = (fm.path(x0[inner], noise[inner], t[inner] + h) - fm.path(x0[inner], noise[inner], t[inner] - h)) / (2 * h)
    torch.testing.assert_close(derivative, fm.target_velocity(x0, noise)[inner], atol=1e-3, rtol=0)
    logit_normal = fm.sample_times(100_000, "logit-normal", 0.0, 1.0, CPU, torch.Generator().manual_seed(1))
    assert 0 < logit_normal.min() and logit_normal.max() < 1
    assert torch.logit(logit_normal).std().item() == pytest.approx(1.0, rel=0.02)
    uniform = fm.sample_times(100_000, "uniform", 0.0, 1.0, CPU, torch.Generator().manual_seed(1))
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("sampler,nfe,tolerance", [("euler", 200, 0.03), ("heun", 35, 0.02), ("midpoint", 36, 1e-3)])
def test_flow_matching_samplers_with_the_exact_gaussian_velocity_recover_the_data(sampler, nfe, tolerance):
    mu, s = -0.2, 0.5
    method = family("flow-matching")
    method.velocity = gaussian_velocity(mu, s)
    method.finish = lambda x: x
    n = 4096
    x_1 = SeededNoise(range(n)).randn(*SHAPE)
    out = sample_with(method, sampler, n=n, nfe=nfe)
    # the ODE maps noise to data by x_0 = mu + s x_1 (x_t = a_t mu + sqrt(a_t^2 s^2 + t^2) x_1); Heun at 35 NFE
    # errs by ~0.01 through its last step, an Euler step (Algorithm 1), where the midpoint rule errs by 1e-4
    torch.testing.assert_close(out, mu + s * x_1, atol=tolerance, rtol=0)
    assert out.mean().item() == pytest.approx(mu, abs=0.02)
    assert out.var().item() == pytest.approx(s**2, rel=0.05)


# -- likelihoods through the ODE ------------------------------------------------------------------------
def gaussian_log_density(x, mu, var):
    d = x[0].numel()
    return -0.5 * ((x - mu) ** 2).flatten(1).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)


def test_the_ode_likelihood_of_gaussian_data_under_its_exact_field_equals_the_closed_form():
    mu, s = 0.1, 0.6
    x = mu + s * torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(0))
    settings = LikelihoodSettings(divergence="exact", rtol=1e-6, atol=1e-6)
    flow = family("flow-matching")
    flow.velocity = gaussian_velocity(mu, s)
    log_p, how = flow_log_likelihood(flow, x, settings)
    torch.testing.assert_close(log_p, gaussian_log_density(x, mu, s**2), atol=1e-3, rtol=0)
    assert "exact divergence" in how and "dopri5" in how and "rtol=1e-06" in how
    # EDM: the density at sigma_min is the data's convolved with N(0, sigma_min^2); its prior end
    # N(0, sigma_max^2) stands for N(mu, s^2 + sigma_max^2), an error of order mu^2 / sigma_max^2
    model = family("edm")
    model.denoised = gaussian_edm_denoiser(mu, s)
    log_p, how = flow_log_likelihood(model, x, settings)
    torch.testing.assert_close(log_p, gaussian_log_density(x, mu, s**2 + 0.002**2), atol=1e-2, rtol=0)
    assert "t=0.002 to t=80" in how


def test_hutchinsons_divergence_estimate_is_unbiased_and_exact_matches_autograd():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 3, padding=1))
    x = torch.randn(3, *SHAPE).requires_grad_(True)
    out = net(x)
    exact = divergence(out, x, "exact")
    jacobian = torch.autograd.functional.jacobian(lambda v: net(v).sum(0), x)  # (1, 4, 4, 3, 1, 4, 4)
    by_hand = torch.stack([jacobian.reshape(16, 3, 16)[:, i, :].diagonal().sum() for i in range(3)])
    torch.testing.assert_close(exact, by_hand, rtol=1e-5, atol=1e-5)
    probes = torch.randint(0, 2, (4000, 3, *SHAPE), generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    each = torch.stack([divergence(out, x, "hutchinson", p[None]) for p in probes[:400]])
    mean = divergence(out, x, "hutchinson", probes)
    spread = each.std(0) / math.sqrt(len(probes))
    assert bool(((mean - exact).abs() < 4 * spread + 1e-6).all()), (mean, exact, spread)
    assert bool((each.std(0) > 0).all())  # an estimate, not the exact value in disguise


# -- the families through genlab -----------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-edm", "tiny-flow-matching"])
def test_trains_samples_independently_of_batch_size_saves_loads_and_resumes_bit_exactly(tmp_path, preset):
    straight = start_training(load_config(preset, ["train.epochs=2"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config(preset, ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.epochs=2"], CPU, quiet=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, split))
    for section in ("state", "ema"):
        for name, tensor in a[section]["networks"]["denoiser"].items():
            assert torch.equal(tensor, b[section]["networks"]["denoiser"][name]), (section, name)
    first = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert first["progress"]["step"] > 0
    m1, _, _ = build_method_from_checkpoint(straight / "checkpoints" / "last.pt", CPU)
    m2, _, payload = build_method_from_checkpoint(straight / "checkpoints" / "last-inference.pt", CPU)
    assert payload["weights_used"] == "ema"
    assert torch.equal(m1.sample(6, seed=0), m2.sample(6, seed=0))  # save -> load -> the same samples
    assert torch.equal(m2.sample(6, seed=0, batch_size=2), m2.sample(6, seed=0, batch_size=6))
    assert torch.equal(m2.sample(6, seed=0)[3:], m2.sample(3, seed=3))  # image i depends on seed i alone
    assert not torch.equal(m2.sample(2, seed=0)[0], m2.sample(2, seed=0)[1])


def test_loss_falls_when_fitting_one_image():
    for name in ("edm", "flow-matching"):
        torch.manual_seed(0)
        method = family(name)
        method.opt.param_groups[0]["lr"] = 3e-3
        # one image, 16 times: its optimal denoiser (or velocity) is known to the network after a few steps
        x = (torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1).expand(16, *SHAPE)
        first = method.validation_step(x, torch.Generator().manual_seed(1))["loss"].item()
        for step in range(60):
            method.train_step(x, step)
        last = method.validation_step(x, torch.Generator().manual_seed(1))["loss"].item()
        assert last < 0.5 * first, (name, first, last)


def test_cli_trains_samples_with_every_sampler_and_reports_bits_per_dim(cli, tmp_path):
    for preset, samplers in (("tiny-edm", ("heun", "euler", "midpoint", "edm-stochastic")),
                             ("tiny-flow-matching", ("heun", "euler", "midpoint"))):
        code, _, err = cli("train", preset, "--run-dir", tmp_path / preset, "--quiet", "train.epochs=1")
        assert code == 0, err
        for sampler in samplers:
            nfe = 4 if sampler in ("euler", "midpoint") else 3
            out = tmp_path / f"{preset}-{sampler}.npz"
            code, _, err = cli("sample", tmp_path / preset, "--n", "3", "--out", out,
                               f"sampler.name={sampler}", f"sampler.nfe={nfe}")
            assert code == 0, (sampler, err)
            images = np.load(out)["images"]
            assert images.shape == (3, 1, 16, 16) and images.std() > 0
        code, out, err = cli("eval", tmp_path / preset, "--metrics", "bpd", "--n", "4", "model.divergence=hutchinson",
                             "model.ode_rtol=1e-3", "model.ode_atol=1e-3")
        assert code == 0, err
        value = float(next(line.split()[1] for line in out.splitlines() if line.startswith("bpd")))
        assert 0 < value < 20
        assert "probability-flow ODE" in out and "Hutchinson" in out and "rtol=0.001" in out


@pytest.mark.parametrize("override,message", [
    (["model.sigma_min=80", "model.sigma_max=80"], "sigma_min must be below sigma_max"),
    (["model.rho=0"], "model.rho"),
    (["sampler.nfe=0"], "sampler.nfe"),
    (["sampler.nfe=1"], "Heun"),
    (["sampler.name=heun", "sampler.nfe=4"], "odd nfe"),
    (["sampler.name=midpoint", "sampler.nfe=5"], "even nfe"),
    (["model.ode_rtol=0"], "ode_rtol"),
    (["model.ode_atol=-1e-5"], "ode_atol"),
    (["model.divergence=approx"], "divergence"),
])
def test_bad_settings_are_refused_before_anything_runs(override, message):
    with pytest.raises(GenlabError, match=message):
        load_config("tiny-edm", override)


def test_flow_matching_refuses_the_edm_only_sampler_and_the_cli_exits_2(cli, tmp_path):
    with pytest.raises(GenlabError, match="samples with heun, euler, midpoint"):
        load_config("tiny-flow-matching", ["sampler.name=edm-stochastic"])
    code, _, err = cli("train", "tiny-edm", "--runs-dir", tmp_path, "--quiet", "model.sigma_min=100")
    errors = [line for line in err.strip().splitlines() if line.startswith("genlab: error:")]
    assert code == 2 and len(errors) == 1 and "sigma_min" in errors[0]
    assert not any(tmp_path.iterdir())  # nothing started


# -- spatial latent diffusion -------------------------------------------------------------------------------
def test_kl_autoencoder_has_an_image_shaped_latent_and_latent_edm_and_flow_matching_train_over_it(tmp_path, cli):
    import shutil

    first = start_training(load_config("tiny-klae"), tmp_path, CPU, quiet=True)
    klae, _, _ = build_method_from_checkpoint(first / "checkpoints" / "last.pt", CPU)
    assert klae.latent_shape() == (2, 4, 4)  # f = 4 at 16 px
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert klae.encode_latent(x).shape == (3, 2, 4, 4) and klae.reconstruct(x).shape == x.shape
    for method in ("latent-edm", "latent-flow-matching"):
        overrides = [f"method={method}", f"init.from_run={first}", "model={}", "model.width=8", "model.mults=[1,2]",
                     "model.blocks=1", "model.attention=[]", "sampler.name=heun", "sampler.nfe=3"]
        cfg = load_config("tiny-latent-edm", overrides)
        assert cfg.model.first_stage["method"] == "kl-autoencoder"
        run = start_training(cfg, tmp_path, CPU, quiet=True)
        ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
        theirs = load_checkpoint(first / "checkpoints" / "last.pt")["state"]["networks"]
        for ours, name in (("first_encoder", "encoder"), ("first_decoder", "decoder")):
            for key, value in theirs[name].items():
                assert torch.equal(ckpt["state"]["networks"][ours][key], value), (method, ours, key)  # frozen
        scale = ckpt["state"]["networks"]["denoiser"]["latent_scale"].item()
        assert scale > 0 and scale != 1.0  # latents scaled to unit variance
        m, _, _ = build_method_from_checkpoint(run / "checkpoints" / "last-inference.pt", CPU)
        assert m.diffusion_shape() == (2, 4, 4)
        images = m.sample(4, seed=0)
        assert images.shape == (4, 1, 16, 16) and images.float().std() > 0
        assert torch.equal(images[2:], m.sample(2, seed=2))
        assert not hasattr(m, "log_likelihood")  # a latent density is not an image density: no bits/dim
    for target in ("tiny-klae", "tiny-edm", run):  # every network's summary (torchinfo) runs on its example input
        code, out, err = cli("summary", target)
        assert code == 0 and "parameters" in out, err
    # the latent run holds its first stage: it samples with the kl-autoencoder run gone
    shutil.move(str(first), str(tmp_path / "elsewhere"))
    code, _, err = cli("sample", run, "--n", "2", "--out", tmp_path / "s.png")
    assert code == 0, err


def test_latent_flows_refuse_first_stages_they_cannot_use(tmp_path):
    vae = start_training(load_config("tiny-vae", ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    with pytest.raises(GenlabError, match="image-shaped latent"):  # a flat latent
        load_config("tiny-latent-edm", [f"init.from_run={vae}"])
    klae = start_training(load_config("tiny-klae", ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    with pytest.raises(GenlabError, match="latent is 4x4.*must divide by 8"):
        load_config("tiny-latent-edm", [f"init.from_run={klae}", "model.mults=[1,2,2,2]"])
    with pytest.raises(GenlabError, match="init.from_run"):
        start_training(load_config("tiny-latent-edm"), tmp_path, CPU, quiet=True)
