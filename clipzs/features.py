"""The image-feature cache: one SQLite file, rows keyed by file identity and by what encoded them.

A row holds the L2-normalised features of one image file, keyed by its resolved path and its version as
``stat`` says it (``cache.file_version``: a changed file misses and is re-encoded), and by the encoder key (the
model's fingerprint and everything else that changes the numbers: precision, decoding). Each batch is written
in one transaction, so a run killed at any moment leaves every row whole: SQLite's journal takes care of that.

The cache only ever saves work, so it never stops a run: a damaged database file is replaced by a new one, and
a cache that cannot be opened or written (a read-only folder, a full disk) is left alone for the rest of the
run, with a ``CacheWarning`` each time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipzs.cache import file_id, file_version
from clipzs.errors import CacheWarning
from clipzs.prompts import is_text

SCHEMA_VERSION = 3
LOCK_WAIT = 30.0
"""Seconds a command waits, in all, for the write lock that another process holds on the cache, before it goes
on without the cache (at set-up) or stops writing it (a batch)."""


@dataclass(frozen=True)
class FileKey:
    """What identifies an image file's content cheaply: where it resolves to, and its version as ``stat`` says."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int = 0

    @classmethod
    def of(cls, path: Path) -> FileKey | None:
        """The key of an existing regular file, or None (the decoder will report why it cannot be read)."""
        try:
            status = os.stat(path)
            resolved = os.path.realpath(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        if not is_text(resolved):  # a name that is not UTF-8: SQLite cannot hold it, so it is not cached
            return None
        return cls(resolved, *file_version(status))


class FeatureCache:
    """Features of image files for one encoder, stored in an SQLite database."""

    @classmethod
    def open(cls, database: Path, encoder: str) -> FeatureCache | None:
        """The cache in ``database``, or None (with a warning) when it cannot be used.

        A file SQLite cannot read as a database (damaged, or not one) is deleted with its journal and made anew,
        by one process at a time: one that waited finds the new database and uses it.
        """
        try:
            return cls(database, encoder)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) or (database.exists() and not database.is_file()):
                _warn(f"cannot open the feature cache {database} ({e}): images are encoded without it")
                return None
            damage = e  # (a file another process is replacing meanwhile may be gone for a moment: it waits below)
        try:
            with _exclusive(Path(f"{database}.lock")):
                try:
                    return cls(database, encoder)  # another process has replaced it meanwhile
                except sqlite3.OperationalError:
                    raise  # (locked, say: not damage, so nothing is deleted)
                except sqlite3.DatabaseError:
                    pass  # still damaged
                _delete(database)
                cache = cls(database, encoder)
        except (OSError, sqlite3.Error) as e:
            _warn(
                f"the feature cache {database} is damaged ({damage}) and cannot be replaced ({e}): images are "
                "encoded without it"
            )
            return None
        _warn(f"the feature cache {database} was damaged ({damage}): replaced it by an empty one")
        return cache

    def __init__(self, database: Path, encoder: str) -> None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise sqlite3.OperationalError(f"cannot make its folder: {e.strerror or e}") from e
        self.database = database
        self.encoder = encoder
        self.db: sqlite3.Connection | None = sqlite3.connect(database, timeout=LOCK_WAIT, isolation_level=None)
        try:
            self._set_up_within(LOCK_WAIT)
        except BaseException:
            self.db.close()
            raise
        self.identity = file_id(database)  # (the file SQLite has made by now)

    def _set_up_within(self, seconds: float) -> None:
        """Set up the database, trying again while it is locked, for ``seconds`` in all: commands starting
        together (one switching to WAL, which SQLite does not wait for), or another process's write transaction,
        which each try waits for only as long as is left."""
        assert self.db is not None
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            self.db.execute(f"PRAGMA busy_timeout={max(int(left * 1000), 0)}")
            try:
                self._set_up()
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self.db.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")

    def _set_up(self) -> None:
        assert self.db is not None
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if self._version() == SCHEMA_VERSION:
            return
        with self._transaction():
            if self._version() != SCHEMA_VERSION:  # asked again under the write lock: another process may have
                self.db.execute("DROP TABLE IF EXISTS features")  # made the table (and filled it) meanwhile
                self.db.execute(
                    "CREATE TABLE features (encoder TEXT, path TEXT, size INTEGER, mtime_ns INTEGER, "
                    "ctime_ns INTEGER, vector BLOB, PRIMARY KEY (encoder, path))"
                )
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _version(self) -> int:
        assert self.db is not None
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def get_many(self, keys: Sequence[FileKey]) -> dict[FileKey, np.ndarray]:
        """The cached features of those keys that have them; a file changed since (another key) misses."""
        found: dict[FileKey, np.ndarray] = {}
        wanted = {(k.path, k.size, k.mtime_ns, k.ctime_ns): k for k in keys}
        paths = list({k.path for k in keys})
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            if self.db is None:
                break
            try:
                rows = self.db.execute(
                    f"SELECT path, size, mtime_ns, ctime_ns, vector FROM features WHERE encoder = ? AND path IN "
                    f"({','.join('?' * len(chunk))})",
                    [self.encoder, *chunk],
                ).fetchall()
            except sqlite3.Error as e:
                self._give_up("read", e)
                break
            for *stat_key, vector in rows:
                key = wanted.get(tuple(stat_key))
                if key is not None:
                    found[key] = np.frombuffer(vector, dtype=np.float32)
        return found

    def put_many(self, items: Iterable[tuple[FileKey, np.ndarray]]) -> None:
        """Store features, replacing older rows of the same files, in one transaction."""
        rows = [
            (
                self.encoder,
                k.path,
                k.size,
                k.mtime_ns,
                k.ctime_ns,
                np.ascontiguousarray(v, dtype=np.float32).tobytes(),
            )
            for k, v in items
        ]
        if rows and self.db is not None:
            try:
                with self._transaction():
                    self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as e:
                self._give_up("written", e)

    def _give_up(self, verb: str, error: sqlite3.Error) -> None:
        """Stop using a cache that failed (a full disk, a damaged file): the run goes on without it. A damaged
        file, which SQLite finds only when it reads the damaged part, is removed, so the next run makes it anew."""
        self.close()
        if type(error) is sqlite3.DatabaseError and self._remove_damaged():  # (not locked, not full: damaged)
            _warn(
                f"the feature cache {self.database} is damaged ({error}): removed it, the next run makes it anew; "
                "the rest of this run goes without it"
            )
            return
        _warn(f"the feature cache {self.database} cannot be {verb} ({error}): the rest of this run goes without it")

    def _remove_damaged(self) -> bool:
        """Delete the damaged database this cache opened, with its journal, unless another process has replaced
        it meanwhile; whether it is gone."""
        try:
            with _exclusive(Path(f"{self.database}.lock")):
                if self.identity is not None and file_id(self.database) == self.identity:
                    _delete(self.database)
        except OSError:
            return False
        return True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        assert self.db is not None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None


def _delete(database: Path) -> None:
    """Delete a database with its journal (``OSError`` when it cannot be)."""
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (made if need be) where the system has ``flock``."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, and at worst two processes both replace a damaged cache
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _warn(message: str) -> None:
    warnings.warn(message, CacheWarning, stacklevel=3)
