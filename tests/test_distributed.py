"""Scale-out through DistributedDataParallel on CPU (gloo, 2 processes), and the speed options'
bad-input paths."""

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import only_run

from genlab import api
from genlab.api import train as start_training
from genlab.config import EvalSettings, OptimConfig
from genlab.methods import METHODS
from genlab.methods.base import Method
from genlab.methods.step import make_optimizer
from genlab.resolve import load_config, resolve_config
from genlab.train.checkpoint import load_checkpoint

CPU = torch.device("cpu")


@dataclass
class LinearConfig:
    lr: float = 0.05


@METHODS.register("linear-test-family")
class LinearAutoencoder(Method):
    """Deterministic (no noise, no BatchNorm), so one process and two must agree to rounding."""

    name = "linear-test-family"
    config_class = LinearConfig

    def __init__(self, cfg, image_shape, device):
        super().__init__(cfg, image_shape, device)
        d = int(torch.tensor(image_shape).prod())
        self.nets.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, d)).to(device)
        self.opt = make_optimizer(OptimConfig(lr=cfg.lr), self.net.parameters(), device)

    def optimizers(self):
        return {"adam": self.opt}

    def latent_shape(self):
        return (int(torch.tensor(self.image_shape).prod()),)

    def generate(self, z):
        return torch.tanh(z).view(len(z), *self.image_shape)

    def train_step(self, x, step):
        return self.stepper.minimize(self.opt, lambda x: (self.net(x) - x.flatten(1)).square().mean(), x)


# Two micro-batches per step (train.accumulate=2): under DDP the first backward skips the all-reduce
# (no_sync) and the second reduces the sum, so the step still equals one process's.
RAW = {"name": "linear", "method": "linear-test-family",
       "data": {"source": "digits", "size": 8, "limit": 256, "val_fraction": 0.0},
       "train": {"batch_size": 32, "accumulate": 2, "epochs": 2, "log_every": 4},
       "eval": {"every": 1, "metrics": ["fid", "swd"], "n": 45, "extractor": "random-standin"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, runs: str, raw: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from genlab import distributed

    info = distributed.from_environment()
    start_training(resolve_config(raw), Path(runs), CPU, quiet=True, info=info)
    distributed.shutdown(info)
    assert not dist.is_initialized()


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    single = start_training(resolve_config(RAW), tmp_path / "single", CPU, quiet=True)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "ddp"), RAW), nprocs=2, join=True)
    ddp = only_run(tmp_path / "ddp")  # written once, by rank 0
    a = load_checkpoint(single / "checkpoints" / "last.pt")
    b = load_checkpoint(ddp / "checkpoints" / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == 2 * (256 // 32)
    for key, value in a["state"]["networks"]["net"].items():
        # Each rank averages its half batch; DDP averages the ranks: the global-batch gradient, up
        # to the order of float additions.
        torch.testing.assert_close(b["state"]["networks"]["net"][key], value, rtol=1e-5, atol=1e-6)
    log_text = (ddp / "log.txt").read_text()
    assert "parameters identical on all 2 ranks" in log_text
    steps = [json.loads(l)["step"] for l in (ddp / "stats.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == sorted(set(steps))  # one writer: no record twice
    assert json.loads((ddp / "metrics.json").read_text())["train"]["processes"] == 2
    # Evaluation during training: each rank generated and featurised its seed range (23 + 22 of
    # 45), rank 0 gathered them; the numbers equal the single process's.
    epochs = lambda run: [json.loads(l) for l in (run / "stats.jsonl").read_text().splitlines() if '"epoch"' in l
                          and json.loads(l)["kind"] == "epoch"]
    assert len(epochs(single)) == len(epochs(ddp)) == 2
    for one, two in zip(epochs(single), epochs(ddp)):
        assert two["eval_fid"] == pytest.approx(one["eval_fid"], rel=1e-3, abs=1e-9)
        assert two["eval_swd"] == pytest.approx(one["eval_swd"], rel=1e-3, abs=1e-6)


def test_a_gan_trains_on_two_processes_with_identical_parameters(tmp_path):
    """DCGAN under DDP: the wrapped discriminator runs twice per step for its own loss (real, detached
    fake); G's loss goes through the plain D with frozen weights, so D's gradients are neither
    computed nor all-reduced there. Every rank must end identical."""
    raw = load_config("tiny-dcgan", ["train.epochs=1"]).to_dict()
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), raw), nprocs=2, join=True)
    run = only_run(tmp_path)
    assert "parameters identical on all 2 ranks" in (run / "log.txt").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] == 200 // 32


def test_torchrun_end_to_end_and_resume_on_another_number_of_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "genlab",
               "train", "tiny-vae", "train.epochs=1", "--runs-dir", str(tmp_path), "--device", "cpu", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(tmp_path)
    assert "parameters identical on all 2 ranks" in (run / "log.txt").read_text()
    assert len(list((run / "samples").iterdir())) == 1
    resumed = subprocess.run([sys.executable, "-m", "genlab", "train", "--resume", str(run), "train.epochs=2", "--quiet"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["progress"]["epoch"] == 2
    assert json.loads((run / "metrics.json").read_text())["train"]["processes"] == 1


# ------------------------------------------------------------------------------------------ bad input


def test_more_gpus_than_the_machine_has(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, _, err = cli("train", "tiny-vae", "--gpus", "4", "--runs-dir", tmp_path)
    assert code == 2 and "--gpus 4: this machine has 0 GPUs" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_a_batch_that_does_not_fit_names_the_batch_and_the_device(cli, tmp_path, monkeypatch):
    from genlab.methods.vae import VAEMethod
    from genlab.train.loop import OUT_OF_MEMORY

    def oom(self, x, step):
        raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(VAEMethod, "train_step", oom)
    code, _, err = cli("train", "tiny-vae", "--runs-dir", tmp_path, "--quiet")
    assert code == 2 and "Traceback" not in err
    assert "out of memory: a batch of 32 images of 1x16x16 does not fit on cpu for vae; lower train.batch_size" in err


def test_compile_failure_falls_back_to_eager(cli, tmp_path, monkeypatch):
    def no_compiler(self, *a, **k):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(torch.nn.Module, "compile", no_compiler)
    code, _, err = cli("train", "tiny-vae", "train.compile=true", "train.epochs=1", "--runs-dir", tmp_path, "--quiet")
    assert code == 0, err
    assert "compilation is not available here (no working C++ compiler); training in eager mode" in err


def test_fp16_needs_cuda(cli, tmp_path):
    code, _, err = cli("train", "tiny-vae", "train.precision=fp16", "--runs-dir", tmp_path, "--device", "cpu")
    assert code == 2 and "train.precision=fp16 (with loss scaling) needs CUDA" in err


def test_global_batch_must_divide_over_the_processes():
    from genlab.data import build_dataset
    from genlab.distributed import DistInfo
    from genlab.errors import GenlabError
    from genlab.train.loop import Progress, Trainer

    cfg = load_config("tiny-vae")
    data = build_dataset(cfg.data)
    method = METHODS.get("vae")(cfg.model, data.image_shape, CPU)
    with pytest.raises(GenlabError, match="train.batch_size 32 does not divide over 3 processes"):
        Trainer(cfg, Path("unused"), CPU, data, method, Progress(), True, DistInfo(0, 3, 0))


def test_gpus_option_launches_torchrun_with_the_same_command(cli, tmp_path, monkeypatch):
    import subprocess as sp

    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sp, "call", lambda command: calls.append(command) or 0)
    code, _, err = cli("train", "tiny-vae", "train.epochs=1", "--gpus", "2", "--runs-dir", tmp_path)
    assert code == 0, err
    (command,) = calls
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[5:] == ["-m", "genlab", "train", "tiny-vae", "train.epochs=1", "--runs-dir", str(tmp_path)]


# -- every family on two processes ---------------------------------------------------------------
# (name, preset, overrides); "@name" in an override is that earlier case's run directory. Each case
# trains two epochs with validation, in-training evaluation and an EMA (where the family has one).
EVALUATED = ["train.epochs=2", "eval.every=1", "eval.n=32", "eval.metrics=[swd]", "eval.extractor=random-standin",
             "train.ema_decay=0.9"]
FAMILY_CASES = [
    ("ae", "tiny-ae", EVALUATED),
    ("vae", "tiny-vae", EVALUATED),
    ("vae-fitted", "tiny-vae", EVALUATED + ["model.prior=fitted"]),
    ("vaegan", "tiny-vaegan", EVALUATED + ["model.prior=fitted"]),
    ("dcgan", "tiny-dcgan", EVALUATED + ["data.val_fraction=0.2"]),
    ("wgangp", "tiny-wgangp", EVALUATED + ["data.val_fraction=0.2"]),
    ("hybrid", "tiny-hybrid", EVALUATED + ["init.from_run=@vae-fitted", "model.ada_interval=3"]),
    ("realnvp", "tiny-realnvp", EVALUATED),
    ("ddpm", "tiny-ddpm", EVALUATED),
    ("ldm", "tiny-ldm", EVALUATED + ["init.from_run=@vae"]),
    ("detector", "tiny-detector", ["train.epochs=2", "model.fakes=[@dcgan]"]),
]


def _case_config(preset: str, overrides: list[str], runs: dict[str, Path]):
    return load_config(preset, [re.sub(r"@([\w-]+)", lambda m: str(runs[m.group(1)]), o) for o in overrides])


def _every_family_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from genlab import distributed

    info = distributed.from_environment()
    runs: dict[str, Path] = {}
    for name, preset, overrides in FAMILY_CASES:  # one launch for every family: the process group is shared
        runs[name] = start_training(_case_config(preset, overrides, runs), Path(root) / name, CPU, quiet=True, info=info)
    distributed.shutdown(info)


def test_every_family_trains_the_same_on_two_processes(tmp_path):
    """Two epochs of every family's tiny preset on 2 gloo processes, with validation, evaluation and EMA:
    the run ends only if parameters, buffers (BatchNorm statistics, fitted priors, latent scales),
    EMA averages and extra state (the latent GAN's adaptive noise level) are identical on both ranks,
    and the evaluation logged during training equals a single process's `genlab eval` of the saved
    checkpoint, under the same protocol."""
    mp.spawn(_every_family_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for name, preset, overrides in FAMILY_CASES:
        run = only_run(tmp_path / name)
        log_text = (run / "log.txt").read_text()
        assert "parameters identical on all 2 ranks (and buffers" in log_text, name
        if "eval.every=1" not in overrides:
            continue
        assert "EMA averages" in log_text, name
        records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
        logged = [r for r in records if r["kind"] == "epoch"][-1]["eval_swd"]
        cfg = resolve_config(__import__("yaml").safe_load((run / "config.yaml").read_text()))
        settings = EvalSettings(n=32, extractor=cfg.eval.extractor, seed=cfg.train.sample_seed, split="choice")
        after = api.evaluate(run, ["swd"], settings, "cpu", record=False)["swd"]["value"]
        assert logged == pytest.approx(after, rel=1e-4), name


def _agreement_worker(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from genlab import distributed

    info = distributed.from_environment()
    torch.manual_seed(0)  # the same initialisation on both ranks
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    net.register_buffer("fitted", torch.zeros(2))
    networks = {"net": net}
    assert distributed.state_mismatches(networks, info) == []
    with torch.no_grad():  # each rank's own running statistics and a perturbed buffer on rank 1
        net[1].running_mean.fill_(float(rank))
        net.fitted.add_(rank)
    assert distributed.state_mismatches(networks, info) == ["net.1.running_mean", "net.fitted"]
    assert distributed.value_mismatches({"t_max": 10 + rank, "same": 1}, info) == ["t_max"]
    distributed.sync_buffers(networks, info)
    assert distributed.state_mismatches(networks, info) == []
    assert torch.equal(net[1].running_mean, torch.full((4,), 0.5))  # a running mean: averaged over ranks
    assert torch.equal(net.fitted, torch.zeros(2))  # anything else: rank 0's
    distributed.shutdown(info)


def test_the_agreement_check_names_a_perturbed_buffer_and_sync_repairs_it():
    mp.spawn(_agreement_worker, args=(2, free_port()), nprocs=2, join=True)


def test_one_process_and_two_follow_the_same_loss_curve(tmp_path):
    """The deterministic linear family: batch 32 on one process and 16 + 16 on two give the same
    logged losses at every logging step, to 1e-5 relative (float summation order)."""
    raw = {**RAW, "eval": {"every": 0}}
    single = start_training(resolve_config(raw), tmp_path / "single", CPU, quiet=True)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "ddp"), raw), nprocs=2, join=True)
    curve = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines())
                         if r["kind"] == "train"]  # noqa: E731
    one, two = curve(single), curve(only_run(tmp_path / "ddp"))
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) == 4
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5)
