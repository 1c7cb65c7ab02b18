"""One bench run after its training: its numbers on the choice and report splits for each of the
entry's sampler settings, what a sample costs (network evaluations and images per second), and a
grid at the seeds every entry shares. Written to ``RUN/bench.json`` and ``RUN/bench/ROW.png``.

Run by the bench's runner as ``python -m genlab.bench.score BENCH_DIR RUN_NAME`` (a process of its
own, like the training before it, so a Ray worker or a local slot runs it the same way).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from genlab.analysis.evaluation import evaluate_on_splits
from genlab.config import EvalSettings
from genlab.distributed import resolve_device
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.samplers import describe
from genlab.train.rundir import image_grid, save_grid

from genlab.bench import SCORE_FILE


@contextmanager
def counting_calls(networks: dict[str, torch.nn.Module]):
    """Passes through each network while the block runs: {name: count}, filled as it runs. A pass is
    a call of its forward, or of its ``inverse`` where it has one (a flow samples through its inverse)."""
    counts = {name: 0 for name in networks}
    handles, patched = [], []
    for name, net in networks.items():
        def hook(*_, name=name):
            counts[name] += 1
        handles.append(net.register_forward_hook(hook))
        inverse = getattr(net, "inverse", None)
        if callable(inverse):
            def counted(*args, name=name, inverse=inverse, **kwargs):
                counts[name] += 1
                return inverse(*args, **kwargs)
            net.inverse = counted  # (an instance attribute: removed again below)
            patched.append(net)
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()
        for net in patched:
            del net.inverse


def sampling_cost(method, n: int, batch_size: int) -> dict:
    """Network evaluations per generated batch (each network's passes while one batch of images is
    drawn: a GAN's generator once, a flow's inverse once, a 20-step DDIM's denoiser 20 times, a latent
    family's decoder once more), and images per second over ``n`` images after a warm-up batch."""
    batch_size = max(1, min(batch_size, n))
    with counting_calls(method.networks()) as counts:
        method.sample(batch_size, seed=0, batch_size=batch_size)
    per_network = {k: v for k, v in counts.items() if v}
    if method.device.type == "cuda":
        torch.cuda.synchronize(method.device)
    start = time.perf_counter()
    method.sample(n, seed=0, batch_size=batch_size)
    if method.device.type == "cuda":
        torch.cuda.synchronize(method.device)
    seconds = time.perf_counter() - start
    return {"nfe": sum(per_network.values()), "nfe_by_network": per_network, "images": n, "batch_size": batch_size,
            "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2) if seconds > 0 else None,
            "device": str(method.device)}


def score_run(folder: Path, name: str) -> dict:
    """Score the bench run ``name`` of the bench in ``folder`` (see the module's docstring)."""
    manifest = json.loads((Path(folder) / "bench.json").read_text())
    run = next((r for r in manifest["runs"] if r["name"] == name), None)
    if run is None:
        raise GenlabError(f"{folder}: the bench has no run named {name!r}")
    suite = manifest["suite"]
    entry = next(e for e in suite["entries"] if e["name"] == run["entry"])
    run_dir = Path(folder) / "runs" / name
    train = (json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}).get("train")
    if not train:
        raise GenlabError(f"{run_dir}: training has not finished (no training summary in metrics.json)")
    result = {"run": name, "entry": run["entry"], "seed": run["seed"], "rows": {}}
    if train.get("stopped_because") == "non_finite_loss":  # recorded as diverged, not scored as if it had trained
        result["diverged"] = f"non-finite loss at step {train.get('steps')}"
        atomic_write(run_dir / SCORE_FILE, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"), "file")
        return result
    device = resolve_device(manifest.get("device", "auto"))
    rows = result["rows"]
    for row, settings in entry["samplers"].items():
        eval_settings = EvalSettings(metrics=suite["metrics"], n=suite["eval_n"])
        numbers, model = evaluate_on_splits(run_dir, suite["metrics"], eval_settings, suite["splits"], device,
                                            overrides=settings or None, applicable_only=True)
        method = model.method
        cost = sampling_cost(method, suite["speed_n"], suite["speed_n"])
        grid = Path(run_dir) / "bench" / f"{row or 'samples'}.png"
        grid.parent.mkdir(exist_ok=True)
        save_grid(image_grid(method.sample(suite["grid_n"], seed=0)), grid)
        rows[row] = {"settings": settings, "sampler": describe(method.sampling), "choice": numbers["choice"],
                     "report": numbers["report"], "sampling": cost, "grid": str(grid.relative_to(run_dir)),
                     "step": model.payload["progress"]["step"]}
    atomic_write(run_dir / SCORE_FILE, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"), "file")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genlab.bench.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    try:
        score_run(args.folder, args.name)
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
