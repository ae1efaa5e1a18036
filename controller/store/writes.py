"""The ingest write path: write_batch stores one batch in one transaction, exactly once per
(device, epoch, seq): message keys, packed raw samples, events, presence, device state, and
through the rooms it calls, rollup deltas (store/rollups.py) and command ACKs (commands.py)."""

from __future__ import annotations

import json
from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]

from controller.domain.records import Accepted, Batch, BatchResult, DeviceUpdate
from controller.store.commands import Commands
from controller.store.rollups import Rollups
from controller.store.schema import MASK_BITS

_KEY_CHUNK = 1000  # messages per INSERT ... RETURNING (5 parameters each)


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
            u.anchors,
        )
        for u in sorted(updates, key=lambda u: u.device)
    ]


class Writes(Rollups, Commands):
    _masks: dict[tuple[int, ...], int]  # metric-id set -> raw_samples.mask (backends init it)

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
        """Insert the batch's message keys; returns the messages new to the store (the rest
        are redeliveries or another controller's, and write nothing else)."""
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
        """Raw samples packed one row per (message, sample), then the batch's rollup deltas;
        returns the metric values stored."""
        packed: list[tuple[Any, ...]] = []
        total = 0
        pack = msgpack.packb
        masks = self._masks
        if len(masks) > 4096:
            masks.clear()
        for m in fresh:
            for i, ts, vals in m.samples:
                if not vals:
                    continue
                ids = tuple(vals)
                mask = masks.get(ids)
                if mask is None:  # devices of a kind report the same metric set: cache it
                    mask = masks[ids] = sum({1 << (mid % MASK_BITS) for mid in ids})
                total += len(vals)
                packed.append(
                    (m.device, m.epoch, m.seq, i, ts, len(vals), mask, pack(vals), m.approx)
                )
        if not packed:
            return 0
        self._insert_values(
            "INSERT INTO raw_samples (device_id, epoch, seq, sample, ts, n, mask, vals, approx)",
            packed,
        )
        self._write_rollups(fresh)
        return total

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
                m.approx,
            )
            for m in fresh
            if m.event is not None
        ]
        self._insert_values(
            "INSERT INTO device_events"
            " (device_id, epoch, seq, ts, code, severity, text, data, approx)",
            rows,
            " ON CONFLICT DO NOTHING",
        )

    def _update_devices(self, updates: list[DeviceUpdate]) -> None:
        # UPDATE ... FROM (VALUES ...): one statement per chunk (see _insert_values). VALUES
        # columns are column1..N in both SQLite and PostgreSQL; the casts type all-NULL columns.
        rows = device_update_rows(updates)
        for i in range(0, len(rows), 1000):
            chunk = rows[i : i + 1000]
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            self._execute(
                "UPDATE devices SET last_seen = CAST(v.column2 AS DOUBLE PRECISION),"
                " online = CAST(v.column3 AS INTEGER),"
                f" replay = CAST(v.column4 AS {self.BLOB}), firmware = CAST(v.column5 AS TEXT),"
                " board = CAST(v.column6 AS TEXT), boot_epoch = CAST(v.column7 AS BIGINT),"
                " birth_epoch = CAST(v.column8 AS BIGINT), birth_seq = CAST(v.column9 AS BIGINT),"
                " death_open = CAST(v.column10 AS INTEGER), anchors = CAST(v.column11 AS TEXT)"
                f" FROM (VALUES {values}) AS v WHERE devices.id = v.column1",
                [x for r in chunk for x in r],
            )
