"""The image-feature cache: one SQLite file, rows keyed by file identity and by what encoded them.

A row holds the L2-normalised features of one image file, keyed by its resolved path, size and mtime (a
changed file misses and is re-encoded) and by the encoder key (model weights fingerprint and everything else
that changes the numbers: precision, decoding). Each batch is written in one transaction, so a run killed at
any moment leaves every row whole: SQLite's journal takes care of that.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FileKey:
    """What identifies an image file's content cheaply: where it resolves to, its size and its mtime."""

    path: str
    size: int
    mtime_ns: int

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
        try:
            resolved.encode("utf-8")
        except UnicodeEncodeError:  # a name that is not UTF-8: SQLite cannot hold it, so it is not cached
            return None
        return cls(resolved, status.st_size, status.st_mtime_ns)


class FeatureCache:
    """Features of image files for one encoder, stored in an SQLite database."""

    def __init__(self, database: Path, encoder: str) -> None:
        database.parent.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.db = sqlite3.connect(database, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            with self._transaction():
                self.db.execute("DROP TABLE IF EXISTS features")
                self.db.execute(
                    "CREATE TABLE features (encoder TEXT, path TEXT, size INTEGER, mtime_ns INTEGER, "
                    "vector BLOB, PRIMARY KEY (encoder, path))"
                )
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def get_many(self, keys: Sequence[FileKey]) -> dict[FileKey, np.ndarray]:
        """The cached features of those keys that have them; a file whose size or mtime changed misses."""
        found: dict[FileKey, np.ndarray] = {}
        wanted = {(k.path, k.size, k.mtime_ns): k for k in keys}
        paths = list({k.path for k in keys})
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            rows = self.db.execute(
                f"SELECT path, size, mtime_ns, vector FROM features WHERE encoder = ? AND path IN "
                f"({','.join('?' * len(chunk))})",
                [self.encoder, *chunk],
            )
            for path, size, mtime_ns, vector in rows:
                key = wanted.get((path, size, mtime_ns))
                if key is not None:
                    found[key] = np.frombuffer(vector, dtype=np.float32)
        return found

    def put_many(self, items: Iterable[tuple[FileKey, np.ndarray]]) -> None:
        """Store features, replacing older rows of the same files, in one transaction."""
        rows = [
            (self.encoder, k.path, k.size, k.mtime_ns, np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for k, v in items
        ]
        if rows:
            with self._transaction():
                self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
