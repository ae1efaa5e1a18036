"""The dialect-neutral core every store room builds on: the backend hooks (execute, transaction,
table check), the dialect spellings, chunked multi-row inserts and the schema migrations.
Imports only errors and store.schema: never domain values, transport/ or api/."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from controller.errors import StoreError
from controller.store.schema import LATEST, MIGRATIONS

_MAX_PARAMS = 30000  # per statement: under SQLite's 32766 and PostgreSQL's 65535


class StoreCore(ABC):
    """One connection to the IDU store. Not thread-safe: use it from one thread at a time.

    The rooms (store/devices.py, writes.py, rollups.py, ...) are mixins of this class, so a
    backend (store/sqlite.py, store/postgres.py) implements the hooks once and may override a
    room's private step where its dialect has a faster statement."""

    backend = ""
    # Spellings that differ between the dialects; schema.MIGRATIONS use {blob} and {serial}.
    BLOB = "BLOB"
    SERIAL = "INTEGER PRIMARY KEY AUTOINCREMENT"
    LEAST = "MIN"
    GREATEST = "MAX"

    # --- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (with ? placeholders) and return its rows (empty for DML)."""

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def _tx(self) -> AbstractContextManager[None]:
        """A write transaction: commits on exit, rolls back on error; nested, joins the outer
        one (SQLite) or is a savepoint in it (PostgreSQL)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _has_table(self, name: str) -> bool: ...

    # --- failures and reconnecting (the store thread uses these on every call path) ------
    @property
    def broken(self) -> bool:
        """The connection is gone (the server dropped it) and must be reopened."""
        return False

    def reconnect(self) -> None:
        """Reopen the connection (the backend's session set-up included). Raises
        StoreUnavailable when the server still cannot be reached. Backends whose connection
        cannot be lost (SQLite) keep this no-op."""
        return None

    def translate(self, e: BaseException) -> StoreError | None:
        """The StoreError for a driver error this backend raised (StoreUnavailable for a lost
        or busy server, StoreDataError for data it refuses), None when `e` is not the
        driver's: so no raw driver exception leaves the store thread."""
        return e if isinstance(e, StoreError) else None

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction for a caller that needs several store calls to happen together
        or not at all (a claim marks its token used and creates the device): the store's own
        methods called inside it join it. Commits on exit, rolls back if the block raises."""
        return self._tx()

    def _insert_values(self, prefix: str, rows: Sequence[Sequence[Any]], suffix: str = "") -> None:
        """One multi-row VALUES statement per chunk instead of executemany: the store thread
        then gives up and retakes the GIL a few times per batch, not once per row (which, with
        the MQTT loop busy on the other thread, costs up to the switch interval each time)."""
        if not rows:
            return
        ncols = len(rows[0])
        per = max(1, _MAX_PARAMS // ncols)
        group = "(" + ", ".join(["?"] * ncols) + ")"
        for i in range(0, len(rows), per):
            chunk = rows[i : i + per]
            params = [v for r in chunk for v in r]
            self._execute(prefix + " VALUES " + ", ".join([group] * len(chunk)) + suffix, params)

    # --- schema --------------------------------------------------------------------------
    def schema_version(self) -> int:
        if not self._has_table("schema_version"):
            return 0
        rows = self._execute("SELECT version FROM schema_version")
        return int(rows[0][0]) if rows else 0

    def probe_write(self) -> None:
        """A write that changes nothing (`idufleet doctor`): raises if the store is read-only."""
        with self.transaction():
            self._execute("UPDATE schema_version SET version = version")

    def migrate(self, target: int = LATEST) -> int:
        """Bring the schema to `target` (LATEST unless a test builds an older store to upgrade);
        returns the version found. Refuses a schema newer than this code knows."""
        if not 0 <= target <= LATEST:
            raise ValueError(f"target {target}: migrations go from 0 to {LATEST}")
        with self._tx():
            if not self._has_table("schema_version"):
                self._execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                self._execute("INSERT INTO schema_version (version) VALUES (0)")
            found = self.schema_version()
            if found > LATEST:
                raise StoreError(
                    f"store schema is version {found}, this controller knows {LATEST}; "
                    "upgrade idufleet before starting it on this store"
                )
            for version in range(found + 1, target + 1):
                for stmt in MIGRATIONS[version - 1]:
                    self._execute(stmt.format(blob=self.BLOB, serial=self.SERIAL))
                self._execute("UPDATE schema_version SET version = ?", (version,))
        return found
