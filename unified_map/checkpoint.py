"""``checkpoint=PATH``: finished results kept in an SQLite file, so that a map killed at any
moment resumes where it stopped.

The file (the standard library's :mod:`sqlite3`, in WAL mode) holds one row per finished
item: its position in the input, a hash of the item's pickled bytes, and the pickled result.
The rows of a chunk are written in one transaction, committed as soon as the chunk arrives:
a driver killed (even with SIGKILL) between two commits loses only the chunks in flight, and
SQLite's journal guarantees that a commit is either complete or absent, never half written.

A rerun with the same path reads which positions are stored, checks each stored item against
the input (a differing item is :class:`~unified_map.errors.CheckpointMismatchError` naming its
position), hands back stored results and computes only the rest. Failed items are not stored:
a rerun tries them again.

Layout, version 1::

    unified_map_checkpoint(key TEXT PRIMARY KEY, value TEXT)   -- format, version, created
    results(position INTEGER PRIMARY KEY, item_hash BLOB, result BLOB)
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import logging
import os
import pickle
import sqlite3
import threading
from collections.abc import Iterator

import cloudpickle

from unified_map.errors import CheckpointError, CheckpointMismatchError

__all__ = ["Checkpoint", "item_hash"]

logger = logging.getLogger(__name__)

FORMAT = "unified_map checkpoint"
VERSION = "1"
_META = "unified_map_checkpoint"


def item_hash(item) -> bytes:
    """A 16-byte hash of ``item``'s pickled bytes (protocol 5, fixed so that it is the same
    in every run); items plain pickle refuses (lambdas, say) are hashed from cloudpickle.

    Examples
    --------
    >>> item_hash((1, "a")) == item_hash((1, "a")), item_hash(1) == item_hash(2)
    (True, False)
    """
    try:
        data = pickle.dumps(item, protocol=5)
    except Exception:  # noqa: BLE001 - anything the map could ship, it can hash
        data = cloudpickle.dumps(item, protocol=5)
    return hashlib.blake2b(data, digest_size=16).digest()


class Checkpoint:
    """An open checkpoint file: what is stored, and storing what finishes.

    Parameters
    ----------
    path : str
        The SQLite file; created if missing.
    mode : {"resume", "overwrite"}
        ``"overwrite"`` forgets the results stored in an existing checkpoint.

    Raises
    ------
    CheckpointError
        The file exists and is not a unified_map checkpoint (another file, or a corrupted
        one), or it cannot be created or written.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run.db")
    >>> with Checkpoint(path) as checkpoint:
    ...     checkpoint.store(0, ["a", "b"], ["A", "B"])
    >>> with Checkpoint(path) as checkpoint:
    ...     [(kind, start, values) for kind, start, values in checkpoint.split(0, ["a", "b", "c"])]
    [('stored', 0, ['A', 'B']), ('missing', 2, ['c'])]
    """

    def __init__(self, path: str, mode: str = "resume"):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        try:
            # check_same_thread=False: the map's thread stores; the lock keeps uses apart.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot open checkpoint {self.path!r}: {exc}") from exc
        try:
            if existed:
                self._check_format()
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL, in WAL mode: a commit survives the process being killed; a power cut
            # may lose the last commits, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            if not existed:
                self._create()
            elif mode == "overwrite":
                with self._transaction():
                    self._db.execute("DELETE FROM results")
            self._positions, self._hashes = self._read_index()
        except sqlite3.Error as exc:
            self._db.close()
            raise CheckpointError(
                f"checkpoint {self.path!r} is corrupted or unusable ({exc}); remove the file "
                "to start over"
            ) from exc
        except BaseException:
            self._db.close()
            raise
        if self._positions:
            logger.info(
                "checkpoint %s: %d results stored, resuming", self.path, len(self._positions)
            )

    # -- opening ---------------------------------------------------------------------------

    def _check_format(self) -> None:
        with open(self.path, "rb") as file:
            header = file.read(16)
        if header != b"SQLite format 3\x00":
            raise CheckpointError(
                f"{self.path!r} is not a unified_map checkpoint (not an SQLite file: another "
                "file, or a corrupted checkpoint); pass another path, or remove the file to "
                "start over"
            )
        try:
            rows = dict(self._db.execute(f"SELECT key, value FROM {_META}"))  # noqa: S608
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                raise CheckpointError(
                    f"{self.path!r} is an SQLite file but not a unified_map checkpoint; pass "
                    "another path"
                ) from exc
            raise
        if rows.get("format") != FORMAT:
            raise CheckpointError(f"{self.path!r} is not a unified_map checkpoint")
        if rows.get("version") != VERSION:
            raise CheckpointError(
                f"checkpoint {self.path!r} has version {rows.get('version')!r}; this "
                f"unified_map reads version {VERSION}"
            )
        (check,) = self._db.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")

    def _create(self) -> None:
        with self._transaction():
            self._db.execute(f"CREATE TABLE {_META} (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute(
                "CREATE TABLE results (position INTEGER PRIMARY KEY, item_hash BLOB NOT NULL, "
                "result BLOB NOT NULL)"
            )
            created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            self._db.executemany(
                f"INSERT INTO {_META} VALUES (?, ?)",  # noqa: S608
                [("format", FORMAT), ("version", VERSION), ("created", created)],
            )

    def _read_index(self) -> tuple[list[int], list[bytes]]:
        positions, hashes = [], []
        for position, digest in self._db.execute(
            "SELECT position, item_hash FROM results ORDER BY position"
        ):
            positions.append(position)
            hashes.append(digest)
        return positions, hashes

    def _transaction(self):
        return _Transaction(self._db)

    # -- use -------------------------------------------------------------------------------

    @property
    def n_stored(self) -> int:
        """How many results were stored when the file was opened."""
        return len(self._positions)

    def split(self, start: int, items: list) -> Iterator[tuple[str, int, list]]:
        """Cut the chunk of ``items`` starting at ``start`` into runs: ``("stored", start,
        results)`` read back from the file and ``("missing", start, items)`` to compute.

        Raises
        ------
        CheckpointMismatchError
            A stored position whose item differs from the one given now.
        """
        end = start + len(items)
        low = bisect.bisect_left(self._positions, start)
        high = bisect.bisect_left(self._positions, end)
        if low == high:  # nothing stored here: the common case of a fresh run
            yield "missing", start, items
            return
        stored = dict(zip(self._positions[low:high], self._hashes[low:high], strict=True))
        for position in stored:
            if item_hash(items[position - start]) != stored[position]:
                raise CheckpointMismatchError(
                    f"item {position} of the input differs from the one whose result is "
                    f"stored in checkpoint {self.path!r}: the input changed. Pass "
                    "checkpoint_mode='overwrite' to start over, or another checkpoint path"
                )
        run_start = start
        for position in range(start, end + 1):
            if position < end and (position in stored) == (run_start in stored):
                continue
            kind = "stored" if run_start in stored else "missing"
            if kind == "stored":
                yield kind, run_start, self._load(run_start, position)
            else:
                yield kind, run_start, items[run_start - start : position - start]
            run_start = position

    def _load(self, first: int, end: int) -> list:
        with self._lock:
            rows = self._db.execute(
                "SELECT position, result FROM results WHERE position >= ? AND position < ? "
                "ORDER BY position",
                (first, end),
            ).fetchall()
        if len(rows) != end - first:
            raise CheckpointError(f"checkpoint {self.path!r} lost rows between reads")
        values = []
        for position, blob in rows:
            try:
                values.append(pickle.loads(blob))
            except Exception as exc:
                raise CheckpointError(
                    f"the result of item {position} stored in checkpoint {self.path!r} cannot "
                    f"be read back ({type(exc).__name__}: {exc}); remove the file to start over"
                ) from exc
        return values

    def store(self, start: int, items: list, results: list, failed=frozenset()) -> None:
        """Store the results of a finished chunk (those not at a position in ``failed``, an
        offset from ``start``) in one transaction.

        Raises
        ------
        CheckpointError
            A result cannot be pickled (the message names its item).
        """
        rows = []
        for offset, value in enumerate(results):
            if offset in failed:
                continue
            try:
                blob = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise CheckpointError(
                    f"the result of item {start + offset} cannot be pickled to store it in "
                    f"checkpoint {self.path!r} ({type(exc).__name__}: {exc}): checkpoint= "
                    "needs results that pickle"
                ) from exc
            rows.append((start + offset, item_hash(items[offset]), blob))
        if not rows:
            return
        with self._lock:
            try:
                with self._transaction():
                    self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", rows)
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot write checkpoint {self.path!r}: {exc}") from exc

    def count(self) -> int:
        """How many results the file holds now."""
        with self._lock:
            return self._db.execute("SELECT count(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
