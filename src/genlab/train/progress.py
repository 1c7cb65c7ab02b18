"""Where a run stands (its :class:`Progress`, checkpointed), its data order and seeding, and the
checks of a run against its data, made before a run directory exists."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from genlab.config import Config
from genlab.data import ImageSplits
from genlab.distributed import DistInfo
from genlab.errors import GenlabError


@dataclass
class Progress:
    step: int = 0  # optimisation steps done
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current, unfinished epoch
    best_score: float | None = None  # monitored value, negated for higher-is-better metrics: lower is better
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    elapsed_s: float = 0.0  # training wall time over all sessions of this run (validation, grids, evaluation excluded)
    images_seen: int = 0
    rollbacks: int = 0  # times the run went back to its last checkpoint after non-finite values
    epoch_sums: dict = field(default_factory=dict)  # this epoch's logged values x steps so far (train_* means)
    epoch_counts: dict = field(default_factory=dict)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch, a function of (seed, epoch) alone, so resume needs no sampler state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_rank(seed: int, info: DistInfo, step: int = 0) -> None:
    """Different training noise on each rank (after identical initialisation)."""
    if info.enabled and info.rank:
        torch.manual_seed(seed * 1_000_003 + step * 7919 + info.rank)


def check_run(cfg: Config, data: ImageSplits, dist: DistInfo) -> int:
    """What can only be checked once the data is known, checked before a run directory is made.
    Returns the global batch size (clamped to the training split)."""
    batch = min(cfg.train.batch_size, len(data.train))
    if batch % dist.world_size:
        raise GenlabError(f"train.batch_size {batch} does not divide over {dist.world_size} processes")
    if cfg.train.accumulate > batch // dist.world_size:
        raise GenlabError(f"train.accumulate={cfg.train.accumulate} is more micro-batches than the "
                          f"{batch // dist.world_size} images each process gets per step")
    if cfg.train.patience is not None and cfg.train.monitor == "val_loss" and data.val is None:
        raise GenlabError(f"train.patience={cfg.train.patience} watches the validation loss, but the {data.name} data "
                          "has no validation split here; set data.val_fraction > 0 or leave train.patience unset")
    return batch
