"""The training loop: reproducibility, resume, early stopping, run directory contents."""

import json
from dataclasses import dataclass

import pytest
import torch

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.methods import METHODS
from genlab.methods.base import Method
from genlab.resolve import load_config
from genlab.train.checkpoint import load_checkpoint

CPU = torch.device("cpu")


def networks(run_dir, which="last"):
    return load_checkpoint(run_dir / "checkpoints" / f"{which}.pt")["state"]["networks"]


def assert_same_networks(a, b):
    assert a.keys() == b.keys()
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"


@pytest.mark.parametrize("preset", ["tiny-vae", "tiny-dcgan"])
def test_same_seed_same_numbers(tmp_path, preset):
    cfg = load_config(preset)
    a = start_training(cfg, tmp_path, CPU, quiet=True)
    b = start_training(cfg, tmp_path, CPU, quiet=True)
    assert a != b  # a second run gets its own directory
    assert_same_networks(networks(a), networks(b))
    stats = lambda d: [{k: v for k, v in json.loads(l).items() if k not in ("time_s", "images_per_s")}
                       for l in (d / "stats.jsonl").read_text().splitlines()]
    assert stats(a) == stats(b)
    c = start_training(load_config(preset, ["train.seed=1"]), tmp_path, CPU, quiet=True)
    with pytest.raises(AssertionError):
        assert_same_networks(networks(a), networks(c))


@pytest.mark.parametrize("preset", ["tiny-vae", "tiny-dcgan"])
def test_resume_at_epoch_end_equals_an_uninterrupted_run(tmp_path, preset):
    straight = start_training(load_config(preset, ["train.epochs=3"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config(preset, ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.epochs=3"], CPU, quiet=True)
    assert_same_networks(networks(straight), networks(split))
    ckpt = load_checkpoint(split / "checkpoints" / "last.pt")
    steps_per_epoch = load_checkpoint(straight / "checkpoints" / "last.pt")["progress"]["step"] // 3
    assert ckpt["progress"]["epoch"] == 3 and ckpt["progress"]["step"] == 3 * steps_per_epoch
    assert ckpt["config"]["train"]["epochs"] == 3


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    straight = start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    split = start_training(load_config("tiny-vae", ["train.max_steps=3"]), tmp_path, CPU, quiet=True)
    progress = load_checkpoint(split / "checkpoints" / "last.pt")["progress"]
    assert (progress["step"], progress["epoch"], progress["batch"]) == (3, 0, 3)
    resume_training(split, ["train.max_steps=null"], CPU, quiet=True)
    assert_same_networks(networks(straight), networks(split))
    # Optimizer moments continue too, not only the weights.
    opt = lambda d: load_checkpoint(d / "checkpoints" / "last.pt")["state"]["optimizers"]["adam"]["state"]
    for k in opt(straight):
        assert torch.equal(opt(straight)[k]["exp_avg"], opt(split)[k]["exp_avg"])


def test_checkpoint_holds_the_full_state(tmp_path):
    run = start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {"genlab_version", "method", "config", "image_shape", "state", "progress", "rng"} <= set(ckpt)
    assert set(ckpt["state"]) == {"networks", "optimizers", "schedulers", "extra"}
    assert ckpt["kind"] == "full" and ckpt["ema"] is None
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["progress"]["step"] == 10 and ckpt["image_shape"] == [1, 16, 16]
    assert (run / "checkpoints" / "best.pt").is_file()


def test_run_directory_contents(tmp_path):
    vae = start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    gan = start_training(load_config("tiny-dcgan"), tmp_path, CPU, quiet=True)
    assert vae.name == "00000-tiny-vae-digits" and gan.name == "00001-tiny-dcgan-digits"
    for run in (vae, gan):
        assert (run / "config.yaml").is_file() and (run / "log.txt").read_text()
        assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch-0001.png", "epoch-0002.png"]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == (
            ["best-inference.pt", "best.pt", "last-inference.pt", "last.pt"] if run == vae else ["last-inference.pt", "last.pt"])
        assert list((run / "tb").glob("events.out.tfevents.*"))
        records = [json.loads(l) for l in (run / "stats.jsonl").read_text().splitlines()]
        steps_per_epoch = {"tiny-vae": 160 // 32, "tiny-dcgan": 200 // 32}[run.name[6:-7]]
        assert [r["step"] for r in records if r["kind"] == "epoch"] == [steps_per_epoch, 2 * steps_per_epoch]
        assert all(r["images_per_s"] > 0 for r in records if r["kind"] == "train")
        metrics = json.loads((run / "metrics.json").read_text())["train"]
        assert metrics["steps"] == 2 * steps_per_epoch and metrics["stopped_because"] == "epochs"
    assert len(list((vae / "reconstructions").iterdir())) == 2
    assert not (gan / "reconstructions").exists()
    assert not (gan / "checkpoints" / "best.pt").exists()  # no validation loss, no "best"
    epoch_records = [json.loads(l) for l in (vae / "stats.jsonl").read_text().splitlines() if '"epoch"' in l]
    assert all("val_loss" in r for r in epoch_records if r["kind"] == "epoch")


# A family defined outside genlab, to show the loop needs no change for a new one, and to test
# early stopping against a scripted validation loss.
@dataclass
class ScriptedConfig:
    val_losses: list[float]


@METHODS.register("scripted-test-family")
class ScriptedMethod(Method):
    name = "scripted-test-family"
    config_class = ScriptedConfig
    has_validation_loss = True

    def __init__(self, cfg, image_shape, device):
        super().__init__(cfg, image_shape, device)
        self.nets.net = torch.nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.0)
        self.calls = 0

    def optimizers(self):
        return {"sgd": self.opt}

    def latent_shape(self):
        return (1,)

    def generate(self, z):
        return torch.zeros(len(z), *self.image_shape)

    def train_step(self, x, step):
        return {"loss": torch.tensor(0.0)}

    def validation_step(self, x, generator):
        return {"loss": torch.tensor(self.cfg.val_losses[self.calls_for_epoch()])}

    def calls_for_epoch(self):
        return self.epoch

    def end_epoch(self, train_images):
        self.epoch = getattr(self, "epoch", -1) + 1


def test_early_stopping_and_best_checkpoint(tmp_path):
    raw = {"name": "scripted", "method": "scripted-test-family",
           "data": {"source": "digits", "size": 8, "limit": 60, "val_fraction": 0.5},
           "model": {"val_losses": [3.0, 2.0, 2.5, 2.6, 1.0, 0.5]},
           "train": {"batch_size": 30, "epochs": 6, "patience": 2}}
    from genlab.resolve import resolve_config

    run = start_training(resolve_config(raw), tmp_path, CPU, quiet=True)
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    assert metrics["stopped_because"] == "early_stopping"
    assert metrics["epochs_completed"] == 4 and metrics["best_epoch"] == 2 and metrics["best_monitored"] == 2.0 and metrics["monitor"] == "val_loss"
    assert load_checkpoint(run / "checkpoints" / "best.pt")["progress"]["epoch"] == 2
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["epoch"] == 4


def test_interrupt_saves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    from genlab.methods.vae import VAEMethod

    straight = start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    original, calls = VAEMethod.train_step, {"n": 0}

    def interrupted_step(self, x, step):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C during the fourth step
            raise KeyboardInterrupt
        return original(self, x, step)

    monkeypatch.setattr(VAEMethod, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    monkeypatch.setattr(VAEMethod, "train_step", original)
    split = tmp_path / "00001-tiny-vae-digits"
    assert load_checkpoint(split / "checkpoints" / "last.pt")["progress"]["step"] == 3
    assert "interrupted at step 3" in (split / "log.txt").read_text()
    resume_training(split, [], CPU, quiet=True)
    assert_same_networks(networks(straight), networks(split))


def test_resume_is_exact_with_kl_annealing(tmp_path):
    over = ["model.kl_cycle_steps=4"]
    straight = start_training(load_config("tiny-vae", over + ["train.epochs=3"]), tmp_path, CPU, quiet=True)
    split = start_training(load_config("tiny-vae", over + ["train.epochs=1"]), tmp_path, CPU, quiet=True)
    resume_training(split, ["train.epochs=3"], CPU, quiet=True)
    assert_same_networks(networks(straight), networks(split))
    records = [json.loads(l) for l in (straight / "stats.jsonl").read_text().splitlines() if '"train"' in l]
    assert any(0 < r["kl_beta"] < 1 for r in records)
