"""Training images per second: genlab's loop against the classic pipeline, in one run.

- genlab: `genlab train` itself (data from the uint8 cache, on the device when it fits; bf16,
  channels_last and fused Adam on CUDA; losses read back every N steps), timed from the loop's own
  stats.jsonl windows after a warm-up window. Variants: `eager` (the default settings),
  `compile` (train.compile=true) and `cudagraphs` (train.compile_mode=reduce-overhead).
- classic: the PyTorch DCGAN example's way: torchvision ImageFolder over the JPEGs, a DataLoader
  with workers decoding, cropping and resizing every image, fp32, `.item()` on the losses every
  step; the same genlab networks, optimizers and batch.
- sampling: samples per second of `genlab sample`'s path (latents from per-image seeds, large
  batches under torch.inference_mode, uint8 images back on the host).

For DCGAN 64x64 and the VAE 64x64 (seed 002's widths) at the given batch sizes. Also: FLOPs of one
training step (torch.utils.flop_counter), the achieved rate as a fraction of the device's measured
matrix-multiply peak in the precision the loop trained in (bf16 on CUDA), and peak memory (GPU: max
allocated; CPU: peak resident set of the timing process, DataLoader workers not included). Every
route runs in its own fresh process, so memory peaks and warm caches do not leak between routes.

    python benchmarks/train_throughput.py --root ../shared/data/celeba --out benchmarks/results/train_throughput-cpu.json
    python benchmarks/train_throughput.py --root DATA/celeba --device cuda --out benchmarks/results/train_throughput-h100.json
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import write_result

MODELS = {"dcgan64": "dcgan-celeba64", "vae64": "vae-celeba64-seed002"}
VARIANTS = {"eager": [], "compile": ["train.compile=true"],
            "cudagraphs": ["train.compile=true", "train.compile_mode=reduce-overhead"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Measured FLOP/s of a large square matrix product (random data, after a warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps, start = 10 if device.type == "cuda" else 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"gpu_max_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {"cpu_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


# -- the routes, each run in a child process -------------------------------------------------------


def genlab_route(a) -> dict:
    from genlab.api import train as start_training
    from genlab.resolve import load_config

    cfg = load_config(MODELS[a.model], [f"data.root={a.root}", f"train.batch_size={a.batch}",
                                        f"train.max_steps={2 * a.steps}", f"train.log_every={a.steps}",
                                        "train.epochs=1000", "train.num_samples=16", *VARIANTS[a.variant]])
    with tempfile.TemporaryDirectory() as runs:
        run = start_training(cfg, Path(runs), a.device, quiet=True)
        records = [json.loads(l) for l in (run / "stats.jsonl").read_text().splitlines() if '"train"' in l]
        started = next(l for l in (run / "log.txt").read_text().splitlines() if "training " in l)
        plan = re.search(r"device \S+ \((.*)\)$", started).group(1)  # the loop's speed settings
    # The second window: after warm-up (compilation, CUDA graph recording, cuDNN autotuning, caches).
    return {"images_per_s": records[1]["images_per_s"], "steps_timed": a.steps, "settings": plan,
            **peak_memory(a.device)}


def classic_route(a) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms
    from torchvision.transforms import InterpolationMode

    from genlab.methods import METHODS
    from genlab.resolve import load_config

    cfg = load_config(MODELS[a.model], [f"data.root={a.root}"])
    transform = transforms.Compose([
        transforms.CenterCrop(cfg.data.crop), transforms.Resize(cfg.data.size, interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    loader = DataLoader(datasets.ImageFolder(str(a.root), transform=transform), batch_size=a.batch, shuffle=True,
                        num_workers=a.workers, drop_last=True, pin_memory=a.device.type == "cuda",
                        persistent_workers=a.workers > 0)
    torch.manual_seed(0)
    method = METHODS.get(cfg.method)(cfg.model, (3, cfg.data.size, cfg.data.size), a.device)
    method.train()
    it, done, start = iter(loader), 0, None
    for i in range(2 * a.steps):
        if i == a.steps:
            sync(a.device)
            start = time.perf_counter()
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        stats = method.run_step(x.to(a.device, non_blocking=True), i)
        _ = {k: v.item() for k, v in stats.items()}  # the example prints losses every step: a host sync
        done += len(x) if i >= a.steps else 0
    sync(a.device)
    return {"images_per_s": round(done / (time.perf_counter() - start), 1), "steps_timed": a.steps,
            "settings": f"fp32, DataLoader with {a.workers} workers", **peak_memory(a.device)}


def sample_route(a) -> dict:
    from genlab.methods import METHODS
    from genlab.resolve import load_config

    cfg = load_config(MODELS[a.model], ["data.root=unused"])
    method = METHODS.get(cfg.method)(cfg.model, (3, 64, 64), a.device)  # speed does not depend on the weights
    method.sample(a.sample_batch, 0, batch_size=a.sample_batch)  # warm-up
    sync(a.device)
    start = time.perf_counter()
    method.sample(a.samples, 1, batch_size=a.sample_batch)
    return {"samples_per_s": round(a.samples / (time.perf_counter() - start), 1), "samples": a.samples,
            "batch_size": a.sample_batch, **peak_memory(a.device)}


def flops_route(a) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from genlab.methods import METHODS
    from genlab.resolve import load_config

    cfg = load_config(MODELS[a.model], ["data.root=unused"])
    method = METHODS.get(cfg.method)(cfg.model, (3, 64, 64), a.device)
    with FlopCounterMode(display=False) as counter:
        method.run_step(torch.rand(a.batch, 3, 64, 64, device=a.device) * 2 - 1, 0)
    return {"train_step_flop": counter.get_total_flops()}


ROUTES = {"genlab": genlab_route, "classic": classic_route, "sample": sample_route, "flops": flops_route}


def child(argv: list[str]) -> None:
    """One route in this (fresh) process; its result is the last line of stdout."""
    parser = argparse.ArgumentParser()
    for name in ("route", "model", "variant", "root"):
        parser.add_argument(f"--{name}", default="")
    for name in ("batch", "steps", "workers", "samples", "sample_batch"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=0)
    parser.add_argument("--device", type=torch.device)
    a = parser.parse_args(argv)
    a.root = Path(a.root)
    torch.backends.cudnn.benchmark = True
    print(json.dumps(ROUTES[a.route](a)))


def run_child(**kwargs) -> dict:
    command = [sys.executable, __file__, "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CelebA folder with img_align_celeba/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--models", default="dcgan64,vae64")
    parser.add_argument("--variants", default=None, help="genlab variants: eager,compile,cudagraphs "
                        "(default: eager on CPU, all three on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per route, after as many warm-up "
                        "steps (default: 4 on CPU, 50 on CUDA)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the classic route")
    parser.add_argument("--samples", type=int, default=None, help="images for the sampling rate (default: 1024 on CPU, 16384 on CUDA)")
    parser.add_argument("--sample-batch", type=int, default=1024)
    parser.add_argument("--matmul-size", type=int, default=None, help="default: 2048 on CPU, 8192 on CUDA")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    variants = (args.variants or ("eager,compile,cudagraphs" if cuda else "eager")).split(",")
    steps = args.steps or (50 if cuda else 4)
    samples = args.samples or (16384 if cuda else 1024)
    size = args.matmul_size or (8192 if cuda else 2048)

    # CPUs without native bf16 run bf16 products ~100x slower than fp32: probe those at a smaller size.
    bf16_size = size if cuda else min(size, 512)
    peaks = {"bf16": matmul_peak(device, torch.bfloat16, bf16_size), "fp32": matmul_peak(device, torch.float32, size)}
    print(f"matmul peak: bf16 {peaks['bf16'] / 1e12:.4f} TFLOP/s, fp32 {peaks['fp32'] / 1e12:.4f} TFLOP/s", flush=True)
    common = {"root": args.root, "device": device}
    results, sampling = [], []
    for model in args.models.split(","):
        s = run_child(route="sample", model=model, samples=samples, sample_batch=args.sample_batch, **common)
        sampling.append({"model": model, "preset": MODELS[model], **s})
        print(f"{model}: sampling {s['samples_per_s']:.0f} samples/s", flush=True)
        for batch in map(int, args.batches.split(",")):
            flops = run_child(route="flops", model=model, batch=batch, **common)["train_step_flop"]
            classic = run_child(route="classic", model=model, batch=batch, steps=steps, workers=args.workers, **common)
            row = {"model": model, "preset": MODELS[model], "batch_size": batch,
                   "train_step_gflop": round(flops / 1e9, 2), "classic": classic, "genlab": {}}
            for variant in variants:
                fast = run_child(route="genlab", model=model, variant=variant, batch=batch, steps=steps, **common)
                precision = "bf16" if fast["settings"].startswith("bf16") else "fp32"
                achieved = flops / batch * fast["images_per_s"]
                fast.update({"speedup_vs_classic": round(fast["images_per_s"] / classic["images_per_s"], 2),
                             "achieved_tflop_per_s": round(achieved / 1e12, 4),
                             "matmul_peak_used": precision,
                             "fraction_of_matmul_peak": round(achieved / peaks[precision], 4)})
                row["genlab"][variant] = fast
                print(f"{model} batch {batch} {variant}: genlab {fast['images_per_s']:.0f} img/s, classic "
                      f"{classic['images_per_s']:.0f} img/s ({fast['speedup_vs_classic']}x); "
                      f"{fast['fraction_of_matmul_peak']:.1%} of the {precision} matmul peak", flush=True)
            results.append(row)
    write_result(args.out, {
        "benchmark": "train_throughput",
        "what": "training images per second, CelebA 64x64 (crop 148, bicubic), timed after as many warm-up steps; "
                "FLOPs from torch.utils.flop_counter; sampling = genlab sample's path incl. per-image seeded latents",
        "steps_timed": steps,
        "matmul_peak_tflop_per_s": {k: round(v / 1e12, 4) for k, v in peaks.items()},
        "matmul_peak_sizes": {"bf16": bf16_size, "fp32": size},
        "results": results,
        "sampling": sampling,
    }, device)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
