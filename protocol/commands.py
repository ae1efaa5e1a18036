"""Device-side freshness for downlink commands: expiry plus a bounded set of command ids already
executed, with a watermark so an id evicted from the set can never run again. Pure state; the
device persists dumps() to flash so a reboot does not reopen the door to replays.

admit() returns a refusal's code (accept() raises it) and the saved state is plain struct, not
msgpack: a device loads this module while a command runs, and neither protocol.errors nor the
decoder need to be in its heap alongside it."""

import struct

from protocol.writer import refuse

# For the type checker only: at run time a device calls admit() with the fields it opened
# (protocol.downlink), and loading protocol.envelope just for a name would cost a device heap.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from protocol.envelope import Message

_C_EXPIRES = 1  # protocol.messages.C_EXPIRES

MAX_TTL = 3600  # a command is valid at most this long after it was issued
CAPACITY = 16  # ids remembered; more unexpired commands than this raise the watermark
_MAGIC = b"IDUG"  # dumps(): magic, watermark (u64), then (epoch u32, seq u32, expires u64)*


class CommandGuard:
    def __init__(self) -> None:
        self.watermark = 0  # every command expiring at or before this is refused as a replay
        self.seen: dict[tuple[int, int], int] = {}  # (epoch, seq) -> expires

    def accept(self, msg: "Message", now: int | None) -> None:
        """Admit msg once. `now` is the device's unix time, or None when it has no clock; the
        command's own ts (controller time) then bounds it from below. Raises EXPIRED, REPLAY,
        BAD_FIELD; records the command only when admitting it."""
        code = self.admit(msg.epoch, msg.seq, msg.ts, msg.body, now)
        if code:
            refuse(code)

    def admit(
        self, epoch: int, seq: int, ts: int | None, body: object, now: int | None
    ) -> str | None:
        """accept() on the message's fields, returning the refusal's code (None: admitted)
        instead of raising it: a device drops the decoded message (and the decoder's code)
        before it loads this module, and a refusal then needs no protocol.errors either."""
        if ts is None or not isinstance(body, dict):
            return "bad_field"  # commands carry the controller's ts
        expires = body.get(_C_EXPIRES)
        if not isinstance(expires, int) or expires - ts > MAX_TTL:
            return "bad_field"  # expiry missing or beyond MAX_TTL
        t = ts if now is None or now < ts else now
        if expires < t:
            return "expired"
        ident = (epoch, seq)
        if expires <= self.watermark or ident in self.seen:
            return "replay"
        for k in [k for k, e in self.seen.items() if e < t]:
            # A clockless device judges expiry by the newest ts it has seen, so a pruned id's
            # own old ts would look fresh again: the watermark keeps it refused.
            self.watermark = max(self.watermark, self.seen.pop(k))
        self.seen[ident] = expires
        while len(self.seen) > CAPACITY:
            oldest = min(self.seen, key=lambda k: self.seen[k])
            self.watermark = max(self.watermark, self.seen.pop(oldest))
        return None

    def dumps(self) -> bytes:
        out = bytearray(_MAGIC + struct.pack("<Q", self.watermark))
        for (e, s), x in sorted(self.seen.items()):
            out += struct.pack("<IIQ", e, s, x)
        return bytes(out)

    @classmethod
    def loads(cls, data: bytes) -> "CommandGuard":
        """The state dumps() wrote; raises ValueError on anything else (the device then starts
        from an empty guard)."""
        if data[:4] != _MAGIC or len(data) % 16 != 12:
            raise ValueError("not a command guard state")
        g = cls()
        g.watermark = struct.unpack_from("<Q", data, 4)[0]
        for i in range(12, len(data), 16):
            e, s, x = struct.unpack_from("<IIQ", data, i)
            g.seen[(e, s)] = x
        return g
