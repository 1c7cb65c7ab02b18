"""``genlab data download``: fetch CelebA or CIFAR-10 from their official sources, through
torchvision's download helpers, and verify every file's MD5 checksum.

Without a network it fails at once with the list of files needed (name and MD5) and where to put
them, so a user can copy them in by hand.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

from torchvision.datasets import utils as tv_utils  # (called through the module: tests replace its network calls)

from genlab.data.archive import safe_extract
from genlab.errors import GenlabError

log = logging.getLogger("genlab")

# Official CIFAR-10 python batches (Krizhevsky 2009), as torchvision.datasets.CIFAR10 lists them.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR10_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
# Official CelebA files on Google Drive (Liu et al. 2015), as torchvision.datasets.CelebA lists them.
CELEBA_FILES = [
    ("0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb", "img_align_celeba.zip"),
    ("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668", "list_eval_partition.txt"),
    ("1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS", "32bd1bd63d3c78cd57e08160ec5ed1e2", "identity_CelebA.txt"),
    ("0B7EVK8r0v71pblRyaVFSWGxPY0U", "75e246fa4810816ffd6ee81facbd244c", "list_attr_celeba.txt"),
]
PROBE_TIMEOUT_S = 5.0


def _reachable(url: str) -> str | None:
    """None when a TCP connection to the URL's host opens; else the reason, found within seconds."""
    host = urlparse(url).hostname or url
    try:
        with socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{host} is not reachable ({e.strerror or e})"


def _md5_ok(path: Path, md5: str) -> bool:
    return tv_utils.check_integrity(str(path), md5)


def download_cifar10(root: Path) -> Path:
    target = root / "cifar-10-batches-py"
    if all(_md5_ok(target / name, md5) for name, md5 in CIFAR10_FILES.items()):
        log.info("cifar10: all files present in %s, checksums verified", target)
        return target
    needed = f"{CIFAR10_ARCHIVE[0]} (md5 {CIFAR10_ARCHIVE[1]})"
    reason = _reachable(CIFAR10_URL)
    if reason is not None:
        raise GenlabError(f"cannot download CIFAR-10: {reason}. Offline, fetch {CIFAR10_URL} "
                          f"({CIFAR10_ARCHIVE[0]}, md5 {CIFAR10_ARCHIVE[1]}) elsewhere and extract it into {root}, "
                          f"giving {target}/data_batch_1..5, test_batch and batches.meta")
    archive = root / CIFAR10_ARCHIVE[0]
    try:
        tv_utils.download_url(CIFAR10_URL, str(root), filename=CIFAR10_ARCHIVE[0])
    except Exception as e:  # network errors, a full disk
        raise GenlabError(f"downloading CIFAR-10 into {root} failed: {e}. Needed: {needed}") from e
    if not _md5_ok(archive, CIFAR10_ARCHIVE[1]):
        raise GenlabError(f"cifar10: checksum mismatch for {archive} (expected md5 {CIFAR10_ARCHIVE[1]}); "
                          "delete it and download again")
    safe_extract(archive, root)
    bad = [name for name, md5 in CIFAR10_FILES.items() if not _md5_ok(target / name, md5)]
    if bad:
        raise GenlabError(f"cifar10: checksum mismatch after download for {', '.join(bad)} in {target}")
    log.info("cifar10: downloaded to %s, checksums verified", target)
    return target


def download_celeba(root: Path) -> Path:
    target = root / "celeba"
    missing = [(fid, md5, name) for fid, md5, name in CELEBA_FILES if not _md5_ok(target / name, md5)]
    if not missing and (target / "img_align_celeba").is_dir():
        log.info("celeba: all files present in %s, checksums verified", target)
        return target
    needed = "; ".join(f"{name} (md5 {md5})" for _, md5, name in missing)
    reason = _reachable("https://drive.google.com")
    if reason is not None:
        raise GenlabError(f"cannot download CelebA: {reason}. Offline, get from the CelebA site "
                          f"(mmlab.ie.cuhk.edu.hk/projects/CelebA.html): {needed}; put them in {target} "
                          f"and unzip img_align_celeba.zip there")
    for fid, md5, name in missing:
        try:
            tv_utils.download_file_from_google_drive(fid, str(target), name, md5)
        except Exception as e:
            raise GenlabError(f"downloading CelebA's {name} into {target} failed: {e}") from e
        if not _md5_ok(target / name, md5):
            raise GenlabError(f"celeba: checksum mismatch for {target / name} (expected md5 {md5})")
    if not (target / "img_align_celeba").is_dir():
        safe_extract(target / "img_align_celeba.zip", target)
    log.info("celeba: downloaded to %s, checksums verified", target)
    return target


DOWNLOADS = {"celeba": download_celeba, "cifar10": download_cifar10}
