"""Reads of stored data for the API and tools: raw series (packed samples and the pre-migration-2
rows), row counts, presence transitions, device events. Rollup reads are in store/rollups.py,
commands in store/commands.py."""

from __future__ import annotations

import json
from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]

from controller.store.core import StoreCore
from controller.store.schema import MASK_BITS

_COUNTABLE = (
    "messages",
    "raw_metrics",
    "presence",
    "device_events",
    "devices",
    "rollup_device_delta",
    "rollup_zone_delta",
)


class Queries(StoreCore):
    def count(self, table: str) -> int:
        """Rows of a table; for "raw_metrics", metric values stored (packed ones included); the
        delta tables: rollup deltas not compacted yet. ValueError for any other table."""
        if table not in _COUNTABLE:
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
        bit = 1 << (metric % MASK_BITS)
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
    ) -> list[tuple[float, float, int]]:
        """(ts, value, approx) in ts order; approx as in schema migration 6."""
        old = self._execute(
            "SELECT ts, value FROM raw_metrics WHERE device_id = ? AND metric = ?"
            " AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?",
            (device, metric, since, until, limit),
        )
        new = self._packed(
            "s.ts, s.approx, s.vals FROM raw_samples s",
            "s.device_id = ? AND s.ts >= ? AND s.ts < ?",
            [device, since, until],
            metric,
            limit,
        )
        pts = [(float(r[0]), float(r[1]), 0) for r in old]
        pts += [(float(r[0]), r[2], int(r[1])) for r in new]
        pts.sort(key=lambda p: p[0])
        return pts[:limit]

    def zone_raw_series(
        self, zone: str, metric: int, since: float, until: float, limit: int = 10000
    ) -> list[tuple[float, str, float, int]]:
        """(ts, device, value, approx) in ts order."""
        old = self._execute(
            "SELECT r.ts, r.device_id, r.value FROM raw_metrics r JOIN devices d"
            " ON d.id = r.device_id WHERE d.zone = ? AND r.metric = ? AND r.ts >= ? AND r.ts < ?"
            " ORDER BY r.ts LIMIT ?",
            (zone, metric, since, until, limit),
        )
        new = self._packed(
            "s.ts, s.device_id, s.approx, s.vals FROM raw_samples s"
            " JOIN devices d ON d.id = s.device_id",
            "d.zone = ? AND s.ts >= ? AND s.ts < ?",
            [zone, since, until],
            metric,
            limit,
        )
        pts = [(float(r[0]), str(r[1]), float(r[2]), 0) for r in old]
        pts += [(float(r[0]), str(r[1]), r[3], int(r[2])) for r in new]
        pts.sort(key=lambda p: p[0])
        return pts[:limit]

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
            "SELECT epoch, seq, ts, code, severity, text, data, approx FROM device_events"
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
                "approx": r[7],
            }
            for r in rows
        ]
