"""What every benchmark records beside its numbers: the machine, the software, the command."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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
              inception_weights: str | None = None, adjust=None) -> tuple[object, dict]:
    """Score a run's last inference snapshot (its EMA weights where it kept them) under `genlab eval`'s
    protocol: ``n`` samples from seed 0 against ``split``. ``adjust(method)`` may change sampling or
    likelihood settings first (stated in the protocol strings). Returns the model and the results."""
    from genlab.data import build_dataset
    from genlab.metrics.evaluate import Evaluator
    from genlab.metrics.settings import EvalSettings
    from genlab.train.checkpoint import build_method_from_checkpoint, weights_description

    method, _, payload = build_method_from_checkpoint(run / "checkpoints" / "last-inference.pt", device)
    if adjust is not None:
        adjust(method)
    settings = EvalSettings(n=n, split=split, inception_weights=inception_weights, seed=0)
    evaluator = Evaluator(build_dataset(cfg.data), cfg.data, settings, device)
    label = f"{cfg.name} at step {payload['progress']['step']}, {weights_description(payload)}"
    results, _ = evaluator.score_method(method, metrics, label)
    return method, results
