"""What several command groups share: common options, output checks, the device."""

from __future__ import annotations

import argparse
from pathlib import Path

from genlab.errors import GenlabError

CHECKPOINTS = ("last", "best")

# Every command: the module of its group (genlab.cli.<group>) and its one-line help. `genlab --help`
# and `--version` need nothing else, so they do not import torch; a command imports its group only.
COMMANDS = {
    "train": ("train", "train a model from a preset"),
    "sample": ("models", "generate images from a trained run"),
    "reconstruct": ("models", "reconstruct held-out images (families with an encoder)"),
    "eval": ("models", "evaluate a run (or a folder of images) under one protocol"),
    "ema": ("models", "post-hoc EMA: rebuild EMAs of other lengths from a run's snapshots, keep the best on the choice split"),
    "data": ("data", "inspect, prepare and download data sets"),
    "analyze": ("analyze", "analyses of a run: timeline, curves, interpolate, variations, traversal"),
    "summary": ("models", "layers, output shapes, parameters and multiply-adds of a preset's or run's networks"),
    "report": ("compare", "one self-contained HTML page for runs, sweeps and detector matrices"),
    "sweep": ("compare", "a grid of runs over config keys and seeds, with a sweep report"),
    "bench": ("compare", "rank every entry of a suite at equal compute: a leaderboard page with intervals over seeds"),
    "detect": ("detect", "deepfake-detector benchmark: train, evaluate, cross-generator matrix, adversarial loop"),
    "presets": ("train", "list the shipped presets"),
}
FORMAT = argparse.RawDescriptionHelpFormatter


def add_common(parser: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda (default: auto)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def check_output(path: Path, force: bool, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise GenlabError(f"--out {path}: use a file ending in {' or '.join(suffixes)}")
    if path.exists() and not force:
        raise GenlabError(f"--out {path} exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise GenlabError(f"--out {path}: folder {path.parent} does not exist")


def positive(name: str, value: int) -> None:
    if value < 1:
        raise GenlabError(f"{name} must be at least 1, got {value}")


def weights(args) -> str:
    """--raw-weights as the API's weights argument."""
    return "raw" if args.raw_weights else "ema"
