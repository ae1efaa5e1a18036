"""The IDU store interface and its SQL, shared by the SQLite and PostgreSQL backends (they differ
only in connecting, placeholders, transactions and a few spellings). Synchronous: the app calls it
from one dedicated thread. Imports domain values, never transport/ or api/."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]

from controller.domain.records import Accepted, Batch, BatchResult, DeviceUpdate
from controller.domain.rollup import Deltas, fold_batch
from controller.errors import RegistryError, StoreError
from controller.store.schema import LATEST, MIGRATIONS

_KEY_CHUNK = 1000  # messages per INSERT ... RETURNING (5 parameters each)
_MAX_PARAMS = 30000  # per statement: under SQLite's 32766 and PostgreSQL's 65535
_ROLLUPS = (("rollup_device", "device_id"), ("rollup_zone", "zone"))  # (table, key column)
_MASK_BITS = 62  # raw_samples.mask: bit (metric % 62), within a signed 64-bit integer


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    site: str
    zone: str
    kind: str
    tags: dict[str, str]
    key_wrapped: bytes
    status: str
    created_at: float
    firmware: str | None = None
    board: str | None = None
    last_seen: float | None = None
    online: bool = False
    boot_epoch: int | None = None
    birth_epoch: int | None = None
    birth_seq: int | None = None
    death_open: bool = False
    replay: bytes | None = None

    def public(self) -> dict[str, Any]:
        """The JSON view for the API: everything but the wrapped key and the replay state."""
        return {
            "id": self.id,
            "site": self.site,
            "zone": self.zone,
            "kind": self.kind,
            "tags": self.tags,
            "status": self.status,
            "created_at": self.created_at,
            "firmware": self.firmware,
            "board": self.board,
            "last_seen": self.last_seen,
            "online": self.online,
            "boot_epoch": self.boot_epoch,
        }


_DEVICE_COLS = (
    "id, site, zone, kind, tags, key_wrapped, status, created_at, firmware, board, last_seen, "
    "online, boot_epoch, birth_epoch, birth_seq, death_open, replay"
)


def _device(row: Sequence[Any]) -> DeviceRecord:
    return DeviceRecord(
        id=row[0],
        site=row[1],
        zone=row[2],
        kind=row[3],
        tags=json.loads(row[4]),
        key_wrapped=bytes(row[5]),
        status=row[6],
        created_at=row[7],
        firmware=row[8],
        board=row[9],
        last_seen=row[10],
        online=bool(row[11]),
        boot_epoch=row[12],
        birth_epoch=row[13],
        birth_seq=row[14],
        death_open=bool(row[15]),
        replay=bytes(row[16]) if row[16] is not None else None,
    )


def device_update_rows(updates: list[DeviceUpdate]) -> list[tuple[object, ...]]:
    """Registry columns of each update in device-id order: both backends update devices in
    that order so that two controllers' batches lock their rows in the same order."""
    return [
        (
            u.device,
            u.last_seen,
            int(u.online),
            u.replay,
            u.firmware,
            u.board,
            u.boot_epoch,
            u.birth_epoch,
            u.birth_seq,
            int(u.death_open),
        )
        for u in sorted(updates, key=lambda u: u.device)
    ]


class Store(ABC):
    """One connection to the IDU store. Not thread-safe: use it from one thread at a time."""

    backend = ""
    BLOB = "BLOB"
    SERIAL = "INTEGER PRIMARY KEY AUTOINCREMENT"
    LEAST = "MIN"
    GREATEST = "MAX"
    HOUR = "(CAST(ts / 3600 AS INTEGER) * 3600)"
    _masks: dict[tuple[int, ...], int]
    # Batches append rollup deltas (compacted later) instead of upserting the rollup rows. Off
    # for SQLite, where the in-process upsert is cheaper than the append plus the compaction
    # (measured 11 against 14 ms per 500-report batch); queries read both tables either way.
    ROLLUP_DELTAS = True
    deltas_pending = 0  # rollup delta rows this connection appended since its last compaction

    # --- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (with ? placeholders) and return its rows (empty for DML)."""

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def _tx(self) -> AbstractContextManager[None]:
        """A write transaction: commits on exit, rolls back on error."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _has_table(self, name: str) -> bool: ...

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

    def _compaction_lock(self) -> bool:
        """Inside the compaction transaction: False when another process is compacting (skip).
        SQLite's write transaction already excludes every other writer."""
        return True

    def _compact(self, table: str, keycol: str) -> int:
        """Fold every pending delta of `table` into it and delete them; returns how many.
        Correct when no other writer can add or fold deltas during the transaction (SQLite's
        BEGIN IMMEDIATE); PostgreSQL overrides it."""
        n = int(self._execute(f"SELECT COUNT(*) FROM {table}_delta")[0][0])
        if n:
            self._execute(self._fold_sql(table, keycol, f"{table}_delta"))
            self._execute(f"DELETE FROM {table}_delta")
        return n

    # --- schema --------------------------------------------------------------------------
    def schema_version(self) -> int:
        if not self._has_table("schema_version"):
            return 0
        rows = self._execute("SELECT version FROM schema_version")
        return int(rows[0][0]) if rows else 0

    def migrate(self) -> int:
        """Bring the schema to LATEST; returns the version found. Refuses a newer schema."""
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
            for version in range(found + 1, LATEST + 1):
                for stmt in MIGRATIONS[version - 1]:
                    self._execute(stmt.format(blob=self.BLOB, serial=self.SERIAL))
                self._execute("UPDATE schema_version SET version = ?", (version,))
        return found

    # --- registry ------------------------------------------------------------------------
    def add_device(self, rec: DeviceRecord) -> None:
        with self._tx():
            if self._execute("SELECT 1 FROM devices WHERE id = ?", (rec.id,)):
                raise RegistryError(
                    f"device {rec.id} already exists; pick another id or disable the old one"
                )
            self._execute(
                "INSERT INTO devices (id, site, zone, kind, tags, key_wrapped, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.site,
                    rec.zone,
                    rec.kind,
                    json.dumps(rec.tags, sort_keys=True),
                    rec.key_wrapped,
                    rec.status,
                    rec.created_at,
                ),
            )

    def get_device(self, device_id: str) -> DeviceRecord | None:
        rows = self._execute(f"SELECT {_DEVICE_COLS} FROM devices WHERE id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    def list_devices(
        self,
        site: str | None = None,
        zone: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        online: bool | None = None,
    ) -> list[DeviceRecord]:
        where: list[str] = []
        params: list[Any] = []
        for col, val in (("site", site), ("zone", zone), ("kind", kind), ("status", status)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if online is not None:
            where.append("online = ?")
            params.append(int(online))
        sql = f"SELECT {_DEVICE_COLS} FROM devices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_device(r) for r in self._execute(sql + " ORDER BY id", params)]

    def set_status(self, device_id: str, status: str) -> None:
        with self._tx():
            if not self._execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)):
                raise RegistryError(f"no device {device_id}; list them with `idufleet devices`")
            self._execute("UPDATE devices SET status = ? WHERE id = ?", (status, device_id))

    def set_key(self, device_id: str, key_wrapped: bytes) -> None:
        with self._tx():
            self._execute(
                "UPDATE devices SET key_wrapped = ? WHERE id = ?", (key_wrapped, device_id)
            )

    # --- ingest --------------------------------------------------------------------------
    def write_batch(self, batch: Batch) -> BatchResult:
        """Store a batch in one transaction. A message already stored (same device, epoch, seq)
        is skipped with everything it carries, so rollups count each sample exactly once."""
        with self._tx():
            fresh = self._insert_keys(batch.messages)
            rows = self._insert_rows(fresh)
            self._insert_events(fresh)
            self._apply_acks(fresh)
            self._update_devices(batch.devices)
            self._insert_values(
                "INSERT INTO presence (device_id, ts, state, reason)",
                [(p.device, p.ts, p.state, p.reason) for p in batch.presence],
            )
        return BatchResult(len(fresh), rows, len(batch.messages) - len(fresh))

    def _insert_keys(self, messages: list[Accepted]) -> list[Accepted]:
        fresh: list[Accepted] = []
        for i in range(0, len(messages), _KEY_CHUNK):
            chunk = messages[i : i + _KEY_CHUNK]
            params: list[Any] = []
            for m in chunk:
                params += (m.device, m.epoch, m.seq, m.mtype, m.received)
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            got = self._execute(
                "INSERT INTO messages (device_id, epoch, seq, mtype, received) VALUES "
                + values
                + " ON CONFLICT DO NOTHING RETURNING device_id, epoch, seq",
                params,
            )
            new = {(r[0], int(r[1]), int(r[2])) for r in got}
            fresh += [m for m in chunk if (m.device, m.epoch, m.seq) in new]
        return fresh

    def _insert_rows(self, fresh: list[Accepted]) -> int:
        """Raw samples packed one row per (message, sample); rollup deltas folded in memory
        (controller.domain.rollup.fold_batch) and merged with one upsert row per (device or
        zone, metric, hour) per batch, instead of per metric row."""
        packed: list[tuple[Any, ...]] = []
        total = 0
        pack = msgpack.packb
        masks = self._masks
        if len(masks) > 4096:
            masks.clear()
        for m in fresh:
            for i, ts, vals in m.samples or m.all_samples():
                if not vals:
                    continue
                ids = tuple(vals)
                mask = masks.get(ids)
                if mask is None:  # devices of a kind report the same metric set: cache it
                    mask = masks[ids] = sum({1 << (mid % _MASK_BITS) for mid in ids})
                total += len(vals)
                packed.append((m.device, m.epoch, m.seq, i, ts, len(vals), mask, pack(vals)))
        if not packed:
            return 0
        self._insert_values(
            "INSERT INTO raw_samples (device_id, epoch, seq, sample, ts, n, mask, vals)", packed
        )
        dev, zone = fold_batch(fresh)
        add = self._append_deltas if self.ROLLUP_DELTAS else self._merge_rollups
        add("rollup_device", "device_id", dev)
        add("rollup_zone", "zone", zone)
        return total

    def _merge_rollups(self, table: str, keycol: str, deltas: Deltas) -> None:
        """Upsert a batch's deltas into the rollup rows directly (ROLLUP_DELTAS off), sorted by
        key so two controllers on one store lock rollup rows in the same order."""
        rows = [
            (k[0], k[1], k[2], int(a[0]), a[1], a[2], a[3], a[4], a[5]) for k, a in deltas.items()
        ]
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        self._insert_values(
            f"INSERT INTO {table} ({keycol}, metric, hour, n, vmin, vmax, vsum, vlast, last_ts)",
            rows,
            self._rollup_conflict(table, keycol),
        )

    def _append_deltas(self, table: str, keycol: str, deltas: Deltas) -> None:
        """Append a batch's aggregated deltas to `table`_delta (migration 3): plain inserts
        (COPY on PostgreSQL), no row updated, no index touched. compact_rollups folds them in."""
        rows = [
            (k[0], k[1], k[2], int(a[0]), a[1], a[2], a[3], a[4], a[5]) for k, a in deltas.items()
        ]
        self._insert_values(
            f"INSERT INTO {table}_delta ({keycol}, metric, hour, n, vmin, vmax, vsum, vlast,"
            " last_ts)",
            rows,
        )
        self.deltas_pending += len(rows)

    def compact_rollups(self) -> int:
        """Fold the pending rollup deltas into rollup_device / rollup_zone (one upsert row per
        key, metric and hour) and delete them, in one transaction of its own; returns the delta
        rows folded (0 when another process is compacting). Queries give the same answers
        before and after (they merge pending deltas), so this only bounds the delta tables:
        the controller runs it every few seconds from the store thread, between batches."""
        n = 0
        with self._tx():
            if self._compaction_lock():
                for table, keycol in _ROLLUPS:
                    n += self._compact(table, keycol)
        self.deltas_pending = 0
        return n

    def _fold_sql(self, table: str, keycol: str, source: str) -> str:
        """INSERT ... SELECT folding the deltas in `source` (a table or CTE with the delta
        columns and id) into `table`: per key, metric and hour the count and sum add, min and
        max combine, "last" is the value with the latest sample time, the later delta (higher
        id) on equal times, and it replaces the stored one when its time is equal or later;
        the same rules as merging in order (rollup.Agg.merge), which the queries do. Rows go
        in key order so two compactions would lock rollup rows in the same order."""
        t, k = table, keycol
        return (
            f"INSERT INTO {t} ({k}, metric, hour, n, vmin, vmax, vsum, vlast, last_ts)"
            f" SELECT {k}, metric, hour, SUM(n), MIN(vmin), MAX(vmax), SUM(vsum),"
            " MAX(CASE WHEN rn = 1 THEN vlast END), MAX(last_ts)"
            f" FROM (SELECT {k}, metric, hour, n, vmin, vmax, vsum, vlast, last_ts,"
            f" ROW_NUMBER() OVER (PARTITION BY {k}, metric, hour ORDER BY last_ts DESC, id DESC)"
            f" AS rn FROM {source}) AS d WHERE true"
            f" GROUP BY {k}, metric, hour ORDER BY {k}, metric, hour" + self._rollup_conflict(t, k)
        )

    def _rollup_conflict(self, t: str, keycol: str) -> str:
        """Merging into an existing rollup row: counts and sums add, min and max combine, the
        incoming "last" wins when its time is equal or later."""
        return (
            f" ON CONFLICT ({keycol}, metric, hour) DO UPDATE SET"
            f" n = {t}.n + excluded.n,"
            f" vmin = {self.LEAST}({t}.vmin, excluded.vmin),"
            f" vmax = {self.GREATEST}({t}.vmax, excluded.vmax),"
            f" vsum = {t}.vsum + excluded.vsum,"
            f" vlast = CASE WHEN excluded.last_ts >= {t}.last_ts"
            f" THEN excluded.vlast ELSE {t}.vlast END,"
            f" last_ts = {self.GREATEST}({t}.last_ts, excluded.last_ts)"
        )

    def _insert_events(self, fresh: list[Accepted]) -> None:
        rows = [
            (
                m.device,
                m.epoch,
                m.seq,
                m.ts,
                m.event.code,
                m.event.severity,
                m.event.text,
                json.dumps(m.event.data) if m.event.data is not None else None,
            )
            for m in fresh
            if m.event is not None
        ]
        self._insert_values(
            "INSERT INTO device_events (device_id, epoch, seq, ts, code, severity, text, data)",
            rows,
            " ON CONFLICT DO NOTHING",
        )

    def _apply_acks(self, fresh: list[Accepted]) -> None:
        # Only the device a command was sent to can settle it.
        rows = [
            (
                "ok" if m.ack.result == 0 else "failed",
                m.ack.result,
                m.received,
                json.dumps(m.ack.data) if m.ack.data is not None else None,
                m.ack.cmd_epoch,
                m.ack.cmd_seq,
                m.device,
            )
            for m in fresh
            if m.ack is not None
        ]
        if rows:
            self._executemany(
                "UPDATE commands SET status = ?, result = ?, acked = ?, data = ?"
                " WHERE epoch = ? AND seq = ? AND device_id = ? AND acked IS NULL",
                rows,
            )

    def _update_devices(self, updates: list[DeviceUpdate]) -> None:
        # UPDATE ... FROM (VALUES ...): one statement per chunk (see _insert_values). VALUES
        # columns are column1..N in both SQLite and PostgreSQL; the casts type all-NULL columns.
        rows = device_update_rows(updates)
        for i in range(0, len(rows), 1000):
            chunk = rows[i : i + 1000]
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            self._execute(
                "UPDATE devices SET last_seen = CAST(v.column2 AS DOUBLE PRECISION),"
                " online = CAST(v.column3 AS INTEGER),"
                f" replay = CAST(v.column4 AS {self.BLOB}), firmware = CAST(v.column5 AS TEXT),"
                " board = CAST(v.column6 AS TEXT), boot_epoch = CAST(v.column7 AS BIGINT),"
                " birth_epoch = CAST(v.column8 AS BIGINT), birth_seq = CAST(v.column9 AS BIGINT),"
                " death_open = CAST(v.column10 AS INTEGER)"
                f" FROM (VALUES {values}) AS v WHERE devices.id = v.column1",
                [x for r in chunk for x in r],
            )

    def prune_raw(self, before: float) -> int:
        """Delete raw samples and message keys older than `before` (retention); rollups stay.
        Returns the number of metric values deleted."""
        with self._tx():
            n = self._execute("SELECT COUNT(*) FROM raw_metrics WHERE ts < ?", (before,))[0][0]
            p = self._execute("SELECT SUM(n) FROM raw_samples WHERE ts < ?", (before,))[0][0]
            self._execute("DELETE FROM raw_metrics WHERE ts < ?", (before,))
            self._execute("DELETE FROM raw_samples WHERE ts < ?", (before,))
            self._execute("DELETE FROM messages WHERE received < ?", (before,))
        return int(n) + int(p or 0)

    # --- queries -------------------------------------------------------------------------
    def count(self, table: str) -> int:
        """Rows of a table; for "raw_metrics", metric values stored (packed ones included)."""
        if table not in ("messages", "raw_metrics", "presence", "device_events", "devices"):
            raise ValueError(table)
        n = int(self._execute(f"SELECT COUNT(*) FROM {table}")[0][0])
        if table == "raw_metrics":
            n += int(self._execute("SELECT COALESCE(SUM(n), 0) FROM raw_samples")[0][0])
        return n

    def _packed(
        self, select: str, where: str, params: list[Any], metric: int, limit: int
    ) -> list[tuple[Any, ...]]:
        """(columns..., value) of packed samples holding `metric`, in ts order: the mask bit
        filters in SQL, decoding drops the rare rows that only share the bit. `select` ends
        with the vals column."""
        out: list[tuple[Any, ...]] = []
        bit = 1 << (metric % _MASK_BITS)
        offset = 0
        while len(out) < limit:
            rows = self._execute(
                f"SELECT {select} WHERE {where} AND (s.mask & CAST(? AS BIGINT)) <> 0"
                " ORDER BY s.ts LIMIT ? OFFSET ?",
                [*params, bit, limit, offset],
            )
            for r in rows:
                v = msgpack.unpackb(bytes(r[-1]), strict_map_key=False).get(metric)
                if v is not None:
                    out.append((*r[:-1], float(v)))
            if len(rows) < limit:
                break
            offset += limit
        return out[:limit]

    def raw_series(
        self, device: str, metric: int, since: float, until: float, limit: int = 10000
    ) -> list[tuple[float, float]]:
        old = self._execute(
            "SELECT ts, value FROM raw_metrics WHERE device_id = ? AND metric = ?"
            " AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?",
            (device, metric, since, until, limit),
        )
        new = self._packed(
            "s.ts, s.vals FROM raw_samples s",
            "s.device_id = ? AND s.ts >= ? AND s.ts < ?",
            [device, since, until],
            metric,
            limit,
        )
        pts = [(float(r[0]), float(r[1])) for r in old] + [(float(r[0]), r[1]) for r in new]
        pts.sort(key=lambda p: p[0])
        return pts[:limit]

    def zone_raw_series(
        self, zone: str, metric: int, since: float, until: float, limit: int = 10000
    ) -> list[tuple[float, str, float]]:
        old = self._execute(
            "SELECT r.ts, r.device_id, r.value FROM raw_metrics r JOIN devices d"
            " ON d.id = r.device_id WHERE d.zone = ? AND r.metric = ? AND r.ts >= ? AND r.ts < ?"
            " ORDER BY r.ts LIMIT ?",
            (zone, metric, since, until, limit),
        )
        new = self._packed(
            "s.ts, s.device_id, s.vals FROM raw_samples s JOIN devices d ON d.id = s.device_id",
            "d.zone = ? AND s.ts >= ? AND s.ts < ?",
            [zone, since, until],
            metric,
            limit,
        )
        pts = [(float(r[0]), str(r[1]), float(r[2])) for r in old]
        pts += [(float(r[0]), str(r[1]), r[2]) for r in new]
        pts.sort(key=lambda p: p[0])
        return pts[:limit]

    def hourly(
        self, scope: str, key: str, metric: int, since: float, until: float
    ) -> list[dict[str, float]]:
        """Hourly rollups for a device (scope "device") or zone (scope "zone"): the rollup rows
        merged with the deltas not compacted yet, read in one statement (one snapshot, so a
        compaction committing meanwhile is seen entirely or not at all)."""
        table, col = ("rollup_zone", "zone") if scope == "zone" else ("rollup_device", "device_id")
        where = f"WHERE {col} = ? AND metric = ? AND hour >= ? AND hour < ?"
        params = (key, metric, int(since // 3600 * 3600), until)
        rows = self._execute(
            f"SELECT hour, n, vmin, vmax, vsum, vlast, last_ts, 0, 0 FROM {table} {where}"
            " UNION ALL SELECT hour, n, vmin, vmax, vsum, vlast, last_ts, 1, id"
            f" FROM {table}_delta {where} ORDER BY 1, 8, 9",
            params + params,
        )
        out: list[dict[str, float]] = []
        o: dict[str, float] = {}
        last_ts = 0.0
        for h, n, vmin, vmax, vsum, vlast, ts, _, _ in rows:
            if not out or o["hour"] != h:
                o = {"hour": int(h), "count": int(n), "min": float(vmin), "max": float(vmax)}
                o["mean"], o["last"], last_ts = float(vsum), float(vlast), ts  # mean: sum here
                out.append(o)
                continue
            # same hour: the rollup row came first, then the deltas in the order they were
            # added; the compaction's rules (rollup.Agg.merge)
            o["count"] += int(n)
            o["min"] = min(o["min"], float(vmin))
            o["max"] = max(o["max"], float(vmax))
            o["mean"] += float(vsum)
            if ts >= last_ts:
                o["last"], last_ts = float(vlast), ts
        for o in out:
            o["mean"] /= o["count"]
        return out

    def latest(self, device: str) -> dict[int, tuple[float, float]]:
        """metric -> (ts, value) of the device's newest sample, from the rollups (cheap) and
        the deltas not compacted yet (one statement; later delta wins on equal times)."""
        rows = self._execute(
            "SELECT r.metric, r.last_ts, r.vlast, 0, 0 FROM rollup_device r JOIN"
            " (SELECT metric, MAX(hour) AS h FROM rollup_device WHERE device_id = ?"
            " GROUP BY metric) m ON m.metric = r.metric AND m.h = r.hour"
            " WHERE r.device_id = ?"
            " UNION ALL SELECT metric, last_ts, vlast, 1, id FROM rollup_device_delta"
            " WHERE device_id = ? ORDER BY 4, 5",
            (device, device, device),
        )
        out: dict[int, tuple[float, float]] = {}
        for r in rows:
            mid, ts = int(r[0]), float(r[1])
            if mid not in out or ts >= out[mid][0]:
                out[mid] = (ts, float(r[2]))
        return out

    def presence_events(
        self, device: str | None = None, since: float = 0.0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql = "SELECT device_id, ts, state, reason FROM presence WHERE ts >= ?"
        params: list[Any] = [since]
        if device is not None:
            sql += " AND device_id = ?"
            params.append(device)
        rows = self._execute(sql + " ORDER BY ts, id LIMIT ?", [*params, limit])
        return [{"device": r[0], "ts": r[1], "state": r[2], "reason": r[3]} for r in rows]

    def device_events(self, device: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._execute(
            "SELECT epoch, seq, ts, code, severity, text, data FROM device_events"
            " WHERE device_id = ? ORDER BY ts DESC LIMIT ?",
            (device, limit),
        )
        return [
            {
                "epoch": r[0],
                "seq": r[1],
                "ts": r[2],
                "code": r[3],
                "severity": r[4],
                "text": r[5],
                "data": json.loads(r[6]) if r[6] else None,
            }
            for r in rows
        ]

    def message_keys(self, device: str) -> list[tuple[int, int]]:
        rows = self._execute(
            "SELECT epoch, seq FROM messages WHERE device_id = ? ORDER BY epoch, seq", (device,)
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    # --- commands ------------------------------------------------------------------------
    def next_controller_epoch(self) -> int:
        """A fresh command epoch for this controller process: persisted, strictly increasing."""
        with self._tx():
            rows = self._execute(
                "INSERT INTO controller_state (name, value) VALUES ('epoch', 1)"
                " ON CONFLICT (name) DO UPDATE SET value = controller_state.value + 1"
                " RETURNING value"
            )
        return int(rows[0][0])

    def record_command(
        self,
        epoch: int,
        seq: int,
        device: str,
        op: int,
        args: dict[str, Any] | None,
        issued: float,
        expires: int,
    ) -> None:
        with self._tx():
            self._execute(
                "INSERT INTO commands (epoch, seq, device_id, op, args, issued, expires, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'sent')",
                (
                    epoch,
                    seq,
                    device,
                    op,
                    json.dumps(args) if args is not None else None,
                    issued,
                    expires,
                ),
            )

    def get_command(self, epoch: int, seq: int) -> dict[str, Any] | None:
        rows = self._execute(
            "SELECT epoch, seq, device_id, op, args, issued, expires, status, result, acked, data"
            " FROM commands WHERE epoch = ? AND seq = ?",
            (epoch, seq),
        )
        if not rows:
            return None
        r = rows[0]
        status = r[7]
        if status == "sent" and r[6] < time.time():
            status = "expired"
        return {
            "epoch": r[0],
            "seq": r[1],
            "device": r[2],
            "op": r[3],
            "args": json.loads(r[4]) if r[4] else None,
            "issued": r[5],
            "expires": r[6],
            "status": status,
            "result": r[8],
            "acked": r[9],
            "data": json.loads(r[10]) if r[10] else None,
        }
