"""Chosen epochs' sample grids side by side (seed 001's epochs 20/100, 200/1200/2000): read from the
grids the run wrote while training (``samples/epoch-NNNN.png``, the same seeds every epoch), never
sampled again."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from genlab.analysis.common import pyplot
from genlab.errors import GenlabError

GRID = re.compile(r"^epoch-(\d+)\.png$")


def epoch_grids(run_dir: Path, kind: str = "samples") -> dict[int, Path]:
    """{epoch: grid file} of a run's per-epoch grids (``kind``: samples or reconstructions)."""
    folder = Path(run_dir) / kind
    if not folder.is_dir():
        return {}
    return dict(sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := GRID.match(p.name))))


def choose_epochs(available: list[int], wanted: list[int] | None, most: int = 6) -> list[int]:
    """``wanted`` (each must exist), else up to ``most`` spread evenly from first to last."""
    if wanted:
        missing = [e for e in wanted if e not in available]
        if missing:
            raise GenlabError(f"no sample grid for epoch(s) {', '.join(map(str, missing))}; this run has grids for "
                              f"epochs {', '.join(map(str, available)) or 'none'}")
        return list(wanted)
    if len(available) <= most:
        return available
    picks = {available[round(i * (len(available) - 1) / (most - 1))] for i in range(most)}
    return sorted(picks)


def timeline(run_dir: Path, epochs: list[int] | None = None, kind: str = "samples"):
    """A matplotlib figure with the chosen epochs' grids in a row, and the numbers (epochs, files)."""
    grids = epoch_grids(run_dir, kind)
    if not grids:
        raise GenlabError(f"{run_dir} has no {kind} grids (samples/epoch-NNNN.png); they are written during training "
                          "(train.grid_every)")
    chosen = choose_epochs(list(grids), epochs)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.5), squeeze=False)
    for ax, epoch in zip(axes[0], chosen):
        ax.imshow(Image.open(grids[epoch]), cmap="gray")
        ax.set_title(f"epoch {epoch}", fontsize=10)
        ax.axis("off")
    return fig, {"kind": kind, "epochs": chosen, "files": [str(grids[e].relative_to(run_dir)) for e in chosen]}
