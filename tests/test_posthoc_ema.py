"""Post-hoc EMA (Karras et al. 2024): the sigma_rel <-> gamma map, an EMA of another length rebuilt
from snapshots against the same EMA tracked directly, snapshots through training for any family
with an EMA, exact resume, `genlab ema` end to end, and refusals."""

import types

import pytest
import torch

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.errors import GenlabError
from genlab.resolve import load_config
from genlab.train.checkpoint import build_method_from_checkpoint, load_checkpoint
from genlab.train.posthoc_ema import (
    PowerEMA,
    gamma_to_sigma_rel,
    read_snapshots,
    reconstruct,
    sigma_rel_to_gamma,
)

CPU = torch.device("cpu")


def test_sigma_rel_and_gamma_match_the_papers_pairs():
    # Karras et al. 2024, section 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma_rel in (0.01, 0.05, 0.2):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-9)
    with pytest.raises(GenlabError, match="relative width"):
        sigma_rel_to_gamma(0.3)


def test_an_ema_rebuilt_from_snapshots_matches_the_same_ema_tracked_directly(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    family = types.SimpleNamespace(networks=lambda: {"g": net}, ema_targets=("g",))
    kept, direct = PowerEMA(family, [0.05, 0.10]), PowerEMA(family, [0.08])
    g = torch.Generator().manual_seed(0)
    for t in range(1, 401):  # a drifting random walk of the weights, as training makes
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1 + 0.01)
            net[1].running_mean.add_(0.01)
        kept.update()
        direct.update()
        if t % 20 == 0:
            kept.write_snapshot(tmp_path)
    weights, info = reconstruct(read_snapshots(tmp_path), 0.08)
    tracked = direct.shadows[0]["g"].state_dict()
    narrow, wide = (kept.shadows[i]["g"].state_dict() for i in (0, 1))
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        error = (weights["g"][key] - tracked[key]).norm()
        between = (narrow[key] - wide[key]).norm()  # how far apart the two kept averages are
        assert error < 0.01 * between, (key, error, between)
    torch.testing.assert_close(weights["g"]["1.running_mean"], net[1].running_mean)  # buffers: the latest
    assert info["at_update"] == 400 and info["snapshots"] == 20 and info["profile_error"] < 0.01
    # a width that is one of the kept ones comes back as that average
    again, _ = reconstruct(read_snapshots(tmp_path), 0.05)
    torch.testing.assert_close(again["g"]["0.weight"], narrow["0.weight"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset,choice", [("tiny-edm", "val"), ("tiny-dcgan", "train")])  # (tiny-dcgan keeps no val)
def test_training_keeps_snapshots_resumes_exactly_and_genlab_ema_chooses_on_the_choice_split(tmp_path, cli, preset, choice):
    keep = ["train.posthoc_ema=[0.05,0.1]", "train.posthoc_every=2"]
    straight = start_training(load_config(preset, keep + ["train.epochs=2"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config(preset, keep + ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.epochs=2"], CPU, quiet=True)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt")["posthoc_ema"] for r in (straight, split))
    assert a["updates"] == b["updates"] > 0
    for mine, theirs in zip(a["networks"], b["networks"]):
        for name in mine:
            for key, value in mine[name].items():
                assert torch.equal(value, theirs[name][key]), (name, key)
    snapshots = read_snapshots(straight)
    assert [s["updates"] for s in snapshots] == list(range(2, a["updates"] + 1, 2))
    assert sorted(p.name for p in (split / "posthoc-ema").glob("*.pt")) == \
        sorted(p.name for p in (straight / "posthoc-ema").glob("*.pt"))

    code, out, err = cli("ema", straight, "--sigma-rel", "0.03,0.08", "--n", "32")
    assert code == 0, err
    assert "<- chosen" in out and "choice split" in out and f"{choice} split" in out
    chosen = straight / "checkpoints" / "posthoc-inference.pt"
    method, _, payload = build_method_from_checkpoint(chosen, CPU)
    assert payload["weights_used"] == "posthoc-ema" and payload["posthoc_ema"]["sigma_rel"] in (0.03, 0.08)
    code, out, err = cli("eval", chosen, "--metrics", "swd", "--n", "16")
    assert code == 0, err
    assert "post-hoc EMA weights (sigma_rel" in out
    assert method.sample(2, seed=0).shape[0] == 2


def test_refusals(tmp_path, cli):
    with pytest.raises(GenlabError, match="outside"):
        load_config("tiny-edm", ["train.posthoc_ema=[0.5]"])
    with pytest.raises(GenlabError, match="no networks to average"):
        load_config("tiny-detector", ["train.posthoc_ema=[0.05]"])
    plain = start_training(load_config("tiny-edm", ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    code, _, err = cli("ema", plain, "--n", "8")
    errors = [line for line in err.strip().splitlines() if line.startswith("genlab: error:")]
    assert code == 2 and len(errors) == 1 and "no post-hoc EMA snapshots" in errors[0]
    with pytest.raises(GenlabError, match="posthoc_ema"):  # switched on half-way: refused, not silently empty
        resume_training(plain, ["train.epochs=2", "train.posthoc_ema=[0.05]"], CPU, quiet=True)
