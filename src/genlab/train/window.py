"""Book-keeping of the training loop that is not training: running means of the logged values,
the guard against non-finite values, and the clock of training time.

Each is a small object with its own state, so the loop reads in one sitting and a rollback resets
each in one call."""

from __future__ import annotations

import math
import time

import torch

from genlab.distributed import DistInfo, any_rank


class Diverged(Exception):
    """A non-finite loss or gradient norm was found (where losses are read, or before a save)."""

    def __init__(self, values: dict[str, float]):
        super().__init__("non-finite values")
        self.values = values


class RunningMeans:
    """Per-key means of the scalars a family's steps return, over the current logging window and
    over the epoch. A key returned on some steps only (G's loss under n_critic, a lazy penalty) is
    the mean over the steps that returned it. Window sums stay on the device; :meth:`flush` reads
    them back (the loop's only host sync) and folds them into the epoch's sums, which live in the
    run's progress, so an epoch resumed in its middle reports the same means."""

    def __init__(self, epoch_sums: dict, epoch_counts: dict):
        self.reset(epoch_sums, epoch_counts)

    def reset(self, epoch_sums: dict, epoch_counts: dict) -> None:
        """An empty window over the given epoch sums (a fresh run's, a checkpoint's after a rollback)."""
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.epoch_sums, self.epoch_counts = epoch_sums, epoch_counts
        self.restart_timer()

    def restart_timer(self) -> None:
        """Images per second count training only: restarted after validation, grids and evaluation."""
        self.started = time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0) + value.float()
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1

    def flush(self, reduce=None) -> tuple[dict[str, float], int, float] | None:
        """The window's means, its step count and its seconds (None for an empty window); the window
        then starts again. ``reduce`` (under DDP: the mean over ranks) turns each rank's means of its
        own shard into the global batch's, read back in one transfer."""
        if not self.steps:
            return None
        now = time.perf_counter()
        keys = list(self.sums)
        means = torch.stack([self.sums[key] / self.counts[key] for key in keys])
        if reduce is not None:
            means = reduce(means)
        values = dict(zip(keys, means.tolist()))
        for key, value in values.items():
            self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value * self.counts[key]
            self.epoch_counts[key] = self.epoch_counts.get(key, 0) + self.counts[key]
        window = (values, self.steps, now - self.started)
        self.sums, self.counts, self.steps, self.started = {}, {}, 0, now
        return window

    def epoch_means(self) -> dict[str, float]:
        """``train_<key>`` means over the finished epoch (flush first); the epoch sums then start again."""
        means = {f"train_{key}": total / self.epoch_counts[key] for key, total in self.epoch_sums.items()}
        self.epoch_sums.clear()
        self.epoch_counts.clear()
        return means


class NonFiniteGuard:
    """Finds a non-finite loss (or clipped gradient norm: the stepper returns it among the stats)
    without a host sync per step: every step's values are folded into one device flag, which is read
    where the losses are read anyway and before every save. Under DDP every rank decides alike."""

    def __init__(self, device: torch.device, dist: DistInfo):
        self.device, self.dist = device, dist
        self.reset()

    def reset(self) -> None:
        self.flag = torch.zeros((), dtype=torch.bool, device=self.device)

    def observe(self, stats: dict[str, torch.Tensor]) -> None:
        if stats:
            self.flag = self.flag | ~torch.isfinite(torch.stack([v.float() for v in stats.values()])).all()

    def check(self, values: dict[str, float] | None = None) -> None:
        """Raise :class:`Diverged` when a value was non-finite since the last check (a collective under DDP)."""
        bad = bool(self.flag)
        if values is not None:
            bad = bad or not all(math.isfinite(v) for v in values.values())
        if any_rank(bad, self.dist):
            raise Diverged(values or {})
        self.reset()


class TrainingClock:
    """Training wall time over all sessions of a run; validation, grids and evaluation are excluded."""

    def __init__(self, elapsed_before: float):
        self.restart(elapsed_before)

    def restart(self, elapsed_before: float) -> None:
        self.before, self.started, self.excluded = elapsed_before, time.perf_counter(), 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def elapsed(self) -> float:
        return self.wall() - self.excluded

    def wall(self) -> float:
        """Seconds since the run started, reporting included (the time stamp of a stats record)."""
        return self.before + time.perf_counter() - self.started
