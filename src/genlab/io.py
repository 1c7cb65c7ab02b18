"""Atomic file writes: write beside the target under a temporary name, then rename into place, so a
crash or a full disk never leaves a half-written checkpoint, image, cache entry or JSON file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from genlab.errors import GenlabError


def atomic_write(path: Path, write: Callable[[Path], object], what: str = "file") -> None:
    """Call ``write(tmp)`` and rename ``tmp`` to ``path``; on failure remove ``tmp`` and raise a
    GenlabError naming ``what`` and ``path`` (the previous ``path``, if any, is left as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GenlabError(f"could not write {what} {path}: {e.strerror or e}") from e
