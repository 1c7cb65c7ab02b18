"""Metrics: invariants, known values on constructed inputs, an independent Fréchet distance, the
reference cache, evaluation during training and `genlab eval` end to end."""

import json
import math
import socket

import numpy as np
import pytest
import torch
from conftest import only_run

from genlab.config import DataConfig
from genlab.data import load_dataset, to_model_range, to_uint8
from genlab.data.subsets import describe_subset
from genlab.errors import GenlabError
from genlab.metrics import evaluate as evaluate_module
from genlab.metrics import fidelity, image, swd
from genlab.metrics.evaluate import EvalSettings, Evaluator, parse_metrics
from genlab.metrics.features import EXTRACTORS, POOL, extract
from genlab.resolve import load_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(source="digits", size=32, channels=1, val_fraction=0.1)
    return cfg, load_dataset(cfg)


def standin_features(images, batch_size=64):
    return extract(EXTRACTORS.get("random-standin")(None), images, CPU, batch_size)[POOL]


def fid(a, b):
    return fidelity.frechet_distance(fidelity.statistics(a), fidelity.statistics(b))


def reference_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Independent float64 FID: Tr((S1^1/2 S2 S1^1/2)^1/2) through symmetric eigendecompositions."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    w2 = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(w2, 0, None)).sum())


# ------------------------------------------------------------------------------------------ Fréchet


@pytest.mark.parametrize("n, d", [(600, 16), (40, 64), (10, 32)])  # well-conditioned, then fewer samples than dims
def test_frechet_distance_matches_an_independent_float64_computation(n, d):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    y = rng.normal(loc=0.2, size=(n + 7, d))
    got = fid(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(got, float) and math.isfinite(got)
    assert got == pytest.approx(reference_frechet(x, y), rel=1e-6, abs=1e-6)


def test_fid_of_a_set_with_itself_is_zero_symmetric_and_batch_size_independent(digits):
    _, data = digits
    a, b = data.train[:600], data.train[600:1200]
    fa, fb = standin_features(a), standin_features(b)
    assert abs(fid(fa, fa)) < 1e-9
    assert fid(fa, fb) == pytest.approx(fid(fb, fa), rel=1e-9)
    assert fid(fa, fb) > 0
    fa_small_batches = standin_features(a, batch_size=7)
    torch.testing.assert_close(fa_small_batches, fa, rtol=1e-5, atol=1e-7)
    assert fid(fa_small_batches, fb) == pytest.approx(fid(fa, fb), rel=1e-4)


def test_fid_grows_with_a_distribution_shift(digits):
    _, data = digits
    real = standin_features(data.train[:500])
    same = standin_features(data.train[500:1000])
    darker = standin_features((data.train[500:1000].float() * 0.5).to(torch.uint8))
    assert fid(same, real) < fid(darker, real)


def test_kid_is_and_precision_recall_on_constructed_features():
    rng = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=rng, dtype=torch.float64)
    b = torch.randn(500, 8, generator=rng, dtype=torch.float64)
    same = fidelity.kid(a, b)
    assert same["kid_subset_size"] == 500  # fewer than 1,000 samples: subsets shrink to what there is
    assert abs(same["kid"]) < 0.05
    assert fidelity.kid(a, b + 2)["kid"] > 0.5
    assert fidelity.inception_score(torch.zeros(100, 10))["is"] == pytest.approx(1.0)
    confident = torch.eye(10).repeat(500, 1) * 50  # ten classes, equally often, each predicted surely
    assert fidelity.inception_score(confident)["is"] == pytest.approx(10.0, rel=0.02)  # 10 shuffled splits of 500
    one_class = torch.zeros(1000, 10)
    one_class[:, 3] = 50
    assert fidelity.inception_score(one_class)["is"] == pytest.approx(1.0, abs=1e-6)
    same = fidelity.precision_recall(a[:500], a[:500])
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = fidelity.precision_recall(a[:500] + 100, a[:500])
    assert far["precision"] == 0.0 and far["recall"] == 0.0


# ------------------------------------------------------------------------------------------ pixel metrics


def test_swd_is_zero_for_identical_sets_and_orders_distortions(digits):
    from genlab.data.augment import random_gaussian_blur

    _, data = digits
    real = data.train[:128]
    assert swd.sliced_wasserstein_distance(real, real)["swd"] == 0.0
    other = data.train[128:256]
    blurred = to_uint8(random_gaussian_blur(to_model_range(other), max_sigma=1.5, p=1.0, min_sigma=1.5))
    noise = torch.randint(0, 256, other.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    d_other = swd.sliced_wasserstein_distance(other, real)["swd"]
    d_blur = swd.sliced_wasserstein_distance(blurred, real)["swd"]
    d_noise = swd.sliced_wasserstein_distance(noise, real)["swd"]
    assert 0 < d_other < d_blur < d_noise
    assert list(swd.sliced_wasserstein_distance(other, real)["swd_levels"]) == ["32px", "16px"]


def test_sliced_wasserstein_of_a_shifted_set_has_its_known_value():
    """Shifting a set by c along one axis moves every projection onto a unit direction theta by
    c * theta_1, so SWD = c * E|theta_1| = c * Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) for d dimensions."""
    d, c = 49, 0.7
    a = torch.randn(1000, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = a.clone()
    b[:, 0] += c
    expected = c * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    got = swd._sliced_wasserstein(a, b, directions=5000, generator=torch.Generator().manual_seed(1))
    assert got == pytest.approx(expected, rel=0.04)  # 5,000 random directions
    assert swd._sliced_wasserstein(a, a.clone(), 100, torch.Generator().manual_seed(1)) == 0.0


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 64, 64)
    levels = swd.laplacian_pyramid(x)
    assert [l.shape[-1] for l in levels] == [64, 32, 16]
    rebuilt = levels[-1]
    for level in reversed(levels[:-1]):
        rebuilt = swd._up(rebuilt) + level
    torch.testing.assert_close(rebuilt, x, atol=1e-5, rtol=0)


def test_reconstruction_metrics_on_known_values():
    x = torch.full((3, 1, 32, 32), 100, dtype=torch.uint8)
    y = x.clone()
    y[1] += 51  # a difference of 0.2 in [0, 1] units
    out = image.reconstruction_metrics(x, y)
    torch.testing.assert_close(out["mse"], torch.tensor([0.0, 0.04, 0.0]))
    assert out["psnr"][1].item() == pytest.approx(10 * math.log10(1 / 0.04), rel=1e-4)
    assert out["ssim"][0].item() == pytest.approx(1.0) and out["ssim"][1].item() < 1.0
    noise = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assert image.reconstruction_metrics(noise, noise.flip(0))["ssim"].max() < 0.1


def test_pairwise_ms_ssim_detects_collapse():
    collapsed = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(2),
                              dtype=torch.uint8).repeat(20, 1, 1, 1)
    assert image.pairwise_ms_ssim(collapsed, pairs=50) == pytest.approx(1.0, abs=1e-4)
    diverse = torch.randint(0, 256, (20, 3, 64, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    assert image.pairwise_ms_ssim(diverse, pairs=50) < 0.2
    assert image.ms_ssim_setup(32) == (7, pytest.approx((0.0448 / 0.6305, 0.2856 / 0.6305, 0.3001 / 0.6305)))


def test_nearest_neighbour_finds_a_copy(digits):
    _, data = digits
    samples = torch.stack([data.train[5], data.train[700]])
    index, dist = image.nearest_neighbours(samples, data.train)
    assert index.tolist() == [5, 700] and dist.abs().max() < 1e-6


# ------------------------------------------------------------------------------------------ pipeline


def test_reference_features_are_cached_by_their_key(digits, monkeypatch):
    cfg, data = digits
    ev = Evaluator(data, cfg, EvalSettings(extractor="random-standin"), CPU)
    first = ev.reference_features("train")
    monkeypatch.setattr(evaluate_module, "extract", lambda *a, **k: pytest.fail("cache missed"))
    second = Evaluator(data, cfg, EvalSettings(extractor="random-standin"), CPU).reference_features("train")
    torch.testing.assert_close(first[POOL], second[POOL])
    monkeypatch.undo()
    calls = []
    real_extract = evaluate_module.extract
    monkeypatch.setattr(evaluate_module, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k))
    Evaluator(data, cfg, EvalSettings(extractor="random-standin"), CPU).reference_features("val")  # another split
    other = DataConfig(source="digits", size=16, channels=1, val_fraction=0.1)  # another size: another data cache
    Evaluator(load_dataset(other), other, EvalSettings(extractor="random-standin"), CPU).reference_features("train")
    assert len(calls) == 2
    ev = Evaluator(data, cfg, EvalSettings(extractor="random-standin"), CPU)
    key = ev.feature_key("train", 100)
    assert {"data", "split", "count", "flip", "extractor"} <= set(key)
    assert key["data"] == data.cache_dir.name and "32px-1ch" in key["data"]


def test_every_number_carries_its_protocol(digits):
    cfg, data = digits
    ev = Evaluator(data, cfg, EvalSettings(extractor="random-standin", n=200, pairs=50, nn_samples=50), CPU)
    fake = data.val[:150]
    results = ev.score_images(fake, ["fid", "kid", "is", "pr", "swd", "msssim", "nn"], "150 validation images")
    assert set(results) == {"fid", "kid", "is", "precision", "recall", "swd", "msssim", "nn"}
    for name, r in results.items():
        assert math.isfinite(r["value"]), name
        assert "150 validation images" in r["protocol"]
    for name in ("fid", "kid", "precision"):
        p = results[name]["protocol"]
        assert "digits test split" in p and "32x32 bicubic" in p and "no flip" in p and f"{len(data.test)} images" in p
        assert "RANDOM STAND-IN" in p and "largest centred square" in p


def test_bits_per_dim_of_an_exact_uniform_model_is_eight(digits):
    """A model with an exact likelihood (as a flow would have): uniform on [-1, 1]^D -> 8 bits."""
    from genlab.methods.abilities import Likelihood
    from genlab.methods.base import Method

    class Uniform(Method, Likelihood):
        name = "uniform"

        def log_likelihood(self, x):
            assert x.min() >= -1 and x.max() < 1 and not torch.equal(x, x.round())  # dequantised, in the model's range
            return torch.full((len(x),), -x[0].numel() * math.log(2.0)), "exact"

    cfg, data = digits
    ev = Evaluator(data, cfg, EvalSettings(n=100), CPU)
    out = ev.bits_per_dim(Uniform(None, (1, 32, 32), CPU))
    assert out["bpd"]["value"] == pytest.approx(8.0, abs=1e-6)  # float32 log-densities
    assert "exact" in out["bpd"]["protocol"] and "test split" in out["bpd"]["protocol"]
    assert describe_subset(len(data.test), 100, 0, "test") in out["bpd"]["protocol"]


def test_vae_bits_per_dim_bound_tightens_with_more_samples(digits):
    from genlab.methods import METHODS

    cfg, data = digits
    torch.manual_seed(0)
    vae = METHODS.get("vae")(load_config("quickstart").model, (1, 32, 32), CPU)
    for step in range(20):
        vae.run_step(data.train[:64].float() / 127.5 - 1, step)
    vae.cfg.iw_samples = 1
    one = Evaluator(data, cfg, EvalSettings(n=64), CPU).bits_per_dim(vae)["bpd"]
    vae.cfg.iw_samples = 32
    many = Evaluator(data, cfg, EvalSettings(n=64), CPU).bits_per_dim(vae)["bpd"]
    assert math.isfinite(one["value"]) and 0 < many["value"] <= one["value"] + 1e-3
    assert "k=1" in one["protocol"] and "k=32" in many["protocol"] and f"ML fit on {len(data.train)} training images" in many["protocol"]


def test_ppl_runs_through_torch_fidelity_and_needs_lpips_weights(monkeypatch, tmp_path):
    from genlab.methods import METHODS
    from genlab.metrics import ppl

    torch.manual_seed(0)
    gan = METHODS.get("dcgan")(load_config("tiny-dcgan").model, (1, 16, 16), CPU)
    out = ppl.perceptual_path_length(gan, EvalSettings(n=32, batch_size=16), CPU, "genlab-random-standin")
    assert out["ppl"]["value"] > 0 and "STAND-IN" in out["ppl"]["protocol"]
    # At epsilon 1e-4 the two images of a pair differ by far less than one uint8 level: compared as
    # uint8 most distances were exactly 0; compared as float images, none is.
    assert out["ppl"]["zero_distances"] == 0.0 and "float images" in out["ppl"]["protocol"]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(GenlabError, match="weights-vgg16-lpips.pth"):
        ppl.perceptual_path_length(gan, EvalSettings(n=32), CPU)


def test_missing_inception_weights_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(GenlabError) as e:
        EXTRACTORS.get("inception-v3-compat")(None)
    assert "weights-inception-2015-12-05-6726825d.pth" in str(e.value) and "sha256 starting 6726825d" in str(e.value)
    assert str(tmp_path / "checkpoints") in str(e.value) and "--inception-weights" in str(e.value)
    with pytest.raises(GenlabError, match="no such file"):
        EXTRACTORS.get("inception-v3-compat")(str(tmp_path / "none.pth"))


def test_metric_names():
    assert parse_metrics("fid, SSIM,psnr,precision") == ["fid", "recon", "pr"]
    with pytest.raises(GenlabError, match="unknown metric 'fdi'; did you mean fid"):
        parse_metrics("fdi")


# ------------------------------------------------------------------------------------------ training


def test_evaluation_during_training_drives_best_checkpoint_and_keeps_resume_exact(tmp_path):
    from genlab.api import resume as resume_training
    from genlab.api import train as start_training
    from genlab.train.checkpoint import load_checkpoint

    over = ["eval.every=1", "eval.metrics=[swd, bpd]", "eval.n=48", "train.monitor=swd", "train.epochs=3"]
    straight = start_training(load_config("tiny-vae", over), tmp_path, CPU, quiet=True)
    records = [json.loads(l) for l in (straight / "stats.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 3 and all("eval_swd" in r and "eval_bpd" in r and "eval_seconds" in r for r in epochs)
    history = [r for r in records if r["kind"] == "eval"]  # every evaluation, with its protocols
    assert [(r["epoch"], r["step"]) for r in history] == [(r["epoch"], r["step"]) for r in epochs]
    assert all(r["results"]["swd"]["value"] == e["eval_swd"] and "epoch" in r["results"]["swd"]["protocol"]
               for r, e in zip(history, epochs))
    best = min(epochs, key=lambda r: r["eval_swd"])
    assert load_checkpoint(straight / "checkpoints" / "best.pt")["progress"]["epoch"] == best["epoch"]
    assert json.loads((straight / "metrics.json").read_text())["train"]["monitor"] == "swd"
    split = start_training(load_config("tiny-vae", over[:-1] + ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.epochs=3"], CPU, quiet=True)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["state"]["networks"]
    b = load_checkpoint(split / "checkpoints" / "last.pt")["state"]["networks"]
    for net in a:
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), k


def test_monitor_needs_the_metric_evaluated():
    with pytest.raises(GenlabError, match="train.monitor=fid needs eval.every > 0"):
        load_config("tiny-vae", ["train.monitor=fid"])


# ------------------------------------------------------------------------------------------ CLI


def test_eval_cli_on_a_run(cli, tmp_path):
    runs = tmp_path / "runs"
    assert cli("train", "tiny-vae", "--runs-dir", runs, "--quiet")[0] == 0
    run = only_run(runs)
    code, out, err = cli("eval", run, "--metrics", "swd,msssim,nn,recon,bpd", "--n", 64, "--iw-samples", 4, "--json")
    assert code == 0, err
    results = json.loads(out)  # stdout holds only JSON
    assert set(results) == {"swd", "msssim", "nn", "mse", "psnr", "ssim", "bpd"}
    assert {r["split"] for r in results.values()} == {"test"}  # the report split, by default
    steps = json.loads((run / "metrics.json").read_text())["train"]["steps"]
    assert all(r["protocol"] and r["checkpoint"] == "last-inference.pt" and r["step"] == steps for r in results.values())
    assert "k=4" in results["bpd"]["protocol"] and "raw weights" in results["swd"]["protocol"]
    stored = json.loads((run / "metrics.json").read_text())
    assert set(stored["eval"]) == set(results) and "train" in stored
    code, out, _ = cli("eval", run, "--metrics", "fid,kid", "--extractor", "random-standin", "--n", 40)
    assert code == 0 and out.startswith("fid") and "RANDOM STAND-IN" in out
    # The history: both evaluations appended to stats.jsonl with their step and protocols, while
    # metrics.json keeps the latest value per metric.
    history = [r for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert [sorted(r["results"]) for r in history] == [sorted(results), ["fid", "kid"]]
    assert all(r["step"] == 10 and r["source"] == "genlab eval" for r in history)
    assert history[0]["results"]["swd"] == results["swd"]


def test_eval_cli_bad_input(cli, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert cli("train", "tiny-dcgan", "train.epochs=1", "--runs-dir", runs, "--quiet")[0] == 0
    run = only_run(runs)
    code, _, err = cli("eval", run, "--metrics", "recon", "--n", 16)
    assert code == 2 and "recon needs a learned encoder, and method 'gan' has none" in err and "Traceback" not in err
    code, _, err = cli("eval", run, "--metrics", "fidd")
    assert code == 2 and "unknown metric 'fidd'" in err
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    code, _, err = cli("eval", run, "--metrics", "fid", "--n", 16)
    assert code == 2 and "weights-inception-2015-12-05-6726825d.pth" in err
    code, _, err = cli("eval", tmp_path / "nowhere")
    assert code == 2 and "no such run directory" in err


def test_eval_cli_scores_files_against_a_data_set(cli, tmp_path, digits):
    _, data = digits
    np.savez(tmp_path / "fake.npz", images=data.val.numpy())
    code, out, err = cli("eval", "--real", "digits", "size=32", "--fake", tmp_path / "fake.npz",
                         "--metrics", "swd,nn,fid", "--extractor", "random-standin", "--json")
    assert code == 0, err
    results = json.loads(out)
    assert results["nn"]["value"] > 0 and "digits test split" in results["fid"]["protocol"]  # the report split
    assert "digits train images" in results["nn"]["protocol"]  # memorisation: against what was trained on
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 32, 32), dtype=np.float32))
    code, _, err = cli("eval", "--real", "digits", "--fake", tmp_path / "bad.npz", "--metrics", "swd")
    assert code == 2 and "must be uint8 (N, C, H, W)" in err
    code, _, err = cli("eval", "--real", "digits", "--fake", tmp_path / "fake.npz", "--metrics", "bpd")
    assert code == 2 and "need a model" in err
