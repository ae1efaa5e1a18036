"""Replay window over (boot epoch, sequence): accepts each message exactly once, in any order,
within WINDOW sequence numbers of the newest seen in the same epoch, for the EPOCHS newest epochs.
Pure state; the controller persists dumps() so the window survives restarts."""

from protocol.codec import Reader, Writer
from protocol.errors import BAD_FIELD, REPLAY, ProtocolError

WINDOW = 1024  # >= the device's offline ring, so a whole backlog fits out of order
EPOCHS = 4  # boot epochs tracked at once: a backlog from older boots can still land
_BYTES = WINDOW // 8


class ReplayWindow:
    def __init__(self) -> None:
        self.floor = -1  # every epoch <= floor is refused: it was evicted, its state is gone
        self.epochs: dict[int, list] = {}  # type: ignore[type-arg]  # epoch -> [high, bitmap]

    def seen(self, epoch: int, seq: int) -> bool:
        """True when (epoch, seq) must be refused: already accepted, or too old to tell."""
        if epoch <= self.floor:
            return True
        st = self.epochs.get(epoch)
        if st is None:
            return len(self.epochs) >= EPOCHS and epoch < min(self.epochs)
        high = st[0]
        if seq > high:
            return False
        if seq <= high - WINDOW:
            return True
        return bool(st[1][(seq % WINDOW) >> 3] & (1 << (seq & 7)))

    def too_old(self, epoch: int, seq: int) -> bool:
        """True when seen() refuses (epoch, seq) only because the window no longer holds its
        state (an evicted epoch, or more than WINDOW below the newest seq), not because it
        was accepted: a question for whoever keeps older keys (the controller's store)."""
        if epoch <= self.floor:
            return True
        st = self.epochs.get(epoch)
        if st is None:
            return len(self.epochs) >= EPOCHS and epoch < min(self.epochs)
        return bool(seq <= st[0] - WINDOW)

    def accepted(self, epoch: int, seq: int) -> bool:
        """True only when (epoch, seq) is known to have been accepted (its bit is set): unlike
        seen(), never for a message merely too old to tell (delivery confirmation names only
        messages that are stored, docs/PROTOCOL.md section 16)."""
        st = self.epochs.get(epoch)
        if st is None or seq > st[0] or seq <= st[0] - WINDOW:
            return False
        return bool(st[1][(seq % WINDOW) >> 3] & (1 << (seq & 7)))

    def check(self, epoch: int, seq: int) -> None:
        if self.seen(epoch, seq):
            raise ProtocolError(REPLAY, "epoch %d seq %d" % (epoch, seq))

    def accept(self, epoch: int, seq: int) -> None:
        """check() then record. Raises REPLAY and records nothing if the message was seen."""
        self.check(epoch, seq)
        st = self.epochs.get(epoch)
        if st is None:
            st = [seq, bytearray(_BYTES)]
            self.epochs[epoch] = st
            while len(self.epochs) > EPOCHS:
                old = min(self.epochs)
                del self.epochs[old]
                self.floor = max(self.floor, old)
        elif seq > st[0]:
            bits = st[1]
            if seq - st[0] >= WINDOW:
                for i in range(_BYTES):
                    bits[i] = 0
            else:
                for s in range(st[0] + 1, seq + 1):
                    bits[(s % WINDOW) >> 3] &= ~(1 << (s & 7)) & 0xFF
            st[0] = seq
        st[1][(seq % WINDOW) >> 3] |= 1 << (seq & 7)

    def dumps(self) -> bytes:
        """Canonical msgpack: [floor, [[epoch, high, bitmap], ...] ascending by epoch]."""
        w = Writer(bytearray(16 + EPOCHS * (_BYTES + 16)))
        w.array_head(2)
        w.integer(self.floor)
        w.array_head(len(self.epochs))
        for e in sorted(self.epochs):
            st = self.epochs[e]
            w.array_head(3)
            w.integer(e)
            w.integer(st[0])
            w.bin(bytes(st[1]))
        return bytes(w.mv[: w.pos])

    @classmethod
    def loads(cls, data: bytes) -> "ReplayWindow":
        r = Reader(data)
        v = r.value()
        win = cls()
        try:
            floor, rows = v  # type: ignore[misc]
            win.floor = int(floor)  # type: ignore[has-type]
            for e, high, bits in rows:  # type: ignore[has-type]
                if len(bits) != _BYTES:
                    raise ValueError
                win.epochs[int(e)] = [int(high), bytearray(bits)]
        except (TypeError, ValueError):
            raise ProtocolError(BAD_FIELD, "not a replay window") from None
        return win
