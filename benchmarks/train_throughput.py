"""Training images per second: genlab's loop against the classic pipeline, in one run.

- genlab: `genlab train` itself (data from the uint8 cache, on the device when it fits; bf16,
  channels_last and fused Adam on CUDA; losses read back every N steps), timed from the loop's own
  stats.jsonl windows after a warm-up window.
- classic: the PyTorch DCGAN example's way: torchvision ImageFolder over the JPEGs, a DataLoader
  with workers decoding, cropping and resizing every image, fp32, `.item()` on the losses every
  step; the same genlab networks, optimizers and batch.

For DCGAN 64x64 and the VAE 64x64 (seed 002's widths) at the given batch sizes. Also: FLOPs of one
training step (torch.utils.flop_counter), the achieved rate against the device's measured bf16
(and fp32) matrix-multiply peak, and peak memory (GPU: max allocated; CPU: peak resident set).

    python benchmarks/train_throughput.py --root ../shared/data/celeba --out benchmarks/results/train_throughput-cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from common import write_result

MODELS = {
    "dcgan64": ("dcgan-celeba64", []),
    "vae64": ("vae-celeba64-seed002", []),
}


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Measured FLOP/s of a large square matrix product (random data, after a warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(method, batch: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        method.train_step(batch)
    return counter.get_total_flops()


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"gpu_max_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {"cpu_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def genlab_route(preset: str, root: Path, batch: int, steps: int, device: torch.device, runs: Path) -> dict:
    from genlab.config import load_config
    from genlab.train.loop import start_training

    cfg = load_config(preset, [f"data.root={root}", f"train.batch_size={batch}", f"train.max_steps={2 * steps}",
                               f"train.log_every={steps}", "train.epochs=1000", "train.num_samples=16"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = start_training(cfg, runs, device, quiet=True)
    records = [json.loads(l) for l in (run / "stats.jsonl").read_text().splitlines() if '"train"' in l]
    measured = records[1]  # the second window: after warm-up (allocator, cuDNN autotuning, page cache)
    return {"images_per_s": measured["images_per_s"], "steps_timed": steps, "precision": cfg.train.precision,
            **peak_memory(device)}


def classic_route(preset: str, root: Path, batch: int, steps: int, device: torch.device, workers: int) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms
    from torchvision.transforms import InterpolationMode

    from genlab.config import load_config
    from genlab.methods import METHODS

    cfg = load_config(preset, [f"data.root={root}"])
    transform = transforms.Compose([
        transforms.CenterCrop(cfg.data.crop), transforms.Resize(cfg.data.size, interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = DataLoader(datasets.ImageFolder(str(root), transform=transform), batch_size=batch, shuffle=True,
                        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    method = METHODS.get(cfg.method)(cfg.model, (3, cfg.data.size, cfg.data.size), device)
    method.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it, done, start = iter(loader), 0, None
    for i in range(2 * steps):
        if i == steps:
            sync(device)
            start = time.perf_counter()
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        stats = method.train_step(x.to(device, non_blocking=True))
        _ = {k: v.item() for k, v in stats.items()}  # the example prints losses every step: a host sync
        done += len(x) if i >= steps else 0
    sync(device)
    return {"images_per_s": round(done / (time.perf_counter() - start), 1), "steps_timed": steps,
            "precision": "fp32", "num_workers": workers, **peak_memory(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CelebA folder with img_align_celeba/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--models", default="dcgan64,vae64")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per route (after as many warm-up steps)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the classic route")
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True

    from genlab.config import load_config
    from genlab.methods import METHODS

    # CPUs without native bf16 run bf16 products ~80x slower than fp32: probe them at a smaller size.
    bf16_size = args.matmul_size if device.type == "cuda" else min(args.matmul_size, 512)
    peaks = {"bf16": matmul_peak(device, torch.bfloat16, bf16_size),
             "fp32": matmul_peak(device, torch.float32, args.matmul_size)}
    print(f"matmul peak: bf16 {peaks['bf16'] / 1e12:.4f} TFLOP/s, fp32 {peaks['fp32'] / 1e12:.4f} TFLOP/s", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            preset, _ = MODELS[model]
            for batch in map(int, args.batches.split(",")):
                cfg = load_config(preset, ["data.root=x"])
                method = METHODS.get(cfg.method)(cfg.model, (3, 64, 64), device)
                flops = step_flops(method, torch.rand(batch, 3, 64, 64, device=device) * 2 - 1)
                fast = genlab_route(preset, args.root, batch, args.steps, device, Path(tmp) / "runs")
                print(f"  {model} batch {batch}: genlab route {fast['images_per_s']:.0f} img/s", flush=True)
                classic = classic_route(preset, args.root, batch, args.steps, device, args.workers)
                achieved = flops / batch * fast["images_per_s"]
                row = {"model": model, "preset": preset, "batch_size": batch, "train_step_gflop": round(flops / 1e9, 2),
                       "genlab": fast, "classic": classic,
                       "speedup": round(fast["images_per_s"] / classic["images_per_s"], 2),
                       "genlab_tflop_per_s": round(achieved / 1e12, 4),
                       "fraction_of_bf16_matmul_peak": round(achieved / peaks["bf16"], 4),
                       "fraction_of_fp32_matmul_peak": round(achieved / peaks["fp32"], 4)}
                results.append(row)
                print(f"{model} batch {batch}: genlab {fast['images_per_s']:.0f} img/s, classic "
                      f"{classic['images_per_s']:.0f} img/s ({row['speedup']}x); {row['genlab_tflop_per_s']} TFLOP/s "
                      f"= {row['fraction_of_bf16_matmul_peak']:.1%} of the bf16 matmul peak", flush=True)
    write_result(args.out, {
        "benchmark": "train_throughput",
        "what": "training images per second, CelebA 64x64 (crop 148, bicubic); FLOPs from torch.utils.flop_counter",
        "matmul_peak_tflop_per_s": {k: round(v / 1e12, 4) for k, v in peaks.items()},
        "matmul_peak_sizes": {"bf16": bf16_size, "fp32": args.matmul_size},
        "results": results,
    }, device)


if __name__ == "__main__":
    main()
