"""Run directories (``runs/NNNNN-<preset>-<dataset>/``), never overwritten, and what is written in them.

Layout of a run directory:
    config.yaml        the resolved configuration
    log.txt            the human log
    stats.jsonl        append-only, one JSON record per logging interval and per epoch
    tb/                TensorBoard event files
    samples/           sample grids from fixed seeds, one per epoch (so epochs compare)
    reconstructions/   validation images beside their reconstructions (families with an encoder)
    checkpoints/       last.pt and best.pt (full state), last-inference.pt and best-inference.pt (weights to sample with)
    metrics.json       the final summary (training; evaluation adds to it)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from genlab.errors import GenlabError
from genlab.io import atomic_write

RUN_NAME = re.compile(r"^(\d{5})-")
INFERENCE_SUFFIX = "-inference"
log = logging.getLogger("genlab")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def create_run_dir(root: Path, preset: str, dataset: str) -> Path:
    """Make a new numbered directory below ``root``; numbers only grow, nothing is reused."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenlabError(f"cannot create runs folder {root}: {e.strerror or e}") from e
    while True:
        taken = [int(m.group(1)) for p in root.iterdir() if (m := RUN_NAME.match(p.name))]
        path = root / f"{max(taken, default=-1) + 1:05d}-{_slug(preset)}-{_slug(dataset)}"
        try:
            path.mkdir()  # exclusive: fails rather than reuse a directory another process just made
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise GenlabError(f"cannot create run directory {path}: {e.strerror or e}") from e


def checkpoint_path(run_dir: Path, which: str = "last") -> Path:
    return run_dir / "checkpoints" / f"{which}.pt"


def inference_path(path: Path) -> Path:
    """``checkpoints/last.pt`` -> ``checkpoints/last-inference.pt``: the lean snapshot beside it."""
    return path.with_name(f"{path.stem}{INFERENCE_SUFFIX}{path.suffix}")


def require_run_dir(path: Path) -> Path:
    """A directory that ``genlab train`` made: it has config.yaml and a checkpoints folder."""
    if not path.exists():
        raise GenlabError(f"no such run directory: {path}")
    if not path.is_dir() or not (path / "config.yaml").is_file() or not (path / "checkpoints").is_dir():
        raise GenlabError(f"{path} is not a genlab run directory (it needs config.yaml and checkpoints/)")
    return path


def find_checkpoint(run_or_file: Path, which: str = "last", inference: bool = False) -> Path:
    """A run directory (its ``which`` checkpoint; with ``inference``, its lean snapshot when there is
    one, which loads faster and holds the weights to sample with) or a checkpoint file given directly."""
    if run_or_file.is_file():
        return run_or_file
    run_dir = require_run_dir(run_or_file)
    path = checkpoint_path(run_dir, which)
    if inference and inference_path(path).is_file():
        return inference_path(path)
    if not path.is_file():
        have = sorted(p.stem for p in (run_dir / "checkpoints").glob("*.pt") if not p.stem.endswith(INFERENCE_SUFFIX))
        raise GenlabError(f"{run_dir} has no {which!r} checkpoint (it has: {', '.join(have) or 'none'})")
    return path


class StatsWriter:
    """stats.jsonl (append-only) and TensorBoard scalars, written from one place."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # deferred: ~1 s to import, paid by training only

        self.file = open(run_dir / "stats.jsonl", "a")
        self.tb_dir = run_dir / "tb"
        with self._tensorboard():
            self.tb = SummaryWriter(str(self.tb_dir), purge_step=purge_step)

    def _tensorboard(self):
        """TensorBoard's writer fails on a full disk with a bare OSError (from its own thread): name it."""
        @contextlib.contextmanager
        def named():
            try:
                yield
            except OSError as e:
                raise GenlabError(f"could not write TensorBoard events in {self.tb_dir}: {e.strerror or e}") from e

        return named()

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: name the file (a file object's error carries no name)
            raise GenlabError(f"could not write {self.file.name}: {e.strerror or e}") from e
        step = record["step"]
        with self._tensorboard():
            for key, value in record.items():
                if key not in ("kind", "step", "epoch", "time_s") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, step)

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        with self._tensorboard():
            self.tb.add_image(tag, grid, step)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # (a full disk was reported where it happened)
        try:
            self.tb.close()
        except OSError:
            pass


class NoWriter:
    """What ranks other than 0 write: nothing."""

    def write(self, record):
        pass

    def image(self, *args):
        pass

    def close(self):
        pass



def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float grid (C, H', W') in [0, 1], ceil(sqrt(N)) images per row by default."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    return make_grid(images.float() / 255.0, nrow=nrow, padding=2, pad_value=1.0)


def pair_grid(originals: torch.Tensor, reconstructions: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of originals, each followed by the row of their reconstructions."""
    rows = []
    for i in range(0, len(originals), per_row):
        rows += [originals[i : i + per_row], reconstructions[i : i + per_row]]
    width = min(per_row, len(originals))
    padded = [torch.cat([r, torch.full((width - len(r), *r.shape[1:]), 255, dtype=r.dtype)]) for r in rows]
    return image_grid(torch.cat(padded), nrow=width)


def save_grid(grid: torch.Tensor, path: Path) -> None:
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"), "image")


def training_finished(run_dir: Path) -> bool:
    """The run's training ended on its own (epochs, max_steps, early stopping, a divergence stop), not
    by a signal and not still running: metrics.json holds its training summary."""
    try:
        summary = json.loads((Path(run_dir) / "metrics.json").read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return summary.get("stopped_because") not in (None, "SIGTERM", "SIGINT")


def update_json(path: Path, updates: dict[str, Any]) -> None:
    """Merge ``updates`` into a JSON file (created if absent), atomically."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(updates)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"), "file")


def record_evaluation(run_dir: Path, results: dict[str, dict], step: int, checkpoint: str, weights: str,
                      split: str) -> None:
    """An evaluation of a run's checkpoint, kept twice: the latest value per metric in metrics.json
    (``eval``, and in ``eval_by_split`` under the split as asked, a role such as choice or report or a
    split's name: a sweep chooses on one and reports another),
    and every evaluation, appended with its step and protocols, in stats.jsonl (the history that a
    report compares checkpoints from)."""
    metrics_file = run_dir / "metrics.json"
    summary = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    by_split = summary.get("eval_by_split") or {}
    by_split[split] = (by_split.get(split) or {}) | results
    update_json(metrics_file, {"eval": (summary.get("eval") or {}) | results, "eval_by_split": by_split})
    record = {"kind": "eval", "step": step, "source": "genlab eval", "checkpoint": checkpoint, "weights": weights,
              "split": split, "results": results}
    with open(run_dir / "stats.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_stats(run_dir: Path, step: int) -> tuple[int, bool]:
    """Before a resume from ``step``: drop from stats.jsonl a torn line (a process killed mid-write)
    and every record after ``step`` (work the resumed run redoes, so its log reads as one run's).
    Returns (records dropped, whether a torn line was among them); rewrites the file atomically."""
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return 0, False
    kept, dropped, torn = [], 0, False
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            dropped, torn = dropped + 1, True
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write(path, lambda tmp: tmp.write_bytes(b"".join(line + b"\n" for line in kept)), "file")
    return dropped, torn
