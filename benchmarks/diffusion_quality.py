"""Today's diffusion against DDPM and the GAN at equal training time (issue 32's benchmark).

Part ``celeba32``: DDPM, EDM, flow matching and the best GAN preset train on CelebA 32x32 for the same
training wall time each (``train.max_minutes``; validation excluded), with the same U-Net for the
three diffusion families (so they differ in objective and sampler only), once per seed. Each is
scored by SWD of ``--n`` random samples against the report split: DDPM by DDIM at each NFE, EDM and
flow matching by the second-order sampler that spends exactly that NFE (midpoint for an even NFE,
Heun, Algorithm 1, for an odd one), the GAN once (1 NFE). Targets: the best of EDM and flow matching
at <= 35 NFE reaches <= 1.0x the GAN's SWD and <= 0.5x DDPM's (at the same NFE). Grids at 1, 2, 4,
8, 18 and 35 NFE of seed 0 go to ``--grids``.

Part ``cifar-bpd``: RealNVP, the VAE (its importance-weighted bound), DDPM (its variational bound),
EDM and flow matching (the probability-flow ODE) each train for the same minutes on CIFAR-10 and are
scored by bits/dim on the same random test images (``genlab eval --metrics bpd``'s protocol, which
each result's protocol string states).

Part ``celeba64-latent``: at CelebA 64x64 and equal total training time (a first stage's time
included), the best VAE preset (``vae-celeba64``) for the whole budget, the flat-MLP latent
diffusion (``ldm-celeba64``) over a VAE trained for half of it, and latent EDM and latent flow
matching over a ``klae-celeba64`` first stage trained for half of it (one first stage shared by the
two: each is charged its full time). SWD of ``--n`` samples against the report split. Target: the
spatial latent diffusion at <= 0.7x the VAE's SWD.

Wall-time budgets move with the machine's load: run it alone. On this project's CPU:

    cd benchmarks && python diffusion_quality.py celeba32 --root ../../shared/data/celeba --minutes 7 \\
        --seeds 0,1,2 --n 2000 --grids ../docs/diffusion --out results/diffusion_quality-cpu.json
    python diffusion_quality.py celeba64-latent --root ../../shared/data/celeba --minutes 14 --n 2000 \
        --out results/diffusion_latent-cpu.json
    python diffusion_quality.py cifar-bpd --root ../../shared/data/cifar10-jpeg --minutes 7 --n-bpd 500 \\
        --out results/diffusion_bpd-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import score_run, write_result

from genlab.metrics.spread import interval

UNET_CPU = "+model.width=32+model.blocks=1+model.attention=[8]+model.dropout=0.0+train.batch_size=64"
CELEBA32 = {
    "ddpm": "ddpm-celeba32" + UNET_CPU,
    "edm": "edm-celeba32" + UNET_CPU,
    "flow-matching": "flow-matching-celeba32" + UNET_CPU,
    "gan": "gan-celeba64+data.size=32",
}
CIFAR = {
    "realnvp": "realnvp-cifar10+model.width=16+model.blocks=1+data.num_parts=5",
    "vae": "vae-cifar10-seed003+data.num_parts=5",
    "ddpm": "ddpm-cifar10" + UNET_CPU + "+data.num_parts=5",
    "edm": "edm-celeba32" + UNET_CPU + "+data.source=cifar10+data.crop=null+data.num_parts=5",
    "flow-matching": "flow-matching-celeba32" + UNET_CPU + "+data.source=cifar10+data.crop=null+data.num_parts=5",
}
CELEBA64_VAE = "vae-celeba64"
CELEBA64_FLAT = ("vae-celeba64-seed002", "ldm-celeba64")  # (first stage, latent diffusion)
CELEBA64_SPATIAL = ("klae-celeba64", ("latent-edm-celeba64", "latent-flow-matching-celeba64"))
NFES = (10, 20, 35)
GRID_NFES = (1, 2, 4, 8, 18, 35)


def sampler_for(family: str, nfe: int) -> list[str]:
    """The sampler keys that spend exactly ``nfe`` network evaluations."""
    if family == "ddpm":
        return ["sampler.name=ddim", f"sampler.steps={nfe}", "sampler.eta=0.0"]
    if family == "gan":
        return []
    if nfe == 1:
        return ["sampler.name=euler", "sampler.nfe=1"]
    return ["sampler.name=midpoint" if nfe % 2 == 0 else "sampler.name=heun", f"sampler.nfe={nfe}"]


def train(spec: str, root: Path, minutes: float, runs: Path, device, seed: int):
    from genlab.api import train as start_training
    from genlab.resolve import load_config

    preset, *variant = spec.split("+")
    overrides = [f"data.root={root}", f"train.max_minutes={minutes}", "train.epochs=100000", f"train.seed={seed}",
                 "train.log_every=10", "train.grid_every=0", *variant]
    cfg = load_config(preset, overrides)
    print(f"{spec} (seed {seed}): {minutes} min of training", flush=True)
    run = start_training(cfg, runs, device, quiet=True, run_dir=runs / f"{preset}-seed{seed}")
    summary = json.loads((run / "metrics.json").read_text())["train"]
    return run, cfg, {"preset": spec, "seed": seed, "overrides": overrides, "steps": summary["steps"],
                      "train_s": summary["train_time_s"], "stopped_because": summary["stopped_because"],
                      "parameters": summary["parameters"]}


def save_grids(run: Path, family: str, grids: Path, device) -> list[str]:
    from genlab import api
    from genlab.train.rundir import image_grid, save_grid

    grids.mkdir(parents=True, exist_ok=True)
    written = []
    for nfe in GRID_NFES if family != "gan" else (1,):
        images, _ = api.sample(run, 64, 0, device, sampler=sampler_for(family, nfe))
        path = grids / f"{family}-nfe{nfe}.png"
        save_grid(image_grid(images), path)
        written.append(str(path))
    return written


def celeba32(args, device) -> dict:
    rows = []
    for seed in args.seeds:
        for family, spec in CELEBA32.items():
            run, cfg, row = train(spec, args.root, args.minutes, args.runs, device, seed)
            row["family"] = family
            row["swd"] = {}
            row["protocols"] = {}
            for nfe in (NFES if family != "gan" else (1,)):
                start = time.perf_counter()
                result = score_run(run, cfg, ["swd"], args.n, "report", device, overrides=sampler_for(family, nfe))
                row["swd"][str(nfe)] = result["swd"]["value"]
                row["protocols"][str(nfe)] = result["swd"]["protocol"]
                print(f"  {family} seed {seed} NFE {nfe}: SWD {result['swd']['value']:.2f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            if args.grids is not None and seed == args.seeds[0]:
                row["grids"] = save_grids(run, family, args.grids, device)
            rows.append(row)
    summaries = {}
    for family in CELEBA32:
        family_rows = [r for r in rows if r["family"] == family]
        for nfe in family_rows[0]["swd"]:
            summaries[f"{family}@{nfe}"] = interval([r["swd"][nfe] for r in family_rows])
    gan = summaries["gan@1"]["mean"]
    best = min((f"{f}@{n}" for f in ("edm", "flow-matching") for n in map(str, NFES)), key=lambda k: summaries[k]["mean"])
    family, nfe = best.split("@")
    targets = {
        "best_flow": best,
        "best_over_gan": round(summaries[best]["mean"] / gan, 4),
        "best_over_ddpm_same_nfe": round(summaries[best]["mean"] / summaries[f"ddpm@{nfe}"]["mean"], 4),
        "met_le_1x_gan": summaries[best]["mean"] <= gan,
        "met_le_half_ddpm": summaries[best]["mean"] <= 0.5 * summaries[f"ddpm@{nfe}"]["mean"],
    }
    print(json.dumps(targets, indent=2))
    return {"part": "celeba32", "minutes": args.minutes, "n": args.n, "seeds": args.seeds, "rows": rows,
            "summaries": summaries, "targets": targets}


def celeba64_latent(args, device) -> dict:
    half = args.minutes / 2
    rows = []
    for seed in args.seeds:
        entries = []
        run, cfg, row = train(CELEBA64_VAE, args.root, args.minutes, args.runs, device, seed)
        entries.append(("vae", run, cfg, row, 0.0))
        first, _, first_row = train(CELEBA64_FLAT[0], args.root, half, args.runs, device, seed)
        run, cfg, row = train(f"{CELEBA64_FLAT[1]}+init.from_run={first}", args.root, half, args.runs, device, seed)
        entries.append(("flat-mlp-ldm", run, cfg, row, first_row["train_s"]))
        first, _, first_row = train(CELEBA64_SPATIAL[0], args.root, half, args.runs, device, seed)
        for preset in CELEBA64_SPATIAL[1]:
            run, cfg, row = train(f"{preset}+init.from_run={first}", args.root, half, args.runs, device, seed)
            entries.append((preset.removesuffix("-celeba64"), run, cfg, row, first_row["train_s"]))
        for family, run, cfg, row, first_s in entries:
            result = score_run(run, cfg, ["swd"], args.n, "report", device)
            row.update({"family": family, "first_stage_train_s": first_s, "total_train_s": row["train_s"] + first_s,
                        "swd": result["swd"]["value"], "protocol": result["swd"]["protocol"]})
            print(f"  {family} seed {seed}: SWD {row['swd']:.2f}", flush=True)
            rows.append(row)
    families = list(dict.fromkeys(r["family"] for r in rows))
    summaries = {f: interval([r["swd"] for r in rows if r["family"] == f]) for f in families}
    best = min(("latent-edm", "latent-flow-matching"), key=lambda f: summaries[f]["mean"])
    ratio = summaries[best]["mean"] / summaries["vae"]["mean"]
    targets = {"best_spatial": best, "over_vae": round(ratio, 4), "met_le_0.7x_vae": ratio <= 0.7,
               "flat_over_vae": round(summaries["flat-mlp-ldm"]["mean"] / summaries["vae"]["mean"], 4)}
    print(json.dumps(targets, indent=2))
    return {"part": "celeba64-latent", "minutes": args.minutes, "n": args.n, "seeds": args.seeds, "rows": rows,
            "summaries": summaries, "targets": targets}


def cifar_bpd(args, device) -> dict:
    rows = []
    for seed in args.seeds:
        for family, spec in CIFAR.items():
            run, cfg, row = train(spec, args.root, args.minutes, args.runs, device, seed)
            start = time.perf_counter()
            result = score_run(run, cfg, ["bpd"], args.n_bpd, "report", device)
            row.update({"family": family, "bpd": result["bpd"]["value"], "protocol": result["bpd"]["protocol"],
                        "eval_s": round(time.perf_counter() - start, 1)})
            print(f"  {family} seed {seed}: {row['bpd']:.3f} bits/dim ({row['eval_s']:.0f} s)", flush=True)
            rows.append(row)
    summaries = {f: interval([r["bpd"] for r in rows if r["family"] == f]) for f in CIFAR}
    return {"part": "cifar-bpd", "minutes": args.minutes, "n_bpd": args.n_bpd, "seeds": args.seeds, "rows": rows,
            "summaries": summaries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("celeba32", "celeba64-latent", "cifar-bpd"))
    parser.add_argument("--root", type=Path, required=True, help="CelebA (celeba32) or CIFAR-10 (cifar-bpd) folder")
    parser.add_argument("--minutes", type=float, default=7.0, help="training minutes per family and seed")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    parser.add_argument("--n", type=int, default=2000, help="samples for SWD")
    parser.add_argument("--n-bpd", type=int, default=500, help="random test images for bits/dim")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=Path, default=Path("runs-diffusion"), help="named runs: a re-run reuses finished ones")
    parser.add_argument("--grids", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    device = torch.device(args.device)
    parts = {"celeba32": celeba32, "celeba64-latent": celeba64_latent, "cifar-bpd": cifar_bpd}
    result = parts[args.part](args, device)
    write_result(args.out, result, device)


if __name__ == "__main__":
    main()
