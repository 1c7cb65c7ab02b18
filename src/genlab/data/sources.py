"""Where images come from. A source reads its own layout and lists its items in a :class:`Catalog`
(a stable key, the official split if the layout has one, a label) without decoding anything;
:mod:`genlab.data.cache` decodes each item once and stores the result.

Layouts (``data.source``):
- ``digits``: scikit-learn's 8x8 handwritten digits, shipped inside the package, never downloaded.
- ``folder``: any image folder, recursive. Class subfolders become labels. Top-level ``train/``,
  ``val/`` (or ``valid/``, ``validation/``) and ``test/`` folders become the official split.
- ``celeba``: the official layout: ``img_align_celeba/*.jpg`` and ``list_eval_partition.txt``;
  ``identity_CelebA.txt`` and ``list_attr_celeba.txt`` are read when present, never required.
- ``cifar10``: the python batches as downloaded (``cifar-10-batches-py/``), or class folders
  ``train/<class>/*`` and ``test/<class>/*``.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from genlab.config import DataConfig
from genlab.errors import GenlabError
from genlab.registry import Registry

log = logging.getLogger("genlab")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

# CelebA's aligned images are 178x218 with the face centred about 20 px above the middle. Peers
# crop 108 (DCGAN/BEGAN: the face alone), 148 (PyTorch-VAE and most VAE papers: face, hair and chin)
# or 178 (the full width, much background). 148 keeps the whole face with little background, which
# suits both VAEs and GANs at 64x64; set data.crop to compare.
CELEBA_DEFAULT_CROP = 148

# What a source uses for keys left null in the config (filled in when the config is resolved).
SOURCE_DEFAULTS = {
    "digits": {"size": 32, "channels": 1},
    "cifar10": {"size": 32, "channels": 3},
    "celeba": {"size": 64, "channels": 3, "crop": CELEBA_DEFAULT_CROP},
    "folder": {"size": 64, "channels": 3},
}


def apply_source_defaults(cfg: DataConfig) -> DataConfig:
    """Fill the keys left null with the source's defaults (in place), so every choice is explicit."""
    for key, value in SOURCE_DEFAULTS.get(cfg.source, {}).items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    return cfg


@dataclass
class Catalog:
    """Every item of a source, listed in a stable order; nothing decoded yet."""

    name: str  # short data set name, used in run directory names
    keys: list[str]  # stable identity of each item (a relative path, or "batch/index")
    official: list[str | None]  # official split of each item: "train", "val", "test", or None
    decode: Callable[[int], Any]  # item i -> PIL image (any mode) or (H, W) / (H, W, C) uint8 array
    fingerprint: str  # changes whenever the listed content changes (names, sizes, times)
    labels: list[int] | None = None  # class index per item, where the layout has classes
    label_names: list[str] = field(default_factory=list)
    attributes: np.ndarray | None = None  # (N, A) int8 per item (CelebA's 40 attributes), if present
    attribute_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped while listing, for log and summary
    problems: list[tuple[str, str]] = field(default_factory=list)  # (item, reason) errors under --strict

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def has_official_split(self) -> bool:
        return any(s is not None for s in self.official)

    def select(self, index: list[int]) -> "Catalog":
        """The catalog restricted to ``index`` (keeps order)."""
        decode = self.decode
        return Catalog(
            name=self.name, keys=[self.keys[i] for i in index], official=[self.official[i] for i in index],
            decode=lambda j: decode(index[j]), fingerprint=self.fingerprint + f":{len(index)}",
            labels=None if self.labels is None else [self.labels[i] for i in index], label_names=self.label_names,
            attributes=None if self.attributes is None else self.attributes[index],
            attribute_names=self.attribute_names, notes=self.notes, problems=self.problems,
        )


Source = Callable[[DataConfig], Catalog]
SOURCES: Registry[Source] = Registry("data source")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "data"


def _root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise GenlabError(f"data.root is not set: give the folder of the {cfg.source} data, e.g. data.root=path/to/it")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise GenlabError(f"data.root: no such folder: {root}")
    if not root.is_dir():
        raise GenlabError(f"data.root: not a folder: {root}")
    return root


def _fingerprint(files: list[Path], extra: str = "") -> str:
    """Names, sizes and modification times: a changed, added or removed file changes it."""
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


MAX_PIXELS = 50_000_000  # a declared size above this (about 7,000 x 7,000) is skipped before decoding:
#                          a decompression bomb must not take the memory of 50 megapixels x 4 bytes, or more


def _open_image(path: Path):
    im = Image.open(path)  # reads the header only
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ValueError(f"declares {w}x{h} pixels, more than genlab decodes ({MAX_PIXELS:,}); a decompression bomb?")
    im.load()  # decode now, so a truncated file fails here and is reported with its path
    return im


# ---------------------------------------------------------------------------------------------- digits


@SOURCES.register("digits")
def digits_catalog(cfg: DataConfig) -> Catalog:
    from sklearn.datasets import load_digits  # deferred: scikit-learn takes ~1 s to import, needed by this source only

    digits = load_digits()
    # 17 grey levels (0..16, ink is high) -> 0..255.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return Catalog(
        name="digits", keys=[f"{i:04d}" for i in range(len(pixels))], official=[None] * len(pixels),
        decode=lambda i: pixels[i], fingerprint="sklearn-digits-1797",
        labels=[int(t) for t in digits.target], label_names=[str(d) for d in range(10)],
    )


# ---------------------------------------------------------------------------------------------- folder


def _list_images(root: Path) -> tuple[list[Path], int]:
    files, ignored = [], 0
    for p in sorted(root.rglob("*")):
        if p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(p)
            elif not p.name.startswith(".") and p.name.lower() not in ("readme", "readme.md", "readme.txt", "license"):
                ignored += 1
    return files, ignored


def folder_catalog_from(root: Path, name: str) -> Catalog:
    files, ignored = _list_images(root)
    if not files:
        raise GenlabError(f"data.root: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    rel = [f.relative_to(root) for f in files]
    # Official split from top-level train/ val/ test/ folders, when every file lies in one of them.
    tops = [SPLIT_FOLDERS.get(r.parts[0].lower()) if len(r.parts) > 1 else None for r in rel]
    official = tops if all(t is not None for t in tops) else [None] * len(rel)
    # Labels: the class folder below the split folder (or the top folder without a split), after
    # folders that every file shares (CK+48/anger/... -> "anger").
    class_parts = [r.parts[1:-1] if official[0] is not None else r.parts[:-1] for r in rel]
    while class_parts and all(len(c) >= 2 for c in class_parts) and len({c[0] for c in class_parts}) == 1:
        class_parts = [c[1:] for c in class_parts]
    labels, label_names = None, []
    if all(len(c) >= 1 for c in class_parts) and len({c[0] for c in class_parts}) > 1:
        label_names = sorted({c[0] for c in class_parts})
        index = {n: i for i, n in enumerate(label_names)}
        labels = [index[c[0]] for c in class_parts]
    notes = [f"ignored {ignored} files that are not images (by their suffix)"] if ignored else []
    return Catalog(
        name=name, keys=[r.as_posix() for r in rel], official=official,
        decode=lambda i: _open_image(files[i]), fingerprint=_fingerprint(files),
        labels=labels, label_names=label_names, notes=notes,
    )


@SOURCES.register("folder")
def folder_catalog(cfg: DataConfig) -> Catalog:
    root = _root(cfg)
    name = root.name if root.name not in ("", ".") else root.resolve().name
    return folder_catalog_from(root, _slug(name))


# ---------------------------------------------------------------------------------------------- CelebA

CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}


def _celeba_dir(root: Path) -> Path:
    """Accept the folder holding img_align_celeba/, torchvision's root/celeba/, or img_align_celeba/ itself."""
    for candidate in (root, root / "celeba", root.parent):
        if (candidate / "img_align_celeba").is_dir():
            return candidate
    raise GenlabError(f"celeba: no img_align_celeba/ folder in {root} (expected the official layout; "
                      "`genlab data download celeba --root DIR` fetches it)")


def _read_table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@SOURCES.register("celeba")
def celeba_catalog(cfg: DataConfig) -> Catalog:
    base = _celeba_dir(_root(cfg))
    images_dir = base / "img_align_celeba"
    partition_file = base / "list_eval_partition.txt"
    on_disk = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not on_disk:
        raise GenlabError(f"celeba: no images in {images_dir}")
    notes: list[str] = []
    problems: list[tuple[str, str]] = []
    if partition_file.is_file():
        rows = _read_table(partition_file)  # "000001.jpg 0", CRLF line ends in the official file
        partition = {r[0]: CELEBA_PARTITIONS.get(r[1]) for r in rows if len(r) == 2}
        present = set(on_disk)
        absent = sum(1 for name in partition if name not in present)
        if absent:
            notes.append(f"{absent} of {len(partition)} rows of list_eval_partition.txt have no image in "
                         f"{images_dir} (a partial copy); skipped")
        unlisted = [n for n in on_disk if partition.get(n) is None]
        if unlisted:
            notes.append(f"{len(unlisted)} images are not in list_eval_partition.txt (e.g. {unlisted[0]}); skipped")
            problems += [(n, "not in list_eval_partition.txt") for n in unlisted]
        names = [n for n in on_disk if partition.get(n) is not None]
        official = [partition[n] for n in names]
    elif cfg.split == "official":
        raise GenlabError(f"celeba: {partition_file} is missing; it holds the official split (or set data.split=random)")
    else:
        notes.append(f"no {partition_file.name} in {base}; using a random split")
        names, official = on_disk, [None] * len(on_disk)

    labels = None
    identity_file = base / "identity_CelebA.txt"
    if identity_file.is_file():
        identity = {r[0]: int(r[1]) for r in _read_table(identity_file) if len(r) == 2}
        if all(n in identity for n in names):
            labels = [identity[n] for n in names]  # CelebA identities as class labels
    attributes, attribute_names = None, []
    attr_file = base / "list_attr_celeba.txt"
    if attr_file.is_file():
        lines = attr_file.read_text().splitlines()
        attribute_names = lines[1].split()
        table = {r[0]: r[1:] for r in (l.split() for l in lines[2:]) if len(r) == len(attribute_names) + 1}
        if all(n in table for n in names):
            attributes = np.array([[int(v) > 0 for v in table[n]] for n in names], dtype=np.int8)
    files = [images_dir / n for n in names]
    extra = partition_file.read_text() if partition_file.is_file() else ""
    return Catalog(
        name="celeba", keys=names, official=official, decode=lambda i: _open_image(files[i]),
        fingerprint=_fingerprint(files, hashlib.sha256(extra.encode()).hexdigest()), labels=labels,
        attributes=attributes, attribute_names=attribute_names, notes=notes, problems=problems,
    )


# ---------------------------------------------------------------------------------------------- CIFAR-10

CIFAR_BATCHES = {f"data_batch_{i}": "train" for i in range(1, 6)} | {"test_batch": "test"}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:
        raise GenlabError(f"cifar10: cannot read {path}: {e}") from e


@SOURCES.register("cifar10")
def cifar10_catalog(cfg: DataConfig) -> Catalog:
    root = _root(cfg)
    batches_dir = next((d for d in (root, root / "cifar-10-batches-py") if (d / "data_batch_1").is_file()), None)
    if batches_dir is None:
        if any((root / s).is_dir() for s in ("train", "test")):
            return folder_catalog_from(root, "cifar10")  # class folders: train/<class>/*.png
        raise GenlabError(f"cifar10: neither cifar-10-batches-py/ (python batches) nor train/ and test/ class "
                          f"folders in {root}; `genlab data download cifar10 --root DIR` fetches the batches")
    arrays, keys, official, labels = [], [], [], []
    files = []
    for batch, split in CIFAR_BATCHES.items():
        path = batches_dir / batch
        if not path.is_file():
            raise GenlabError(f"cifar10: {path} is missing (expected data_batch_1..5 and test_batch)")
        d = _unpickle(path)
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        arrays.append(data)
        keys += [f"{batch}/{i:05d}" for i in range(len(data))]
        official += [split] * len(data)
        labels += [int(t) for t in d[b"labels"]]
        files.append(path)
    pixels = np.concatenate(arrays)
    meta = batches_dir / "batches.meta"
    label_names = [n.decode() for n in _unpickle(meta)[b"label_names"]] if meta.is_file() else []
    return Catalog(
        name="cifar10", keys=keys, official=official, decode=lambda i: pixels[i], fingerprint=_fingerprint(files),
        labels=labels, label_names=label_names,
    )
