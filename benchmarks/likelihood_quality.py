"""Likelihood and diffusion families at an equal wall-time budget.

Part 1, CIFAR-10: RealNVP and pixel DDPM each train for the same training wall time
(`train.max_minutes`, validation excluded); the JSON records validation bits/dim after every epoch
for both (RealNVP exact; DDPM its variational bound, estimated with one uniformly drawn term per
image), the final bits/dim under `genlab eval --metrics bpd`'s protocol, SWD of N samples against
the report split (CIFAR-10's official test split), and DDIM sampling speed (images/s at 10, 50 and 250 steps).

Part 2, CelebA 32x32: pixel DDPM against the strongest GAN preset (gan-celeba64 at 32x32) for the
same training wall time each, SWD of N samples against the report split (the half of the official
validation partition that genlab.data.splits carves out as test; the other half is the choice split).

Each family is a preset plus overrides (`PRESET+key=value+...`) so the CPU run can use narrower
networks; the JSON records every override. On a CPU (about 20 minutes of training in all):

    cd benchmarks && python likelihood_quality.py --cifar ../../shared/data/cifar10-jpeg \\
        --celeba ../../shared/data/celeba --minutes 9 --celeba-minutes 7 --n 2000 --eval-steps 20 \\
        --n-bpd 500 --bound-timesteps 50 --grids ../docs/likelihood --out results/likelihood_quality-cpu.json

On a GPU: --minutes 20 --celeba-minutes 20 --n 10000 --n-bpd 10000 --bound-timesteps 0 and the presets
as shipped (--realnvp realnvp-cifar10 --ddpm ddpm-cifar10 ...).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import score_run, write_result

from genlab import api
from genlab.methods import METHODS

CPU_REALNVP = "realnvp-cifar10+model.width=16+model.blocks=1+data.num_parts=5"
CPU_DDPM = ("ddpm-cifar10+model.width=32+model.blocks=1+model.attention=[8]+model.dropout=0.0"
            "+train.batch_size=64+data.num_parts=5")
CPU_DDPM_CELEBA = "ddpm-celeba32+model.width=32+model.blocks=1+model.attention=[8]+train.batch_size=64"
CPU_GAN_CELEBA = "gan-celeba64+data.size=32"


def train(spec: str, root: Path, minutes: float, runs: Path, device, seed: int):
    from genlab.api import train as start_training
    from genlab.resolve import load_config

    preset, *variant = spec.split("+")
    overrides = [f"data.root={root}", f"train.max_minutes={minutes}", "train.epochs=100000", f"train.seed={seed}",
                 "train.log_every=10", "train.grid_every=0", *variant]
    cfg = load_config(preset, overrides)
    print(f"{spec}: {minutes} min of training", flush=True)
    start = time.perf_counter()
    run = start_training(cfg, runs, device, quiet=True)
    wall = time.perf_counter() - start
    summary = json.loads((run / "metrics.json").read_text())["train"]
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    epochs = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items() if k != "kind"}
              for r in records if r["kind"] == "epoch"]
    row = {"preset": spec, "overrides": overrides, "steps": summary["steps"], "epochs_completed": summary["epochs_completed"],
           "train_s": summary["train_time_s"], "wall_s_with_validation": round(wall, 1),
           "images_per_s": summary["images_per_s"], "stopped_because": summary["stopped_because"],
           "parameters": summary["parameters"], "epochs": epochs}
    return run, cfg, row


def score(run: Path, cfg, metrics: list[str], n: int, split: str, device, eval_steps: int | None,
          bound_timesteps: int = 0):
    overrides = []
    if eval_steps and cfg.sampler is not None and cfg.sampler.name == "ddim":
        overrides.append(f"sampler.steps={eval_steps}")
    if bound_timesteps and "bound_timesteps" in METHODS.get(cfg.method).evaluation_keys:
        overrides.append(f"model.bound_timesteps={bound_timesteps}")  # (stated in the bpd protocol string)
    start = time.perf_counter()
    results = score_run(run, cfg, metrics, n, split, device, overrides=overrides)
    method = api.load(run, device).method
    out = {name: r["value"] for name, r in results.items()}
    out["protocols"] = {name: r["protocol"] for name, r in results.items()}
    out["eval_s"] = round(time.perf_counter() - start, 1)
    return method, out


@torch.inference_mode()
def ddim_speed(method, device, counts=((10, 64), (50, 64), (250, 16))) -> list[dict]:
    """Images per second of DDIM sampling (eta = 0) at several step counts, one batch each."""
    from genlab.samplers.diffusion import DDIMOptions

    rows = []
    for steps, n in counts:
        options = DDIMOptions(name="ddim", steps=steps, eta=0.0)
        method.sample(2, seed=0, options=options)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        method.sample(n, seed=0, batch_size=n, options=options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        rows.append({"steps": steps, "images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 2)})
        print(f"DDIM {steps} steps: {n / seconds:.2f} images/s", flush=True)
    return rows


def keep_grid(method, grids: Path | None, name: str) -> str | None:
    if grids is None:
        return None
    from genlab.train.rundir import image_grid, save_grid

    grids.mkdir(parents=True, exist_ok=True)
    path = grids / f"{name}.png"
    save_grid(image_grid(method.sample(64, seed=0)), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, required=True, help="the CIFAR-10 folder")
    parser.add_argument("--celeba", type=Path, default=None, help="the CelebA folder (part 2; skipped without it)")
    parser.add_argument("--realnvp", default=CPU_REALNVP)
    parser.add_argument("--ddpm", default=CPU_DDPM)
    parser.add_argument("--ddpm-celeba", default=CPU_DDPM_CELEBA)
    parser.add_argument("--gan-celeba", default=CPU_GAN_CELEBA)
    parser.add_argument("--minutes", type=float, default=9.0, help="training minutes per family on CIFAR-10")
    parser.add_argument("--celeba-minutes", type=float, default=7.0, help="training minutes per family on CelebA")
    parser.add_argument("--n", type=int, default=2000, help="samples scored per model (SWD)")
    parser.add_argument("--n-bpd", type=int, default=500, help="test images whose bits/dim are measured")
    parser.add_argument("--bound-timesteps", type=int, default=0,
                        help="terms of the DDPM bound evaluated (0 = all T; k = stratified estimate)")
    parser.add_argument("--eval-steps", type=int, default=None, help="DDIM steps when scoring (default: the preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--grids", type=Path, default=None, help="write a 64-sample grid of each model here")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    runs = args.runs or Path(tempfile.mkdtemp(prefix="genlab-likelihood-"))

    cifar = []
    for name, spec in (("realnvp", args.realnvp), ("ddpm", args.ddpm)):
        run, cfg, row = train(spec, args.cifar, args.minutes, runs, device, args.seed)
        method, scores = score(run, cfg, ["swd"], args.n, "report", device, args.eval_steps)
        row.update(scores)
        _, scores = score(run, cfg, ["bpd"], args.n_bpd, "report", device, None, args.bound_timesteps)
        row["bpd"], row["eval_s"] = scores["bpd"], row["eval_s"] + scores["eval_s"]
        row["protocols"].update(scores["protocols"])
        val = [e["val_bpd"] for e in row["epochs"] if "val_bpd" in e]
        row["val_bpd_decreasing_every_epoch"] = all(b < a for a, b in zip(val, val[1:]))
        if name == "ddpm":
            row["ddim_speed"] = ddim_speed(method, device)
        row["grid"] = keep_grid(method, args.grids, f"{name}-cifar10")
        cifar.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("protocols", "overrides", "epochs")}), flush=True)

    celeba = []
    if args.celeba is not None:
        for name, spec in (("ddpm", args.ddpm_celeba), ("gan", args.gan_celeba)):
            run, cfg, row = train(spec, args.celeba, args.celeba_minutes, runs, device, args.seed)
            method, scores = score(run, cfg, ["swd"], args.n, "report", device, args.eval_steps)
            row.update(scores)
            row["grid"] = keep_grid(method, args.grids, f"{name}-celeba32")
            celeba.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("protocols", "overrides", "epochs")}), flush=True)

    result = {
        "budget": {"cifar10_train_minutes_per_family": args.minutes, "celeba_train_minutes_per_family": args.celeba_minutes,
                   "scored_samples": args.n, "seed": args.seed, "ddim_steps_when_scoring": args.eval_steps or "preset's"},
        "metric_note": ("bpd: bits/dim on the [0,255] scale under genlab eval's protocol (uniform dequantisation; RealNVP "
                        "exact, DDPM its variational bound, all terms or a stratified estimate as its protocol says), on "
                        "a random subset of --n-bpd report-split images (seed 0; CIFAR-10's official test split, CelebA's carved one); val_bpd per "
                        "epoch: RealNVP exact, DDPM's bound estimated with one uniformly drawn term per image; SWD x1e3 "
                        "of N samples (weight-free, lower is better)"),
        "cifar10": cifar, "celeba32": celeba,
    }
    if len(celeba) == 2 and "swd" in celeba[0] and "swd" in celeba[1]:
        result["celeba32_ddpm_swd_vs_gan"] = round(celeba[0]["swd"] / celeba[1]["swd"], 3)
    write_result(args.out, result, device)
    if args.runs is None:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
