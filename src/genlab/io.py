"""Atomic, durable file writes: write beside the target under a temporary name, flush and fsync it,
rename it into place and fsync the directory, so a crash, a power cut or a full disk never leaves a
half-written checkpoint, image, cache entry or JSON file, nor a name pointing at unwritten bytes."""

from __future__ import annotations

import os
import shutil
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
        fsync_file(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync_dir(path.parent)  # and the rename itself survives a power cut
    except Exception as e:  # OSError; torch.save's C++ writer raises RuntimeError when the disk fills up
        tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError) and not isinstance(e, RuntimeError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:200]
        try:
            if shutil.disk_usage(path.parent).free < 1 << 20 and not isinstance(e, OSError):
                reason = f"No space left on device ({reason})"
        except OSError:
            pass
        raise GenlabError(f"could not write {what} {path}: {reason}") from e


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory's entry table (POSIX; a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
