"""The run's log file (RUN_DIR/log.txt), including what was logged before the directory existed."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("genlab")


class BufferHandler(logging.Handler):
    """Holds log records made before the run directory exists, to replay them into its log."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class RunLogHandler(logging.FileHandler):
    """The run's log.txt. A record that cannot be written (a full disk) is dropped without the traceback
    logging would print: the run's next checkpoint or stats write then fails with one clear line."""

    def handleError(self, record):
        pass

    def close(self):
        try:
            super().close()
        except OSError:  # (the final flush on a full disk: the failure that matters is already reported)
            pass


def attach_run_log(run_dir: Path, buffered: BufferHandler | None = None) -> logging.Handler:
    handler = RunLogHandler(run_dir / "log.txt")
    handler.setLevel(logging.INFO)
    if log.getEffectiveLevel() > logging.INFO:  # the run's log is always written, from the CLI or from Python
        log.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    if buffered is not None:
        for record in buffered.records:
            handler.handle(record)
    log.addHandler(handler)
    return handler


def detach_run_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        log.removeHandler(handler)
        handler.close()
