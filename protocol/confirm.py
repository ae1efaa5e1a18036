"""CONFIRM bodies (docs/PROTOCOL.md, "Delivery confirmed by the store"), pure and on both
interpreters: the shape check that protocol.envelope.decode and protocol.downlink.open_downlink
share, and the membership walk a device runs over its ring. A body is {0: [epoch, first, count,
...]}: triples naming uplink messages (epoch, first .. first + count - 1) the controller has
stored, ascending and disjoint. Imports nothing; a device loads it only while it opens a CONFIRM
(heap.py DECODER)."""

_U32 = 0xFFFFFFFF
_MAX_ITEMS = 63  # protocol.messages MAX_CONFIRM_RANGES triples


def check(body: object) -> str | None:
    """None when body is a well-formed CONFIRM body, else "bad_field". The rules: a map whose key
    0 is an array of 1..21 triples of integers, epoch and first 0..2**32-1, count >= 1 with
    first + count - 1 <= 2**32-1, each triple starting after the previous one ends (ascending by
    (epoch, seq), no overlap). Other body keys are allowed and ignored, as in every body."""
    if type(body) is not dict:
        return "bad_field"  # body is a map
    flat = body.get(0)
    if type(flat) is not list or not 0 < len(flat) <= _MAX_ITEMS or len(flat) % 3:
        return "bad_field"  # ranges: 1..21 triples
    pe = -1
    pl = -1
    for i in range(0, len(flat), 3):
        e = flat[i]
        f = flat[i + 1]
        n = flat[i + 2]
        if type(e) is not int or type(f) is not int or type(n) is not int:
            return "bad_field"  # integers (bool is not int here)
        if not (0 <= e <= _U32 and 0 <= f <= _U32 and n >= 1 and f + n - 1 <= _U32):
            return "bad_field"  # out of range
        if e < pe or (e == pe and f <= pl):
            return "bad_field"  # not ascending, or overlapping the previous triple
        pe = e
        pl = f + n - 1
    return None


def covered(flat: list[int], epoch: int, seq: int) -> bool:
    """True when (epoch, seq) lies in one of the checked triples of flat."""
    for i in range(0, len(flat), 3):
        e = flat[i]
        if e == epoch:
            f = flat[i + 1]
            if f <= seq < f + flat[i + 2]:
                return True
        elif e > epoch:
            return False
    return False
