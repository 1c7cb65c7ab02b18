"""What every benchmark records beside its numbers: the machine, the software, the command."""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import torch

from genlab import api
from genlab.bench.machine import machine
from genlab.config import EvalSettings


def write_result(path: Path, result: dict, device: torch.device) -> None:
    result = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        **result,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def score_run(run: Path, cfg, metrics: list[str], n: int, split: str, device: torch.device,
              inception_weights: str | None = None, overrides: list[str] | None = None) -> dict:
    """Score a run's last inference snapshot (its EMA weights where it kept them) through genlab's API,
    under `genlab eval`'s protocol: ``n`` samples from seed 0 against ``split``. ``overrides`` are
    `genlab eval`'s sampler.* and evaluation keys (stated in the protocol strings). Nothing is
    recorded in the run (a benchmark writes its own JSON)."""
    settings = EvalSettings(n=n, split=split, inception_weights=inception_weights, seed=0)
    return api.evaluate(run, metrics, settings, device, overrides=overrides, record=False)
