"""Today's GAN baselines against the older ones at equal training wall time, over seeds: DCGAN,
genlab's `gan-celeba64`, the SN-ResNet with the hinge loss (`sngan-celeba64`) and R3GAN
(`r3gan-celeba64`), each trained for the same minutes (`train.max_minutes`: validation, grids and
evaluation not counted) on the same CelebA images and scored the same way: SWD (`genlab eval`'s
protocol, weight-free) of N samples from the weights each preset samples with, against the report
split (CelebA's carved test split: half of the official validation partition; nothing was chosen on
it). Per preset: each seed's SWD, the mean and a 95% t-interval over seeds, the ratio of means to the
reference, whether the interval is clear of the old best's, and the divergence rate (a run that
stopped on non-finite values or rolled back).

On a CPU, at 32x32, each seed in its own one-thread process (two at a time on two cores):

    for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/gan_modern.py --root ../shared/data/celeba \\
        --size 32 --minutes 4 --seeds $s --out RUNS/part$s.json --runs RUNS/s$s & done; wait
    python benchmarks/gan_modern.py --merge RUNS/part0.json RUNS/part1.json RUNS/part2.json \\
        --out benchmarks/results/gan_modern-cpu.json

``--rescore`` scores the runs of part files again (found under each part's ``--runs``) on the report
split, keeping each row's earlier number as ``swd_before`` with its protocol.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from common import score_run, write_result

from genlab import api
from genlab.metrics.spread import interval as spread_interval
from genlab.resolve import load_config

# At 32x32 the residual presets have one resolution step less, and on a CPU they are narrowed alike to
# widths 32, 64, 128 (R3GAN with one block per resolution): at the presets' widths a step of R3GAN's
# (R1 and R2 each need a second backward pass) took 9.7 s on one CPU thread, against DCGAN's 0.3 s.
NARROW = "+model.g_widths=[32,64,128]+model.d_widths=[32,64,128]"
PRESETS = f"dcgan-celeba64;gan-celeba64;sngan-celeba64{NARROW};r3gan-celeba64{NARROW}+model.blocks=1"
OLD = ("dcgan-celeba64", "gan-celeba64")  # the baselines before; the best of them is "the old best"


def interval(values: list[float]) -> dict:
    """Mean and the 95% Student-t interval over seeds (none with one seed: say so)."""
    spread = spread_interval(values)
    out = {"mean": spread["mean"], "low": spread["low"], "high": spread["high"], "seeds": spread["n"]}
    return out if spread["n"] > 1 else out | {"note": "1 seed"}


def train_and_score(spec: str, root: Path, size: int, minutes: float, seed: int, n: int, runs: Path,
                    device: torch.device, schedule_steps: int) -> dict:
    preset, *variant = spec.split("+")
    overrides = [f"data.root={root}", f"data.size={size}", f"train.max_minutes={minutes}", "train.epochs=100000",
                 "train.grid_every=0", f"train.seed={seed}", "train.log_every=5", "train.patience=null", *variant]
    if load_config(preset, [f"data.root={root}"]).model.schedule_steps:
        overrides.append(f"model.schedule_steps={schedule_steps}")  # R3GAN's schedules over this run's length
    run = api.train(preset, runs, device, quiet=True, overrides=overrides)
    summary = json.loads((run / "metrics.json").read_text())["train"]
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    rollbacks = sum(r["kind"] == "rollback" for r in records)
    results = score_run(run, load_config(preset, overrides), ["swd"], n, "report", device)
    return {"preset": preset, "spec": spec, "seed": seed, "steps": summary["steps"],
            "train_s": summary["train_time_s"], "stopped_because": summary["stopped_because"], "rollbacks": rollbacks,
            "diverged": summary["stopped_because"] == "non_finite_loss" or rollbacks > 0,
            "swd": results["swd"]["value"], "protocol": results["swd"]["protocol"], "overrides": overrides}


def rescore(row: dict, part: dict, n: int, device: torch.device) -> dict:
    """One row of a part file scored again on the report split, from its run (the only run directory
    under the part's --runs/PRESET)."""
    command = part["command"].split()
    runs = Path(command[command.index("--runs") + 1])
    (run,) = sorted((runs / row["preset"]).iterdir())
    results = score_run(run, load_config(row["preset"], row["overrides"]), ["swd"], n, "report", device)
    return row | {"swd": results["swd"]["value"], "protocol": results["swd"]["protocol"], "run": str(run),
                  "swd_before": row["swd"], "protocol_before": row["protocol"]}


def summarise(rows: list[dict], reference: str) -> dict:
    by_preset: dict[str, list[dict]] = {}
    for row in rows:
        by_preset.setdefault(row["preset"], []).append(row)
    stats = {p: {**interval([r["swd"] for r in rs]), "swd_by_seed": {r["seed"]: r["swd"] for r in rs},
                 "divergence_rate": sum(r["diverged"] for r in rs) / len(rs),
                 "steps_mean": statistics.fmean(r["steps"] for r in rs)} for p, rs in by_preset.items()}
    old_best = min((p for p in stats if p in OLD), key=lambda p: stats[p]["mean"])
    for p, s in stats.items():
        s["vs_reference"] = s["mean"] / stats[reference]["mean"]
        ob = stats[old_best]
        s["clear_of_old_best"] = (s["high"] is not None and ob["low"] is not None and s["high"] < ob["low"])
    new_best = min((p for p in stats if p not in OLD), key=lambda p: stats[p]["mean"])
    target = {"new_best": new_best, "old_best": old_best,
              "ratio_to_reference": stats[new_best]["vs_reference"],
              "met": stats[new_best]["vs_reference"] <= 0.5 and stats[new_best]["clear_of_old_best"]}
    return {"stats": stats, "target": target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="the CelebA folder")
    parser.add_argument("--presets", default=PRESETS, help="separated by ';'; PRESET+key=value+... tries a variant")
    parser.add_argument("--reference", default="dcgan-celeba64")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per run (the budget)")
    parser.add_argument("--schedule-steps", type=int, default=150,
                        help="R3GAN's schedules run over this many steps (about a run's length at this budget)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n", type=int, default=2000, help="samples scored per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", help="merge part files (one per seed) instead of training")
    parser.add_argument("--rescore", type=Path, nargs="+", help="score the runs of part files again on the report split")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.rescore:
        parts = [json.loads(p.read_text()) for p in args.rescore]
        rows = [rescore(row, part, args.n, device) for part in parts for row in part["rows"]]
        budget = parts[0]["budget"] | {"split": "report", "rescored": True}
        commands = [part["command"] for part in parts]
        write_result(args.out, {"budget": budget, "parts": commands, "rows": rows,
                                **summarise(rows, parts[0]["reference"]), "reference": parts[0]["reference"]}, device)
        return
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        rows = [row for part in parts for row in part["rows"]]
        budget = parts[0]["budget"]
        commands = [part["command"] for part in parts]
        write_result(args.out, {"budget": budget, "parts": commands, "rows": rows,
                                **summarise(rows, parts[0]["reference"]), "reference": parts[0]["reference"]}, device)
        return
    runs = args.runs or Path(tempfile.mkdtemp(prefix="genlab-gan-modern-"))
    rows = [train_and_score(spec, args.root, args.size, args.minutes, int(seed), args.n, runs / spec.split("+")[0],
                            device, args.schedule_steps)
            for seed in args.seeds.split(",") for spec in args.presets.split(";")]
    budget = {"size": args.size, "train_minutes": args.minutes, "samples": args.n, "split": "report",
              "r3gan_schedule_steps": args.schedule_steps}
    write_result(args.out, {"budget": budget, "reference": args.reference, "rows": rows,
                            **summarise(rows, args.reference)}, device)


if __name__ == "__main__":
    main()
