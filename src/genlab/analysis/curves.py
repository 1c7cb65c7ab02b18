"""Every scalar a run logged, over optimisation steps: raw (thin) and smoothed (thick) as
TensorBoard's smoothing slider does, with the epoch-end validation values of the same quantity as
points over them. Each quantity gets its own axis, so a VAE's reconstruction and KL terms and a
GAN's D and G losses are each read on their own scale. Read from ``stats.jsonl``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from genlab.analysis.common import pyplot
from genlab.errors import GenlabError

SKIP = {"kind", "step", "epoch", "time_s", "images_per_s", "eval_seconds"}


def read_stats(run_dir: Path) -> list[dict]:
    """The records of stats.jsonl (a torn last line, from a killed writer, is left out)."""
    path = Path(run_dir) / "stats.jsonl"
    if not path.is_file():
        raise GenlabError(f"{run_dir} has no stats.jsonl: not a run directory, or it never logged")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def series(records: list[dict]) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """Training scalars {name: [(step, value)]} from the train records, and epoch-end values
    {name: [(step, value)]} (val_*, eval_*) from the epoch records. A resumed run's records after
    a resume replace nothing: stats.jsonl was trimmed to the checkpoint when it resumed."""
    train: dict[str, list] = {}
    epoch: dict[str, list] = {}
    for r in records:
        target = train if r.get("kind") == "train" else epoch if r.get("kind") == "epoch" else None
        if target is None:
            continue
        for key, value in r.items():
            if key in SKIP or key.startswith("train_") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if math.isfinite(value):
                target.setdefault(key, []).append((r["step"], float(value)))
    return train, epoch


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start (as its
    scalar dashboard does since 2.x), weight 0.6 by default."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def panels(train: dict, epoch: dict) -> list[tuple[str, list, list]]:
    """(title, training points, validation points) per quantity: a training scalar with its val_
    counterpart, then epoch-only values (eval_*, a val_ without a training twin)."""
    out, used = [], set()
    for key, points in train.items():
        val = epoch.get(f"val_{key}", [])
        used.add(f"val_{key}")
        out.append((key, points, val))
    for key, points in epoch.items():
        if key not in used:
            out.append((key, [], points))
    return out


def curves_figure(runs: dict[str, Path], weight: float = 0.6, keys: list[str] | None = None):
    """A figure with one axis per quantity, every run's curve on it (one run, or several overlaid on
    shared axes for a report), and the numbers: each quantity's last raw and smoothed value per run."""
    per_run = {label: panels(*series(read_stats(path))) for label, path in runs.items()}
    titles: list[str] = []
    for p in per_run.values():
        titles += [t for t, _, _ in p if t not in titles]
    if keys:
        titles = [t for t in titles if t in keys]
    if not titles:
        raise GenlabError(f"no logged scalars in {', '.join(str(p) for p in runs.values())} yet")
    plt = pyplot()
    cols = min(3, len(titles))
    rows = math.ceil(len(titles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    numbers: dict[str, dict] = {}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, title in zip(axes.flat, titles):
        for i, (label, run_panels) in enumerate(per_run.items()):
            found = [(t, tr, va) for t, tr, va in run_panels if t == title]
            if not found:
                continue
            _, points, val = found[0]
            colour = colours[i % len(colours)]
            name = label if len(runs) > 1 else "train"
            if points:
                steps, values = zip(*points)
                smoothed = smooth(list(values), weight)
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(steps, smoothed, color=colour, linewidth=1.6, label=f"{name} (smoothed {weight})")
                numbers.setdefault(title, {})[label] = {"last": values[-1], "last_smoothed": smoothed[-1],
                                                        "steps": steps[-1]}
            if val:
                steps, values = zip(*val)
                ax.plot(steps, values, "o", color=colour, markersize=4, markeredgecolor="black", markeredgewidth=0.5,
                        label=f"{label + ' ' if len(runs) > 1 else ''}validation" if points else name)
                numbers.setdefault(title, {}).setdefault(label, {})["last_validation"] = values[-1]
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(titles):]:
        ax.axis("off")
    fig.tight_layout()
    return fig, {"smoothing": weight, "quantities": numbers}
