"""Claim tokens: issuing, the pure claimability check, and their table in the IDU store.

A token is an 8-byte id (public: it names the bootstrap topics) and a 16-byte secret that only the
claim bundle and the store hold. The responder needs the secret itself (it verifies the board's
HMAC and MACs its answer with it), so the store keeps it wrapped under the master key, like the
device keys (controller.keys), with the token id as associated data; never a plain copy.
Single use is enforced by one conditional UPDATE (`... WHERE used_at IS NULL`), atomic on both
backends. Imports the store and keys, never transport/ or api/."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.errors import ControllerError
from controller.keys import MasterKey
from controller.registry import KINDS, zone_problem
from controller.store.base import Store
from protocol import ProtocolError
from protocol import claim as wire
from protocol.topics import check_id

DEFAULT_TTL = 7 * 86400
MAX_TTL = 365 * 86400
MAX_COUNT = 10000
REDELIVER_S = 600.0  # a repeat request from the same board key within this gets its identity again

# Reasons a claim is refused; also the label values of the claims counter.
OK = "ok"
REDELIVERED = "redelivered"
UNKNOWN = "unknown"  # no such token id
USED = "used"  # already claimed by another board key (or too long ago)
EXPIRED = "expired"
FORGED = "forged"  # request MAC does not match the token secret
MALFORMED = "malformed"  # not a claim request at all
REFUSED = "refused"  # registry or broker refused the new device
RESULTS = (OK, REDELIVERED, UNKNOWN, USED, EXPIRED, FORGED, MALFORMED, REFUSED)

_TABLE = """CREATE TABLE IF NOT EXISTS claim_tokens (
    id TEXT PRIMARY KEY,
    secret_wrapped {blob} NOT NULL,
    site TEXT NOT NULL,
    zone TEXT NOT NULL,
    kind TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    used_at DOUBLE PRECISION,
    device_id TEXT,
    board_pub {blob},
    extra TEXT NOT NULL DEFAULT '{{}}'
)"""
_COLS = (
    "id, secret_wrapped, site, zone, kind, created, expires, used_at, device_id, board_pub, extra"
)


class ClaimError(ControllerError):
    """A token could not be issued or a claim was refused; `code` is one of RESULTS,
    'token' or 'unknown_zone'."""

    code = "token"


@dataclass(frozen=True)
class IssuedToken:
    """A new token as handed to the bundle writer. `secret` exists in clear only here."""

    id: str
    site: str
    zone: str
    kind: str
    expires: float
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class TokenRecord:
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


def check_request_fields(
    site: str,
    zone: str,
    kind: str,
    ttl: float,
    count: int = 1,
    zones: Sequence[str] | None = None,
) -> None:
    """Raises ClaimError naming the bad field and the fix; code "unknown_zone" when the zone is
    well formed but not in `zones` (the config's fleet.zones; None or empty: any zone)."""
    try:
        check_id(site, "site")
        check_id(zone, "zone")
    except ProtocolError as e:
        raise ClaimError(f"{e.detail}; zones and sites are 1-32 of a-z 0-9 -") from None
    problem = zone_problem(zone, zones)
    if problem is not None:
        raise ClaimError(problem, "unknown_zone")
    if kind not in KINDS:
        raise ClaimError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
    if not 0 < ttl <= MAX_TTL:
        raise ClaimError(f"ttl must be between 1 s and {MAX_TTL // 86400} days")
    if not 0 < count <= MAX_COUNT:
        raise ClaimError(f"count must be 1..{MAX_COUNT}")


def new_token(site: str, zone: str, kind: str, ttl: float, now: float) -> IssuedToken:
    check_request_fields(site, zone, kind, ttl)
    return IssuedToken(
        id=secrets.token_bytes(wire.TOKEN_ID_LEN).hex(),
        site=site,
        zone=zone,
        kind=kind,
        expires=now + ttl,
        secret=secrets.token_bytes(wire.SECRET_LEN),
    )


def device_id_for(zone: str, token_id: str) -> str:
    """Deterministic from the token, so a retried claim lands on the same id: the zone (cut to
    fit 32 characters) and the first 8 hex digits of the token id."""
    return f"{zone[:23].rstrip('-')}-{token_id[:8]}"


def decide(rec: TokenRecord, board_pub: bytes, now: float) -> str:
    """Pure: OK (claim it now), REDELIVERED (same board asking again shortly after: send its
    identity again), or raise ClaimError(USED / EXPIRED). The MAC is checked before this."""
    if rec.used_at is not None:
        if rec.board_pub == board_pub and now - rec.used_at < REDELIVER_S:
            return REDELIVERED
        raise ClaimError(f"token {rec.id} was already used by {rec.device_id}", USED)
    if now >= rec.expires:
        raise ClaimError(f"token {rec.id} expired; issue a new one with `claim create`", EXPIRED)
    return OK


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


class TokenStore:
    """Claim tokens in the IDU store (its own table, created on first use). Same threading rule
    as the Store it wraps: one thread at a time."""

    def __init__(self, store: Store, master: MasterKey) -> None:
        self.store = store
        self.master = master
        with store._tx():
            store._execute(_TABLE.format(blob=store.BLOB))

    def _aad(self, token_id: str) -> str:
        return "claim:" + token_id  # never equal to a device id (':' is not allowed in ids)

    def issue(
        self,
        site: str,
        zone: str,
        kind: str,
        count: int = 1,
        ttl: float = DEFAULT_TTL,
        now: float | None = None,
        extra: dict[str, Any] | None = None,
        zones: Sequence[str] | None = None,
    ) -> list[IssuedToken]:
        """Create count tokens in one transaction (all or none); `zones` as in
        check_request_fields."""
        now = time.time() if now is None else now
        check_request_fields(site, zone, kind, ttl, count, zones)
        out = [new_token(site, zone, kind, ttl, now) for _ in range(count)]
        rows = [
            (
                t.id,
                self.master.wrap(self._aad(t.id), t.secret),
                site,
                zone,
                kind,
                now,
                t.expires,
                json.dumps(extra or {}, sort_keys=True),
            )
            for t in out
        ]
        with self.store._tx():
            self.store._executemany(
                "INSERT INTO claim_tokens (id, secret_wrapped, site, zone, kind, created, expires,"
                " extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return out

    def get(self, token_id: str) -> TokenRecord | None:
        rows = self.store._execute(f"SELECT {_COLS} FROM claim_tokens WHERE id = ?", (token_id,))
        return _record(rows[0]) if rows else None

    def secret(self, rec: TokenRecord) -> bytes:
        return self.master.unwrap(self._aad(rec.id), rec.secret_wrapped)

    def mark_used(self, token_id: str, device_id: str, board_pub: bytes, now: float) -> bool:
        """Claim the token atomically; False if someone else got there first. Call inside the
        transaction that creates the device, so both happen or neither."""
        rows = self.store._execute(
            "UPDATE claim_tokens SET used_at = ?, device_id = ?, board_pub = ?"
            " WHERE id = ? AND used_at IS NULL AND expires > ? RETURNING id",
            (now, device_id, board_pub, token_id, now),
        )
        return bool(rows)

    def delete(self, token_ids: list[str]) -> None:
        """Withdraw unused tokens (a bundle could not be written: no token without its bundle)."""
        with self.store._tx():
            for t in token_ids:
                self.store._execute(
                    "DELETE FROM claim_tokens WHERE id = ? AND used_at IS NULL", (t,)
                )

    def list(self, zone: str | None = None) -> list[TokenRecord]:
        if zone is None:
            rows = self.store._execute(f"SELECT {_COLS} FROM claim_tokens ORDER BY created, id")
        else:
            rows = self.store._execute(
                f"SELECT {_COLS} FROM claim_tokens WHERE zone = ? ORDER BY created, id", (zone,)
            )
        return [_record(r) for r in rows]
