"""Applying a CONFIRM to the ring (docs/PROTOCOL.md section 16): loaded by inbox.py once the
decoder is unloaded, and unloaded with the DECODER group after (heap.py), so none of this code is
resident and it is never in the heap together with the decoder. The ring keeps only what the
drain needs (RingState.next, done and the `ok` bits)."""

import time


def _uint(b, p):
    """(value, next position) of the unsigned integer at b[p], as protocol.writer writes it."""
    t = b[p]
    if t < 0x80:
        return t, p + 1
    n = 1 if t == 0xCC else 2 if t == 0xCD else 4  # uint8 / 16 / 32: epoch and seq fit in 32
    v = 0
    for q in range(p + 1, p + 1 + n):
        v = (v << 8) | b[q]
    return v, p + 1 + n


def settle(a, flat):
    """Mark every ring entry of agent a that flat's ranges name ([epoch, first, count, ...],
    checked: ascending, disjoint), then free the confirmed entries at the head and save the
    ring. Entries and ranges are both in (epoch, seq) order, so one merge walk reads each slot's
    key (the head of its signed payload: map, v, type, epoch, seq) at most once."""
    ring = a.ring
    st = ring.state
    ok = st.ok
    f = ring.dat
    b = bytearray(20)  # slot length + the payload up to the end of the longest seq
    j = 0
    k = len(flat)
    for off in range(st.count):
        i = (st.head + off) % st.capacity
        f.seek(i * ring.slot)
        if f.readinto(b) != 20:
            continue
        e, p = _uint(b, 8)  # payload[6]: the epoch, after 87 00 01 01 <type> 02
        s, p = _uint(b, p + 1)  # after key 03
        while j < k and (flat[j] < e or (flat[j] == e and flat[j + 1] + flat[j + 2] <= s)):
            j += 3
        if j >= k:
            break
        if flat[j] == e and flat[j + 1] <= s:
            ok[i >> 3] |= 1 << (i & 7)
    n = 0
    while st.count and ok[st.head >> 3] & (1 << (st.head & 7)):
        st.pop()  # clears the bit
        n += 1
    if n:
        ring.save()
        a.t_mark = time.ticks_ms()  # the oldest entry made progress
    a.sample_heap()  # a confirmation's peak
