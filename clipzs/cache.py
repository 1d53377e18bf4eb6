"""The cache directory, atomic writes and cache keys. Nothing here is ever left half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipzs.config import CACHE_ENV


def cache_dir() -> Path:
    """``$CLIPZS_CACHE_DIR`` when set (a relative one from the working folder), else the platform's user cache
    directory for clipzs. Absolute, so that what is kept there does not move with a process's working folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(os.path.abspath(override))
    import platformdirs

    return Path(platformdirs.user_cache_dir("clipzs"))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, sync it, then rename it into place.

    A reader sees the old file or the new one, never a part; a crash leaves at most a stray temporary file.
    """
    if path.is_dir():  # said of the path asked for, not of the temporary file renamed onto it
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a file where a folder is needed
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), e.filename) from e
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # (a read-only folder, say): said of the file asked for, not of a temporary name
        raise type(e)(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions of any new file, not a temporary file's 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename in (None, str(tmp), tmp) and e.errno is not None:  # (a full disk, say: write() names none)
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_known_umask: int | None = None


def remember_umask(mask: int) -> None:
    """Set the umask that new files get, as this process knows it (``clipzs serve`` runs each command under
    its client's umask)."""
    global _known_umask
    _known_umask = mask


def _umask() -> int:
    """The process's umask, read once: reading it means setting it, which must not race with other threads."""
    global _known_umask
    if _known_umask is None:
        _known_umask = os.umask(0)
        os.umask(_known_umask)
    return _known_umask


def key_of(fields: dict[str, Any]) -> str:
    """A stable hex key for a dict of JSON-able fields (file names whose bytes are not UTF-8 included)."""
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered in the cache by the file's resolved path and ``file_version``."""
    memo = cache_dir() / "fingerprints" / key_of({"path": str(path.resolve()), "version": file_version(path.stat())})
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    hexdigest = digest.hexdigest()
    with contextlib.suppress(OSError):  # an unwritable cache only costs re-hashing next time
        atomic_write(memo, lambda tmp: write_text(tmp, hexdigest))
    return hexdigest


def file_version(status: os.stat_result) -> tuple[int, int, int]:
    """What ``stat`` says of a file's version: size, mtime and ctime. Tools that copy a file's mtime (``cp -p``,
    ``rsync -a``, ``tar``) cannot set its ctime, so a file replaced so is a new version too. Not the inode
    number, which FAT file systems (memory cards) give anew at each mount."""
    return (status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def file_id(path: Path) -> tuple[int, int] | None:
    """Which file is at ``path`` (device and inode), to tell it from one made there anew; None when none is. (A
    FAT memory card numbers its files anew at each mount.)"""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text (for ``atomic_write``)."""
    path.write_text(text, encoding="utf-8")
