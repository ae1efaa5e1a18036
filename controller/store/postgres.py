"""PostgreSQL backend (psycopg 3): everything lives in one schema (store.schema), so tests and
several deployments can share a database. Autocommit connection with explicit transactions;
executemany is pipelined by psycopg, so a batch costs a few round trips, not one per row."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql as pgsql

from controller.domain.records import Accepted, DeviceUpdate
from controller.errors import StoreDataError, StoreError, StoreUnavailable
from controller.store.base import Store
from controller.store.rollups import ROLLUP_COLS
from controller.store.writes import device_update_rows


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)]


class PostgresStore(Store):
    backend = "postgres"
    BLOB = "BYTEA"
    SERIAL = "BIGSERIAL PRIMARY KEY"
    LEAST = "LEAST"
    GREATEST = "GREATEST"

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._masks = {}
        self._types: dict[str, list[str]] = {}
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        """A session set up for this store: schema, search_path, the batch-keys temp table.
        Bounded: connect_timeout and TCP keepalives (a server that vanished without a reset is
        noticed in about 25 s, not at the kernel's 2 h default) unless the dsn sets them.
        application_name names the schema, so an operator (or a test) can find our sessions."""
        opts: dict[str, Any] = {"application_name": f"idufleet:{self.schema}"[:63]}
        defaults = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        opts |= {k: v for k, v in defaults.items() if k not in self.dsn}
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, **opts)
        except psycopg.Error as e:
            raise StoreUnavailable(
                f"cannot open PostgreSQL store ({e.__class__.__name__}: {e}); check store.dsn"
                " and that the server is up"
            ) from e
        try:
            conn.execute(
                pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema))
            )
            conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))
            # This session's staging table for a batch's message keys (_insert_keys).
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS batch_keys (device_id TEXT, epoch BIGINT,"
                " seq BIGINT, mtype INTEGER, received DOUBLE PRECISION) ON COMMIT DELETE ROWS"
            )
        except psycopg.Error as e:
            conn.close()
            raise StoreUnavailable(
                f"cannot set up the PostgreSQL session ({e.__class__.__name__}: {e});"
                " check store.dsn and store.schema"
            ) from e
        return conn

    @property
    def broken(self) -> bool:
        return bool(self.conn.closed or self.conn.broken)

    def reconnect(self) -> None:
        """A new session in place of a lost one (server restart, failover, idle kill,
        pg_terminate_backend). Raises StoreUnavailable while the server cannot be reached."""
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = self._connect()

    def translate(self, e: BaseException) -> StoreError | None:
        """OperationalError / InterfaceError (the connection, not the data) is unavailable;
        any other psycopg error (DataError: a NUL in text, a number out of range; integrity,
        programming errors) is data the server refuses."""
        if isinstance(e, StoreError):
            return e
        if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)) or (
            isinstance(e, psycopg.Error) and self.broken
        ):
            return StoreUnavailable(f"PostgreSQL: {e.__class__.__name__}: {e}")
        if isinstance(e, psycopg.Error):
            return StoreDataError(f"PostgreSQL: {e}", type(e).__name__)
        return None

    @staticmethod
    def _q(sql: str) -> str:
        return sql.replace("?", "%s")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(self._q(sql), tuple(params), prepare=False)
            return cur.fetchall() if cur.description is not None else []
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL: {e}") from e

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            try:
                with self.conn.cursor() as cur:
                    cur.executemany(self._q(sql), rows)
            except psycopg.OperationalError as e:
                raise StoreUnavailable(f"PostgreSQL: {e}") from e

    def _insert_values(self, prefix: str, rows: Sequence[Sequence[Any]], suffix: str = "") -> None:
        """COPY for plain inserts (a large VALUES list costs PostgreSQL more to parse than to
        run); pipelined executemany when there is an ON CONFLICT clause."""
        if not rows:
            return
        try:
            if suffix:
                ph = ", ".join(["%s"] * len(rows[0]))
                with self.conn.cursor() as cur:
                    cur.executemany(f"{prefix} VALUES ({ph}){suffix}", rows)
                return
            table_cols = prefix.removeprefix("INSERT INTO ").strip()
            types = self._copy_types(table_cols)
            with (
                self.conn.cursor() as cur,
                cur.copy(f"COPY {table_cols} FROM STDIN (FORMAT BINARY)") as cp,
            ):
                cp.set_types(types)
                for r in rows:
                    cp.write_row(r)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL: {e}") from e

    def _copy_types(self, table_cols: str) -> list[str]:
        """The column types of "table (col, ...)", asked once: binary COPY needs them, and
        saves formatting every value as text (per batch 1,313 rollup delta rows took 7-9 ms
        as text, 4-5 ms binary)."""
        types = self._types.get(table_cols)
        if types is None:
            table, _, cols = table_cols.partition("(")
            got = dict(
                self._execute(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = ? AND table_name = ?",
                    (self.schema, table.strip()),
                )
            )
            types = self._types[table_cols] = [got[c.strip()] for c in cols.strip(" )").split(",")]
        return types

    def _compaction_lock(self) -> bool:
        """One compaction at a time per schema (two controllers may share a store): the second
        skips instead of waiting on the first one's row locks. Released at commit."""
        rows = self._execute(
            "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.rollup_compact'))"
        )
        return bool(rows[0][0])

    def _compact(self, table: str, keycol: str) -> int:
        """DELETE ... RETURNING feeds the fold: exactly the deltas this statement removes are
        folded, whatever other controllers commit meanwhile (their new deltas wait for the
        next compaction)."""
        cols = f"id, {keycol}, metric, hour, {ROLLUP_COLS}"
        rows = self._execute(
            f"WITH gone AS (DELETE FROM {table}_delta RETURNING {cols}),"
            f" folded AS ({self._fold_sql(table, keycol, 'gone')})"
            " SELECT COUNT(*) FROM gone"
        )
        return int(rows[0][0])

    def _insert_keys(self, messages: list[Accepted]) -> list[Accepted]:
        """The keys go by binary COPY into a session temp table (emptied at commit), then
        INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING: the rows that come back are the
        messages new to the store. (A long VALUES list costs PostgreSQL more to parse than to
        run; array parameters cost psycopg a Python loop per element: 2,000 keys 19 ms as
        arrays, 17 ms this way, most of the difference on the GIL.)"""
        if not messages:
            return []
        try:
            with (
                self.conn.cursor() as cur,
                cur.copy("COPY pg_temp.batch_keys FROM STDIN (FORMAT BINARY)") as cp,
            ):
                cp.set_types(["text", "bigint", "bigint", "integer", "double precision"])
                for m in messages:
                    cp.write_row((m.device, m.epoch, m.seq, m.mtype, m.received))
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL: {e}") from e
        got = self._execute_pg(
            "INSERT INTO messages (device_id, epoch, seq, mtype, received) SELECT * FROM"
            " pg_temp.batch_keys ON CONFLICT DO NOTHING RETURNING device_id, epoch, seq",
            (),
        )
        if len(got) == len(messages):  # the usual case: every one is new
            return messages
        new = {(r[0], int(r[1]), int(r[2])) for r in got}
        return [m for m in messages if (m.device, m.epoch, m.seq) in new]

    def _update_devices(self, updates: list[DeviceUpdate]) -> None:
        """UPDATE ... FROM unnest(arrays), sorted by device id (lock order), for the reason
        given in _insert_keys (100 devices: 5 ms as a VALUES list)."""
        if not updates:
            return
        rows = device_update_rows(updates)
        self._execute_pg(
            "UPDATE devices SET last_seen = v.last_seen, online = v.online, replay = v.replay,"
            " firmware = v.firmware, board = v.board, boot_epoch = v.boot_epoch,"
            " birth_epoch = v.birth_epoch, birth_seq = v.birth_seq, death_open = v.death_open,"
            " anchors = v.anchors"
            " FROM unnest(%b::text[], %b::double precision[], %b::integer[], %b::bytea[],"
            " %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[], %b::integer[],"
            " %b::text[])"
            " AS v(id, last_seen, online, replay, firmware, board, boot_epoch, birth_epoch,"
            " birth_seq, death_open, anchors) WHERE devices.id = v.id",
            _columns(rows),
        )

    def _execute_pg(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A statement already in PostgreSQL's placeholders (%b: a binary parameter, which for
        a 500-element array is half the cost of text)."""
        try:
            cur = self.conn.execute(sql, tuple(params))
            return cur.fetchall() if cur.description is not None else []
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"PostgreSQL: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def _has_table(self, name: str) -> bool:
        return bool(
            self._execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                (self.schema, name),
            )
        )

    def drop_schema(self) -> None:
        """Remove the whole schema (tests and benchmarks clean up after themselves)."""
        self.conn.execute(
            pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(self.schema))
        )

    def close(self) -> None:
        self.conn.close()
