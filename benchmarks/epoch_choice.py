"""A training length chosen on the choice split: the SWD that in-training evaluation logged after every
epoch (``eval.every=1``, which scores the choice split: validation, never the report split) of runs
that differ only in their seed, per epoch and per seed, with the epoch each seed and the mean over
seeds would choose among ``--candidates``.

    python benchmarks/epoch_choice.py RUN_SEED0 RUN_SEED1 RUN_SEED2 --candidates 6,19 \\
        --out benchmarks/results/hybrid_epochs-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import write_result

from genlab.metrics.spread import interval


def evaluated_epochs(run: Path, metric: str) -> dict[int, dict]:
    """{epoch: {"value", "protocol"}} from a run's in-training evaluations (the last one per epoch)."""
    out = {}
    for line in (run / "stats.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "eval" and record.get("source") == "training" and metric in record.get("results", {}):
            result = record["results"][metric]
            out[int(round(record["epoch"]))] = {"value": result["value"], "protocol": result["protocol"]}
    if not out:
        raise SystemExit(f"{run}: no in-training evaluation of {metric} in stats.jsonl (train with eval.every=1)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="runs of one preset that differ in train.seed only")
    parser.add_argument("--metric", default="swd")
    parser.add_argument("--candidates", default=None, help="comma-separated epochs to choose among (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    per_run = {str(run): evaluated_epochs(run, args.metric) for run in args.runs}
    epochs = sorted(set.intersection(*(set(e) for e in per_run.values())))
    candidates = [int(e) for e in args.candidates.split(",")] if args.candidates else epochs
    missing = [e for e in candidates if e not in epochs]
    if missing:
        raise SystemExit(f"epochs {missing} were not evaluated in every run (evaluated: {epochs})")
    by_epoch = {e: interval([per_run[r][e]["value"] for r in per_run]) for e in epochs}
    chosen_by_seed = {r: min(candidates, key=lambda e: values[e]["value"]) for r, values in per_run.items()}
    chosen_on_mean = min(candidates, key=lambda e: by_epoch[e]["mean"])
    for e in epochs:
        print(f"epoch {e:3d}: {args.metric} {by_epoch[e]['mean']:.2f} (" +
              ", ".join(f"{per_run[r][e]['value']:.2f}" for r in per_run) + ")" + (" *" if e == chosen_on_mean else ""))
    print(f"chosen among {candidates}: epoch {chosen_on_mean} on the mean; by seed {list(chosen_by_seed.values())}")
    write_result(args.out, {
        "metric": args.metric, "runs": list(per_run), "candidates": candidates,
        "protocol": next(iter(per_run.values()))[epochs[0]]["protocol"],
        "per_run": {r: {str(e): v["value"] for e, v in values.items()} for r, values in per_run.items()},
        "by_epoch": {str(e): s for e, s in by_epoch.items()},
        "chosen_on_mean": chosen_on_mean, "chosen_by_seed": chosen_by_seed,
    }, torch.device("cpu"))


if __name__ == "__main__":
    main()
