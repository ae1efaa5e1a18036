"""Operator accounts and the audit log in the store (tables operators and audit, migration 8).
Hashing tokens, roles and what goes into an audit row are controller/operators.py's; this room
stores what it is given. The audit table is append-only: there is no update or delete here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller.store.core import StoreCore


@dataclass(frozen=True)
class OperatorRecord:
    """One operator as stored: the token only as its keyed hash."""

    name: str
    role: str
    token_hash: str
    created: float
    created_by: str
    revoked_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created": self.created,
            "created_by": self.created_by,
            "revoked_at": self.revoked_at,
            "state": "revoked" if self.revoked_at is not None else "active",
        }


_OP_COLS = "name, role, token_hash, created, created_by, revoked_at"


class Operators(StoreCore):
    def add_operator(self, rec: OperatorRecord) -> bool:
        """Insert a new operator; False when the name is taken (also by a revoked one: names
        stay unique so the audit log never points at two people)."""
        with self._tx():
            rows = self._execute(
                f"INSERT INTO operators ({_OP_COLS}) VALUES (?, ?, ?, ?, ?, NULL)"
                " ON CONFLICT (name) DO NOTHING RETURNING name",
                (rec.name, rec.role, rec.token_hash, rec.created, rec.created_by),
            )
        return bool(rows)

    def operator_by_hash(self, token_hash: str) -> OperatorRecord | None:
        rows = self._execute(
            f"SELECT {_OP_COLS} FROM operators WHERE token_hash = ?", (token_hash,)
        )
        return OperatorRecord(*rows[0]) if rows else None

    def list_operators(self) -> list[OperatorRecord]:
        rows = self._execute(f"SELECT {_OP_COLS} FROM operators ORDER BY created, name")
        return [OperatorRecord(*r) for r in rows]

    def revoke_operator(self, name: str, now: float) -> bool:
        """Mark an active operator revoked; False when there is no such active operator."""
        with self._tx():
            rows = self._execute(
                "UPDATE operators SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
                " RETURNING name",
                (now, name),
            )
        return bool(rows)

    def append_audit(
        self,
        ts: float,
        who: str,
        role: str,
        action: str,
        target: str | None,
        args: dict[str, Any],
        result: str,
    ) -> None:
        with self._tx():
            self._execute(
                "INSERT INTO audit (ts, who, role, action, target, args, result)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ts, who, role, action, target, json.dumps(args, sort_keys=True), result),
            )

    def audit_entries(
        self, since: float = 0.0, who: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Oldest first, from `since` (unix seconds), optionally one operator's."""
        sql = "SELECT ts, who, role, action, target, args, result FROM audit WHERE ts >= ?"
        params: list[Any] = [since]
        if who is not None:
            sql += " AND who = ?"
            params.append(who)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        keys = ("ts", "who", "role", "action", "target", "args", "result")
        out = []
        for r in self._execute(sql, params):
            d = dict(zip(keys, r, strict=True))
            d["args"] = json.loads(d["args"])
            out.append(d)
        return out
