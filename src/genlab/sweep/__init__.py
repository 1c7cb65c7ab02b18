"""`genlab sweep`: a grid of ordinary runs under one sweep folder, then a report of each metric
against each swept key with the spread over seeds.

A sweep folder holds ``sweep.json`` (the manifest: preset, grid, seeds, overrides, metrics and one
entry per run with its status), ``runs/<point>-seed<k>/`` (named run directories: a re-run or
``--resume`` continues each from its checkpoint), ``results.json`` and ``sweep.png``. Every run's
configuration is resolved before the first one starts, so a grid over an unknown key or with a
value of the wrong type is refused naming it. Runs are executed by a runner: ``local`` (N
processes at a time on this machine) or ``ray`` (each run a Ray task, on an existing cluster).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from genlab.analysis.common import pyplot
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.metrics.spread import CONFIDENCE, interval, overlaps, rank_within_noise
from genlab.metrics.table import HIGHER_IS_BETTER, METRICS, parse_metrics
from genlab.resolve import load_config
from genlab.train.rundir import training_finished

log = logging.getLogger("genlab")
MANIFEST = "sweep.json"


@dataclass
class SweepSpec:
    preset: str
    grid: dict[str, list] = field(default_factory=dict)  # dotted key -> values
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)  # applied to every run
    metrics: list[str] = field(default_factory=lambda: ["swd"])  # evaluated after each run (genlab eval)
    eval_n: int = 2000  # samples per evaluation
    name: str = ""
    description: str = ""


# -- parsing -------------------------------------------------------------------------------------
def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split at ``sep`` outside brackets: "a=[1,2],b" -> ["a=[1,2]", "b"]."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1, "{": 1, "}": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current] if current or parts else parts


def parse_grid(entries: list[str]) -> dict[str, list]:
    """``--grid key=v1,v2`` entries -> {key: [v1, v2]}, each value read as YAML."""
    grid: dict[str, list] = {}
    for entry in entries:
        key, eq, values = entry.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise GenlabError(f"--grid {entry!r} must look like key=value1,value2 (for example model.kl_weight=0.001,0.01)")
        if key in grid:
            raise GenlabError(f"--grid names {key!r} twice")
        if key == "train.seed":
            raise GenlabError("--grid train.seed: give seeds with --seeds 0,1,2 (the spread over them is reported)")
        grid[key] = [yaml.safe_load(v) if v.strip() else "" for v in split_top_level(values)]
    return grid


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GenlabError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise GenlabError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def sweep_presets() -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("genlab") / "sweeps")).glob("*.yaml"))


def load_sweep_preset(name: str) -> SweepSpec:
    """A shipped sweep (``src/genlab/sweeps/NAME.yaml``): preset, grid, seeds, overrides."""
    path = Path(str(resources.files("genlab") / "sweeps")) / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {f for f in SweepSpec.__dataclass_fields__}
    if unknown:
        raise GenlabError(f"sweep preset {path}: unknown keys {sorted(unknown)}")
    return SweepSpec(**{**raw, "name": raw.get("name", name)})


def _value_name(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def plan(spec: SweepSpec) -> list[dict]:
    """Every (grid point, seed) as a run entry, each config resolved now: a bad key or value is
    refused before anything runs, naming the key."""
    keys = list(spec.grid)
    entries = []
    for values in itertools.product(*(spec.grid[k] for k in keys)) if keys else [()]:
        point = dict(zip(keys, values))
        point_overrides = [f"{k}={json.dumps(v)}" for k, v in point.items()]
        label = ",".join(f"{k.rsplit('.', 1)[-1]}={_value_name(v)}" for k, v in point.items()) or "base"
        for seed in spec.seeds:
            overrides = [*spec.overrides, *point_overrides, f"train.seed={seed}"]
            try:
                cfg = load_config(spec.preset, overrides)
            except GenlabError as e:
                bad = next((k for k in keys if k in str(e)), None)
                where = f"--grid {bad}" if bad else "the sweep's configuration"
                raise GenlabError(f"{where}: {e} (refused before any run started)") from e
            entries.append({"name": f"{label}-seed{seed}".replace("/", "_"), "point": point, "seed": seed,
                            "overrides": overrides, "method": cfg.method, "status": "pending"})
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise GenlabError("two grid points give the same run name; use values that differ in text")
    return entries


# -- the manifest ----------------------------------------------------------------------------------
def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"), "file")


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise GenlabError(f"{folder} is not a sweep folder (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise GenlabError(f"{path} is not readable JSON ({e})") from e


def run_finished(run_dir: Path, metrics: list[str]) -> bool:
    """Trained to its end (not stopped by a signal) and evaluated on every sweep metric, on both the
    choice split and the report split."""
    if not training_finished(run_dir):
        return False
    summary = json.loads((Path(run_dir) / "metrics.json").read_text())
    wanted = {r for m in metrics for r in METRICS.get(m).results}
    by_split = summary.get("eval_by_split") or {}
    return all(wanted <= set(by_split.get(role) or {}) for role in SPLIT_ROLES)


# A sweep decides on the choice split (validation) and reports the report split (test): a point
# picked as best on the numbers it is then reported with would carry the selection's luck.
SPLIT_ROLES = ("choice", "report")


def job_commands(entry: dict, manifest: dict, run_dir: Path, device: str) -> list[list[str]]:
    """The `genlab train --run-dir` command line of one run and its `genlab eval` on each split role."""
    train = [sys.executable, "-m", "genlab", "train", manifest["preset"], *entry["overrides"], "--run-dir", str(run_dir),
             "--quiet", "--device", device]
    if not manifest["metrics"]:
        return [train]
    return [train, *([sys.executable, "-m", "genlab", "eval", str(run_dir), "--metrics", ",".join(manifest["metrics"]),
                      "--n", str(manifest["eval_n"]), "--split", role, "--device", device, "--json"]
                     for role in SPLIT_ROLES)]


def start(spec: SweepSpec, folder: Path, runner, device: str = "auto") -> dict:
    """Plan the sweep (refusing bad grids before anything runs), write its manifest, run it."""
    folder = Path(folder)
    if folder.exists() and (folder / MANIFEST).exists():
        raise GenlabError(f"{folder} already holds a sweep; continue it with genlab sweep --resume {folder}")
    if folder.exists() and any(folder.iterdir()):
        raise GenlabError(f"--out {folder} exists and is not empty; name a new folder")
    spec.metrics = parse_metrics(spec.metrics)
    entries = plan(spec)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {**asdict(spec), "runs": entries, "device": device}
    write_manifest(folder, manifest)
    return execute(folder, runner)


def execute(folder: Path, runner) -> dict:
    """Run every unfinished run of the sweep in ``folder`` through ``runner``, then its results."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    todo = []
    for entry in manifest["runs"]:
        run_dir = folder / "runs" / entry["name"]
        entry["run_dir"] = str(run_dir)
        if run_finished(run_dir, manifest["metrics"]):
            entry["status"] = "finished"
        else:
            todo.append(entry)
    write_manifest(folder, manifest)
    log.info("sweep %s: %d runs, %d to do, runner %s", folder, len(manifest["runs"]), len(todo), runner.describe())
    jobs = {e["name"]: job_commands(e, manifest, Path(e["run_dir"]), manifest.get("device", "auto")) for e in todo}
    (folder / "logs").mkdir(exist_ok=True)

    def done(name: str, returncode: int) -> None:
        entry = next(e for e in manifest["runs"] if e["name"] == name)
        entry["status"] = "finished" if returncode == 0 else f"failed (exit {returncode}; see logs/{name}.log)"
        write_manifest(folder, manifest)
        log.info("sweep run %s: %s", name, entry["status"])

    runner.run(jobs, folder / "logs", done)
    results = summarize(folder)
    failed = [e["name"] for e in manifest["runs"] if e["status"].startswith("failed")]
    if failed:
        log.warning("sweep %s: %d run(s) failed: %s; fix and continue with genlab sweep --resume %s", folder, len(failed),
                    ", ".join(failed), folder)
    return results


# -- results -----------------------------------------------------------------------------------------
def run_values(run_dir: Path, role: str = "report") -> dict[str, float]:
    """A run's numbers on one split role (its `genlab eval` results there) and, on the choice split,
    its best validation loss (where it has one)."""
    try:
        summary = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    results = (summary.get("eval_by_split") or {}).get(role) or {}
    out = {k: v["value"] for k, v in results.items() if isinstance(v, dict) and isinstance(v.get("value"), (int, float))}
    train = summary.get("train") or {}
    if role == "choice" and train.get("monitor") == "val_loss" and isinstance(train.get("best_monitored"), (int, float)):
        out["best_val_loss"] = train["best_monitored"]
    return out


def _protocol(run_dir: Path, role: str) -> str:
    try:
        evals = (json.loads((run_dir / "metrics.json").read_text()).get("eval_by_split") or {}).get(role) or {}
    except (OSError, ValueError):
        return ""
    return next((r.get("protocol", "") for r in evals.values() if isinstance(r, dict)), "")


def summarize(folder: Path) -> dict:
    """Per grid point and split role, each metric's mean, 95% t-interval, min and max over its
    seeds; per metric the point chosen on the choice split, with every point's report-split
    interval marked against the chosen one's; ``results.json`` and the chart ``sweep.png``."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    points: dict[str, dict] = {}
    protocols = {role: "" for role in SPLIT_ROLES}
    for entry in manifest["runs"]:
        run_dir = Path(entry.get("run_dir") or folder / "runs" / entry["name"])
        label = ", ".join(f"{k}={json.dumps(v)}" for k, v in entry["point"].items()) or "base"
        point = points.setdefault(label, {"label": label, "point": entry["point"], "seeds": [],
                                          "values": {role: {} for role in SPLIT_ROLES}})
        for role in SPLIT_ROLES:
            values = run_values(run_dir, role)
            if role == "report" and values:
                point["seeds"].append(entry["seed"])
            for k, v in values.items():
                point["values"][role].setdefault(k, []).append(v)
            if values and not protocols[role]:
                protocols[role] = _protocol(run_dir, role)
    for point in points.values():
        point["spread"] = {role: {k: interval(v) | {"min": min(v), "max": max(v)} for k, v in point["values"][role].items()}
                           for role in SPLIT_ROLES}
        point["stats"] = point["spread"]["report"]  # the reported numbers
        point["n"] = len(point["seeds"])
    metrics = sorted({k for p in points.values() for k in p["stats"]})
    selection = {}
    for metric in sorted({k for p in points.values() for k in p["spread"]["choice"]}):
        higher = metric in HIGHER_IS_BETTER
        chosen, _ = rank_within_noise({p["label"]: p["spread"]["choice"][metric] for p in points.values()
                                       if metric in p["spread"]["choice"]}, higher)
        report = {p["label"]: p["stats"][metric] for p in points.values() if metric in p["stats"]}
        if chosen not in report:
            continue
        marks = {label: "chosen" if label == chosen else
                 ("1 seed: no interval" if overlaps(s, report[chosen]) is None else
                  "within noise" if overlaps(s, report[chosen]) else
                  "better" if (s["mean"] > report[chosen]["mean"]) == higher else "worse")
                 for label, s in report.items()}
        selection[metric] = {"chosen": chosen, "higher_is_better": higher, "marks": marks}
    results = {"preset": manifest["preset"], "grid": manifest["grid"], "seeds": manifest["seeds"], "metrics": metrics,
               "points": list(points.values()), "selection": selection,
               "protocols": protocols, "example_protocol": protocols["report"],
               "interval": f"mean ± half-width of the {CONFIDENCE:.0%} Student-t interval over seeds",
               "finished": sum(e["status"] == "finished" for e in manifest["runs"]), "total": len(manifest["runs"])}
    atomic_write(folder / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"), "file")
    fig = chart(results)
    if fig is not None:
        atomic_write(folder / "sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"), "image")
        pyplot().close(fig)
    return results


def chart(results: dict):
    """One panel per (metric, swept key): the metric's mean over seeds on the report split against
    the key's values, one line per combination of the other keys, the 95% t-interval as error bars
    (none with one seed)."""
    keys, metrics = list(results["grid"]), [m for m in results["metrics"]]
    if not metrics:
        return None
    keys = keys or ["(seed)"]
    plt = pyplot()
    fig, axes = plt.subplots(len(metrics), len(keys), figsize=(4.8 * len(keys), 3.4 * len(metrics)), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, key in enumerate(keys):
            ax = axes[row][col]
            groups: dict[str, list] = {}
            for p in results["points"]:
                if metric not in p["stats"]:
                    continue
                rest = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in p["point"].items() if k != key)
                groups.setdefault(rest, []).append(p)
            for rest, pts in groups.items():
                if key == "(seed)":
                    xs = [0] * len(pts)
                else:
                    pts = sorted(pts, key=lambda p: (str(type(p["point"][key])), p["point"][key]))
                    xs = [p["point"][key] for p in pts]
                numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
                positions = xs if numeric else list(range(len(xs)))
                means = [p["stats"][metric]["mean"] for p in pts]
                half = [p["stats"][metric]["half_width"] or 0.0 for p in pts]
                ax.errorbar(positions, means, yerr=half, marker="o", capsize=4, label=rest or None)
                if not numeric:
                    ax.set_xticks(positions, [str(x) for x in xs])
                elif len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 20:
                    ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if any(ax.get_legend_handles_labels()[1]):
                ax.legend(fontsize=7)
    fig.suptitle(f"{results['preset']}: report split, mean over seeds {results['seeds']}, bars 95% t-interval",
                 fontsize=10)
    fig.tight_layout()
    return fig
