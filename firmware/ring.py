"""The offline report buffer: a bounded FIFO of signed payloads in fixed-size slots of one flash
file, plus a 16-byte header file. RingState is the pure bookkeeping; RingFile the flash shell.
When full, the oldest entry is dropped and counted.

An entry leaves when it is delivered: at the broker's PUBACK for a v1 device, or, with delivery
confirmation (docs/PROTOCOL.md section 16), only when a CONFIRM from the controller names it; a
PUBACK then only marks it sent. So a kill at any point loses nothing that was not delivered."""

import struct

from micropython import const

_MAGIC = const(0x49445542)  # "IDUB"
_HDR = "<IIII"  # magic, head, count, dropped


class RingState:
    """head: slot of the oldest entry; count: entries held; dropped: entries lost to overflow
    since the buffer was created (monotonic, survives reboots). In RAM only: sent, how many
    entries from the head went out at least once (since boot or the last re-send pass), and ok,
    one bit per slot confirmed while an older entry is not (freed when the head gets there)."""

    def __init__(self, capacity, head=0, count=0, dropped=0):
        self.capacity = capacity
        self.head = head
        self.count = count
        self.dropped = dropped
        self.sent = 0
        self.ok = bytearray((capacity + 7) >> 3)

    def push(self):
        """Slot to write the new entry to; drops (and counts) the oldest when full."""
        if self.count == self.capacity:
            self.pop()
            self.dropped += 1
        slot = (self.head + self.count) % self.capacity
        self.count += 1
        return slot

    def peek(self):
        """Slot of the oldest entry, or -1 when empty."""
        return self.head if self.count else -1

    def pop(self):
        """Free the oldest entry (and its confirmed bit)."""
        if self.count:
            h = self.head
            self.ok[h >> 3] &= ~(1 << (h & 7))
            self.head = (h + 1) % self.capacity
            self.count -= 1
            if self.sent:
                self.sent -= 1

    def next(self):
        """Slot of the next entry to send: the oldest neither sent nor confirmed; -1: none."""
        while self.sent < self.count:
            i = (self.head + self.sent) % self.capacity
            if not self.ok[i >> 3] & (1 << (i & 7)):
                return i
            self.sent += 1
        return -1

    def done(self, i):
        """The entry in slot i reached the broker (PUBACK): count it sent, if it is still the
        next one (a confirmation may have freed it meanwhile). Confirmations set `ok` bits and
        free entries in settle.py, loaded only when one arrives."""
        if self.sent < self.count and (self.head + self.sent) % self.capacity == i:
            self.sent += 1


class RingFile:
    """Slots of `slot` bytes (2-byte length + payload) in <dir>/ring.dat; state in ring.hdr.
    The data slot is written before the header that makes it visible, so a kill between the two
    loses at most that one entry, never corrupts an older one."""

    def __init__(self, flash, capacity, slot):
        self.slot = slot
        self.hdr = bytearray(16)
        self.state = RingState(capacity)
        self._dat_path = flash + "/ring.dat"
        self._hdr_path = flash + "/ring.hdr"
        try:
            with open(self._hdr_path, "rb") as f:
                n = f.readinto(self.hdr)
            magic, head, count, dropped = struct.unpack(_HDR, self.hdr)
            if n == 16 and magic == _MAGIC and head < capacity and count <= capacity:
                self.state = RingState(capacity, head, count, dropped)
        except OSError:
            pass
        try:
            self.dat = open(self._dat_path, "r+b")
        except OSError:
            self.dat = open(self._dat_path, "w+b")
        self.save()

    def save(self):
        s = self.state
        struct.pack_into(_HDR, self.hdr, 0, _MAGIC, s.head, s.count, s.dropped)
        with open(self._hdr_path, "wb") as f:
            f.write(self.hdr)

    def push(self, mv, n):
        """Append payload mv[:n] (n <= slot - 2). Returns True if an old entry was dropped."""
        before = self.state.dropped
        i = self.state.push()
        f = self.dat
        f.seek(i * self.slot)
        f.write(struct.pack("<H", n))
        f.write(mv[:n])
        f.flush()
        self.save()
        return self.state.dropped != before

    def read(self, i, buf):
        """Copy the payload in slot i into buf; returns its length, or 0 when unreadable."""
        f = self.dat
        f.seek(i * self.slot)
        mv = memoryview(buf)
        if f.readinto(mv[:2]) != 2:
            return 0
        n = buf[0] | (buf[1] << 8)
        if n > self.slot - 2 or n > len(buf):
            return 0
        return f.readinto(mv[:n])

    def pop(self):
        self.state.pop()
        self.save()

    def close(self):
        self.dat.close()
