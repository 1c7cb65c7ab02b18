"""Extract a downloaded archive (CelebA's zip, CIFAR-10's tar.gz) so that nothing can land outside
the target folder: every member is checked before any is written, and an archive with an absolute
path, a ``..`` component, a link (symbolic or hard) or a device file, FIFO or other special member
is refused naming that member (the "tar slip" / "zip slip" attacks, CVE-2007-4559)."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from genlab.errors import GenlabError


def _check_name(archive: Path, name: str) -> None:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise GenlabError(f"{archive}: refusing member {name!r}: an absolute path would land outside the target folder")
    if ".." in posix.parts or ".." in windows.parts:
        raise GenlabError(f"{archive}: refusing member {name!r}: '..' would land outside the target folder")


def _check_tar(archive: Path, tar: tarfile.TarFile) -> None:
    for member in tar.getmembers():
        _check_name(archive, member.name)
        if member.issym() or member.islnk():
            raise GenlabError(f"{archive}: refusing member {member.name!r}: a link (to {member.linkname!r})")
        if not (member.isfile() or member.isdir()):
            raise GenlabError(f"{archive}: refusing member {member.name!r}: a device file, FIFO or other special file")


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        _check_name(archive, info.filename)
        mode = info.external_attr >> 16  # the Unix mode, where the archiver recorded one
        if mode and stat.S_ISLNK(mode):
            raise GenlabError(f"{archive}: refusing member {info.filename!r}: a symbolic link")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # (many zips record no type)
            raise GenlabError(f"{archive}: refusing member {info.filename!r}: a device file, FIFO or other special file")


def safe_extract(archive: Path, target: Path) -> None:
    """Check every member of a .zip, .tar, .tar.gz or .tgz archive, then extract it into ``target``."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(archive, zf)
                zf.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                _check_tar(archive, tar)
                # Python's own "data" filter as a second line where it exists (3.11.4+, 3.12)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(target, **kwargs)
        else:
            raise GenlabError(f"{archive} is neither a zip nor a tar archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise GenlabError(f"{archive}: a damaged archive ({e}); delete it and download again") from e
    except OSError as e:
        raise GenlabError(f"extracting {archive} into {target} failed: {e.strerror or e}") from e
