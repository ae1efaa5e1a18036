"""Operator accounts, roles and the audit log, as one service the HTTP API is handed: who a bearer
token belongs to, whether their role allows an action, and the one place an audit row and its
service-log line are written. Imports the store thread and the master key; never the HTTP layer.

Tokens are 256-bit random secrets, so they are stored as HMAC-SHA256 under a key derived from the
master key, not with a slow password hash: a slow hash (scrypt, argon2) only helps against
guessing low-entropy secrets, which a 2^256 token space already rules out, and it would cost
every API request tens of milliseconds. The key means a copy of the database alone cannot even
check a token it found elsewhere."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from controller.errors import OperatorError
from controller.keys import MasterKey
from controller.store.base import OperatorRecord
from controller.store.thread import StoreThread

log = logging.getLogger("idufleet.audit")

ROLES = ("viewer", "operator", "admin")  # each role may do everything the ones before it may
RANK = {r: i for i, r in enumerate(ROLES)}
BOOTSTRAP = "bootstrap"  # the operator name the config's api.token acts as (an admin)
TOKEN_PREFIX = "idu_"
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,62}")
# argument names whose values never reach the audit table or the log
_SECRET_WORDS = ("token", "key", "password", "secret", "psk")


@dataclass(frozen=True)
class Principal:
    """Who made a request: an operator's name and role (BOOTSTRAP for api.token)."""

    name: str
    role: str

    def may(self, needed: str) -> bool:
        return RANK[self.role] >= RANK[needed]


def redact(args: Any) -> Any:
    """A copy of `args` with the value of every key that names a secret replaced by "***"."""
    if isinstance(args, dict):
        return {
            str(k): "***" if any(w in str(k).lower() for w in _SECRET_WORDS) else redact(v)
            for k, v in args.items()
        }
    if isinstance(args, list):
        return [redact(v) for v in args]
    return args


class Operators:
    """Accounts (add, list, revoke, authenticate) and the audit log (record, read)."""

    def __init__(self, db: StoreThread, master: MasterKey, bootstrap_token: str = "") -> None:
        self.db = db
        self._key = master.subkey("operator tokens")
        self._bootstrap = bootstrap_token

    def _hash(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), sha256).hexdigest()

    async def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token belongs to, or None (unknown or revoked token)."""
        if not token:
            return None
        if self._bootstrap and hmac.compare_digest(token.encode(), self._bootstrap.encode()):
            return Principal(BOOTSTRAP, "admin")
        if not token.startswith(TOKEN_PREFIX):
            return None
        h = self._hash(token)
        rec = await self.db.call(lambda s: s.operator_by_hash(h))
        if rec is None or rec.revoked_at is not None:
            return None
        return Principal(rec.name, rec.role)

    async def add(self, name: str, role: str, by: Principal) -> tuple[OperatorRecord, str]:
        """Create an operator; returns its record and its token (the only time it exists in
        clear). Raises OperatorError for a bad name or role or a taken name."""
        if not _NAME.fullmatch(name) or name == BOOTSTRAP:
            raise OperatorError(
                f"operator name {name!r}: use 1-63 lowercase letters, digits, . _ -, "
                "starting with a letter",
                "bad_name",
            )
        if role not in RANK:
            raise OperatorError(f"role {role!r}: use one of {', '.join(ROLES)}", "bad_role")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        rec = OperatorRecord(name, role, self._hash(token), time.time(), by.name)
        if not await self.db.call(lambda s: s.add_operator(rec)):
            raise OperatorError(
                f"operator {name} exists (names are never reused); choose another name",
                "name_taken",
            )
        return rec, token

    async def accounts(self) -> list[dict[str, Any]]:
        return [r.public() for r in await self.db.call(lambda s: s.list_operators())]

    async def revoke(self, name: str) -> None:
        """Revoke an operator's token now. Raises OperatorError when no active operator has
        that name."""
        now = time.time()
        if not await self.db.call(lambda s: s.revoke_operator(name, now)):
            raise OperatorError(
                f"no active operator {name}; see `idufleet operator list`", "not_found"
            )

    # --- audit -------------------------------------------------------------------------------
    async def record(
        self, who: Principal, action: str, target: str | None, args: Any, result: str
    ) -> None:
        """Append one audit row and write its service-log line: the one place both happen.
        `args` is redacted here, so a caller cannot forget to."""
        clean = redact(args) if isinstance(args, dict) else {}
        ts = time.time()
        await self.db.call(
            lambda s: s.append_audit(ts, who.name, who.role, action, target, clean, result)
        )
        log.info(
            "operator action",
            extra={
                "who": who.name,
                "role": who.role,
                "action": action,
                "target": target,
                "arguments": clean,
                "result": result,
            },
        )

    async def audit(
        self, since: float = 0.0, who: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return await self.db.call(lambda s: s.audit_entries(since, who, limit))
