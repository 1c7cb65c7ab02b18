"""The deepfake-detector benchmark: scores against scikit-learn, a detector that separates what it
should and cannot separate what it should not, seeded fakes, the matrix from its pairs, the
adversarial loop's frozen detector, resume, the CLI and its refusals."""

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.data import build_dataset
from genlab.detect import bench
from genlab.detect.adversary import FrozenDetector, load_detector
from genlab.detect.evaluate import LAUNDERING, blur, jpeg, resize_half
from genlab.detect.fakes import EVAL_SEED, VAL_SEED, load_fake_source
from genlab.detect.scores import balanced_accuracy, roc_auc, tpr_at_fpr
from genlab.errors import GenlabError
from genlab.methods import build_method
from genlab.resolve import load_config
from genlab.train.checkpoint import load_checkpoint

CPU = torch.device("cpu")
# A detector on the embedded digits at the tiny generators' 16x16 grayscale, seconds on a CPU.
DIGITS = ["data.limit=400", "data.val_fraction=0.25", "data.test_fraction=0.25", "model.fake_n=256", "model.val_fake_n=64", "model.width=8",
          "train.epochs=2", "train.batch_size=32", "train.log_every=4", "train.patience=null"]


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """A tiny DCGAN and a tiny VAE run on the digits (16x16, one channel)."""
    root = tmp_path_factory.mktemp("generators")
    gan = start_training(load_config("tiny-dcgan"), root, CPU, quiet=True)
    vae = start_training(load_config("tiny-vae"), root, CPU, quiet=True)
    return {"gan": gan, "vae": vae}


def _digits_split(tmp_path, **fractions):
    cfg = load_config("tiny-vae", [f"data.{k}={v}" for k, v in fractions.items()] + ["data.limit=null"])
    return build_dataset(cfg.data)


def _npz(path, images, first_seed=0):
    np.savez(path, images=images.numpy(), seeds=np.arange(first_seed, first_seed + len(images)))
    return path


# -- scores -----------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.lists(st.integers(0, 6), min_size=1, max_size=40))
def test_auc_and_tpr_match_scikit_learn(real, fake):
    r, f = torch.tensor(real, dtype=torch.float64) / 6, torch.tensor(fake, dtype=torch.float64) / 6
    labels, scores = np.r_[np.zeros(len(real)), np.ones(len(fake))], np.r_[r.numpy(), f.numpy()]
    assert roc_auc(r, f) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    for limit in (0.0, 0.01, 0.2, 0.5):
        assert tpr_at_fpr(r, f, limit) == pytest.approx(tprs[fprs <= limit].max(), abs=1e-12)


def test_balanced_accuracy_weighs_reals_and_fakes_alike():
    real, fake = torch.tensor([0.1, 0.2, 0.9, 0.3]), torch.tensor([0.8])
    assert balanced_accuracy(real, fake) == pytest.approx((3 / 4 + 1) / 2)


def test_laundering_keeps_shape_and_changes_detail():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    for name, transform in LAUNDERING.items():
        out = transform(images)
        assert out.shape == images.shape and out.dtype == torch.uint8, name
        assert not torch.equal(out, images), name  # noise does not survive any of them
    flat = torch.full((2, 1, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(resize_half(flat), flat) and torch.equal(blur(flat), flat)
    assert (jpeg(flat).int() - 77).abs().max() <= 1


# -- fakes ------------------------------------------------------------------------------------------
def test_fakes_are_the_same_for_the_same_seeds_whatever_the_batch_size(generators):
    for run in generators.values():
        source = load_fake_source(run, CPU)
        whole = source.draw(20, 5, batch_size=64)
        assert torch.equal(whole, source.draw(20, 5, batch_size=3))
        assert torch.equal(whole[10:], source.draw(10, 15, batch_size=7))
        assert not torch.equal(whole[:10], source.draw(10, 105))


def test_an_npz_gives_the_images_of_the_seeds_asked_for(tmp_path):
    images = torch.arange(6 * 16, dtype=torch.uint8).reshape(6, 1, 4, 4)
    source = load_fake_source(_npz(tmp_path / "f.npz", images, first_seed=10), CPU)
    assert torch.equal(source.draw(3, 12), images[2:5])
    with pytest.raises(GenlabError, match=r"holds the images of seeds 10\.\.15, but seeds 14\.\.17 are needed"):
        source.draw(4, 14)


# -- the detector -----------------------------------------------------------------------------------
def test_detector_separates_constant_fakes_and_not_real_from_real(tmp_path):
    data = _digits_split(tmp_path, val_fraction=0.2, test_fraction=0.4)
    assert len(data.test) >= 600 and len(data.val) >= 300
    gray = torch.full((600, 1, 16, 16), 128, dtype=torch.uint8)
    constant = tmp_path / "constant.npz"  # the training (seeds 0..) and validation (VAL_SEED..) fakes
    np.savez(constant, images=gray[:350].numpy(), seeds=np.r_[np.arange(300), np.arange(VAL_SEED, VAL_SEED + 50)])
    const_eval = _npz(tmp_path / "constant-eval.npz", gray[:250], EVAL_SEED)
    over = ["data.source=digits", "data.limit=null", "data.val_fraction=0.2", "data.test_fraction=0.4",
            "model.fake_n=300", "model.val_fake_n=50", "model.width=8", "train.epochs=3", "train.batch_size=32",
            "train.patience=null"]
    # Real-vs-real: the "fakes" are real digits of the test split, which the detector never sees as
    # real; training fakes (seeds 0..) and scored fakes (fresh seeds) are different images.
    test = data.test
    real_fakes = tmp_path / "real.npz"
    np.savez(real_fakes, images=torch.cat([test[:300], test[300:350], test[350:600]]).numpy(),
             seeds=np.r_[np.arange(300), np.arange(VAL_SEED, VAL_SEED + 50), np.arange(EVAL_SEED, EVAL_SEED + 250)])
    constant_run = bench.train_detector("digits", [constant], CPU, over, runs_dir=tmp_path / "runs", quiet=True)
    report = bench.evaluate_detector_run(constant_run, [const_eval], CPU, n=250, split="val", seed=EVAL_SEED)
    assert report["results"]["constant-eval"]["auc"] > 0.99
    real_run = bench.train_detector("digits", [real_fakes], CPU, over, runs_dir=tmp_path / "runs", quiet=True)
    report = bench.evaluate_detector_run(real_run, [real_fakes], CPU, n=250, split="val", seed=EVAL_SEED, launder=False)
    # Under "no difference" the AUC of 250 vs 250 scores has standard deviation
    # sqrt((n1 + n2 + 1) / (12 n1 n2)) = 0.026 (Hanley & McNeil 1982); 0.1 is about 4 of them.
    assert abs(report["results"]["real"]["auc"] - 0.5) < 0.1


def test_detector_resume_is_bit_exact(tmp_path, generators):
    cfg = bench.detector_config("digits", [str(generators["gan"])], DIGITS)
    straight = start_training(cfg, tmp_path, CPU, quiet=True)
    split = start_training(bench.detector_config("digits", [str(generators["gan"])], DIGITS + ["train.max_steps=3"]),
                           tmp_path, CPU, quiet=True)
    resume_training(split, ["train.max_steps=null"], CPU, quiet=True)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["state"]["networks"]["classifier"]
    b = load_checkpoint(split / "checkpoints" / "last.pt")["state"]["networks"]["classifier"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_matrix_is_made_of_the_pair_evaluations_it_claims(tmp_path, generators):
    fakes = [str(generators["gan"]), str(generators["vae"])]
    result = bench.detection_matrix("digits", fakes, tmp_path / "m", CPU, DIGITS, n=60)
    labels = result["rows_trained_on"]
    assert labels == ["tiny-dcgan-digits", "tiny-vae-digits"] and (tmp_path / "m" / "matrix.png").stat().st_size > 0
    assert json.loads((tmp_path / "m" / "matrix.json").read_text())["auc"] == result["auc"]
    for i, row in enumerate(labels):
        alone = bench.evaluate_detector_run(result["detectors"][row], fakes, CPU, "digits", overrides=DIGITS, n=60,
                                            launder=False)
        for j, col in enumerate(labels):
            assert result["auc"][i][j] == alone["results"][col]["auc"] == result["pairs"][f"{row} -> {col}"]["auc"]
            assert result["tpr_at_1pct_fpr"][i][j] == alone["results"][col]["tpr_at_1pct_fpr"]
        assert result["robustness_auc"][row]["clean"] == result["auc"][i][i]
        assert set(result["robustness_auc"][row]) == {"clean", *LAUNDERING}
    # the matrix is a section of genlab report
    from genlab.report.build import build_report

    page = build_report([tmp_path / "m"])
    assert "Detector matrix m" in page and f"{result['auc'][0][1]:.4g}" in page
    # a re-run keeps the finished detectors
    stamp = (tmp_path / "m" / "detectors" / labels[0] / "checkpoints" / "last.pt").stat().st_mtime_ns
    bench.detection_matrix("digits", fakes, tmp_path / "m", CPU, DIGITS, n=60)
    assert (tmp_path / "m" / "detectors" / labels[0] / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


# -- the adversarial loop ---------------------------------------------------------------------------
def _checksum(module):
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in module.parameters())).hexdigest()


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_a_generator_step_against_a_detector_moves_the_generator_and_not_the_detector(tmp_path, generators, family):
    detector_run = bench.train_detector("digits", [str(generators[family])], CPU, DIGITS, runs_dir=tmp_path, quiet=True)
    cfg = bench.fine_tune_config(generators[family], detector_run, 0.5, 1)
    assert cfg.adversary.detector_run == str(detector_run) and cfg.init.from_run == str(generators[family])
    method = build_method(cfg, (1, 16, 16), CPU)
    detector, _, _ = load_detector(detector_run, CPU)
    method.adversary = FrozenDetector(detector, 0.5, str(detector_run))
    before_detector = _checksum(detector.classifier)
    trained = "generator" if family == "gan" else "decoder"
    before_generator = _checksum(getattr(method, trained))
    x = torch.rand(16, 1, 16, 16) * 2 - 1
    stats = method.run_step(x, 0)
    assert _checksum(detector.classifier) == before_detector
    assert all(p.grad is None for p in detector.classifier.parameters())
    assert _checksum(getattr(method, trained)) != before_generator
    key = "loss_adversary" if family == "gan" else "adversary"
    assert stats[key].item() > 0


def test_adversary_is_refused_for_a_family_that_cannot_take_it():
    with pytest.raises(GenlabError, match="method 'realnvp' cannot be fine-tuned against a detector"):
        load_config("tiny-realnvp", ["adversary.detector_run=somewhere"])


# -- the CLI ----------------------------------------------------------------------------------------
def test_detect_train_eval_loop_from_the_cli(tmp_path, generators, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gan = generators["gan"]
    code, out, err = cli("detect", "train", "--real", "digits", "--fake", gan, *DIGITS, "--run-dir", "det", "--quiet")
    assert code == 0, err
    assert "detector run det" in out and (tmp_path / "det" / "checkpoints" / "best.pt").is_file()
    code, out, err = cli("detect", "eval", "det", "--fake", gan, "--n", "50", "--out", "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    row = report["results"]["tiny-dcgan-digits"]
    assert row["n_real"] == row["n_fake"] == 50 and 0 <= row["auc"] <= 1 and set(row["laundered"]) == set(LAUNDERING)
    assert "tiny-dcgan-digits" in out and "50 random of" in out and " test (seed 1000000) images of digits" in out
    assert "re-encoded as JPEG quality 75" in out
    code, out, err = cli("detect", "loop", "--real", "digits", "--fake", gan, "--rounds", "1", "--out", "loop",
                         "--swd-n", "64", "--n", "50", *DIGITS, "--quiet")
    assert code == 0, err
    record = json.loads((tmp_path / "loop" / "loop.json").read_text())
    (entry,) = record["rounds"]
    assert {"auc_before", "auc_after", "swd"} <= set(entry) and record["swd_start"] > 0
    stats = [json.loads(l) for l in (tmp_path / "loop" / "round-1" / "generator" / "stats.jsonl").read_text().splitlines()]
    assert any("loss_adversary" in s for s in stats if s.get("kind") == "train")
    tuned = load_checkpoint(tmp_path / "loop" / "round-1" / "generator" / "checkpoints" / "last.pt")
    assert tuned["config"]["adversary"]["detector_run"] == entry["detector"]


def test_detect_matrix_from_the_cli(tmp_path, generators, cli):
    code, out, err = cli("detect", "matrix", "--real", "digits", "--fake", generators["gan"], generators["vae"],
                         "--out", tmp_path / "mx", "--n", "40", *DIGITS, "--quiet")
    assert code == 0, err
    assert "tiny-dcgan-digits" in out and (tmp_path / "mx" / "matrix.json").is_file()


def test_detect_refuses_bad_input_with_one_line(tmp_path, generators, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gan = generators["gan"]
    code, _, err = cli("detect", "train", "--real", "digits", "--fake", gan, *DIGITS, "data.size=32")
    assert code == 2 and "makes 1x16x16 images" in err and "are 1x32x32" in err and not (tmp_path / "runs").exists()
    assert bench.train_detector("digits", [str(gan)], CPU, DIGITS, run_dir=tmp_path / "det", quiet=True)
    code, _, err = cli("detect", "train", "--real", "digits", "--fake", tmp_path / "det", *DIGITS)
    assert code == 2 and "is a 'detector' run, which generates no images" in err
    code, _, err = cli("detect", "eval", gan, "--fake", gan)
    assert code == 2 and "is a 'gan' run; a detector run" in err
    code, _, err = cli("detect", "eval", tmp_path / "det", "--fake", gan, "--n", "5000")
    assert code == 2 and re.search(r"--n 5000: the test split of digits has \d+ images; ask for at most", err)
    np.savez(tmp_path / "float.npz", images=np.zeros((4, 1, 16, 16), np.float32))
    np.savez(tmp_path / "flat.npz", images=np.zeros((4, 16, 16), np.uint8))
    for bad, words in (("float.npz", "must be uint8 (N, C, H, W)"), ("flat.npz", "must be (N, C, H, W)")):
        code, _, err = cli("detect", "train", "--real", "digits", "--fake", tmp_path / bad, *DIGITS)
        assert code == 2 and words in err, err
        assert len([line for line in err.splitlines() if line.startswith("genlab: error")]) == 1
    code, _, err = cli("detect", "train", "--real", "digits", "--fake", tmp_path / "missing", *DIGITS)
    assert code == 2 and "no such run directory or .npz file" in err
    code, _, err = cli("detect", "eval", tmp_path / "det", "--fake", gan, "--real", "digits", "data.size=32")
    assert code == 2 and "takes images of shape [1, 16, 16]" in err


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_each_detector_architecture_gives_one_logit_per_image_and_learns(arch, generators):
    from genlab.models import DETECTOR_ARCHS

    with torch.no_grad():
        net = DETECTOR_ARCHS.get(arch)((3, 32, 32), 8).eval()
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2,)
    cfg = bench.detector_config("digits", [str(generators["gan"])], DIGITS + [f"model.arch={arch}"])
    method = build_method(cfg, (1, 16, 16), CPU)
    method.draw_pools()
    torch.manual_seed(0)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    losses = [method.run_step(x, step)["loss"].item() for step in range(4)]
    assert losses[-1] < losses[0]


# -- format parity ---------------------------------------------------------------------------------
def test_every_detector_input_real_or_fake_passes_through_one_encoding(tmp_path, generators):
    cfg = bench.detector_config("digits", [str(generators["gan"])], DIGITS)
    assert cfg.model.encoding == "jpeg75"
    detector = build_method(cfg, (1, 16, 16), CPU)
    images = torch.randint(0, 256, (12, 1, 16, 16), dtype=torch.uint8)
    assert torch.equal(detector.encode_input(images), jpeg(images, 75))
    # training: the pooled fakes and each real batch
    detector.draw_pools()
    raw = load_fake_source(generators["gan"], CPU).draw(cfg.model.fake_n, cfg.model.fake_seed)
    assert torch.equal(detector.train_fakes, jpeg(raw, 75))
    x = images.float() / 127.5 - 1
    assert torch.equal(detector._encoded_batch(x), jpeg(images, 75).float() / 127.5 - 1)
    # evaluation: scores of raw images are the scores of their encoded copies without an encoding
    plain = build_method(bench.detector_config("digits", [str(generators["gan"])], DIGITS + ["model.encoding=none"]),
                         (1, 16, 16), CPU)
    plain.classifier.load_state_dict(detector.classifier.state_dict())
    from genlab.detect.evaluate import detector_scores

    assert torch.equal(detector_scores(detector, images), detector_scores(plain, jpeg(images, 75)))
    assert not torch.equal(detector_scores(plain, images), detector_scores(detector, images))
    with pytest.raises(GenlabError, match="'model.encoding': 'png' is not an encoding"):
        bench.detector_config("digits", [str(generators["gan"])], DIGITS + ["model.encoding=png"])


def test_control_fakes_are_the_real_images_re_encoded_seed_for_seed(tmp_path):
    data_cfg = load_config("detector", ["data.source=digits", "data.limit=400", "data.val_fraction=0.25",
                                        "data.test_fraction=0.25", "data.size=16", "data.channels=1"]).data
    info = bench.write_control_fakes(data_cfg, tmp_path / "c.npz", n=40, quality=50)
    source = load_fake_source(tmp_path / "c.npz", CPU)
    data = build_dataset(data_cfg)
    assert info["images"] == len(data.train) + len(data.val) + 40
    assert torch.equal(source.draw(len(data.train), 0), jpeg(data.train, 50))
    assert torch.equal(source.draw(5, VAL_SEED), jpeg(data.val[:5], 50))
    evaluated, how = bench.held_out_real(data, None, 40, EVAL_SEED)
    assert torch.equal(source.draw(40, EVAL_SEED), jpeg(evaluated, 50)) and "40 random of" in how


def test_auc_bootstrap_interval_holds_chance_for_one_distribution_and_not_for_two():
    from genlab.detect.scores import auc_interval

    g = torch.Generator().manual_seed(0)
    same = auc_interval(torch.rand(400, generator=g), torch.rand(400, generator=g), resamples=300)
    apart = auc_interval(torch.rand(400, generator=g), torch.rand(400, generator=g) + 0.5, resamples=300)
    assert same[0] <= 0.5 <= same[1] and same[1] - same[0] < 0.12
    assert apart[0] > 0.8
