"""A suite's ``detectors:`` section: the detector matrix (`genlab detect matrix`) over each seed's
generators, once they are trained, and its spread over seeds.

Per training seed k, one job ``detectors-seed<k>`` trains a detector per generator of that seed and
tests each on every generator's fresh samples (``DIR/detectors/seed<k>/matrix.json``). Over seeds:
each cell's mean AUC with its 95% t-interval, and two leaderboard numbers per generator: the AUC
of its own detector (how detectable it is by a detector that saw it) and the mean AUC of the
detectors trained on the *other* generators (how well detection transfers to it; lower means it
escapes detectors built for other families).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from genlab.metrics.spread import interval

DETECTOR_KEYS = ("overrides", "n")
OWN, OTHERS = "detector_auc_own", "detector_auc_others"


def job(folder: Path, seed: int, fakes: list[Path], real: dict, section: dict, device: str) -> list[list[str]]:
    """The `genlab detect matrix` command of one seed: the suite's data (its source and root as
    --real/--root, its other data keys as detector keys) and the section's detector keys."""
    data = [o for o in real["data"] if not o.startswith(("data.source=", "data.root="))]
    command = [sys.executable, "-m", "genlab", "detect", "matrix", "--real", real["source"], "--fake",
               *map(str, fakes), "--out", str(folder / "detectors" / f"seed{seed}"), "--quiet", "--device", device,
               *data, *section.get("overrides", [])]
    if real.get("root"):
        command[command.index("--fake"):command.index("--fake")] = ["--root", str(real["root"])]
    if section.get("n"):
        command += ["--n", str(int(section["n"]))]
    return [command]


def matrix_done(folder: Path, seed: int) -> bool:
    return (folder / "detectors" / f"seed{seed}" / "matrix.json").is_file()


def summarize(folder: Path, runs: list[dict], seeds: list[int]) -> dict | None:
    """Mean and interval of every (trained on, tested on) AUC over the seeds whose matrix exists,
    rows and columns named by entry; and the per-entry OWN and OTHERS numbers by seed."""
    entry_of = {r["name"]: r["entry"] for r in runs}
    cells: dict[tuple[str, str], list[float]] = {}
    per_entry: dict[str, dict[str, list[float]]] = {}
    protocol, used = "", []
    for seed in seeds:
        path = folder / "detectors" / f"seed{seed}" / "matrix.json"
        if not path.is_file():
            continue
        matrix = json.loads(path.read_text())
        protocol = protocol or matrix.get("protocol", "")
        names = [entry_of.get(Path(matrix["generators"][label]["path"]).name, label) for label in matrix["rows_trained_on"]]
        used.append(seed)
        for i, row in enumerate(names):
            for j, col in enumerate(names):
                cells.setdefault((row, col), []).append(matrix["auc"][i][j])
        for j, col in enumerate(names):
            others = [matrix["auc"][i][j] for i in range(len(names)) if i != j]
            numbers = per_entry.setdefault(col, {OWN: [], OTHERS: []})
            numbers[OWN].append(matrix["auc"][j][j])
            if others:
                numbers[OTHERS].append(sum(others) / len(others))
    if not used:
        return None
    entries = list(dict.fromkeys(name for name, _ in cells))
    return {"seeds": used, "entries": entries, "protocol": protocol,
            "auc": [[interval(cells[(r, c)]) if (r, c) in cells else None for c in entries] for r in entries],
            "per_entry": per_entry}
