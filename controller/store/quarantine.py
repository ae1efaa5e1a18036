"""Quarantined messages (table quarantine, migration 5): what the store refused to commit, kept
raw (topic and payload as received) with the reason, so ingest goes on without them and an
operator can list them and replay them after a fix (controller/pipeline.py decides what goes
here and replays; this room only stores, lists and resolves)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from controller.store.core import StoreCore

_COLS = "id, device_id, topic, payload, reason, received, quarantined, attempts, resolved, outcome"
MAX_REASON = 500


def clean_text(text: str, limit: int = MAX_REASON) -> str:
    """A reason that any store can hold: no NUL, bounded (a driver's message may quote the
    very value it refused)."""
    return text.replace("\x00", "\\x00")[:limit]


def digest(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\x00" + payload).hexdigest()


@dataclass(frozen=True)
class Quarantined:
    id: int
    device: str | None
    topic: str
    payload: bytes
    reason: str
    received: float
    quarantined: float
    attempts: int
    resolved: float | None
    outcome: str | None

    def public(self) -> dict[str, Any]:
        """The API view: the payload in hex (it is the raw signed message)."""
        return {
            "id": self.id,
            "device": self.device,
            "topic": self.topic,
            "payload_hex": self.payload.hex(),
            "bytes": len(self.payload),
            "reason": self.reason,
            "received": self.received,
            "quarantined": self.quarantined,
            "attempts": self.attempts,
            "resolved": self.resolved,
            "outcome": self.outcome,
        }


def _row(r: tuple[Any, ...]) -> Quarantined:
    return Quarantined(int(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5], r[6], int(r[7]), r[8], r[9])


class Quarantine(StoreCore):
    def quarantine(self, items: list[tuple[str | None, str, bytes, str, float]], now: float) -> int:
        """Keep (device, topic, payload, reason, received) rows; a message already there (the
        broker redelivered it) gets its attempt counted and its reason refreshed, and is open
        again if it had been resolved. Returns the rows written."""
        rows = [(digest(t, p), d, t, p, clean_text(r), rec, now) for d, t, p, r, rec in items]
        with self._tx():
            self._executemany(
                "INSERT INTO quarantine (digest, device_id, topic, payload, reason, received,"
                " quarantined) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
                " attempts = quarantine.attempts + 1, reason = excluded.reason,"
                " quarantined = excluded.quarantined, resolved = NULL, outcome = NULL",
                rows,
            )
        return len(rows)

    def quarantined(
        self, ids: list[int] | None = None, include_resolved: bool = False, limit: int = 1000
    ) -> list[Quarantined]:
        """Quarantined messages, oldest first: the open ones (or all), or those with `ids`."""
        where: list[str] = []
        params: list[object] = []
        if not include_resolved:
            where.append("resolved IS NULL")
        if ids is not None:
            if not ids:
                return []
            where.append("id IN (" + ", ".join("?" * len(ids)) + ")")
            params += ids
        sql = f"SELECT {_COLS} FROM quarantine"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._execute(sql + " ORDER BY id LIMIT ?", [*params, limit])
        return [_row(r) for r in rows]

    def resolve_quarantined(self, outcomes: list[tuple[int, str]], now: float) -> None:
        """Mark rows replayed: outcome "stored", "duplicate" or "rejected: <reason>"."""
        with self._tx():
            self._executemany(
                "UPDATE quarantine SET resolved = ?, outcome = ? WHERE id = ?",
                [(now, clean_text(o, 200), i) for i, o in outcomes],
            )

    def requarantine(self, failures: list[tuple[int, str]], now: float) -> None:
        """A replay that failed again: count the attempt, keep the new reason."""
        with self._tx():
            self._executemany(
                "UPDATE quarantine SET attempts = attempts + 1, reason = ?, quarantined = ?"
                " WHERE id = ?",
                [(clean_text(r), now, i) for i, r in failures],
            )
