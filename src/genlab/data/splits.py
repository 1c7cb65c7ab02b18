"""Train/validation/test splits, decided per item from a hash of (seed, item key).

A hash of the key rather than a shuffled list means an item's split never depends on which other
items exist: a folder that gains files keeps every old file in its old split, and the same seed
always gives the same split on any machine.
"""

from __future__ import annotations

import hashlib

import numpy as np

from genlab.config import DataConfig
from genlab.data.sources import Catalog
from genlab.errors import GenlabError

SPLITS = ("train", "val", "test")


def hash_unit(key: str, seed: int, salt: str = "split") -> float:
    """A number in [0, 1) fixed by (seed, salt, key): uniform over keys, stable across runs and machines."""
    digest = hashlib.blake2b(f"{seed}\0{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def threshold_split(keys: list[str], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Each item goes to val if its hash < val_fraction, to test if below val + test, else to train.
    Shares match the fractions in expectation; membership is stable when items are added."""
    out = []
    for key in keys:
        u = hash_unit(key, seed)
        out.append("val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train")
    return out


def ranked_holdout(keys: list[str], fraction: float, seed: int, salt: str = "split") -> set[int]:
    """Exactly round(len(keys) * fraction) items, those with the smallest hashes (for fixed sets such
    as CIFAR-10, where seed 003's 40k/10k/10k needs exact counts)."""
    n = int(round(len(keys) * fraction))
    order = sorted(range(len(keys)), key=lambda i: hash_unit(keys[i], seed, salt))
    return set(order[:n])


# The report split of an official layout without test images (the CelebA subset in ../shared/data
# holds partitions 0 and 1 only): this share of the official validation images, those with the
# smallest hash of (split seed, "report", key), becomes the test split; the rest stays validation.
REPORT_SHARE_OF_VAL = 0.5


def carve_report_split(names: list[str | None], keys: list[str], cfg: DataConfig) -> str | None:
    """Give an official split without test images a report split (in place); returns how, or None
    when the layout has its own test split or nothing can be carved."""
    if "test" in names:
        return None
    val = [i for i, s in enumerate(names) if s == "val"]
    if val:
        for j in ranked_holdout([keys[i] for i in val], REPORT_SHARE_OF_VAL, cfg.split_seed, "report"):
            names[val[j]] = "test"
        return (f"no official test images: test = {REPORT_SHARE_OF_VAL:.0%} of the official validation images, "
                f"chosen by a hash of each key (seed {cfg.split_seed})")
    if cfg.test_fraction > 0:
        train = [i for i, s in enumerate(names) if s == "train"]
        for j in ranked_holdout([keys[i] for i in train], cfg.test_fraction, cfg.split_seed, "report"):
            names[train[j]] = "test"
        return (f"no official test images: test = {cfg.test_fraction:.0%} of the official training images, "
                f"chosen by a hash of each key (seed {cfg.split_seed})")
    return None


def assign_splits(catalog: Catalog, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Indices of the catalog's items in each of train, val and test (before any multi-part cut).

    Validation is the *choice* split (early stopping, best.pt, sweeps' best) and test the *report*
    split (`genlab eval`'s default): an official layout without test images gets one carved out
    (:func:`carve_report_split`), so choices and reported numbers never share images."""
    use_official = cfg.split == "official" or (cfg.split == "auto" and catalog.has_official_split)
    if cfg.split == "official" and not catalog.has_official_split:
        raise GenlabError(f"data.split=official: {catalog.name} has no official split; use data.split=random")
    if use_official:
        names = list(catalog.official)
        carve_report_split(names, catalog.keys, cfg)
        if "val" not in names and cfg.val_fraction > 0:
            # No official validation split (CIFAR-10, train/test folders): hold out part of train.
            train = [i for i, s in enumerate(names) if s == "train"]
            for j in ranked_holdout([catalog.keys[i] for i in train], cfg.val_fraction, cfg.split_seed):
                names[train[j]] = "val"
    else:
        names = threshold_split(catalog.keys, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    return {s: np.array([i for i, n in enumerate(names) if n == s], dtype=np.int64) for s in SPLITS}


def select_part(keys: list[str], num_parts: int, part: int, seed: int) -> np.ndarray:
    """Seed 000's multi-split: order the train items by hash, cut them into ``num_parts`` equal
    disjoint parts (the remainder of the division is left out) and return the indices of one."""
    if num_parts == 1:
        return np.arange(len(keys))
    size = len(keys) // num_parts
    if size == 0:
        raise GenlabError(f"data.num_parts={num_parts} is more than the {len(keys)} training images")
    order = sorted(range(len(keys)), key=lambda i: hash_unit(keys[i], seed, "part"))
    return np.sort(np.array(order[part * size : (part + 1) * size], dtype=np.int64))
