"""Prepare a data set once, train from the result many times.

``prepare`` decodes every image of a source once (in parallel processes), converts it to the
configured channels, centre-crops and resizes it, and writes one uint8 array per split to a cache
folder whose name holds a hash of everything that changes the pixels or the split: source, root,
the listed files (names, sizes, times), split scheme and seed, crop, size, filter and channels. A
changed option therefore makes a new cache, never a stale one. The folder is written under a
temporary name and renamed into place, so an interrupted prepare leaves no half cache behind.

``load_dataset`` returns the splits memory-mapped from that folder; the training loop moves them
to the device when they fit there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import genlab
from genlab.config import DataConfig
from genlab.data.sources import SOURCES, Catalog, apply_source_defaults
from genlab.data.splits import SPLITS, assign_splits, select_part
from genlab.errors import GenlabError
from genlab.io import fsync_dir, fsync_file

log = logging.getLogger("genlab")

CACHE_FORMAT = 2  # bump when the cache layout changes: older caches are then rebuilt (2: file checksums)
REPORT_SPLIT_RULE = 2  # a split without test images gets a report split carved out of validation (genlab.data.splits)
RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass
class ImageSplits:
    name: str  # short data set name, used in run directory names
    train: torch.Tensor  # uint8 (N, C, H, W)
    val: torch.Tensor | None  # uint8, or None without a validation split
    test: torch.Tensor | None = None
    labels: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> int64 labels, where known
    cache_dir: Path | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> torch.Tensor | None:
        """The images of ``name``: train, val, test, or the roles choice (validation, else train)
        and report (test, else validation)."""
        return {"train": self.train, "val": self.val, "test": self.test}[self.resolve_split(name)]

    def has(self, name: str) -> bool:
        images = {"train": self.train, "val": self.val, "test": self.test}[name]
        return images is not None and len(images) > 0

    def resolve_split(self, name: str) -> str:
        """A split's name, with the roles resolved: *choice* is where early stopping, best.pt and a
        sweep's best are decided (val; train when there is none), *report* is where the numbers that
        are reported come from (test; val when there is none, with a warning: they then share images)."""
        if name == "choice":
            return "val" if self.has("val") else "train"
        if name == "report":
            if self.has("test"):
                return "test"
            log.warning("%s has no test split: reporting on %s, the split choices are made on (hold images out with data.val_fraction)",
                        self.name, "val" if self.has("val") else "train")
            return "val" if self.has("val") else "train"
        if name not in SPLITS:
            raise GenlabError(f"unknown split {name!r}; choose train, val, test, choice or report")
        return name


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("GENLAB_CACHE") or Path.home() / ".cache" / "genlab").expanduser()


def cache_key(cfg: DataConfig, catalog: Catalog) -> dict:
    """Everything that changes the cached pixels or the split; its hash names the cache folder."""
    return {
        "source": cfg.source, "root": str(Path(cfg.root).expanduser().resolve()) if cfg.root else None,
        "listing": catalog.fingerprint, "items": len(catalog), "split": cfg.split, "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed, "crop": cfg.crop, "size": cfg.size,
        "resize_filter": cfg.resize_filter, "channels": cfg.channels, "limit": cfg.limit,
        "report_split": REPORT_SPLIT_RULE,
    }


def cache_path(cfg: DataConfig, catalog: Catalog) -> Path:
    digest = hashlib.sha256(json.dumps(cache_key(cfg, catalog), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cfg) / f"{catalog.name}-{cfg.size}px-{cfg.channels}ch-{digest}"


# ------------------------------------------------------------------------------------------------ decode


class SkipImage(ValueError):
    pass


def to_channels(im, channels: int):
    """Any PIL mode -> "L" or "RGB". Transparent pixels become black; 16-bit images are scaled to 8 bits."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).round().astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im.convert("L" if channels == 1 else "RGB")


def preprocess(raw, cfg: DataConfig) -> np.ndarray:
    """One decoded image -> (C, size, size) uint8: channels, then centre crop, then resize."""
    im = Image.fromarray(raw) if isinstance(raw, np.ndarray) else raw
    im = to_channels(im, cfg.channels)
    w, h = im.size
    side = cfg.crop or min(w, h)
    if side > min(w, h):
        raise SkipImage(f"image is {w}x{h}, smaller than the crop {side}")
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if side != cfg.size:
        im = im.resize((cfg.size, cfg.size), RESAMPLE[cfg.resize_filter])
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


_JOB: tuple[Catalog, DataConfig, bool] | None = None  # what forked workers decode (inherited, not pickled)


def _decode_one(i: int):
    catalog, cfg, keep = _JOB  # type: ignore[misc]
    try:
        arr = preprocess(catalog.decode(i), cfg)
        return i, arr if keep else None, None
    except Exception as e:  # PIL raises many types for corrupt, truncated or odd files
        return i, None, f"{type(e).__name__}: {e}".strip()


def decode_all(catalog: Catalog, cfg: DataConfig, keep: bool = True) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
    """All items -> (N, C, S, S) uint8 and a list of (item, reason) that could not be used. With
    ``keep=False`` every item is checked exactly as for the cache, but no pixels are kept (None)."""
    global _JOB
    out = np.zeros((len(catalog), cfg.channels, cfg.size, cfg.size), dtype=np.uint8) if keep else None
    failed: list[tuple[int, str]] = []
    workers = cfg.workers or os.cpu_count() or 1
    _JOB = (catalog, cfg, keep)
    try:
        if workers > 1 and len(catalog) >= 256 and "fork" in multiprocessing.get_all_start_methods():
            # Forked workers inherit the catalog (closures over file lists) without pickling it.
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                results = pool.imap_unordered(_decode_one, range(len(catalog)), chunksize=64)
                for i, arr, err in results:
                    if err is not None:
                        failed.append((i, err))
                    elif keep:
                        out[i] = arr
        else:
            for i in range(len(catalog)):
                _, arr, err = _decode_one(i)
                if err is not None:
                    failed.append((i, err))
                elif keep:
                    out[i] = arr
    finally:
        _JOB = None
    return out, sorted(failed)


# ------------------------------------------------------------------------------------------------ prepare


def list_catalog(cfg: DataConfig) -> Catalog:
    apply_source_defaults(cfg)
    catalog = SOURCES.get(cfg.source)(cfg)
    if cfg.limit is not None and cfg.limit < len(catalog):
        catalog = catalog.select(list(range(cfg.limit)))
    for note in catalog.notes:
        log.info("data %s: %s", catalog.name, note)
    if catalog.problems and cfg.strict:
        item, reason = catalog.problems[0]
        raise GenlabError(f"data {catalog.name}: {item}: {reason} ({len(catalog.problems)} such; "
                          "without data.strict they are skipped)")
    return catalog


CHECK_BLOCK = 4096  # bytes per checked block
CHECK_BLOCKS = 16  # blocks checked per file beyond its head, evenly spaced


def file_check(path: Path) -> dict:
    """Size, and SHA-256 of the first 64 KiB (the .npy header and first images) and of 16 evenly
    spaced 4 KiB blocks: a truncated, overwritten or swapped file shows, without reading it all."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(16 * CHECK_BLOCK)).hexdigest()
        sample = hashlib.sha256()
        for k in range(CHECK_BLOCKS):
            f.seek(size * k // CHECK_BLOCKS)
            sample.update(f.read(CHECK_BLOCK))
    return {"size": size, "sha256_head": head, "sha256_sample": sample.hexdigest()}


def verify_cache(path: Path, meta: dict) -> str | None:
    """None when every array file matches what meta.json recorded; else what is wrong."""
    for name, expected in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file_check(file)
        if actual["size"] != expected["size"]:
            return f"{name} is {actual['size']} bytes, {expected['size']} were written"
        if actual != expected:
            return f"{name} does not match its checksum"
    return None


def read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def prepare(cfg: DataConfig, force: bool = False) -> Path:
    """Make sure the cache for ``cfg`` exists (decoding every image once) and return its folder.
    Processes preparing the same cache at once take turns (a lock file beside it): the first builds
    it, the others find it complete."""
    catalog = list_catalog(cfg)
    path = cache_path(cfg, catalog)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.with_name(path.name + ".lock")):
        return _prepare_locked(cfg, catalog, path, force)


class _lock:
    """An exclusive advisory lock on a file (POSIX flock); a no-op where fcntl does not exist."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl  # deferred: POSIX only (elsewhere the lock is skipped below)
        except ImportError:
            return self
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as e:
            raise GenlabError(f"cannot lock the data cache {self.path}: {e.strerror or e}") from e
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # (closing releases the lock)


def _prepare_locked(cfg: DataConfig, catalog: Catalog, path: Path, force: bool) -> Path:
    meta = read_meta(path)
    if meta is not None and not force:
        if meta.get("format") == CACHE_FORMAT:
            damage = verify_cache(path, meta)
            if damage is None:
                log.info("data %s: using cache %s (%s)", catalog.name, path,
                         ", ".join(f"{s} {meta['counts'][s]}" for s in SPLITS))
                return path
            if cfg.strict:
                raise GenlabError(f"data cache {path} is damaged: {damage}. Delete it, or drop data.strict to rebuild it")
            log.warning("data cache %s is damaged (%s); rebuilding it", path, damage)
        elif cfg.strict:
            raise GenlabError(f"data cache {path} was written by genlab {meta.get('genlab_version')} in format "
                              f"{meta.get('format')}; this genlab reads format {CACHE_FORMAT}. Delete it or drop data.strict")
        else:
            log.warning("data cache %s is of another format (%s); rebuilding it", path, meta.get("format"))
    elif path.exists() and not force:
        log.warning("data cache %s is incomplete (no meta.json); rebuilding it", path)

    start = time.perf_counter()
    splits = assign_splits(catalog, cfg)
    log.info("data %s: decoding %d images once (%s) into %s", catalog.name, len(catalog),
             ", ".join(f"{s} {len(splits[s])}" for s in SPLITS), path)
    images, failed = decode_all(catalog, cfg)
    for i, reason in failed:
        log.warning("data %s: skipped %s: %s", catalog.name, catalog.keys[i], reason)
    if failed and cfg.strict:
        i, reason = failed[0]
        raise GenlabError(f"data {catalog.name}: {catalog.keys[i]}: {reason} ({len(failed)} unusable images; "
                          "without data.strict they are skipped)")
    if len(failed) == len(catalog):
        raise GenlabError(f"data {catalog.name}: none of the {len(catalog)} image files could be used "
                          f"(first: {catalog.keys[failed[0][0]]}: {failed[0][1]})")
    bad = {i for i, _ in failed}
    if failed:
        log.warning("data %s: skipped %d of %d images that could not be used", catalog.name, len(failed), len(catalog))

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    try:
        tmp.mkdir(parents=True)
        for split in SPLITS:
            index = [i for i in splits[split].tolist() if i not in bad]
            counts[split] = len(index)
            np.save(tmp / f"{split}.npy", images[index])
            (tmp / f"{split}_keys.txt").write_text("".join(catalog.keys[i] + "\n" for i in index))
            if catalog.labels is not None:
                np.save(tmp / f"{split}_labels.npy", np.array([catalog.labels[i] for i in index], dtype=np.int64))
            if catalog.attributes is not None:
                np.save(tmp / f"{split}_attributes.npy", catalog.attributes[index])
        meta = {
            "format": CACHE_FORMAT, "genlab_version": genlab.__version__, "name": catalog.name,
            "key": cache_key(cfg, catalog), "counts": counts, "shape": [cfg.channels, cfg.size, cfg.size],
            "label_names": catalog.label_names, "attribute_names": catalog.attribute_names,
            "notes": catalog.notes, "skipped": [[catalog.keys[i], reason] for i, reason in failed],
            "prepare_seconds": round(time.perf_counter() - start, 2),
            "files": {f.name: file_check(f) for f in sorted(tmp.glob("*.npy"))},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks the cache complete
        for f in tmp.iterdir():  # durable before the folder's rename makes it the cache
            fsync_file(f)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GenlabError(f"could not write data cache {path}: {e.strerror or e}") from e
    log.info("data %s: prepared in %.1f s (%s)", catalog.name, meta["prepare_seconds"],
             ", ".join(f"{s} {counts[s]}" for s in SPLITS))
    return path


def _load_array(path: Path) -> np.ndarray:
    arr = np.load(path, mmap_mode="c")  # copy-on-write map: pages are read on demand, the file never changes
    return arr if arr.size else np.load(path)


def load_dataset(cfg: DataConfig) -> ImageSplits:
    """The splits of ``cfg`` from its cache (prepared first if needed), memory-mapped."""
    path = prepare(cfg)
    meta = read_meta(path)
    arrays = {s: torch.from_numpy(_load_array(path / f"{s}.npy")) for s in SPLITS}
    labels = {s: torch.from_numpy(np.load(path / f"{s}_labels.npy")) for s in SPLITS
              if (path / f"{s}_labels.npy").is_file()}
    if cfg.num_parts > 1:
        keys = (path / "train_keys.txt").read_text().splitlines()
        index = torch.from_numpy(select_part(keys, cfg.num_parts, cfg.part, cfg.split_seed))
        arrays["train"] = arrays["train"][index]
        if "train" in labels:
            labels["train"] = labels["train"][index]
        log.info("data %s: training on part %d of %d (%d images)", meta["name"], cfg.part, cfg.num_parts, len(index))
    if len(arrays["train"]) == 0:
        raise GenlabError(f"data {meta['name']}: the train split is empty (check data.split and the fractions)")
    val = arrays["val"] if len(arrays["val"]) else None
    test = arrays["test"] if len(arrays["test"]) else None
    log.info("data %s: %d train, %d val, %d test images of shape %s", meta["name"], len(arrays["train"]),
             0 if val is None else len(val), 0 if test is None else len(test), tuple(meta["shape"]))
    return ImageSplits(name=meta["name"], train=arrays["train"], val=val, test=test, labels=labels, cache_dir=path)
