"""SQLite backend (the embedded default): one file in WAL mode, explicit BEGIN IMMEDIATE
transactions, a busy timeout so a second process (CLI, second controller) waits, not fails."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.errors import StoreDataError, StoreError, StoreUnavailable
from controller.store.base import Store


class SqliteStore(Store):
    backend = "sqlite"
    ROLLUP_DELTAS = False  # see Store.ROLLUP_DELTAS: the direct upsert is cheaper here

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(
                f"no store at {self.path}: check store.path in the config, or create it with "
                "`idufleet init`"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=30000")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open SQLite store {self.path}: {e}; check the path") from e
        self._depth = 0
        self._masks = {}

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"SQLite {self.path}: {e}") from e

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            try:
                self.conn.executemany(sql, rows)
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"SQLite {self.path}: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            if self.conn.in_transaction:  # SQLite may have rolled back itself (disk full)
                self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._execute("COMMIT")

    def _has_table(self, name: str) -> bool:
        return bool(
            self._execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        )

    def translate(self, e: BaseException) -> StoreError | None:
        """OperationalError (locked past the busy timeout, disk full, I/O error) is the file
        being unavailable, retried; any other sqlite3 error, and the OverflowError sqlite3
        raises binding an integer past int64, is data it refuses."""
        if isinstance(e, StoreError):
            return e
        if isinstance(e, sqlite3.OperationalError):
            return StoreUnavailable(f"SQLite {self.path}: {e}")
        if isinstance(e, (sqlite3.Error, OverflowError)):
            return StoreDataError(f"SQLite {self.path}: {e}", type(e).__name__)
        return None

    def close(self) -> None:
        self.conn.close()
