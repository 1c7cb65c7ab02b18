"""Spatial latent diffusion against the VAE at equal total training time (issue 32's latent part).

At CelebA 64x64 and equal total training time (a first stage's time included), the best VAE preset
(``vae-celeba64``) for the whole budget, the flat-MLP latent diffusion (``ldm-celeba64``) over a VAE
trained for half of it, and latent EDM and latent flow matching over a ``klae-celeba64`` first stage
trained for half of it (one first stage shared by the two: each is charged its full time). SWD of
``--n`` samples against the report split. Target: the spatial latent diffusion at <= 0.7x the VAE's
SWD. (Its entries train on another entry's run, which `genlab bench` suites do not express yet; the
pixel-space comparisons this script also made are the suites ``celeba32-cpu`` and
``cifar10-likelihood``: see docs/bench.md.)

Wall-time budgets move with the machine's load: run it alone. On this project's CPU:

    cd benchmarks && python diffusion_quality.py --root ../../shared/data/celeba --minutes 14 --n 2000 \
        --seeds 0,1,2 --out results/diffusion_latent-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import score_run, write_result

from genlab.metrics.spread import interval

CELEBA64_VAE = "vae-celeba64"
CELEBA64_FLAT = ("vae-celeba64-seed002", "ldm-celeba64")  # (first stage, latent diffusion)
CELEBA64_SPATIAL = ("klae-celeba64", ("latent-edm-celeba64", "latent-flow-matching-celeba64"))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the CelebA folder")
    parser.add_argument("--minutes", type=float, default=14.0, help="total training minutes per family and seed")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    parser.add_argument("--n", type=int, default=2000, help="samples for SWD")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=Path, default=Path("runs-diffusion"), help="named runs: a re-run reuses finished ones")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    device = torch.device(args.device)
    result = celeba64_latent(args, device)
    write_result(args.out, result, device)


if __name__ == "__main__":
    main()
