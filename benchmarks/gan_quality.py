"""GAN quality at an equal budget: every given preset trains on the same data for the same number of
training images (each preset keeps its own batch size, so the step counts differ), and each is
scored the same way: SWD (`genlab eval`'s protocol, weight-free) of N samples against the
report split (CelebA's carved test split), plus FID where Inception weights are given. Samples come from the weights each
preset samples with (the EMA of G where the preset keeps one). One JSON with the machine, the
command, the budget and a row per preset (SWD, FID, wall time, images/s, whether it diverged);
the last sample grid of each run is copied to --grids for the README.

On a CPU: 32x32 (`--size 32`) and a budget that fits in about 20 minutes for four presets; on a GPU:
64x64 and 1.2 million images per preset.

    python benchmarks/gan_quality.py --root ../shared/data/celeba --size 32 --images 40960 \\
        --presets dcgan-celeba64,wgangp-celeba64-seed000,lsgan-celeba64-seed002,gan-celeba64 \\
        --out benchmarks/results/gan_quality-cpu.json --grids docs/gan
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import score_run, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the CelebA folder")
    parser.add_argument("--presets", default="dcgan-celeba64,wgangp-celeba64-seed000,lsgan-celeba64-seed002,gan-celeba64",
                        help="comma-separated; PRESET+key=value+key=value tries a variant of a preset")
    parser.add_argument("--reference", default="dcgan-celeba64", help="the preset the others are compared with")
    parser.add_argument("--images", type=int, default=40_960, help="training images per preset (the budget)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n", type=int, default=10_000, help="samples scored per preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception-weights", default=None, help="also FID, with this local copy of the weights")
    parser.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--grids", type=Path, default=None, help="copy each run's last sample grid here")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)

    from genlab.api import train as start_training
    from genlab.resolve import load_config

    runs = args.runs or Path(tempfile.mkdtemp(prefix="genlab-gan-quality-"))
    metrics = ["swd"] + (["fid"] if args.inception_weights else [])
    rows = []
    for spec in args.presets.split(","):
        preset, *variant = spec.split("+")
        base = load_config(preset, [f"data.root={args.root}", *variant])
        steps = math.ceil(args.images / base.train.batch_size)
        overrides = [f"data.root={args.root}", f"data.size={args.size}", f"train.max_steps={steps}",
                     "train.epochs=100000", "train.grid_every=0", f"train.seed={args.seed}", "train.log_every=50", *variant]
        cfg = load_config(preset, overrides)
        print(f"{spec}: {steps} steps of {cfg.train.batch_size} ({steps * cfg.train.batch_size} images)", flush=True)
        start = time.perf_counter()
        run = start_training(cfg, runs, device, quiet=True)
        wall = time.perf_counter() - start
        summary = json.loads((run / "metrics.json").read_text())["train"]
        diverged = summary["stopped_because"] == "non_finite_loss"
        row = {"preset": spec, "overrides": overrides, "steps": summary["steps"],
               "images": summary["steps"] * cfg.train.batch_size, "train_wall_s": round(wall, 1),
               "images_per_s": summary["images_per_s"], "diverged": diverged}
        if not diverged:
            results = score_run(run, cfg, metrics, args.n, "report", device, args.inception_weights)
            row.update({name: r["value"] for name, r in results.items()})
            row["protocols"] = {name: r["protocol"] for name, r in results.items()}
        if args.grids:
            grids = sorted((run / "samples").glob("*.png"))
            if grids:
                args.grids.mkdir(parents=True, exist_ok=True)
                name = spec.replace("+", "_").replace("=", "-").replace(",", "-")
                shutil.copyfile(grids[-1], args.grids / f"{name}.png")
                row["grid"] = str(args.grids / f"{name}.png")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("protocols", "overrides")}), flush=True)

    reference = next((r for r in rows if r["preset"] == args.reference and "swd" in r), None)
    for row in rows:
        if reference and "swd" in row:
            row["swd_vs_reference"] = round(row["swd"] / reference["swd"], 3)
    best = min((r for r in rows if "swd" in r), key=lambda r: r["swd"], default=None)
    result = {
        "budget": {"images_per_preset": args.images, "size": args.size, "data": str(args.root), "seed": args.seed,
                   "scored_samples": args.n, "reference_split": "report"},
        "metric_note": "SWD x1e3 of N samples vs the report split (genlab eval's protocol; lower is better)"
                       + ("; FID with InceptionV3" if args.inception_weights else "; no Inception weights here, so no FID"),
        "reference": args.reference, "best": best["preset"] if best else None, "rows": rows,
    }
    write_result(args.out, result, device)
    if args.runs is None:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
