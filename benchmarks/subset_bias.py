"""What a first-n subset of a class-sorted split does to a number: one checkpoint's bits/dim on the
first N images of CIFAR-10's test split (stored class by class, so all airplanes) and on N random
ones (seed 0, `genlab eval`'s protocol since the report split). The same model, the same N; only
the choice of images differs.

    cd benchmarks && python subset_bias.py RUN_DIR [RUN_DIR ...] --n 500 --out results/subset_bias-cpu.json

(RUN_DIR: a RealNVP run, e.g. one of `genlab bench cifar10-likelihood`.)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from common import write_result

from genlab import api
from genlab.config import EvalSettings
from genlab.data import build_dataset
from genlab.metrics.evaluate import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for run in args.runs:
        model = api.load(run, device)
        data = build_dataset(model.config.data)
        settings = EvalSettings(n=args.n, seed=0, split="test")
        first = Evaluator(dataclasses.replace(data, test=data.test[: args.n]), model.config.data, settings, device)
        random = Evaluator(data, model.config.data, settings, device)
        labels = data.labels.get("test")
        row = {"run": str(run), "method": model.config.method, "step": model.payload["progress"]["step"]}
        for name, evaluator in (("first", first), ("random", random)):
            result = evaluator.bits_per_dim(model.method)["bpd"]
            row[f"bpd_{name}"], row[f"protocol_{name}"] = result["value"], result["protocol"]
        if labels is not None:
            row["classes_in_first"] = sorted(set(labels[: args.n].tolist()))
        rows.append(row)
        print(f"{run}: first {args.n} {row['bpd_first']:.3f}, {args.n} random {row['bpd_random']:.3f}", flush=True)
    write_result(args.out, {"n": args.n, "rows": rows}, device)


if __name__ == "__main__":
    main()
