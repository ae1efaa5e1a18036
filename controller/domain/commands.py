"""Downlink commands, pure: number them (controller epoch from the store, seq per process),
build the signed COMMAND payload, and name the operations. The device's CommandGuard checks
expiry and replays; the ACK comes back through ingest and settles the stored command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import messages as M
from protocol import topics
from protocol.commands import MAX_TTL
from protocol.envelope import Message, check_body, encode
from protocol.sign import Signer

OPS = {name.replace("_", "-"): op for op, name in M.OP_NAMES.items()}  # ping, reboot, set-config...
RESULTS = {
    M.R_OK: "ok",
    M.R_BAD_ARGS: "bad_args",
    M.R_UNKNOWN_OP: "unknown_op",
    M.R_EXPIRED: "expired",
    M.R_REPLAY: "replay",
    M.R_BAD_TAG: "bad_tag",
    M.R_BUSY: "busy",
    M.R_FAILED: "failed",
}


@dataclass(frozen=True)
class OutgoingCommand:
    epoch: int
    seq: int
    device: str
    topic: str
    op: int
    args: dict[int, Any] | None
    issued: int
    expires: int
    payload: bytes


def op_code(op: str | int) -> int:
    """Operation number from a name (ping, reboot, set-config, diagnostics, rotate-key) or int."""
    if isinstance(op, int):
        if op not in M.OP_NAMES:
            raise ValueError(f"unknown operation {op}; known: {', '.join(OPS)}")
        return op
    key = op.replace("_", "-")
    if key not in OPS:
        raise ValueError(f"unknown operation {op!r}; known: {', '.join(OPS)}")
    return OPS[key]


class CommandIssuer:
    """Numbers commands within one controller epoch. seq starts at 1 and only grows."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.seq = 0

    def build(
        self,
        signer: Signer,
        site: str,
        device: str,
        op: str | int,
        args: dict[int, Any] | None,
        now: int,
        ttl: int = 60,
    ) -> OutgoingCommand:
        """Raises ValueError for an unknown op or a ttl outside 1..MAX_TTL."""
        code = op_code(op)
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl must be 1..{MAX_TTL} seconds")
        self.seq += 1
        body: dict[int, Any] = {M.C_OP: code, M.C_EXPIRES: now + ttl}
        if args:
            body[M.C_ARGS] = args
        topic = topics.topic(site, device, topics.COMMAND)
        payload = encode(signer, topic, Message(M.COMMAND, self.epoch, self.seq, body, ts=now))
        return OutgoingCommand(
            self.epoch, self.seq, device, topic, code, args, now, now + ttl, payload
        )

    def build_confirm(
        self, signer: Signer, site: str, device: str, ranges: list[int], now: int
    ) -> tuple[str, bytes]:
        """(topic, payload) of a CONFIRM naming `ranges` (flat [epoch, first, count, ...],
        docs/PROTOCOL.md section 16), numbered in the same sequence as commands so every
        downlink message of this controller epoch has its own (epoch, seq). Raises
        ProtocolError for ranges the spec does not allow."""
        self.seq += 1
        topic = topics.topic(site, device, topics.COMMAND)
        msg = Message(M.CONFIRM, self.epoch, self.seq, {M.F_RANGES: ranges}, ts=now)
        check_body(M.CONFIRM, msg.body)
        return topic, encode(signer, topic, msg)
