"""VAE-family quality at an equal budget: every given preset trains on the CelebA subset for the
same number of epochs, and each is scored the same way: reconstruction PSNR and SSIM of a random
subset of the report split (families with an encoder; `genlab eval --metrics recon`), SWD of N
samples against the report split (CelebA's carved test split; nothing is chosen on it), wall time. One JSON with the machine, the command and a row per
preset, plus ratios against the reference preset (seed 002's VAE); each run's last sample grid is
copied to --grids for the README.

On a CPU: 32x32 and a few epochs, about 20 minutes for the default presets; on a GPU: 64x64, 30 epochs.
An override's value ``@PRESET`` is the run directory of an earlier row of that preset in this
benchmark (``@reference``: the reference's): the unbalanced GAN starts from seed 002's decoder with
``init.from_run=@reference``, the hybrid over the σ-VAE with ``init.from_run=@vae-celeba64``.
Families without an encoder (a GAN, the hybrid) get SWD only. ``--seeds 0,1,2`` trains every row once
per seed (``train.seed``; ``@PRESET`` is that seed's run) and adds each spec's mean, minimum and maximum:
one seed's SWD can move by a tenth between seeds, more than many of the changes it is asked to judge.
Seeds can also run as separate processes (one core each, ``--seeds 1 --out part1.json`` ...) and be
joined afterwards with ``--merge part0.json part1.json ... --out all.json`` (ratios and summaries recomputed).

    python benchmarks/vae_quality.py --root ../shared/data/celeba --size 32 --epochs 3 \\
        --out benchmarks/results/vae_quality-cpu.json --grids docs/vae
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

from genlab.sweep import split_top_level

WIDTHS_32 = "model.widths=[64,128,256]"  # the 64x64 presets' last three widths: 32x32 needs three steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="the CelebA folder (required unless --merge)")
    parser.add_argument("--presets", default=f"vae-celeba64-seed002+{WIDTHS_32},vae-celeba64+{WIDTHS_32},"
                        f"vaegan-celeba64+{WIDTHS_32}+model.d_widths=[64,128,256]",
                        help="comma-separated; PRESET+key=value+... adapts a preset")
    parser.add_argument("--reference", default="vae-celeba64-seed002", help="the preset the others are compared with")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values; each row is trained once per seed")
    parser.add_argument("--n", type=int, default=10_000, help="samples for SWD")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--grids", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="join the rows of these results (each of other seeds) into --out instead of training")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.merge:
        return merge(args.merge, args.out, device)
    if args.root is None:
        parser.error("--root is required")

    from genlab.api import train as start_training
    from genlab.resolve import load_config

    runs = args.runs or Path(tempfile.mkdtemp(prefix="genlab-vae-quality-"))
    from genlab.methods import METHODS
    from genlab.metrics.table import default_metrics

    rows, grid_names = [], set()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for seed in seeds:
        run_of = {}  # preset -> this seed's run, for @PRESET
        for spec in split_top_level(args.presets):
            preset, *variant = spec.split("+")
            for i, v in enumerate(variant):
                if "=@" in v:
                    key, name = v.split("=@", 1)
                    name = args.reference if name == "reference" else name
                    if name not in run_of:
                        raise SystemExit(f"{spec}: @{name} needs a row of preset {name} earlier in --presets")
                    variant[i] = f"{key}={run_of[name]}"
            overrides = [f"data.root={args.root}", f"data.size={args.size}", f"train.epochs={args.epochs}",
                         "train.patience=null", "train.log_every=50", f"train.seed={seed}", *variant]
            cfg = load_config(preset, overrides)
            print(f"{spec} (seed {seed}): {args.epochs} epochs", flush=True)
            start = time.perf_counter()
            # a named run per row: a re-run of the benchmark keeps (or resumes) the runs it finished
            run = start_training(cfg, runs, device, quiet=True, run_dir=runs / f"{len(run_of):02d}-{preset}")
            wall = time.perf_counter() - start
            run_of.setdefault(preset, run)
            summary = json.loads((run / "metrics.json").read_text())["train"]
            metrics = ["swd", "recon"] if "recon" in default_metrics(METHODS.get(cfg.method)) else ["swd"]
            results = score_run(run, cfg, metrics, args.n, "report", device)
            value = lambda key: results[key]["value"] if key in results else None
            row = {"preset": preset, "spec": spec, "seed": seed, "family": cfg.method, "overrides": overrides,
                   "steps": summary["steps"], "train_wall_s": summary.get("train_time_s", round(wall, 1)),
                   "stopped_because": summary["stopped_because"], "swd": value("swd"), "psnr": value("psnr"),
                   "ssim": value("ssim"), "mse": value("mse"),
                   "protocols": {k: r["protocol"] for k, r in results.items()}}
            rows.append(row)
            print(f"  swd {row['swd']:.2f} psnr {row['psnr']} ssim {row['ssim']} ({wall:.0f} s)", flush=True)
            if args.grids:
                grids = sorted((run / "samples").glob("*.png"), key=lambda p: p.stat().st_mtime)
                if grids:
                    name, k = f"{preset}-{args.size}" + (f"-seed{seed}" if len(seeds) > 1 else ""), 2
                    while name in grid_names:  # the same preset in two variants
                        name, k = f"{preset}-{args.size}-{k}", k + 1
                    grid_names.add(name)
                    row["grid"] = str(args.grids / f"{name}.png")
                    args.grids.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(grids[-1], row["grid"])
    compare_to_reference(rows, seeds, args.reference)
    summaries = summarise(rows, args.reference)
    write_result(args.out, {"size": args.size, "epochs": args.epochs, "n": args.n, "reference": args.reference,
                            "seeds": seeds, "rows": rows, "summaries": summaries}, device)
    report(rows, summaries, seeds)


def compare_to_reference(rows: list[dict], seeds: list[int], reference_preset: str) -> None:
    for seed in seeds:  # each row against the reference trained with the same seed
        reference = next(r for r in rows if r["preset"] == reference_preset and r["seed"] == seed)
        for r in (r for r in rows if r["seed"] == seed):
            r["psnr_minus_reference_db"] = round(r["psnr"] - reference["psnr"], 3) if r["psnr"] is not None else None
            r["swd_over_reference"] = round(r["swd"] / reference["swd"], 4)


def merge(parts: list[Path], out: Path, device: torch.device) -> None:
    """One result from results of the same presets and settings at other seeds (separate processes)."""
    results = [json.loads(p.read_text()) for p in parts]
    first = results[0]
    for p, r in zip(parts, results):
        if (r["size"], r["epochs"], r["n"], r["reference"]) != (first["size"], first["epochs"], first["n"], first["reference"]):
            raise SystemExit(f"{p}: other settings than {parts[0]} (size, epochs, n or reference)")
    rows = [row for r in results for row in r["rows"]]
    seeds = [seed for r in results for seed in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seeds {seeds}: a seed appears in more than one part")
    compare_to_reference(rows, seeds, first["reference"])
    summaries = summarise(rows, first["reference"])
    write_result(out, {"size": first["size"], "epochs": first["epochs"], "n": first["n"], "reference": first["reference"],
                       "seeds": seeds, "parts": [{"command": r["command"], "date": r["date"], "machine": r["machine"]}
                                                 for r in results],
                       "rows": rows, "summaries": summaries}, device)
    report(rows, summaries, seeds)


def report(rows: list[dict], summaries: dict, seeds: list[int]) -> None:
    for r in rows:
        recon = (f"psnr {r['psnr']:6.2f} ({r['psnr_minus_reference_db']:+.2f} dB)  ssim {r['ssim']:.4f}"
                 if r["psnr"] is not None else "no encoder")
        print(f"{r['spec']:<70} seed {r['seed']}  swd {r['swd']:8.2f} ({r['swd_over_reference']:.2f}x)  {recon}  "
              f"{r['train_wall_s']:.0f} s")
    if len(seeds) > 1:
        for spec, m in summaries.items():
            recon = f"psnr {m['psnr_mean']:6.2f} ({m['psnr_minus_reference_db']:+.2f} dB)" if m["psnr_mean"] else ""
            print(f"{spec:<70} mean of {len(seeds)}: swd {m['swd_mean']:8.2f} [{m['swd_min']:.2f}, {m['swd_max']:.2f}] "
                  f"({m['swd_over_reference']:.2f}x)  {recon}")


def summarise(rows: list[dict], reference: str) -> dict:
    """Per spec over its seeds: mean, minimum and maximum SWD and PSNR; ratios of the means against the
    reference's means (the same seeds)."""
    by_spec: dict[str, list[dict]] = {}
    for r in rows:
        by_spec.setdefault(r["spec"], []).append(r)
    mean = lambda xs: sum(xs) / len(xs)
    out = {}
    for spec, rs in by_spec.items():
        swd = [r["swd"] for r in rs]
        psnr = [r["psnr"] for r in rs if r["psnr"] is not None]
        out[spec] = {"seeds": [r["seed"] for r in rs], "swd_mean": round(mean(swd), 3), "swd_min": min(swd),
                     "swd_max": max(swd), "psnr_mean": round(mean(psnr), 3) if psnr else None,
                     "psnr_min": min(psnr) if psnr else None, "psnr_max": max(psnr) if psnr else None,
                     "train_wall_s_mean": round(mean([r["train_wall_s"] for r in rs]), 1)}
    ref = next(m for spec, m in out.items() if spec.split("+")[0] == reference)
    for m in out.values():
        m["swd_over_reference"] = round(m["swd_mean"] / ref["swd_mean"], 4)
        m["psnr_minus_reference_db"] = (round(m["psnr_mean"] - ref["psnr_mean"], 3)
                                        if m["psnr_mean"] is not None else None)
    return out


if __name__ == "__main__":
    main()
