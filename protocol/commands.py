"""Device-side freshness for downlink commands: expiry plus a bounded set of command ids already
executed, with a watermark so an id evicted from the set can never run again. Pure state; the
device persists dumps() to flash so a reboot does not reopen the door to replays."""

from protocol.codec import Reader, Writer
from protocol.errors import BAD_FIELD, EXPIRED, REPLAY, ProtocolError

# For the type checker only: at run time a device passes protocol.downlink.Downlink (same fields),
# and loading protocol.envelope just for a name would cost a device heap.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from protocol.envelope import Message

_C_EXPIRES = 1  # protocol.messages.C_EXPIRES

MAX_TTL = 3600  # a command is valid at most this long after it was issued
CAPACITY = 16  # ids remembered; more unexpired commands than this raise the watermark


class CommandGuard:
    def __init__(self) -> None:
        self.watermark = 0  # every command expiring at or before this is refused as a replay
        self.seen: dict[tuple[int, int], int] = {}  # (epoch, seq) -> expires

    def accept(self, msg: "Message", now: int | None) -> None:
        """Admit msg once. `now` is the device's unix time, or None when it has no clock; the
        command's own ts (controller time) then bounds it from below. Raises EXPIRED, REPLAY,
        BAD_FIELD; records the command only when admitting it."""
        self.admit(msg.epoch, msg.seq, msg.ts, msg.body, now)

    def admit(self, epoch: int, seq: int, ts: int | None, body: object, now: int | None) -> None:
        """accept() on the message's fields: a device drops the decoded message (and the decoder's
        code) before it loads this module."""
        if ts is None or not isinstance(body, dict):
            raise ProtocolError(BAD_FIELD, "commands carry the controller's ts")
        expires = body.get(_C_EXPIRES)
        if not isinstance(expires, int) or expires - ts > MAX_TTL:
            raise ProtocolError(BAD_FIELD, "expiry missing or beyond %d s" % MAX_TTL)
        t = ts if now is None or now < ts else now
        if expires < t:
            raise ProtocolError(EXPIRED, "expired %d s ago" % (t - expires))
        ident = (epoch, seq)
        if expires <= self.watermark or ident in self.seen:
            raise ProtocolError(REPLAY, "command %d/%d" % ident)
        for k in [k for k, e in self.seen.items() if e < t]:
            # A clockless device judges expiry by the newest ts it has seen, so a pruned id's
            # own old ts would look fresh again: the watermark keeps it refused.
            self.watermark = max(self.watermark, self.seen.pop(k))
        self.seen[ident] = expires
        while len(self.seen) > CAPACITY:
            oldest = min(self.seen, key=lambda k: self.seen[k])
            self.watermark = max(self.watermark, self.seen.pop(oldest))

    def dumps(self) -> bytes:
        w = Writer(bytearray(32 + 16 * CAPACITY))
        w.array_head(1 + 3 * len(self.seen))
        w.integer(self.watermark)
        for (e, s), x in sorted(self.seen.items()):
            w.integer(e)
            w.integer(s)
            w.integer(x)
        return bytes(w.mv[: w.pos])

    @classmethod
    def loads(cls, data: bytes) -> "CommandGuard":
        g = cls()
        v = Reader(data).value()
        if not isinstance(v, list) or len(v) % 3 != 1:
            raise ProtocolError(BAD_FIELD, "not a command guard state")
        g.watermark = v[0]
        for i in range(1, len(v), 3):
            g.seen[(v[i], v[i + 1])] = v[i + 2]
        return g
