"""What several command groups share: common options, output checks, the device."""

from __future__ import annotations

import argparse
from pathlib import Path

from genlab.errors import GenlabError

CHECKPOINTS = ("last", "best")
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
