"""Where analyses write, and how: ``RUN_DIR/analysis/<name>.png`` beside ``<name>.json`` (its numbers
and settings), each written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from genlab.io import atomic_write
from genlab.train.rundir import save_grid


def analysis_dir(run_dir: Path) -> Path:
    path = Path(run_dir) / "analysis"
    path.mkdir(exist_ok=True)
    return path


def write_analysis(run_dir: Path, name: str, grid: torch.Tensor | None, numbers: dict[str, Any],
                   figure=None) -> Path:
    """``grid`` (a float image in [0, 1]) or a matplotlib ``figure`` as ``analysis/name.png``, and
    ``numbers`` as ``analysis/name.json``; returns the PNG's path."""
    folder = analysis_dir(run_dir)
    png = folder / f"{name}.png"
    if figure is not None:
        atomic_write(png, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"), "image")
    elif grid is not None:
        save_grid(grid, png)
    atomic_write(folder / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(numbers, indent=2) + "\n"), "file")
    return png


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib  # deferred: matplotlib costs ~0.5 s to import, and the backend must be set before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    return plt
