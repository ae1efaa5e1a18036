"""A month of hourly data for one zone and metric, read through the store's rollups, against the
naive way: aggregating the month's raw samples for that zone at query time (same SQLite file,
same run).

    .venv/bin/python benchmarks/rollup_query.py [--devices 10] [--days 30]

The data: --devices devices of one zone reporting one metric every minute for --days days (raw
rows in a plain (zone, metric, ts, value) table with an index, the naive baseline) and the same
month as hourly zone rollups in the store's own `rollup_zone` table (as ingest maintains it).
Last line JSON: rows_raw, rows_hourly, rollup_ms, naive_ms, ratio (rollup / naive)."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from controller.config import StoreConfig
from controller.store import open_store

ZONE = "ribeira"
METRIC = 16  # clients


def best_ms(fn: object, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) * 1000)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(StoreConfig(backend="sqlite", path=str(Path(tmp) / "s.sqlite")))
        end = 1_764_000_000 // 3600 * 3600
        start = end - args.days * 86400
        raw = [
            (ZONE, METRIC, float(t), float(rng.randint(0, 120)))
            for t in range(start, end, 60)
            for _ in range(args.devices)
        ]
        conn = store.conn  # type: ignore[attr-defined]
        conn.execute("CREATE TABLE naive_raw (zone TEXT, metric INT, ts REAL, value REAL)")
        conn.execute("CREATE INDEX naive_raw_i ON naive_raw (zone, metric, ts)")
        conn.executemany("INSERT INTO naive_raw VALUES (?, ?, ?, ?)", raw)
        hourly: dict[int, list[float]] = {}
        for _, _, ts, v in raw:
            hourly.setdefault(int(ts) // 3600 * 3600, []).append(v)
        conn.executemany(
            "INSERT INTO rollup_zone (zone, metric, hour, n, vmin, vmax, vsum, vlast, last_ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (ZONE, METRIC, h, len(vs), min(vs), max(vs), sum(vs), vs[-1], h + 3599)
                for h, vs in hourly.items()
            ],
        )
        conn.commit()

        def rollup() -> list[dict[str, float]]:
            return store.hourly("zone", ZONE, METRIC, start, end)

        def naive() -> list[tuple[float, ...]]:
            return conn.execute(  # type: ignore[no-any-return]
                "SELECT CAST(ts / 3600 AS INT) * 3600 AS h, COUNT(*), MIN(value), MAX(value),"
                " AVG(value) FROM naive_raw WHERE zone = ? AND metric = ? AND ts >= ? AND ts < ?"
                " GROUP BY h ORDER BY h",
                (ZONE, METRIC, start, end),
            ).fetchall()

        got, want = rollup(), naive()
        assert len(got) == len(want) == len(hourly)
        assert all(
            g["count"] == w[1] and abs(g["mean"] - w[4]) < 1e-9
            for g, w in zip(got, want, strict=True)
        )
        r_ms, n_ms = best_ms(rollup), best_ms(naive, 3)
        store.close()
    print(f"median hourly mean {statistics.median(g['mean'] for g in got):.1f} clients")
    print(
        json.dumps(
            {
                "zone": ZONE,
                "days": args.days,
                "devices": args.devices,
                "rows_raw": len(raw),
                "rows_hourly": len(got),
                "rollup_ms": round(r_ms, 3),
                "naive_ms": round(n_ms, 1),
                "ratio": round(r_ms / n_ms, 5),
            }
        )
    )


if __name__ == "__main__":
    main()
