"""Speed settings: the plan each device gets, and every path of it that a CPU can run for real
(bf16 autocast, channels_last, SyncBatchNorm conversion, fused Adam, torch.compile, the CUDA-graph
step marks)."""

import dataclasses
import json

import pytest
import torch

from genlab.api import resume as resume_training
from genlab.api import train as start_training
from genlab.config import OptimConfig
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.methods.step import make_optimizer
from genlab.resolve import load_config
from genlab.train import loop
from genlab.train.checkpoint import load_checkpoint
from genlab.train.speed import apply_plan, plan_speed

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only a device object: nothing in this file runs on a GPU


def epochs(run):
    return [r for r in map(json.loads, (run / "stats.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


def force_plan(monkeypatch, **changes):
    """Make the loop use its usual plan with some CUDA-only settings switched on, on the CPU."""
    real = plan_speed
    monkeypatch.setattr(loop, "plan_speed", lambda cfg, device, distributed=False:
                        dataclasses.replace(real(cfg, device, distributed), **changes))


def test_the_plan_for_cuda_and_for_cpu():
    train = load_config("tiny-dcgan").train
    cuda = plan_speed(train, CUDA)
    assert (cuda.precision, cuda.channels_last, cuda.fused_optimizer, cuda.sync_batchnorm) == ("bf16", True, True, False)
    assert cuda.describe() == "bf16 autocast, channels_last, fused Adam, eager"
    assert plan_speed(train, CUDA, distributed=True).sync_batchnorm
    graphs = plan_speed(load_config("tiny-dcgan", ["train.compile=true", "train.compile_mode=reduce-overhead"]).train, CUDA)
    assert graphs.cuda_graphs and graphs.describe().endswith("torch.compile(reduce-overhead), CUDA graphs")
    assert plan_speed(load_config("tiny-dcgan", ["train.precision=fp16"]).train, CUDA).grad_scaler
    assert not plan_speed(load_config("tiny-dcgan", ["train.compile=true"]).train, CUDA).cuda_graphs  # default mode

    cpu = plan_speed(load_config("tiny-dcgan", ["train.compile=true", "train.compile_mode=reduce-overhead"]).train,
                     CPU, distributed=True)
    assert (cpu.precision, cpu.channels_last, cpu.fused_optimizer, cpu.sync_batchnorm, cpu.cuda_graphs) == \
        ("fp32", False, False, False, False)
    assert cpu.compile_mode == "reduce-overhead"
    assert plan_speed(load_config("tiny-dcgan", ["train.precision=bf16"]).train, CPU).precision == "bf16"


def test_an_unknown_compile_mode_names_the_choices():
    with pytest.raises(GenlabError, match="train.compile_mode.*did you mean 'reduce-overhead'"):
        load_config("tiny-vae", ["train.compile_mode=reduce_overhead"])


def test_bf16_autocast_training_on_cpu(tmp_path):
    seen = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.add(out.dtype) if isinstance(module, torch.nn.Conv2d) else None)
    try:
        bf16 = start_training(load_config("tiny-vae", ["train.precision=bf16"]), tmp_path, CPU, quiet=True)
    finally:
        hook.remove()
    assert torch.bfloat16 in seen  # the convolutions ran in bf16
    fp32 = start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    assert "bf16 autocast" in (bf16 / "log.txt").read_text()
    assert len(epochs(bf16)) == len(epochs(fp32)) == 2
    for a, b in zip(epochs(bf16), epochs(fp32)):  # bf16 has 8 bits of mantissa: close, not equal
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.05)
    weights = load_checkpoint(bf16 / "checkpoints" / "last.pt")["state"]["networks"]["encoder"]
    assert all(v.dtype != torch.bfloat16 for v in weights.values())  # master weights stay fp32


@pytest.mark.parametrize("preset", ["tiny-vae", "tiny-dcgan"])
def test_channels_last_training_equals_nchw(tmp_path, monkeypatch, preset):
    nchw = start_training(load_config(preset), tmp_path, CPU, quiet=True)
    layouts = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        if isinstance(module, torch.nn.Conv2d) and args[0].dim() == 4 and args[0].shape[1] > 1 else None)
    force_plan(monkeypatch, channels_last=True)
    try:
        nhwc = start_training(load_config(preset), tmp_path, CPU, quiet=True)
    finally:
        hook.remove()
    assert layouts and all(layouts)  # every convolution with >1 input channel was fed NHWC
    assert "channels_last" in (nhwc / "log.txt").read_text()
    a = load_checkpoint(nchw / "checkpoints" / "last.pt")["state"]["networks"]
    b = load_checkpoint(nhwc / "checkpoints" / "last.pt")["state"]["networks"]
    for net in a:
        for key in a[net]:
            torch.testing.assert_close(b[net][key], a[net][key], rtol=1e-4, atol=1e-5, msg=f"{net}.{key}")


def test_sync_batchnorm_conversion_keeps_what_the_optimizers_hold():
    cfg = load_config("tiny-dcgan")
    torch.manual_seed(0)
    plain = METHODS.get("dcgan")(cfg.model, (1, 16, 16), CPU)
    torch.manual_seed(0)
    synced = METHODS.get("dcgan")(cfg.model, (1, 16, 16), CPU)
    apply_plan(dataclasses.replace(plan_speed(cfg.train, CPU), sync_batchnorm=True), synced)
    for name, net in synced.networks().items():
        kinds = {type(m) for m in net.modules()}
        assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds, name
        held = {id(p) for group in synced.optimizers()[name].param_groups for p in group["params"]}
        assert held == {id(p) for p in net.parameters()}  # the optimizer steps the converted layers
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    torch.manual_seed(1)
    a = plain.run_step(x, 0)
    torch.manual_seed(1)
    b = synced.run_step(x, 0)  # one process: SyncBatchNorm uses the local batch, as BatchNorm does
    for key in a:
        torch.testing.assert_close(b[key], a[key])
    for p, q in zip(plain.generator.parameters(), synced.generator.parameters()):
        torch.testing.assert_close(q, p)


def test_fused_adam_takes_the_same_steps_as_foreach():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    cfg = OptimConfig(name="adamw", lr=1e-2, betas=[0.5, 0.999], weight_decay=0.01)
    fused = make_optimizer(cfg, params, CUDA)  # the CUDA choice, on CPU tensors
    foreach = make_optimizer(cfg, twins, CPU)
    assert fused.defaults["fused"] and foreach.defaults["foreach"]
    for step in range(3):
        for group, opt in ((params, fused), (twins, foreach)):
            opt.zero_grad()
            sum((p * (step + 1)).sin().sum() for p in group).backward()
            opt.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q)


def test_cuda_graph_steps_are_marked_once_per_training_step(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    force_plan(monkeypatch, cuda_graphs=True)
    run = start_training(load_config("tiny-dcgan"), tmp_path, CPU, quiet=True)
    assert len(calls) == load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"] > 0


def test_compiled_training_matches_eager_and_resumes_eagerly(tmp_path):
    """torch.compile for real (inductor, the C++ compiler): the same losses as eager, checkpoints
    that load into plain modules, and a compiled run may resume without compilation."""
    eager = start_training(load_config("tiny-vae"), tmp_path, CPU, quiet=True)
    compiled = start_training(load_config("tiny-vae", ["train.compile=true", "train.compile_mode=reduce-overhead"]),
                              tmp_path, CPU, quiet=True)
    log_text = (compiled / "log.txt").read_text()
    assert "torch.compile(reduce-overhead)" in log_text and "eager mode" not in log_text
    assert len(epochs(eager)) == len(epochs(compiled)) == 2
    for a, b in zip(epochs(eager), epochs(compiled)):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    a = load_checkpoint(eager / "checkpoints" / "last.pt")["state"]["networks"]
    b = load_checkpoint(compiled / "checkpoints" / "last.pt")["state"]["networks"]
    assert {k: list(v) for k, v in a.items()} == {k: list(v) for k, v in b.items()}  # no "_orig_mod." prefixes
    resume_training(compiled, ["train.epochs=3", "train.compile=false"], CPU, quiet=True)
    assert load_checkpoint(compiled / "checkpoints" / "last.pt")["progress"]["epoch"] == 3
