"""Claim tokens in the store (table claim_tokens, migration 4): TokenRecord and its reads and
writes. Issuing, wrapping the secret and deciding a claim are controller/provisioning/tokens.py;
this room stores what it is given and makes single use atomic."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from controller.store.core import StoreCore

_COLS = (
    "id, secret_wrapped, site, zone, kind, created, expires, used_at, device_id, board_pub, extra"
)


@dataclass(frozen=True)
class TokenRecord:
    """One claim token as stored: the secret only wrapped (controller.keys), never in clear."""

    id: str
    secret_wrapped: bytes
    site: str
    zone: str
    kind: str
    created: float
    expires: float
    used_at: float | None = None
    device_id: str | None = None
    board_pub: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self, now: float | None = None) -> dict[str, Any]:
        """The listing view: never the secret."""
        now = time.time() if now is None else now
        state = "used" if self.used_at is not None else "expired" if now >= self.expires else "open"
        return {
            "id": self.id,
            "site": self.site,
            "zone": self.zone,
            "kind": self.kind,
            "expires": self.expires,
            "state": state,
            "device": self.device_id,
        }


def _record(row: tuple[Any, ...]) -> TokenRecord:
    return TokenRecord(
        id=row[0],
        secret_wrapped=bytes(row[1]),
        site=row[2],
        zone=row[3],
        kind=row[4],
        created=row[5],
        expires=row[6],
        used_at=row[7],
        device_id=row[8],
        board_pub=bytes(row[9]) if row[9] is not None else None,
        extra=json.loads(row[10]),
    )


class Claims(StoreCore):
    def add_claim_tokens(self, records: list[TokenRecord]) -> None:
        """Store new (unused) tokens in one transaction: all or none. Their used_at, device_id
        and board_pub are ignored: a token is born unused."""
        rows = [
            (
                r.id,
                r.secret_wrapped,
                r.site,
                r.zone,
                r.kind,
                r.created,
                r.expires,
                json.dumps(r.extra, sort_keys=True),
            )
            for r in records
        ]
        with self._tx():
            self._executemany(
                "INSERT INTO claim_tokens (id, secret_wrapped, site, zone, kind, created, expires,"
                " extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def get_claim_token(self, token_id: str) -> TokenRecord | None:
        rows = self._execute(f"SELECT {_COLS} FROM claim_tokens WHERE id = ?", (token_id,))
        return _record(rows[0]) if rows else None

    def use_claim_token(self, token_id: str, device_id: str, board_pub: bytes, now: float) -> bool:
        """Mark the token used by `device_id` / `board_pub` if it is unused and unexpired at
        `now`; False if it is not (another claim got there first, or it expired). One
        conditional UPDATE, atomic on both backends; inside transaction() it joins the caller's
        transaction, so the token and the device it creates commit together."""
        with self._tx():
            rows = self._execute(
                "UPDATE claim_tokens SET used_at = ?, device_id = ?, board_pub = ?"
                " WHERE id = ? AND used_at IS NULL AND expires > ? RETURNING id",
                (now, device_id, board_pub, token_id, now),
            )
        return bool(rows)

    def delete_claim_tokens(self, token_ids: list[str]) -> None:
        """Withdraw unused tokens (used ones stay: they name the device they created)."""
        with self._tx():
            for t in token_ids:
                self._execute("DELETE FROM claim_tokens WHERE id = ? AND used_at IS NULL", (t,))

    def list_claim_tokens(self, zone: str | None = None) -> list[TokenRecord]:
        """Every token (or a zone's), oldest first."""
        if zone is None:
            rows = self._execute(f"SELECT {_COLS} FROM claim_tokens ORDER BY created, id")
        else:
            rows = self._execute(
                f"SELECT {_COLS} FROM claim_tokens WHERE zone = ? ORDER BY created, id", (zone,)
            )
        return [_record(r) for r in rows]
