"""Hourly rollups in the store: a batch's deltas (upserted, or appended and compacted later),
the compaction, and the two reads that merge rollup rows with pending deltas (hourly, latest).
Everything that knows the rollup and delta tables is here; the pure fold is domain/rollup.py."""

from __future__ import annotations

from controller.domain.records import Accepted
from controller.domain.rollup import Deltas, fold_batch
from controller.store.core import StoreCore

_ROLLUPS = (("rollup_device", "device_id"), ("rollup_zone", "zone"))  # (table, key column)


class Rollups(StoreCore):
    # Batches append rollup deltas (compacted later) instead of upserting the rollup rows. Off
    # for SQLite, where the in-process upsert is cheaper than the append plus the compaction
    # (measured 11 against 14 ms per 500-report batch); queries read both tables either way.
    ROLLUP_DELTAS = True
    deltas_pending = 0  # rollup delta rows this connection appended since its last compaction

    def _write_rollups(self, fresh: list[Accepted]) -> None:
        """Fold the newly stored messages' samples in memory (domain.rollup.fold_batch: one
        delta per (device or zone, metric, hour) per batch, instead of one per metric row) and
        write them the backend's way (ROLLUP_DELTAS). Inside the batch transaction."""
        dev, zone = fold_batch(fresh)
        add = self._append_deltas if self.ROLLUP_DELTAS else self._merge_rollups
        add("rollup_device", "device_id", dev)
        add("rollup_zone", "zone", zone)

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

    # --- compaction ----------------------------------------------------------------------
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

    # --- reads ---------------------------------------------------------------------------
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
