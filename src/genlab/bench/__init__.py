"""`genlab bench`: every entry of a suite trained at the same compute on the same data, scored under
one protocol with its spread over seeds, ranked on one page.

A bench folder holds ``bench.json`` (the manifest: the suite as loaded, one entry per run with its
status, the machine), ``runs/<entry>-seed<k>/`` (ordinary named runs: resumable, each with the
``bench.json`` of :mod:`genlab.bench.score`), ``logs/``, ``results.json`` (leaderboards per metric,
means and 95% t-intervals over seeds, ranks with ties) and the charts; `genlab report` renders it
(``report.html``). Runs go through the sweep's runners (local processes or Ray tasks), so a bench
runs where a sweep runs; a killed bench continues with ``genlab bench --resume DIR``, finishing only
the runs that have no score yet.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import shlex
import sys
import time
from pathlib import Path

from genlab.analysis.common import pyplot
from genlab.bench import detectors
from genlab.bench.machine import machine
SCORE_FILE = "bench.json"  # a scored run's numbers (genlab.bench.score writes it)
from genlab.bench.suite import Suite, load_suite, resolve_entry, shipped_suites  # noqa: F401  (the package's API)
from genlab.distributed import resolve_device
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.metrics.spread import CONFIDENCE, interval, overlaps, ranks_with_ties
from genlab.metrics.table import HIGHER_IS_BETTER
from genlab.train.rundir import training_finished

log = logging.getLogger("genlab")
MANIFEST = "bench.json"
RESULTS = "results.json"
CHARTS = {"time": "quality-vs-time.png", "cost": "quality-vs-cost.png"}


def _run_name(entry: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", entry).strip("_") + f"-seed{seed}"


def plan(suite: Suite) -> list[dict]:
    """One run per (entry, seed), each with the overrides that give it (resolved when the suite loaded)."""
    runs = []
    for entry in suite.entries:
        for seed in suite.seeds:
            _, overrides = resolve_entry(suite, entry, seed)
            runs.append({"name": _run_name(entry.name, seed), "entry": entry.name, "seed": seed, "preset": entry.preset,
                         "overrides": overrides, "status": "pending"})
    return runs


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write(Path(folder) / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n"), "file")


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise GenlabError(f"--resume {folder}: no such folder")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise GenlabError(f"--resume {folder}: not a bench folder (no {MANIFEST}; genlab bench SUITE --out DIR makes one)") from None
    except ValueError as e:
        raise GenlabError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(manifest, dict) or "suite" not in manifest or "runs" not in manifest:
        raise GenlabError(f"--resume {folder}: {path} is not a bench manifest (a sweep's? use genlab sweep --resume)")
    return manifest


def add_seeds(folder: Path, seeds: list[int]) -> None:
    """Extend a bench with more training seeds (``genlab bench --resume DIR --seeds 0,1,2``): the new
    seeds' runs are planned from the suite as it was loaded; runs already there are kept."""
    manifest = read_manifest(folder)
    suite = Suite.from_json(manifest["suite"])
    missing = [k for k in suite.seeds if k not in seeds]
    if missing:
        raise GenlabError(f"--seeds {','.join(map(str, seeds))} leaves out seeds {missing} the bench already has; "
                          "--resume may only add seeds")
    new = [k for k in seeds if k not in suite.seeds]
    if not new:
        return
    suite.seeds = suite.seeds + new
    added = plan(Suite(**{**vars(suite), "seeds": new}))
    manifest["suite"], manifest["runs"] = suite.to_json(), manifest["runs"] + added
    write_manifest(folder, manifest)
    log.info("bench %s: seeds %s added (%d runs)", folder, new, len(added))


def job_commands(run: dict, folder: Path, device: str) -> list[list[str]]:
    """Train the run (a named run: resumed when it exists), then score it."""
    run_dir = folder / "runs" / run["name"]
    return [[sys.executable, "-m", "genlab", "train", run["preset"], *run["overrides"], "--run-dir", str(run_dir),
             "--quiet", "--device", device],
            [sys.executable, "-m", "genlab.bench.score", str(folder), run["name"]]]


def start(suite: Suite, folder: Path, runner, device: str = "auto", command: str = "") -> dict:
    """Plan the bench (the suite is already checked), write its manifest, run it."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        raise GenlabError(f"{folder} already holds a bench; continue it with genlab bench --resume {folder}")
    if folder.exists() and any(folder.iterdir()):
        raise GenlabError(f"--out {folder} exists and is not empty; name a new folder")
    runs = plan(suite)
    data = resolve_entry(suite, suite.entries[0], suite.seeds[0])[0].data
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"suite": suite.to_json(), "runs": runs, "device": device, "command": command,
                "real": {"source": data.source, "root": data.root, "data": suite.data},
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine(resolve_device(device)), "wall_s": 0.0}
    write_manifest(folder, manifest)
    return execute(folder, runner)


def run_scored(run_dir: Path) -> bool:
    return training_finished(run_dir) and (run_dir / SCORE_FILE).is_file()


def _failure(log_path: Path, code: int) -> str:
    """The one line a failed run's log ends with (its genlab error, else its last line)."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    said = next((line for line in reversed(lines) if line.startswith("genlab: error:")), lines[-1] if lines else "")
    return f"failed (exit {code}): {said[:300]}" if said else f"failed (exit {code})"


def _status(run_dir: Path) -> str:
    summary = _read(run_dir / "metrics.json").get("train") or {}
    if summary.get("stopped_because") == "non_finite_loss":
        return f"diverged (non-finite loss; stopped at step {summary.get('steps')})"
    return "finished"


def execute(folder: Path, runner) -> dict:
    """Run every unscored run of the bench in ``folder`` through ``runner``; then its results."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    todo = []
    for run in manifest["runs"]:
        run_dir = folder / "runs" / run["name"]
        if run_scored(run_dir):
            run["status"] = _status(run_dir)
        else:
            todo.append(run)
    write_manifest(folder, manifest)
    log.info("bench %s: %d runs, %d to do, runner %s", folder, len(manifest["runs"]), len(todo), runner.describe())
    (folder / "logs").mkdir(exist_ok=True)
    jobs = {r["name"]: job_commands(r, folder, manifest.get("device", "auto")) for r in todo}
    began, spent_before = time.perf_counter(), manifest.get("wall_s", 0.0)

    def done(name: str, returncode: int) -> None:
        run = next(r for r in manifest["runs"] if r["name"] == name)
        run_dir = folder / "runs" / name
        run["status"] = (_status(run_dir) if returncode == 0 and run_scored(run_dir)
                         else _failure(folder / "logs" / f"{name}.log", returncode))
        manifest["wall_s"] = round(spent_before + time.perf_counter() - began, 1)
        write_manifest(folder, manifest)
        log.info("bench run %s: %s", name, run["status"])

    runner.run(jobs, folder / "logs", done)
    section = manifest["suite"].get("detectors")
    if section is not None:  # after the generators: each seed's matrix over that seed's finished runs
        matrices = {}
        for seed in manifest["suite"]["seeds"]:
            finished = [folder / "runs" / r["name"] for r in manifest["runs"] if r["seed"] == seed and r["status"] == "finished"]
            if len(finished) >= 2 and not detectors.matrix_done(folder, seed):
                matrices[f"detectors-seed{seed}"] = detectors.job(folder, seed, finished, manifest["real"], section,
                                                                  manifest.get("device", "auto"))

        def matrix_done(name: str, returncode: int) -> None:
            manifest.setdefault("detectors", {})[name] = ("finished" if returncode == 0 else
                                                          _failure(folder / "logs" / f"{name}.log", returncode))
            manifest["wall_s"] = round(spent_before + time.perf_counter() - began, 1)
            write_manifest(folder, manifest)
            log.info("bench %s: %s", name, manifest["detectors"][name])

        runner.run(matrices, folder / "logs", matrix_done)
    return summarize(folder)


# -- results -----------------------------------------------------------------------------------------
def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _curve(run_dir: Path, metric: str) -> list[tuple[float, float]]:
    """(training seconds, value) of the in-training evaluations (the choice split) in stats.jsonl."""
    times, points = [], []
    try:
        lines = (run_dir / "stats.jsonl").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train" and isinstance(record.get("time_s"), (int, float)):
            times.append((record["step"], record["time_s"]))
        elif record.get("kind") == "eval" and metric in (record.get("results") or {}):
            earlier = [t for s, t in times if s <= record["step"]]
            if earlier:
                points.append((earlier[-1], record["results"][metric]["value"]))
    return points


def summarize(folder: Path) -> dict:
    """``results.json``: per leaderboard row (entry x sampler) and metric, the report-split values over
    seeds with their mean and 95% t-interval, the choice-split ones beside them, training time,
    images seen and sampling cost; a leaderboard per metric with ranks (ties within noise); charts."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    suite = Suite.from_json(manifest["suite"])
    rows, protocols = [], {}
    for entry in suite.entries:
        runs = [r for r in manifest["runs"] if r["entry"] == entry.name]
        for row_name in entry.samplers:
            row = {"row": entry.row(row_name), "entry": entry.name, "preset": entry.preset, "sampler": row_name,
                   "sampler_settings": entry.samplers[row_name], "runs": [], "values": {"choice": {}, "report": {}}}
            for run in runs:
                run_dir = folder / "runs" / run["name"]
                train = _read(run_dir / "metrics.json").get("train") or {}
                scored = (_read(run_dir / SCORE_FILE).get("rows") or {}).get(row_name) or {}
                ok = run["status"] == "finished" and scored
                info = {"name": run["name"], "seed": run["seed"], "status": run["status"], "path": f"runs/{run['name']}",
                        "train_time_s": train.get("train_time_s"), "steps": train.get("steps"),
                        "images_seen": train.get("images_seen"), "stopped_because": train.get("stopped_because"),
                        "sampling": scored.get("sampling"), "grid": f"runs/{run['name']}/{scored['grid']}" if scored else None}
                for role in ("choice", "report"):
                    numbers = {k: v["value"] for k, v in (scored.get(role) or {}).items()
                               if isinstance(v, dict) and isinstance(v.get("value"), (int, float))}
                    info[role] = numbers
                    for metric, value in numbers.items():
                        if ok:
                            row["values"][role].setdefault(metric, []).append(value)
                        protocols.setdefault(f"{role}:{metric}", scored[role][metric].get("protocol", ""))
                row["runs"].append(info)
            good = [r for r in row["runs"] if r["status"] == "finished" and r["sampling"]]
            row["finished"] = len(good)
            row["spread"] = {role: {m: interval(v) for m, v in row["values"][role].items()} for role in ("choice", "report")}
            times = [r["train_time_s"] for r in good if isinstance(r["train_time_s"], (int, float))]
            row["train_time_s"] = interval(times) if times else None
            row["nfe"] = good[0]["sampling"]["nfe"] if good else None
            speeds = [r["sampling"]["images_per_s"] for r in good if r["sampling"].get("images_per_s")]
            row["images_per_s"] = interval(speeds) if speeds else None
            rows.append(row)
    leaderboards = {}
    for metric in _result_names(rows):
        higher = metric in HIGHER_IS_BETTER
        spreads = {r["row"]: r["spread"]["report"][metric] for r in rows if metric in r["spread"]["report"]}
        ranks = ranks_with_ties(spreads, higher)
        board = sorted(spreads, key=lambda k: (ranks[k], -spreads[k]["mean"] if higher else spreads[k]["mean"]))
        leaderboards[metric] = {
            "higher_is_better": higher,
            "rows": [{"row": k, "rank": ranks[k], **spreads[k],
                      "within_noise_of": [o for o in spreads if o != k and overlaps(spreads[k], spreads[o])]}
                     for k in board]
                    + [{"row": r["row"], "rank": None,
                        "status": "does not apply to this family" if r["finished"] else "no finished run"}
                       for r in rows if metric not in r["spread"]["report"]]}
    matrix = detectors.summarize(folder, manifest["runs"], suite.seeds) if suite.detectors is not None else None
    if matrix is not None:
        for metric, label in ((detectors.OWN, "its own detector"), (detectors.OTHERS, "the other generators' detectors")):
            spreads = {entry: interval(v[metric]) for entry, v in matrix["per_entry"].items() if v[metric]}
            ranks = ranks_with_ties(spreads)
            leaderboards[metric] = {
                "higher_is_better": False, "what": f"AUC of {label} on its samples (lower: harder to detect)",
                "rows": [{"row": k, "rank": ranks[k], **spreads[k],
                          "within_noise_of": [o for o in spreads if o != k and overlaps(spreads[k], spreads[o])]}
                         for k in sorted(spreads, key=lambda k: (ranks[k], spreads[k]["mean"]))]}
    results = {"suite": suite.name, "description": suite.description, "suite_path": suite.path,
               "budget": suite.describe_budget(), "budget_rule": suite.budget, "seeds": suite.seeds,
               "metrics": list(leaderboards), "splits": suite.splits, "eval_n": suite.eval_n,
               "interval": f"mean ± half-width of the {CONFIDENCE:.0%} Student-t interval over seeds",
               "protocols": protocols, "machine": manifest.get("machine"), "device": manifest.get("device"),
               "command": manifest.get("command"), "wall_s": manifest.get("wall_s"),
               "finished": sum(r["status"] == "finished" for r in manifest["runs"]), "total": len(manifest["runs"]),
               "failed": [{"run": r["name"], "status": r["status"]} for r in manifest["runs"]
                          if r["status"].startswith(("failed", "diverged"))]
               + [{"run": name, "status": status} for name, status in manifest.get("detectors", {}).items()
                  if status.startswith("failed")],
               "rows": rows, "leaderboards": leaderboards, "detectors": matrix,
               "detector_status": manifest.get("detectors", {}), "charts": {}}
    for kind, fig in (("time", time_chart(folder, results)), ("cost", cost_chart(results))):
        if fig is not None:
            path = folder / CHARTS[kind]
            atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"), "image")
            pyplot().close(fig)
            results["charts"][kind] = CHARTS[kind]
    atomic_write(folder / RESULTS, lambda tmp: tmp.write_text(json.dumps(results, indent=1) + "\n"), "file")
    return results


def _result_names(rows: list[dict]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [m for m in row["spread"]["report"] if m not in names]
    return names


def time_chart(folder: Path, results: dict):
    """Per metric, the in-training evaluations (choice split) against training seconds, one colour per
    entry, one line per seed."""
    metrics = [m for m in results["metrics"]]
    curves = {}
    for row in results["rows"]:
        if row["sampler"] != next(r["sampler"] for r in results["rows"] if r["entry"] == row["entry"]):
            continue  # (in-training evaluation uses the entry's own sampler: one curve set per entry)
        for run in row["runs"]:
            for metric in metrics:
                points = _curve(folder / run["path"], metric)
                if points:
                    curves.setdefault(metric, {}).setdefault(row["entry"], []).append(points)
    if not curves:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.6), squeeze=False)
    for ax, (metric, by_entry) in zip(axes[0], curves.items()):
        for i, (entry, lines) in enumerate(by_entry.items()):
            color = f"C{i % 10}"
            for j, points in enumerate(lines):
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, color=color, alpha=0.8, label=entry if j == 0 else None)
        ax.set_xlabel("training seconds")
        ax.set_ylabel(f"{metric} (choice split, in training)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("quality against training time: one line per seed", fontsize=10)
    fig.tight_layout()
    return fig


def cost_chart(results: dict):
    """Per metric, the report-split mean (95% t-interval as bars) against network evaluations per
    sample and against images per second."""
    metrics = [m for m in results["metrics"] if any(m in r["spread"]["report"] for r in results["rows"])]
    if not metrics:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10.4, 3.6 * len(metrics)), squeeze=False)
    for axrow, metric in zip(axes, metrics):
        for i, row in enumerate(r for r in results["rows"] if metric in r["spread"]["report"]):
            s = row["spread"]["report"][metric]
            for ax, x in zip(axrow, (row["nfe"], (row["images_per_s"] or {}).get("mean"))):
                if x:
                    ax.errorbar([x], [s["mean"]], yerr=[s["half_width"] or 0.0], marker="o", capsize=4,
                                color=f"C{i % 10}", label=row["row"])
        for ax, label in zip(axrow, ("network evaluations per sample batch", "images per second (sampling)")):
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{metric} (report split)")
            ax.grid(alpha=0.3)
        axrow[0].legend(fontsize=7)
    fig.suptitle("quality against sampling cost: mean over seeds, bars 95% t-interval", fontsize=10)
    fig.tight_layout()
    return fig


def command_line(argv: list[str]) -> str:
    return "genlab " + " ".join(shlex.quote(a) for a in argv)
