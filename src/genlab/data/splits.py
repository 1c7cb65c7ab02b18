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


# The report split where a source has none of its own (no official test images, data.test_fraction
# 0): this share of the validation images, those with the smallest hash of (split seed, "report",
# key), becomes the test split and the rest stays validation. The training images are untouched, so
# a preset trains on what it trained on before the report split existed.
REPORT_SHARE_OF_VAL = 0.5


def carve_report_split(names: list[str | None], keys: list[str], cfg: DataConfig) -> str | None:
    """Give a split without test images a report split (in place), out of its validation images;
    returns how, or None when there are test images already or no validation images to carve."""
    if "test" in names:
        return None
    val = [i for i, s in enumerate(names) if s == "val"]
    if not val:
        return None
    for j in ranked_holdout([keys[i] for i in val], REPORT_SHARE_OF_VAL, cfg.split_seed, "report"):
        names[val[j]] = "test"
    return carved_note(cfg)


def carved_note(cfg: DataConfig) -> str:
    return (f"no test images of its own: test = {REPORT_SHARE_OF_VAL:.0%} of the validation images, chosen by a "
            f"hash of each key (seed {cfg.split_seed})")


def assign_splits(catalog: Catalog, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Indices of the catalog's items in each of train, val and test (before any multi-part cut).

    Validation is the *choice* split (early stopping, best.pt, sweeps' best) and test the *report*
    split (`genlab eval`'s default): a split without test images gets one carved out of its
    validation images (:func:`carve_report_split`), so choices and reported numbers never share images."""
    use_official = cfg.split == "official" or (cfg.split == "auto" and catalog.has_official_split)
    if cfg.split == "official" and not catalog.has_official_split:
        raise GenlabError(f"data.split=official: {catalog.name} has no official split; use data.split=random")
    if use_official:
        names = list(catalog.official)
        if "val" not in names and cfg.val_fraction > 0:
            # No official validation split (CIFAR-10, train/test folders): hold out part of train.
            train = [i for i, s in enumerate(names) if s == "train"]
            for j in ranked_holdout([catalog.keys[i] for i in train], cfg.val_fraction, cfg.split_seed):
                names[train[j]] = "val"
    else:
        names = threshold_split(catalog.keys, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    carve_report_split(names, catalog.keys, cfg)
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
