"""Claim tokens: issuing, the pure claimability check, and keeping them in the IDU store.

A token is an 8-byte id (public: it names the bootstrap topics) and a 16-byte secret that only the
claim bundle and the store hold. The responder needs the secret itself (it verifies the board's
HMAC and MACs its answer with it), so the store keeps it wrapped under the master key, like the
device keys (controller.keys), with the token id as associated data; never a plain copy.
Single use is enforced by one conditional UPDATE (`... WHERE used_at IS NULL`), atomic on both
backends. The table and its SQL belong to the store (store/claims.py, migration 4). Imports the
store and keys, never transport/ or api/."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.errors import ControllerError
from controller.keys import MasterKey
from controller.registry import KINDS, zone_problem
from controller.store.base import Store
from controller.store.claims import TokenRecord as TokenRecord  # re-exported: T.TokenRecord
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


class TokenStore:
    """Claim tokens for provisioning: issues them with their secrets wrapped, unwraps a secret
    for the responder, and claims, withdraws and lists them through the store's claim-token
    methods (store/claims.py). Same threading rule as the Store it wraps: one thread at a time."""

    def __init__(self, store: Store, master: MasterKey) -> None:
        self.store = store
        self.master = master

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
        self.store.add_claim_tokens(
            [
                TokenRecord(
                    id=t.id,
                    secret_wrapped=self.master.wrap(self._aad(t.id), t.secret),
                    site=site,
                    zone=zone,
                    kind=kind,
                    created=now,
                    expires=t.expires,
                    extra=dict(extra or {}),
                )
                for t in out
            ]
        )
        return out

    def get(self, token_id: str) -> TokenRecord | None:
        return self.store.get_claim_token(token_id)

    def secret(self, rec: TokenRecord) -> bytes:
        return self.master.unwrap(self._aad(rec.id), rec.secret_wrapped)

    def mark_used(self, token_id: str, device_id: str, board_pub: bytes, now: float) -> bool:
        """Claim the token atomically; False if someone else got there first. Call inside the
        transaction that creates the device (Store.transaction), so both happen or neither."""
        return self.store.use_claim_token(token_id, device_id, board_pub, now)

    def delete(self, token_ids: list[str]) -> None:
        """Withdraw unused tokens (a bundle could not be written: no token without its bundle)."""
        self.store.delete_claim_tokens(token_ids)

    def list(self, zone: str | None = None) -> list[TokenRecord]:
        return self.store.list_claim_tokens(zone)
