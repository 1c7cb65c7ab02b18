"""Gather what run directories (and sweep or detector-matrix folders) hold and render it.

Nothing is recomputed: the page shows the run's config, its metrics with their protocol strings
(metrics.json), curves drawn from stats.jsonl, the sample and reconstruction grids it wrote while
training, and the analyses in its ``analysis/`` folder. A section whose artefact is missing is
replaced by a line saying so. Several runs get a comparison table (rows = runs, columns =
metrics) in which a number measured under another protocol than the column's first (another data
set or split, sample count or feature extractor) is flagged next to it rather than silently
compared, a table over seeds (runs that differ only in ``train.seed`` as one row: mean and 95%
t-interval, differences whose intervals overlap marked as within noise), curves overlaid on shared axes, and grids side by side at the epochs they share.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import re
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

import genlab
from genlab import bench, sweep
from genlab.analysis.common import pyplot
from genlab.analysis.curves import curves_figure
from genlab.analysis.timeline import epoch_grids
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.metrics.spread import interval, rank_within_noise
from genlab.metrics.table import HIGHER_IS_BETTER

IN_PROGRESS_STOPS = (None, "SIGTERM", "SIGINT")


def data_uri(png: bytes | Path) -> str:
    raw = png.read_bytes() if isinstance(png, Path) else png
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def figure_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return data_uri(buffer.getvalue())


# -- protocols ---------------------------------------------------------------------------------------
RUN_SPECIFIC = (  # what names the model measured, not how it was measured
    (re.compile(r"\S+ (?:last|best)(?:-inference)?\.pt at step \d+"), "<checkpoint>"),
    (re.compile(r"raw weights|EMA weights \(decay [\d.e-]+\)"), "<weights>"),
    (re.compile(r"sampler \w[\w-]*\([^)]*\)"), "<sampler>"),
)


def without_run(protocol: str) -> str:
    for pattern, placeholder in RUN_SPECIFIC:
        protocol = pattern.sub(placeholder, protocol)
    return protocol


def protocol_parts(metric: str, protocol: str) -> dict[str, str]:
    """The parts of a protocol string that must agree for two numbers to be compared: the sample
    count, the real data it was measured against (set, split, count, crop, size) and the feature
    extractor or estimator; run-specific parts (checkpoint, step, weights, sampler) are left out."""
    segments = protocol.split(" | ")
    for i, segment in enumerate(segments):
        if " vs " in segment:
            head, reference = segment.split(" vs ", 1)
            count = re.search(r"(\d+) samples", head)
            return {"sample count": count.group(1) if count else "", "data": reference.strip(),
                    "feature extractor": " | ".join(segments[i + 1:])}
        if " images of " in segment:
            data, _, how = segment.partition("; ")
            return {"data": data.strip(), "estimator": how.strip() if metric == "bpd" else ""}
    return {"protocol": without_run(protocol)}


def flag_mismatches(rows: list[dict], metrics: list[str]) -> None:
    """Mark each number whose protocol differs from the first run's for that metric (in place)."""
    for metric in metrics:
        reference = None
        for row in rows:
            cell = row["cells"].get(metric)
            if cell is None:
                continue
            parts = protocol_parts(metric, cell["protocol"])
            if reference is None:
                reference = parts
                continue
            differ = [k for k in parts if parts[k] != reference.get(k)]
            if differ:
                cell["mismatch"] = "measured under another protocol: " + ", ".join(differ) + " differ"


# -- one run ---------------------------------------------------------------------------------------
def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def grids(run: Path, kind: str) -> dict[int, Path]:
    return epoch_grids(run, kind)


def collect_run(run: Path) -> dict:
    config_text = (run / "config.yaml").read_text()
    config = yaml.safe_load(config_text) or {}
    metrics = read_json(run / "metrics.json")
    train = metrics.get("train")
    stopped = (train or {}).get("stopped_because")
    status = ("in progress (or stopped before its end): this page shows what exists so far" if train is None else
              f"stopped by {stopped}; resumable with genlab train --resume" if stopped in ("SIGTERM", "SIGINT") else
              f"finished ({stopped})")
    evals = {}
    for name, result in (metrics.get("eval") or {}).items():
        if isinstance(result, dict) and isinstance(result.get("value"), (int, float)):
            evals[name] = {"value": result["value"], "protocol": result.get("protocol", "")}
    analyses = []
    folder = run / "analysis"
    if folder.is_dir():
        for png in sorted(folder.glob("*.png")):
            numbers = read_json(png.with_suffix(".json"))
            analyses.append({"name": png.stem, "image": data_uri(png),
                             "numbers": json.dumps(numbers, indent=1)[:1500] if numbers else ""})
    samples, recons = grids(run, "samples"), grids(run, "reconstructions")
    # the grid written when a run stopped inside an epoch (max_steps, max_minutes) is step-NNNNNNN.png
    last = {kind: max((run / kind).glob("*.png"), key=lambda p: p.stat().st_mtime, default=None)
            for kind in ("samples", "reconstructions")} if run.is_dir() else {}
    data = config.get("data") or {}
    return {
        "name": run.name, "path": str(run), "method": config.get("method", "?"), "preset": config.get("name", "?"),
        "data": f"{data.get('source')} {data.get('size')}x{data.get('size')}, {data.get('channels')} ch",
        "config": config_text, "config_tree": config, "status": status, "in_progress": train is None or stopped in IN_PROGRESS_STOPS,
        "train": train or {}, "eval": evals, "analyses": analyses, "samples": samples, "reconstructions": recons,
        "last_samples": last.get("samples"), "last_reconstructions": last.get("reconstructions"),
        "has_stats": (run / "stats.jsonl").is_file(),
    }


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


SEED_KEYS = ("train.seed",)  # what may differ between runs of one configuration


def seed_groups(infos: list[dict], rows: list[dict], metrics: list[str]) -> list[dict]:
    """Runs whose configs differ only in the training seed, as one row each: per metric the mean and
    95% t-interval over their seeds ("1 seed" alone), marked against the best row's interval
    (overlapping: within noise). Numbers measured under another protocol are left out of a mean."""
    groups: dict[str, dict] = {}
    for info, row in zip(infos, rows):
        flat = _flat(info["config_tree"])
        key = json.dumps({k: v for k, v in flat.items() if k not in SEED_KEYS}, sort_keys=True)
        group = groups.setdefault(key, {"flat": flat, "runs": [], "seeds": [], "values": {}})
        group["runs"].append(info["name"])
        group["seeds"].append(flat.get("train.seed", "?"))
        for m in metrics:
            cell = row["cells"].get(m)
            if cell is not None and not cell.get("mismatch"):
                group["values"].setdefault(m, []).append(cell["value"])
    varying = sorted({k for g in groups.values() for k in g["flat"] if k not in SEED_KEYS
                      and len({h["flat"].get(k) for h in groups.values()}) > 1})
    out = []
    for group in groups.values():
        label = ", ".join(f"{k}={group['flat'].get(k, '–')}" for k in varying[:4]) or group["flat"].get("name", "runs")
        out.append({"label": label + (" …" if len(varying) > 4 else ""), "runs": group["runs"], "seeds": group["seeds"],
                    "spread": {m: interval(v) for m, v in group["values"].items()}, "marks": {}})
    for m in metrics:
        _, marks = rank_within_noise({i: g["spread"][m] for i, g in enumerate(out) if m in g["spread"]},
                                     m in HIGHER_IS_BETTER)
        for i, mark in marks.items():
            out[i]["marks"][m] = mark
    return out


def curves_uri(runs: dict[str, Path]) -> tuple[str | None, str]:
    try:
        fig, _ = curves_figure(runs)
    except GenlabError as e:
        return None, str(e)
    return figure_uri(fig), ""


def grid_rows(infos: list[dict], kind: str) -> tuple[list[dict], str]:
    """Grids side by side: the epochs every run has (the last three of them), else each run's last."""
    if not any(info[f"last_{kind}"] for info in infos):
        return [], f"no {kind} grids in {'these runs' if len(infos) > 1 else 'this run'}"
    common = set.intersection(*(set(info[kind]) for info in infos))
    if common:
        epochs = sorted(common)[-3:]
        return [{"label": f"epoch {e}", "cells": [{"run": i["name"], "image": data_uri(i[kind][e])} for i in infos]}
                for e in epochs], ""
    cells = [{"run": i["name"], "image": data_uri(i[f"last_{kind}"]) if i[f"last_{kind}"] else None,
              "note": i[f"last_{kind}"].stem.replace("-", " ") if i[f"last_{kind}"] else f"no {kind} grids"}
             for i in infos]
    label = "the last grid of each (the runs share no epoch)" if len(infos) > 1 else "the last grid"
    return [{"label": label, "cells": cells}], ""


# -- other folders -----------------------------------------------------------------------------------
def collect_matrix(folder: Path) -> dict:
    result = read_json(folder / "matrix.json")
    png = folder / "matrix.png"
    return {"name": folder.name, "path": str(folder), "result": result, "image": data_uri(png) if png.is_file() else None,
            "laundering": list(next(iter(result.get("robustness_auc", {}).values()), {}).keys())}


def collect_bench(folder: Path) -> dict:
    """What `genlab report BENCH_DIR` shows: the leaderboards, charts and grids of its results.json
    (brought up to date from its runs first)."""
    folder = Path(folder)
    results = bench.summarize(folder)
    charts = {kind: data_uri(folder / name) for kind, name in results["charts"].items() if (folder / name).is_file()}
    grids = []
    for row in results["rows"]:
        first = next((r for r in row["runs"] if r["seed"] == results["seeds"][0]), None)
        image = folder / first["grid"] if first and first["grid"] else None
        grids.append({"row": row["row"], "image": data_uri(image) if image and image.is_file() else None,
                      "note": f"seed {first['seed']}" if image and image.is_file() else
                      f"no grid ({first['status'] if first else 'no run'})"})
    by_entry = {}
    for row in results["rows"]:
        by_entry.setdefault(row["entry"], row)
    return {"name": folder.name, "results": results, "by_row": {r["row"]: r for r in results["rows"]}, "by_entry": by_entry,
            "charts": charts,
            "grids": grids, "machine": json.dumps(results.get("machine") or {}, indent=1)}


def classify(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise GenlabError(f"no such run, sweep or matrix directory: {path}")
    if not path.is_dir():
        raise GenlabError(f"{path} is a file; `genlab report` takes run directories, sweep folders or detector-matrix folders")
    if is_run(path):
        return "run"
    if (path / "sweep.json").is_file():
        return "sweep"
    if (path / "matrix.json").is_file():
        return "matrix"
    if (path / bench.MANIFEST).is_file():
        return "bench"
    if not any(path.iterdir()):
        raise GenlabError(f"{path} is empty: not a run directory (no config.yaml), a sweep (no sweep.json), a detector "
                          "matrix (no matrix.json) or a bench (no bench.json)")
    raise GenlabError(f"{path} is not a run directory (config.yaml and checkpoints/), a sweep folder (sweep.json), a "
                      "detector-matrix folder (matrix.json) or a bench folder (bench.json)")


def build_report(paths: list[Path], title: str | None = None) -> str:
    """The HTML text of the report on ``paths`` (run directories, sweep and matrix folders)."""
    kinds = [(Path(p), classify(Path(p))) for p in paths]
    runs = [collect_run(p) for p, k in kinds if k == "run"]
    sweeps = []
    for p, k in kinds:
        if k == "sweep":
            sweeps.append(sweep_report_data(p))
            runs += [collect_run(Path(r)) for r in sweeps[-1]["run_dirs"] if is_run(Path(r))]
    matrices = [collect_matrix(p) for p, k in kinds if k == "matrix"]
    benches = [collect_bench(p) for p, k in kinds if k == "bench"]
    metrics = []
    for info in runs:
        metrics += [m for m in info["eval"] if m not in metrics]
    rows = [{"name": info["name"], "method": info["method"], "preset": info["preset"], "data": info["data"],
             "status": info["status"], "in_progress": info["in_progress"],
             "cells": {m: dict(info["eval"][m]) for m in metrics if m in info["eval"]},
             "steps": info["train"].get("steps"), "best": info["train"].get("best_monitored"),
             "monitor": info["train"].get("monitor"), "time": info["train"].get("train_time_s")} for info in runs]
    flag_mismatches(rows, metrics)
    groups = seed_groups(runs, rows, metrics) if len(runs) > 1 else []
    curves, curves_note = (curves_uri({i["name"]: Path(i["path"]) for i in runs if i["has_stats"]})
                           if any(i["has_stats"] for i in runs) else (None, "no stats.jsonl in these runs"))
    sample_rows, samples_note = grid_rows(runs, "samples") if runs else ([], "")
    recon_rows, recon_note = (grid_rows([i for i in runs if i["last_reconstructions"]] or runs, "reconstructions")
                              if runs else ([], ""))
    env = Environment(loader=PackageLoader("genlab", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v: "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    template = env.get_template("report.html.j2")
    names = [p.name for p, _ in kinds]
    return template.render(
        title=title or ("genlab report: " + ", ".join(names[:4]) + (" …" if len(names) > 4 else "")),
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=genlab.__version__, runs=runs, rows=rows, groups=groups, metrics=metrics, curves=curves, curves_note=curves_note,
        sample_rows=sample_rows, samples_note=samples_note, recon_rows=recon_rows, recon_note=recon_note,
        sweeps=sweeps, matrices=matrices, benches=benches, escape=html.escape)


def write_report(paths: list[Path], out: Path, force: bool = False, title: str | None = None) -> Path:
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise GenlabError(f"--out {out}: use a file ending in .html")
    if out.exists() and not force:
        raise GenlabError(f"--out {out} exists; pass --force to overwrite it")
    if not out.parent.exists():
        raise GenlabError(f"--out {out}: folder {out.parent} does not exist")
    text = build_report(paths, title)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"), "file")
    return out


def sweep_report_data(folder: Path) -> dict:
    """What `genlab report SWEEP_DIR` shows: the results table, the chart and the runs."""
    folder = Path(folder)
    manifest = sweep.read_manifest(folder)
    results = sweep.summarize(folder)
    chart_png = folder / "sweep.png"
    return {"name": folder.name, "preset": manifest["preset"], "grid": manifest["grid"], "seeds": manifest["seeds"],
            "metrics": results["metrics"], "points": results["points"], "selection": results["selection"],
            "done": results["finished"],
            "total": results["total"], "protocol": results["example_protocol"],
            "chart": data_uri(chart_png) if chart_png.is_file() else None,
            "chart_note": "no run has numbers yet",
            "run_dirs": [e.get("run_dir") or str(folder / "runs" / e["name"]) for e in manifest["runs"]]}
