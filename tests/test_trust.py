"""Numbers that mean what their labels say (issue 30): random held-out subsets, a report split apart
from the choice split, in-training evaluation equal to `genlab eval`, the likelihood of the model
that samples, reconstruction only for learned encoders, EMA per update of the averaged network, and
intervals over seeds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_data import write_celeba

from genlab import api
from genlab.config import DataConfig, EvalSettings
from genlab.data import build_dataset
from genlab.data.cache import load_dataset
from genlab.data.inspect import format_info, inspect_source
from genlab.data.subsets import describe_subset, random_subset, subset_indices
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.metrics.evaluate import Evaluator
from genlab.metrics.spread import format_interval, interval, overlaps, rank_within_noise
from genlab.metrics.table import check_metrics_apply, default_metrics
from genlab.models.latent_prior import add_prior_buffers, log_density
from genlab.resolve import load_config
from genlab.train.checkpoint import load_checkpoint
from genlab.train.session import start_training

CPU = torch.device("cpu")


# -- random subsets ---------------------------------------------------------------------------------
def _class_sorted_folder(root, classes=5, per_class=60):
    """A folder source whose classes are told apart by brightness: class k's images are all k * 50."""
    for k in range(classes):
        folder = root / f"class{k}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), k * 50, dtype=np.uint8), "L").save(folder / f"{i:03d}.png")
    return DataConfig(source="folder", root=str(root), size=8, channels=1, split="random", val_fraction=0.2,
                      test_fraction=0.5)


def test_a_held_out_subset_of_a_class_sorted_split_has_the_splits_class_mix(tmp_path):
    cfg = _class_sorted_folder(tmp_path / "f")
    data = load_dataset(cfg)
    test = data.test
    classes = test[:, 0, 0, 0].long() // 50
    assert torch.equal(classes, classes.sort().values)  # the split is stored class by class
    n = 60
    evaluator = Evaluator(data, cfg, EvalSettings(n=n, seed=0), CPU)
    subset, split, how = evaluator.held_out(n)
    assert split == "test" and how == f"{n} random of {len(test)} test (seed 0)"
    counts = torch.bincount(subset[:, 0, 0, 0].long() // 50, minlength=5).double()
    expected = torch.bincount(classes, minlength=5).double() * n / len(test)
    # hypergeometric counts: each within 4 standard deviations (sd <= sqrt(n p (1 - p)) ~ 3.1)
    assert ((counts - expected).abs() < 4 * math.sqrt(n * 0.2 * 0.8)).all(), (counts, expected)
    assert len(set((test[:n, 0, 0, 0].long() // 50).tolist())) <= 2  # what the first n were: one or two classes
    again, _, _ = Evaluator(data, cfg, EvalSettings(n=n, seed=0), CPU).held_out(n)
    other, _, _ = Evaluator(data, cfg, EvalSettings(n=n, seed=1), CPU).held_out(n)
    assert torch.equal(subset, again)
    assert not torch.equal(subset_indices(len(test), n, 0), subset_indices(len(test), n, 1))
    assert other.shape == subset.shape


def test_subset_helper_takes_all_or_a_seeded_sample():
    assert torch.equal(subset_indices(10, None, 0), torch.arange(10))
    assert torch.equal(subset_indices(10, 12, 0), torch.arange(10))
    index = subset_indices(100, 7, 3)
    assert len(index) == len(set(index.tolist())) == 7 and torch.equal(index, index.sort().values)
    images = torch.arange(20).view(20, 1, 1, 1)
    chosen, how = random_subset(images, 5, 2, "val")
    assert torch.equal(chosen[:, 0, 0, 0], subset_indices(20, 5, 2)) and how == "5 random of 20 val (seed 2)"
    assert describe_subset(20, None, 0, "test") == "all 20 of test"


def test_bits_per_dim_and_reconstruction_protocols_name_a_random_subset(tmp_path):
    run = start_training(load_config("tiny-vae", ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    results = api.evaluate(run, ["bpd", "recon"], EvalSettings(n=10, seed=4), device="cpu", record=False)
    for name in ("bpd", "psnr"):
        assert "10 random of" in results[name]["protocol"] and "test (seed 4)" in results[name]["protocol"]
        assert results[name]["split"] == "test"


# -- the report split -------------------------------------------------------------------------------
def test_celeba_without_test_images_gets_a_fixed_report_split_carved_from_validation(tmp_path):
    root = tmp_path / "celeba"
    write_celeba(root, n=40, partition_extra=False, attrs=False)
    partition = root / "list_eval_partition.txt"
    rows = [f"{i:06d}.jpg {0 if i <= 20 else 1}" for i in range(1, 41)]  # partitions 0 and 1 only, as ../shared holds
    partition.write_bytes(("\r\n".join(rows) + "\r\n").encode())
    cfg = DataConfig(source="celeba", root=str(root), size=8)
    data = build_dataset(cfg)
    assert len(data.train) == 20 and len(data.val) == len(data.test) == 10  # half of the 20 validation images
    keys = {s: (data.cache_dir / f"{s}_keys.txt").read_text().split() for s in ("train", "val", "test")}
    assert keys["train"] == [f"{i:06d}.jpg" for i in range(1, 21)]  # training images unchanged
    assert not set(keys["val"]) & set(keys["test"])
    # the carve depends on each key alone: an extra validation image moves no other one
    Image.fromarray(np.zeros((218, 178, 3), dtype=np.uint8), "RGB").save(root / "img_align_celeba" / "000041.jpg")
    partition.write_bytes(("\r\n".join(rows + ["000041.jpg 1"]) + "\r\n").encode())
    grown = build_dataset(cfg)
    grown_test = set((grown.cache_dir / "test_keys.txt").read_text().split())
    assert set(keys["test"]) <= grown_test and grown_test - set(keys["test"]) <= {"000041.jpg"}
    text = format_info(inspect_source(cfg))
    assert "report   test split carved out: no test images of its own: test = 50% of the validation images" in text
    assert data.resolve_split("report") == "test" and data.resolve_split("choice") == "val"


def test_random_splits_have_a_report_split_by_default():
    data = build_dataset(load_config("tiny-vae").data)
    assert data.has("test") and data.has("val")
    keys = {s: set((data.cache_dir / f"{s}_keys.txt").read_text().split()) for s in ("train", "val", "test")}
    assert not keys["test"] & keys["val"] and not keys["test"] & keys["train"]
    with pytest.raises(GenlabError, match="unknown split 'holdout'"):
        data.resolve_split("holdout")


def test_eval_defaults_to_the_report_split_and_training_evaluates_on_the_choice_split(tmp_path, cli):
    run = start_training(load_config("tiny-ae", ["train.epochs=1", "eval.every=1", "eval.metrics=[swd]", "eval.n=32"]),
                         tmp_path, CPU, quiet=True)
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    in_training = next(r for r in records if r.get("kind") == "eval")["results"]["swd"]["protocol"]
    assert "digits val split" in in_training
    code, out, err = cli("eval", str(run), "--metrics", "swd", "--n", "32", "--json")
    assert code == 0, err
    assert "digits test split" in json.loads(out)["swd"]["protocol"]
    code, out, err = cli("eval", str(run), "--metrics", "swd", "--n", "32", "--split", "choice", "--json")
    assert code == 0, err
    assert json.loads(out)["swd"]["split"] == "val"
    summary = json.loads((run / "metrics.json").read_text())
    assert set(summary["eval_by_split"]) == {"report", "choice"}


# -- in-training evaluation equals genlab eval --------------------------------------------------------
@pytest.mark.parametrize("preset, extra", [
    ("tiny-ae", []),
    ("tiny-vae", ["model.prior=fitted", "model.prior_components=2"]),
    ("tiny-vaegan", []),
    ("tiny-ddpm", ["sampler.steps=4"]),
])
def test_in_training_swd_equals_genlab_eval_of_the_saved_checkpoint(tmp_path, preset, extra):
    n = 48
    cfg = load_config(preset, ["train.epochs=2", "eval.every=1", "eval.metrics=[swd]", f"eval.n={n}", *extra])
    run = start_training(cfg, tmp_path, CPU, quiet=True)
    epochs = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    logged = [r["eval_swd"] for r in epochs if r.get("kind") == "epoch"]
    assert len(logged) == 2
    settings = EvalSettings(n=n, split="choice", seed=cfg.train.sample_seed)
    results = api.evaluate(run, ["swd"], settings, device="cpu", checkpoint="last", record=False)
    assert results["swd"]["value"] == pytest.approx(logged[-1], rel=1e-6, abs=1e-6)


# -- the likelihood of the model that samples ---------------------------------------------------------
def test_mixture_log_density_against_torch_distributions():
    torch.manual_seed(0)
    holder = torch.nn.Module()
    add_prior_buffers(holder, 3, CPU, components=4)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    chols = torch.linalg.cholesky(torch.stack([a @ a.T + torch.eye(3) for a in torch.randn(4, 3, 3)]))
    holder.prior_weights.copy_(weights)
    holder.prior_means.copy_(torch.randn(4, 3))
    holder.prior_chols.copy_(chols)
    codes = torch.randn(20, 3) * 2
    direct = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=weights.double()),
        torch.distributions.MultivariateNormal(holder.prior_means.double(), scale_tril=chols.double())).log_prob(codes.double())
    assert torch.allclose(log_density(holder, codes), direct, atol=1e-9)


def test_the_vae_bound_scores_the_prior_it_samples_from(tmp_path):
    run = start_training(load_config("tiny-vae", ["train.epochs=1", "model.prior=fitted", "model.prior_components=2"]),
                         tmp_path, CPU, quiet=True)
    model = api.load(run, "cpu")
    z = torch.randn(5, model.method.cfg.latent_dim)
    assert torch.allclose(model.method._log_prior(z), log_density(model.method.decoder, z).float())
    standard = -0.5 * (z.square() + math.log(2 * math.pi)).sum(1)
    assert not torch.allclose(model.method._log_prior(z), standard, atol=1e-3)
    results = api.evaluate(run, ["bpd"], EvalSettings(n=8), device="cpu", record=False)
    assert "p(z) = the fitted mixture of 2 Gaussians samples come from" in results["bpd"]["protocol"]


# -- reconstruction only for learned encoders ----------------------------------------------------------
def test_reconstruction_is_a_metric_of_learned_encoders_only():
    flow, vae = METHODS.get("realnvp"), METHODS.get("vae")
    assert "recon" not in default_metrics(flow) and "bpd" in default_metrics(flow)
    assert "recon" in default_metrics(vae)
    with pytest.raises(GenlabError, match="recon needs a learned encoder, and method 'realnvp' has none"):
        check_metrics_apply(["recon"], flow)


# -- EMA per update of the averaged network ------------------------------------------------------------
def test_ema_counts_generator_updates_under_n_critic(tmp_path):
    cfg = load_config("tiny-wgangp", ["model.n_critic=3", "train.ema_decay=0.9", "train.max_steps=9",
                                      "train.epochs=100"])
    run = start_training(cfg, tmp_path, CPU, quiet=True)
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    assert payload["progress"]["step"] == 9
    assert payload["ema"]["updates"] == 3  # generator steps at loop steps 2, 5 and 8


# -- intervals over seeds --------------------------------------------------------------------------------
def test_t_interval_on_a_known_sample():
    spread = interval([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653; s = 1; half-width = 4.302653 / sqrt(3)
    assert spread["mean"] == 2.0 and spread["std"] == 1.0
    assert spread["half_width"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert format_interval(spread) == "2 ± 2.5 (3 seeds, 95% t)"
    one = interval([5.0])
    assert one["half_width"] is None and format_interval(one) == "5 (1 seed)"
    assert overlaps(one, spread) is None
    assert overlaps(interval([1.0, 1.1, 0.9]), interval([1.05, 1.15, 0.95])) is True
    assert overlaps(interval([1.0, 1.1, 0.9]), interval([5.0, 5.1, 4.9])) is False
    best, marks = rank_within_noise({"a": interval([1.0, 1.1, 0.9]), "b": interval([1.05, 1.15, 0.95]),
                                     "c": interval([5.0, 5.1, 4.9]), "d": one})
    assert best == "a" and marks == {"a": "best", "b": "within noise", "c": "worse", "d": "1 seed: no interval"}


def _fake_run(folder, name, seed, value, preset="tiny-vae", kl=1.0):
    run = folder / name
    (run / "checkpoints").mkdir(parents=True)
    config = {"name": preset, "method": "vae", "data": {"source": "digits", "size": 16, "channels": 1},
              "model": {"kl_weight": kl}, "train": {"seed": seed}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    protocol = "64 samples of vae x vs digits test split (auto, seed 42), 29 images | Laplacian pyramid"
    (run / "metrics.json").write_text(json.dumps({"eval": {"swd": {"value": value, "protocol": protocol}}}))
    return run


def test_report_shows_mean_and_interval_over_seeds_and_marks_noise(tmp_path):
    from genlab.report import build_report

    runs = [_fake_run(tmp_path, f"a{s}", s, v) for s, v in zip((0, 1, 2), (10.0, 11.0, 12.0))]
    runs += [_fake_run(tmp_path, f"b{s}", s, v, kl=2.0) for s, v in zip((0, 1, 2), (10.5, 11.5, 12.5))]
    runs += [_fake_run(tmp_path, "c0", 0, 30.0, kl=3.0)]
    html = build_report(runs)
    assert 'id="seeds"' in html
    assert "model.kl_weight=1.0" in html and "11 ± 2.484" in html  # t_{0.975,2} * 1 / sqrt(3)
    assert "within noise" in html and "1 seed" in html
