"""The offline report buffer: a bounded FIFO of signed payloads in fixed-size slots of one flash
file, plus a 16-byte header file. RingState is the pure bookkeeping; RingFile the flash shell.
When full, the oldest entry is dropped and counted. Entries leave only when the broker has acked
them (pop after PUBACK), so a kill at any point loses nothing that was not delivered."""

import struct

from micropython import const

_MAGIC = const(0x49445542)  # "IDUB"
_HDR = "<IIII"  # magic, head, count, dropped


class RingState:
    """head: slot of the oldest entry; count: entries held; dropped: entries lost to overflow
    since the buffer was created (monotonic, survives reboots)."""

    def __init__(self, capacity, head=0, count=0, dropped=0):
        self.capacity = capacity
        self.head = head
        self.count = count
        self.dropped = dropped

    def push(self):
        """Slot to write the new entry to; drops (and counts) the oldest when full."""
        if self.count == self.capacity:
            self.head = (self.head + 1) % self.capacity
            self.count -= 1
            self.dropped += 1
        slot = (self.head + self.count) % self.capacity
        self.count += 1
        return slot

    def peek(self):
        """Slot of the oldest entry, or -1 when empty."""
        return self.head if self.count else -1

    def pop(self):
        if self.count:
            self.head = (self.head + 1) % self.capacity
            self.count -= 1


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
            self._dat = open(self._dat_path, "r+b")
        except OSError:
            self._dat = open(self._dat_path, "w+b")
        self._save()

    def _save(self):
        s = self.state
        struct.pack_into(_HDR, self.hdr, 0, _MAGIC, s.head, s.count, s.dropped)
        with open(self._hdr_path, "wb") as f:
            f.write(self.hdr)

    def push(self, mv, n):
        """Append payload mv[:n] (n <= slot - 2). Returns True if an old entry was dropped."""
        before = self.state.dropped
        i = self.state.push()
        f = self._dat
        f.seek(i * self.slot)
        f.write(struct.pack("<H", n))
        f.write(mv[:n])
        f.flush()
        self._save()
        return self.state.dropped != before

    def read_head(self, buf):
        """Copy the oldest payload into buf; returns its length, or 0 when empty."""
        i = self.state.peek()
        if i < 0:
            return 0
        f = self._dat
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
        self._save()

    def close(self):
        self._dat.close()
