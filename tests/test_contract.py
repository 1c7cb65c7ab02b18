"""The method contract: what every family may rely on and declare, tested with families defined here,
outside the package, so the loop is shown to need no change for them.

The main one, ``toy-gaussian``, has what the coming families have (an image-shaped latent, an
ancestral sampler that draws fresh noise at every step, an EMA of its network, an exact likelihood
and a validation loss); it trains, samples, evaluates bits per dimension and resumes through the
same loop and CLI as the VAE and the GAN.
"""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import only_run

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.config import OptimConfig, check_positive
from genlab.data.convert import bits_per_dim, dequantize
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.methods.abilities import Likelihood
from genlab.methods.base import Method
from genlab.methods.step import Stepper, make_optimizer
from genlab.resolve import load_config, resolve_config
from genlab.samplers import SAMPLERS, Sampler, SamplerOptions, SeededNoise
from genlab.train.checkpoint import build_method_from_checkpoint, load_checkpoint

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ toy family


class PixelGaussian(torch.nn.Module):
    """A diagonal Gaussian over images: a mean and a log-scale per pixel."""

    def __init__(self, shape):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(shape))
        self.log_scale = torch.nn.Parameter(torch.zeros(shape))

    def log_density(self, x):
        z = (x - self.mean) / self.log_scale.exp()
        return (-0.5 * z.square() - self.log_scale - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


@dataclass
class ToyConfig:
    lr: float = 0.05

    def validate(self, prefix="model."):
        check_positive(f"{prefix}lr", self.lr)


@dataclass
class AncestralOptions(SamplerOptions):
    steps: int = 4  # refinement steps, each drawing fresh per-image noise


def ancestral_sampler(method, noise: SeededNoise, options: AncestralOptions):
    """x_K ~ N(0, I) image-shaped; then K times x <- (x + mean + scale * fresh noise) / 2: noise drawn
    along the way, from each image's own generator."""
    net = method.net
    x = noise.randn(*method.latent_shape())
    for _ in range(options.steps):
        x = 0.5 * (x + net.mean + net.log_scale.exp() * noise.randn(*method.latent_shape()))
    return x.clamp(-1, 1)


SAMPLERS.register("test-ancestral")(Sampler(ancestral_sampler, AncestralOptions))


@METHODS.register("toy-gaussian")
class ToyGaussian(Method, Likelihood):
    name = "toy-gaussian"
    config_class = ToyConfig
    has_validation_loss = True
    latent_kind = "image"
    samplers = ("test-ancestral", "latent")
    ema_targets = ("net",)

    def __init__(self, cfg, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.nets.net = PixelGaussian(image_shape).to(device)
        self.opt = make_optimizer(OptimConfig(lr=cfg.lr), self.net.parameters(), device)

    def optimizers(self):
        return {"adam": self.opt}

    def latent_shape(self):
        return self.image_shape

    def generate(self, z):
        return (self.net.mean + self.net.log_scale.exp() * z).clamp(-1, 1)

    def _nll(self, x, u):
        """Negative log-likelihood in bits per dimension of dequantised 8-bit images."""
        images = ((x + 1) * 127.5).round()
        return bits_per_dim(self.net.log_density(dequantize(images, u)), x[0].numel()).float().mean()

    def train_step(self, x, step):
        u = torch.rand(x.shape, device=x.device)  # drawn for the whole batch, before any micro-batch split
        return self.stepper.minimize(self.opt, lambda x, u: {"loss": self._nll(x, u)}, x, u)

    def validation_step(self, x, generator):
        return {"loss": self._nll(x, torch.rand(x.shape, generator=generator).to(x.device))}

    def log_likelihood(self, x):
        return self.net.log_density(x), "exact (diagonal Gaussian)"


TOY = {"name": "toy", "method": "toy-gaussian",
       "data": {"source": "digits", "size": 8, "limit": 120, "val_fraction": 0.25},
       "model": {"lr": 0.05},
       "train": {"batch_size": 30, "epochs": 3, "log_every": 1, "num_samples": 4, "ema_decay": 0.9}}


def toy(**train):
    return resolve_config({**TOY, "train": {**TOY["train"], **train}})


def records(run, kind):
    return [r for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_an_outside_family_trains_samples_evaluates_and_resumes_with_no_change_to_the_loop(tmp_path, cli):
    cfg = toy()
    assert cfg.sampler.name == "test-ancestral" and cfg.sampler.steps == 4  # the family's default sampler
    straight = start_training(cfg, tmp_path / "a", CPU, quiet=True)

    # It trains: bits per dimension fall, on training batches and on the validation split.
    losses = [r["loss"] for r in records(straight, "train")]
    assert len(losses) == 9 and losses[-1] < losses[0] - 0.3
    val = [r["val_loss"] for r in records(straight, "epoch")]
    assert len(val) == 3 and val[0] > val[1] > val[2]

    # It resumes: weights, optimizer and EMA continue exactly.
    split = start_training(toy(epochs=1), tmp_path / "b", CPU, quiet=True)
    resume_training(split, ["train.epochs=3"], CPU, quiet=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, split))
    for section in ("state", "ema"):
        for name, weights in a[section]["networks"].items():
            for key in weights:
                assert torch.equal(weights[key], b[section]["networks"][name][key]), (section, key)
    assert a["ema"]["updates"] == b["ema"]["updates"] == 9

    # It samples with its ancestral sampler and per-image noise: image i depends on its seed alone.
    model, _, payload = build_method_from_checkpoint(straight / "checkpoints" / "last.pt", CPU)
    assert payload["weights_used"] == "ema"
    many = model.sample(10, seed=5, batch_size=10)
    assert torch.equal(many, model.sample(10, seed=5, batch_size=3))
    assert torch.equal(many[2:6], model.sample(4, seed=7))
    assert not torch.equal(many[:1], model.sample(1, seed=6))
    latent = model.sample(4, seed=7, options=SAMPLERS.get("latent").options_class(name="latent"))
    assert not torch.equal(latent, many[2:6])  # another sampler of the same model, another image

    code, _, err = cli("sample", straight, "--n", 6, "--out", tmp_path / "s.npz", "sampler.steps=2")
    assert code == 0 and "test-ancestral(steps=2)" in err
    code, _, err = cli("sample", straight, "--n", 6, "--out", tmp_path / "t.npz", "sampler.steps=0")
    assert code == 0  # (zero refinement steps: x_K itself)
    code, _, err = cli("sample", straight, "--out", tmp_path / "u.npz", "model.lr=1")
    assert code == 2 and "only sampler.* keys may be set here" in err

    # It evaluates bits per dimension through `genlab eval`, which picks its metrics by the declared
    # abilities (a likelihood, no encoder), exactly as the model's own density says.
    code, out, err = cli("eval", straight, "--metrics", "bpd", "--n", 30, "--json")
    assert code == 0, err
    bpd = json.loads(out)["bpd"]
    assert "exact (diagonal Gaussian)" in bpd["protocol"] and "EMA weights (decay 0.9)" in bpd["protocol"]
    from genlab.data.subsets import random_subset

    val, _ = random_subset(__import__("genlab.data", fromlist=["load_dataset"]).load_dataset(cfg.data).test, 30, 0, "test")
    u = torch.rand(val.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = bits_per_dim(model.net.log_density(dequantize(val, u)), val[0].numel()).mean().item()
    assert bpd["value"] == pytest.approx(expected, rel=1e-6)
    code, out, err = cli("eval", straight, "--n", 30, "--json", "--extractor", "random-standin")
    assert code == 0, err
    assert "bpd" in json.loads(out) and not {"mse", "ppl"} & set(json.loads(out))


def test_ema_weights_are_what_grids_snapshots_and_sampling_use(tmp_path):
    run = start_training(toy(epochs=1), tmp_path, CPU, quiet=True)
    full = load_checkpoint(run / "checkpoints" / "last.pt")
    lean = load_checkpoint(run / "checkpoints" / "last-inference.pt")
    assert lean["kind"] == "inference" and lean["weights"] == "ema" and set(lean["state"]) == {"networks"}
    assert "rng" not in lean and "optimizers" not in lean["state"]
    for key, value in full["ema"]["networks"]["net"].items():
        assert torch.equal(lean["state"]["networks"]["net"][key], value)
        assert not torch.equal(full["state"]["networks"]["net"][key], value)  # the raw weights differ
    ema_model, _, _ = build_method_from_checkpoint(run / "checkpoints" / "last.pt", CPU)
    raw_model, _, payload = build_method_from_checkpoint(run / "checkpoints" / "last.pt", CPU, raw_weights=True)
    assert payload["weights_used"] == "raw"
    assert torch.equal(ema_model.net.mean, full["ema"]["networks"]["net"]["mean"])
    assert not torch.equal(ema_model.sample(4, 0), raw_model.sample(4, 0))
    with pytest.raises(GenlabError, match="holds the EMA weights only"):
        build_method_from_checkpoint(run / "checkpoints" / "last-inference.pt", CPU, raw_weights=True)
    with pytest.raises(GenlabError, match="inference snapshot"):
        (run / "checkpoints" / "last.pt").write_bytes((run / "checkpoints" / "last-inference.pt").read_bytes())
        resume_training(run, ["train.epochs=2"], CPU, quiet=True)


def test_ema_update_follows_its_formula():
    from genlab.train.ema import EMA

    torch.manual_seed(0)
    m = ToyGaussian(ToyConfig(), (1, 4, 4), CPU)
    ema = EMA(m, decay=0.9, warmup=True)
    shadow = m.net.mean.detach().clone()
    for t in range(5):
        with torch.no_grad():
            m.net.mean.add_(torch.randn(1, 4, 4))
        ema.update()
        decay = min(0.9, (1 + t) / (10 + t))
        shadow = decay * shadow + (1 - decay) * m.net.mean.detach()
        torch.testing.assert_close(ema.shadows["net"].mean, shadow)
    assert not ema.shadows["net"].mean.requires_grad
    with ema.applied(m):
        assert m.net is ema.shadows["net"]
    assert m.net is not ema.shadows["net"]


def test_image_shaped_latents_work_with_ppl():
    from genlab.config import EvalSettings
    from genlab.metrics.ppl import perceptual_path_length

    torch.manual_seed(0)
    m = ToyGaussian(ToyConfig(), (1, 8, 8), CPU)
    with torch.no_grad():
        m.net.log_scale.fill_(-1.0)
    out = perceptual_path_length(m, EvalSettings(n=16, batch_size=8), CPU, "genlab-random-standin")["ppl"]
    assert out["value"] > 0 and "image latent of 64" in out["protocol"]

    class NoLatent(ToyGaussian):
        name = "no-latent"
        latent_kind = "none"

    with pytest.raises(GenlabError, match="PPL needs a latent space"):
        perceptual_path_length(NoLatent(ToyConfig(), (1, 8, 8), CPU), EvalSettings(n=4), CPU, "genlab-random-standin")


# ------------------------------------------------------------------------------------------ the logging window


@dataclass
class SometimesConfig:
    pass


@METHODS.register("sometimes-test-family")
class Sometimes(Method):
    """Returns ``always`` every step and ``sometimes`` every other step (as a G loss under n_critic)."""

    name = "sometimes-test-family"
    config_class = SometimesConfig

    def __init__(self, cfg, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.nets.net = torch.nn.Linear(1, 1)

    def optimizers(self):
        return {}

    def latent_shape(self):
        return (1,)

    def generate(self, z):
        return torch.zeros(len(z), *self.image_shape)

    def train_step(self, x, step):
        stats = {"always": torch.tensor(float(step))}
        if step % 2 == 0:
            stats["sometimes"] = torch.tensor(10.0 * step)
        return stats


def test_a_value_returned_on_some_steps_is_averaged_over_those_steps(tmp_path):
    raw = {"name": "sometimes", "method": "sometimes-test-family",
           "data": {"source": "digits", "size": 8, "limit": 80, "val_fraction": 0.0},
           "train": {"batch_size": 10, "epochs": 1, "log_every": 4}}
    run = start_training(resolve_config(raw), tmp_path, CPU, quiet=True)
    logged = [(r["step"], r["always"], r["sometimes"]) for r in records(run, "train")]
    # steps 0..3: always (0+1+2+3)/4; sometimes (0+20)/2, not /4. Steps 4..7: (40+60)/2.
    assert logged == [(4, 1.5, 10.0), (8, 5.5, 50.0)]


def test_patience_without_a_validation_split_is_refused_before_training(tmp_path):
    with pytest.raises(GenlabError, match="has no validation split here"):
        start_training(load_config("tiny-vae", ["data.val_fraction=0", "train.patience=2"]), tmp_path, CPU, quiet=True)
    assert not list(tmp_path.iterdir())  # refused before the run directory was made


def test_grids_every_n_epochs_and_at_the_end(tmp_path):
    run = start_training(load_config("tiny-dcgan", ["train.epochs=5", "train.grid_every=2"]), tmp_path, CPU, quiet=True)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch-0002.png", "epoch-0004.png", "epoch-0005.png"]


# ------------------------------------------------------------------------------------------ the step helper


def test_the_generator_step_leaves_the_discriminator_without_gradients():
    """Before, G's backward ran through D's weights too (wasted work, and an all-reduce under DDP)."""
    torch.manual_seed(0)
    gan = METHODS.get("gan")(load_config("tiny-dcgan").model, (1, 16, 16), CPU)
    calls = {"n": 0}
    hooks = [p.register_hook(lambda g: calls.__setitem__("n", calls["n"] + 1)) for p in gan.discriminator.parameters()]
    gan.run_step(torch.rand(8, 1, 16, 16) * 2 - 1, 0)
    for h in hooks:
        h.remove()
    assert calls["n"] == len(list(gan.discriminator.parameters()))  # one gradient each: D's own step only
    assert all(p.requires_grad for p in gan.discriminator.parameters())  # unfrozen again


def linear_method(accumulate=1, scaler=None, clip=0.0):
    torch.manual_seed(0)
    net = torch.nn.Linear(12, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    stepper = Stepper(lambda: {"net": net})
    stepper.configure(scaler, accumulate)
    return net, opt, stepper


def test_accumulation_gives_the_whole_batch_gradient():
    x = torch.randn(10, 12, generator=torch.Generator().manual_seed(1))
    results = []
    for k in (1, 2, 3):  # 3 does not divide 10: micro-batches of 4, 3, 3 weighted by their share
        net, opt, stepper = linear_method(accumulate=k)
        seen = []

        def objective(xb):
            seen.append(len(xb))
            out = net(xb)
            return {"loss": out.square().mean(), "first": out[:, 0].mean()}

        stats = stepper.minimize(opt, objective, x)
        assert seen == {1: [10], 2: [5, 5], 3: [4, 3, 3]}[k]
        results.append((net.weight.detach().clone(), stats))
    for weight, stats in results[1:]:
        torch.testing.assert_close(weight, results[0][0])
        torch.testing.assert_close(stats["loss"], results[0][1]["loss"])
        torch.testing.assert_close(stats["first"], results[0][1]["first"])


def test_the_loss_scaler_path_takes_the_same_step_and_skips_overflow():
    """A GradScaler (the fp16 path, here on the CPU) must not change a step: loss scaled up, gradients
    unscaled before clipping and stepping. An overflowing step is skipped and the scale halved."""
    x = torch.randn(8, 12, generator=torch.Generator().manual_seed(1))
    plain_net, plain_opt, plain = linear_method()
    plain.minimize(plain_opt, lambda xb: plain_net(xb).square().mean(), x, clip=0.05)
    scaled_net, scaled_opt, scaled = linear_method(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    scaled.minimize(scaled_opt, lambda xb: scaled_net(xb).square().mean(), x, clip=0.05)
    scaled.end_step()
    torch.testing.assert_close(scaled_net.weight, plain_net.weight)
    assert scaled.scaler.get_scale() == 2.0**12  # no overflow: the scale stays (growth after 2000 steps)
    before = scaled_net.weight.detach().clone()
    scaled.minimize(scaled_opt, lambda xb: scaled_net(xb).square().mean() * float("inf"), x)
    scaled.end_step()
    assert torch.equal(scaled_net.weight, before) and scaled.scaler.get_scale() == 2.0**11


def test_penalty_gradients_are_the_same_under_the_scaler():
    """A gradient penalty (WGAN-GP, R1) takes d D(x) / d x inside the loss: under the scaler the
    helper scales the output and unscales the gradient, so the penalty is unchanged."""
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(2), requires_grad=True)
    net, _, plain = linear_method()
    _, _, scaled = linear_method(scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    (g_plain,) = plain.gradients(net(x).sum(1), x)
    (g_scaled,) = scaled.gradients(net(x).sum(1), x)
    torch.testing.assert_close(g_scaled, g_plain)
    torch.testing.assert_close(g_plain, net.weight.sum(0).expand(6, -1))  # d (sum_j w_j . x) / dx
    assert g_plain.requires_grad  # a graph: the penalty can be back-propagated


def test_a_vae_trains_with_accumulation_through_the_loop(tmp_path):
    from genlab.methods.vae import VAEMethod

    calls = []
    original = VAEMethod._losses
    VAEMethod._losses = lambda self, x, noise, beta=1.0: calls.append(len(x)) or original(self, x, noise, beta)
    try:
        run = start_training(load_config("tiny-vae", ["train.accumulate=4", "train.epochs=1"]), tmp_path, CPU, quiet=True)
    finally:
        VAEMethod._losses = original
    assert calls[:4] == [8, 8, 8, 8]  # a batch of 32 in four micro-batches
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 5


# ------------------------------------------------------------------------------------------ architecture and objective


def test_gan_architecture_and_objective_are_chosen_apart():
    cfg = load_config("tiny-dcgan", ["model.loss=lsgan"])
    torch.manual_seed(0)
    gan = METHODS.get(cfg.method)(cfg.model, (1, 16, 16), CPU)
    assert gan.objective.d_loss.__name__ == "d_least_squares_loss"
    assert set(gan.run_step(torch.rand(8, 1, 16, 16) * 2 - 1, 0)) == {"loss_d", "loss_g", "score_real", "score_fake"}
    with pytest.raises(GenlabError, match="unknown GAN architecture 'stylegan'"):
        load_config("tiny-dcgan", ["model.arch=stylegan"])
    with pytest.raises(GenlabError, match="unknown GAN objective 'relativistic'"):
        load_config("tiny-dcgan", ["model.loss=relativistic"])
    ttur = load_config("tiny-dcgan", ["model.d_optim.lr=4e-4", "model.g_optim.lr=1e-4", "model.d_optim.name=rmsprop",
                                      "model.d_optim.betas=null"])
    gan = METHODS.get(ttur.method)(ttur.model, (1, 16, 16), CPU)
    assert isinstance(gan.opt_d, torch.optim.RMSprop) and gan.opt_d.param_groups[0]["lr"] == 4e-4
    assert gan.opt_g.param_groups[0]["lr"] == 1e-4


def test_samples_do_not_depend_on_the_noise_of_other_images():
    """Each image's draws come from its own generator, in order, whatever else is in the batch."""
    noise = SeededNoise([3, 4], CPU)
    first, second = noise.randn(2, 2), noise.rand(5)
    g = torch.Generator().manual_seed(4)
    assert torch.equal(first[1], torch.randn(2, 2, generator=g))
    assert torch.equal(second[1], torch.rand(5, generator=g))
    alone = SeededNoise([3], CPU)
    assert torch.equal(alone.randn(2, 2)[0], first[0]) and torch.equal(alone.rand(5)[0], second[0])


# ------------------------------------------------------------------------------------------ through the CLI


def test_reconstruct_reports_the_units_and_numbers_of_eval(cli, tmp_path):
    """One unit everywhere: reconstruct's per-image MSE is eval's recon MSE ([0,1] units), not 4x it."""
    runs = tmp_path / "runs"
    assert cli("train", "tiny-vae", "--runs-dir", runs, "--quiet")[0] == 0
    run = only_run(runs)
    code, out, err = cli("reconstruct", run, "--n", 16, "--random", "--seed", 0, "--out", tmp_path / "r.png")
    assert code == 0, err
    assert "[0,1] units" in out.splitlines()[0]
    rows = [line.split() for line in out.splitlines()[1:17]]
    mse, psnr = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows) and len({int(r[0]) for r in rows}) == 16
    code, out, err = cli("eval", run, "--metrics", "recon", "--n", 16, "--split", "val", "--json")  # seed 0 too
    assert code == 0, err
    results = json.loads(out)
    assert sum(mse) / 16 == pytest.approx(results["mse"]["value"], abs=1e-6)
    assert mse[:10] == pytest.approx(results["mse"]["per_image"], abs=1e-6)
    assert sum(psnr) / 16 == pytest.approx(results["psnr"]["value"], abs=1e-3)
    code, out, _ = cli("reconstruct", run, "--n", 4, "--random", "--seed", 1, "--out", tmp_path / "q.png")
    picked = [int(line.split()[0]) for line in out.splitlines()[1:5]]
    assert code == 0 and picked != [0, 1, 2, 3] and len(set(picked)) == 4
    code, out, err = cli("reconstruct", run, "--split", "test", "--out", tmp_path / "t.png")  # the report split
    assert code == 0 and out.startswith("test image"), err


def test_a_gan_with_ema_grids_and_samples_with_the_averaged_generator(cli, tmp_path):
    import numpy as np
    from PIL import Image

    from genlab.train.rundir import image_grid

    runs = tmp_path / "runs"
    code, _, err = cli("train", "tiny-dcgan", "train.ema_decay=0.5", "--runs-dir", runs, "--quiet")
    assert code == 0 and "EMA 0.5 of generator" in err
    run = only_run(runs)
    ema_model, cfg, payload = build_method_from_checkpoint(run / "checkpoints" / "last.pt", CPU)
    grid = (image_grid(ema_model.sample(cfg.train.num_samples, cfg.train.sample_seed)) * 255).round().byte()
    written = np.asarray(Image.open(run / "samples" / "epoch-0002.png").convert("L"))
    assert np.array_equal(written, grid[0].numpy())  # the grid is the EMA generator's
    raw_model, _, _ = build_method_from_checkpoint(run / "checkpoints" / "last.pt", CPU, raw_weights=True)
    assert not torch.equal(raw_model.sample(16, 0), ema_model.sample(16, 0))
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert cli("sample", run, "--n", 8, "--out", a)[0] == 0  # the lean snapshot: EMA weights
    assert cli("sample", run, "--n", 8, "--out", b, "--raw-weights")[0] == 0
    assert np.array_equal(np.load(a)["images"], ema_model.sample(8, 0).numpy())
    assert np.array_equal(np.load(b)["images"], raw_model.sample(8, 0).numpy())
    lean, full = (run / "checkpoints" / n for n in ("last-inference.pt", "last.pt"))
    assert lean.stat().st_size < full.stat().st_size / 1.5  # no optimizer moments, no RNG


def test_the_cli_defaults_are_the_evaluation_table(cli):
    from genlab.cli import build_parser
    from genlab.config import EvalSettings

    args = build_parser("eval").parse_args(["eval", "somewhere"])
    table = EvalSettings()
    assert (args.n, args.extractor, args.seed, args.batch_size) == (table.n, table.extractor, table.seed, table.batch_size)
    from genlab.resolve import load_config as resolve

    assert resolve("tiny-vae").eval.extractor == table.extractor
    with pytest.raises(SystemExit):
        build_parser("eval").parse_args(["eval", "x", "--extractor", "inception"])  # the registry's names only
