"""Seeded random subsets of a split: the one way every per-image metric takes fewer images than a
split holds.

A split is stored in the order of its item keys, and a folder source's keys are sorted by class
(``airplane/...`` before ``automobile/...``), so the first n images of CIFAR-10's test split are all
airplanes. Every metric that scores n < len(split) real images therefore takes a uniform random
subset drawn here, with its seed named in the protocol ("500 random of test, seed 0"), or the whole
split.
"""

from __future__ import annotations

import torch


def subset_indices(total: int, n: int | None, seed: int) -> torch.Tensor:
    """Indices (sorted, int64) of ``n`` of ``total`` items drawn uniformly without replacement with
    ``seed``; all of them when ``n`` is None or not below ``total``."""
    if n is None or n >= total:
        return torch.arange(total)
    if n < 0:
        raise ValueError(f"a subset of {n} items")
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def describe_subset(total: int, n: int | None, seed: int, split: str) -> str:
    """How :func:`subset_indices` chose, in the words a protocol string uses."""
    if n is None or n >= total:
        return f"all {total} of {split}"
    return f"{n} random of {total} {split} (seed {seed})"


def random_subset(images: torch.Tensor, n: int | None, seed: int, split: str) -> tuple[torch.Tensor, str]:
    """``images[subset_indices(...)]`` and its description."""
    index = subset_indices(len(images), n, seed)
    chosen = images if len(index) == len(images) else images[index]
    return chosen, describe_subset(len(images), n, seed, split)
