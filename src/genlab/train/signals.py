"""Stopping on SIGTERM and SIGINT at a step boundary, with the position saved."""

from __future__ import annotations

import logging
import signal

from genlab.distributed import DistInfo, any_rank

log = logging.getLogger("genlab")


class StopSignals:
    """SIGTERM (cluster preemption: SLURM, Kubernetes, spot instances) and SIGINT (Ctrl-C) during
    training: the current step finishes, the run saves its position and stops, and the shell sees
    143 or 130. A second Ctrl-C interrupts at once. Installed only in the main thread."""

    def __init__(self):
        self.name: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (an embedding application): leave its handlers alone
                pass

    def _handle(self, signum, frame):
        if self.name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        self.name = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, then saving", self.name)

    def received(self, dist: DistInfo, every: int = 1, step: int = 0) -> bool:
        """Whether to stop now; under DDP every rank decides alike, at log steps only (a collective)."""
        if not dist.enabled:
            return self.name is not None
        if step % every:
            return False
        stop = any_rank(self.name is not None, dist)
        if stop and self.name is None:  # another rank was signalled (torchrun forwards SIGTERM to every worker)
            self.name = "SIGTERM"
        return stop

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
