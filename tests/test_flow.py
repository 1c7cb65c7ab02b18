"""RealNVP: exact inversion, log-determinants against autograd, the density against closed forms,
training through the loop, and refusals."""

import math

import pytest
import torch

from genlab.api import train as start_training
from genlab.data.convert import bits_per_dim
from genlab.errors import GenlabError
from genlab.methods import build_method
from genlab.models.flow import Coupling, RealNVP, squeeze, unsqueeze
from genlab.resolve import load_config
from genlab.train.checkpoint import load_checkpoint

CPU = torch.device("cpu")


def randomised(flow: RealNVP, seed: int = 0) -> RealNVP:
    """A flow whose couplings and normalisations are not the identity (they start as one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, Coupling):
                last = module.st.out[-1]
                last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.05)
                last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.05)
                module.norm.bias.copy_(torch.randn(module.norm.bias.shape, generator=g) * 0.1)
                module.norm.log_scale.copy_(torch.randn(module.norm.log_scale.shape, generator=g) * 0.1)
                module.norm.initialised.fill_(True)
    return flow.eval()


def test_squeeze_is_inverted_by_unsqueeze_and_moves_2x2_blocks_into_channels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 2)
    assert torch.equal(unsqueeze(y), x)
    assert sorted(y[0, :4, 0, 0].tolist()) == sorted(x[0, 0, :2, :2].flatten().tolist())


def test_the_flow_inverts_exactly():
    torch.manual_seed(0)
    flow = randomised(RealNVP(3, scales=3, width=8, blocks=1))
    x = torch.randn(4, 3, 16, 16)
    z, logdet = flow(x)
    assert z.shape == x.shape and logdet.shape == (4,)
    assert not torch.allclose(z, x, atol=1e-2)  # the flow does something
    assert (flow.inverse(z) - x).abs().max().item() < 1e-5


def test_log_determinant_equals_the_brute_force_jacobian():
    torch.manual_seed(0)
    flow = randomised(RealNVP(1, scales=2, width=4, blocks=1)).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 1, 4, 4))[0].flatten(), x.flatten())
    _, brute = torch.linalg.slogdet(jacobian)
    _, logdet = flow(x)
    assert abs(brute.item()) > 0.1  # a non-trivial volume change
    assert logdet.item() == pytest.approx(brute.item(), abs=1e-4)


def tiny_flow(**overrides):
    cfg = load_config("tiny-realnvp", [f"{k}={v}" for k, v in overrides.items()])
    return build_method(cfg, (1, 8, 8), CPU)


def test_an_identity_flow_has_the_density_of_its_logit_preprocessing():
    """With every coupling at its zero initialisation, p(x) factorises over pixels into the logit-
    normal density; one pixel's density integrates over [-1, 1] to Phi(b) - Phi(-b), b = logit(1 - alpha)."""
    method = tiny_flow()
    method.eval()
    alpha = method.cfg.alpha
    grid = torch.linspace(-1, 1, 20001)[1:-1]
    x = grid.view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    with torch.no_grad():
        per_pixel = (method.log_density(x) / 64).exp()
    integral = torch.trapezoid(per_pixel, grid).item()
    b = math.log((1 - alpha) / alpha)
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
    assert integral == pytest.approx(phi(b) - phi(-b), rel=1e-3)
    # at x = 0 (p = 1/2, y = 0): log N(0) + log(1 - 2 alpha) + 2 log 2 - log 2 per pixel
    expected = 64 * (-0.5 * math.log(2 * math.pi) + math.log(1 - 2 * alpha) + math.log(2))
    with torch.no_grad():
        log_p = method.log_density(torch.zeros(1, 1, 8, 8))
    assert log_p.item() == pytest.approx(expected, rel=1e-5)
    assert bits_per_dim(log_p, 64).item() == pytest.approx((-expected - 64 * math.log(2) + 64 * math.log(256))
                                                           / (64 * math.log(2)), rel=1e-6)


def test_realnvp_trains_through_the_loop_with_bits_per_dim_falling(tmp_path):
    run = start_training(load_config("tiny-realnvp", ["train.epochs=3"]), tmp_path, CPU, quiet=True)
    import json

    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    val = [r["val_bpd"] for r in records if r["kind"] == "epoch"]
    assert len(val) == 3 and val[0] > val[1] > val[2]
    assert all(0 < v < 9 for v in val)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    # activation normalisation was initialised from data when the run started, and saved so
    state = ckpt["state"]["networks"]["flow"]
    assert all(v.item() for k, v in state.items() if k.endswith("initialised"))


def test_reconstruction_is_exact_inversion_and_sampling_takes_a_temperature():
    method = tiny_flow()
    method.prepare(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8))
    method.eval()
    x = torch.rand(4, 1, 8, 8) * 1.8 - 0.9
    assert (method.reconstruct(x) - x).abs().max().item() < 1e-4
    hot = method.sample(4, seed=3)
    from genlab.samplers.latent import LatentOptions

    cold = method.sample(4, seed=3, options=LatentOptions(name="latent", temperature=0.5))
    assert hot.shape == (4, 1, 8, 8) and hot.dtype == torch.uint8
    assert not torch.equal(hot, cold)
    assert torch.equal(method.sample(4, seed=3, batch_size=1), hot)


@pytest.mark.parametrize("overrides, words", [
    (["data.size=16", "model.scales=5"], "must divide by 32"),
    (["sampler.temperature=0"], "sampler.temperature"),
    (["model.alpha=0.5"], "model.alpha"),
])
def test_bad_flow_settings_are_refused_before_anything_runs(overrides, words):
    with pytest.raises(GenlabError, match=words):
        load_config("tiny-realnvp", overrides)
