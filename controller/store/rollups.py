"""Hourly rollups in the store: a batch's deltas (upserted, or appended and compacted later),
the compaction, and the two reads that merge rollup rows with pending deltas (hourly, latest).
Everything that knows the rollup and delta tables is here; the pure fold is domain/rollup.py."""

from __future__ import annotations

from typing import Any

from controller.domain.records import Accepted
from controller.domain.rollup import Deltas, fold_batch, merge
from controller.store.core import StoreCore

_ROLLUPS = (("rollup_device", "device_id"), ("rollup_zone", "zone"))  # (table, key column)
# The rollup columns in domain.rollup's aggregate order, each with how merge() combines it:
# the one statement of the merge rule in SQL (_merge_sql generates both of its SQL forms).
_RULE = (
    ("n", "add"),
    ("vmin", "min"),
    ("vmax", "max"),
    ("vsum", "add"),
    ("vlast", "last"),
    ("last_ts", "max"),
)
ROLLUP_COLS = ", ".join(col for col, _ in _RULE)  # as rollup and delta tables name them


def _rows(deltas: Deltas) -> list[tuple[Any, ...]]:
    """(key, metric, hour, the _RULE columns) per delta, as the tables take them."""
    return [(k[0], k[1], k[2], int(a[0]), a[1], a[2], a[3], a[4], a[5]) for k, a in deltas.items()]


def _merged(rows: list[tuple[Any, ...]]) -> dict[int, list[float]]:
    """Rows of (key, the _RULE columns, ...) merged per key in the order given: a reader
    orders each key's rollup row before its deltas, and those by id (the order added).
    (hourly() merges in one pass instead: its rows come grouped by hour.)"""
    out: dict[int, list[float]] = {}
    for r in rows:
        a = out.get(r[0])
        if a is None:
            out[r[0]] = list(r[1:7])  # the columns' SQL types are BIGINT and DOUBLE PRECISION
        else:
            merge(a, r[1:7])
    return out


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
        rows = _rows(deltas)
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        self._insert_values(
            f"INSERT INTO {table} ({keycol}, metric, hour, {ROLLUP_COLS})",
            rows,
            self._rollup_conflict(table, keycol),
        )

    def _append_deltas(self, table: str, keycol: str, deltas: Deltas) -> None:
        """Append a batch's aggregated deltas to `table`_delta (migration 3): plain inserts
        (COPY on PostgreSQL), no row updated, no index touched. compact_rollups folds them in."""
        rows = _rows(deltas)
        self._insert_values(
            f"INSERT INTO {table}_delta ({keycol}, metric, hour, {ROLLUP_COLS})",
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

    def _merge_sql(self, old: str | None, new: str = "") -> list[str]:
        """domain.rollup.merge in SQL, one expression per rollup column (_RULE order): of the
        rows `old` and `new` (an upsert: the stored row and `excluded`; "last" is the new one's
        when its time is equal or later), or with `old` None, of all the rows of a GROUP BY (the
        compaction; "last" is then the value of the row ranked rn = 1, the latest by sample
        time and the later delta on equal times)."""
        out = []
        for col, rule in _RULE:
            if old is None:
                if rule == "last":
                    out.append(f"MAX(CASE WHEN rn = 1 THEN {col} END)")
                else:
                    out.append({"add": "SUM", "min": "MIN", "max": "MAX"}[rule] + f"({col})")
                continue
            a, b = f"{old}.{col}", f"{new}.{col}"
            if rule == "add":
                out.append(f"{a} + {b}")
            elif rule == "last":
                out.append(f"CASE WHEN {new}.last_ts >= {old}.last_ts THEN {b} ELSE {a} END")
            else:
                out.append(f"{self.LEAST if rule == 'min' else self.GREATEST}({a}, {b})")
        return out

    def _fold_sql(self, table: str, keycol: str, source: str) -> str:
        """INSERT ... SELECT folding the deltas in `source` (a table or CTE with the delta
        columns and id) into `table`, by the merge rule: the deltas of one key, metric and hour
        merged in the order they were added (id), then into the stored row. Rows go in key
        order so two compactions would lock rollup rows in the same order."""
        t, k = table, keycol
        return (
            f"INSERT INTO {t} ({k}, metric, hour, {ROLLUP_COLS})"
            f" SELECT {k}, metric, hour, {', '.join(self._merge_sql(None))}"
            f" FROM (SELECT {k}, metric, hour, {ROLLUP_COLS},"
            f" ROW_NUMBER() OVER (PARTITION BY {k}, metric, hour ORDER BY last_ts DESC, id DESC)"
            f" AS rn FROM {source}) AS d WHERE true"
            f" GROUP BY {k}, metric, hour ORDER BY {k}, metric, hour" + self._rollup_conflict(t, k)
        )

    def _rollup_conflict(self, t: str, keycol: str) -> str:
        """ON CONFLICT clause merging an incoming row into the stored rollup row (merge rule)."""
        sets = ", ".join(
            f"{col} = {e}"
            for (col, _), e in zip(_RULE, self._merge_sql(t, "excluded"), strict=True)
        )
        return f" ON CONFLICT ({keycol}, metric, hour) DO UPDATE SET {sets}"

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
            f"SELECT hour, {ROLLUP_COLS}, 0, 0 FROM {table} {where}"
            f" UNION ALL SELECT hour, {ROLLUP_COLS}, 1, id FROM {table}_delta {where}"
            " ORDER BY 1, 8, 9",
            params + params,
        )
        # ordered by hour: each hour's rollup row first, then its deltas in the order added
        merged: list[tuple[int, list[float]]] = []
        for r in rows:
            if merged and merged[-1][0] == r[0]:
                merge(merged[-1][1], r[1:7])
            else:
                merged.append((r[0], list(r[1:7])))
        return [
            {"hour": h, "count": a[0], "min": a[1], "max": a[2], "mean": a[3] / a[0], "last": a[4]}
            for h, a in merged
        ]

    def latest(self, device: str) -> dict[int, tuple[float, float]]:
        """metric -> (ts, value) of the device's newest sample, from the rollups (cheap) and
        the deltas not compacted yet (one statement), merged by the merge rule."""
        rows = self._execute(
            f"SELECT r.metric, {', '.join('r.' + c for c, _ in _RULE)}, 0, 0 FROM rollup_device r"
            " JOIN (SELECT metric, MAX(hour) AS h FROM rollup_device WHERE device_id = ?"
            " GROUP BY metric) m ON m.metric = r.metric AND m.h = r.hour WHERE r.device_id = ?"
            f" UNION ALL SELECT metric, {ROLLUP_COLS}, 1, id FROM rollup_device_delta"
            " WHERE device_id = ? ORDER BY 8, 9",
            (device, device, device),
        )
        return {mid: (a[5], a[4]) for mid, a in _merged(rows).items()}
