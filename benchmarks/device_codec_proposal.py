"""A proposal for protocol/, measured by benchmarks/device_codec.py beside the real code (nothing
uses it): integers written with one struct.pack_into each instead of a method call per byte, and
the tag copied out of the digest instead of sliced (saves the 96-byte slice). The benchmark
asserts it produces exactly the same bytes as protocol.codec + protocol.envelope."""

import struct

_pack = struct.pack_into


def put_int(buf, p, n):
    if 0 <= n < 0x80:
        buf[p] = n
        return p + 1
    if -32 <= n < 0:
        buf[p] = n & 0xFF
        return p + 1
    if n > 0:
        if n <= 0xFF:
            _pack(">BB", buf, p, 0xCC, n)
            return p + 2
        if n <= 0xFFFF:
            _pack(">BH", buf, p, 0xCD, n)
            return p + 3
        if n <= 0xFFFFFFFF:
            _pack(">BI", buf, p, 0xCE, n)
            return p + 5
        _pack(">BQ", buf, p, 0xCF, n)
        return p + 9
    if n >= -0x80:
        _pack(">Bb", buf, p, 0xD0, n)
        return p + 2
    if n >= -0x8000:
        _pack(">Bh", buf, p, 0xD1, n)
        return p + 3
    if n >= -0x80000000:
        _pack(">Bi", buf, p, 0xD2, n)
        return p + 5
    _pack(">Bq", buf, p, 0xD3, n)
    return p + 9


BUF = bytearray(1024)
MV = memoryview(BUF)
C = {}


def setup(state, epoch, ts, up, ids, values, topic, signer):
    C.update(state=state, epoch=epoch, ts=ts, up=up, ids=ids, values=values, topic=topic)
    C["mac"] = signer._mac


def encode_sign():
    b = BUF
    st = C["state"]
    seq = st[0]
    st[0] = seq + 1
    b[0] = 0x88  # map of 8: v, type, epoch, seq, ts, up, body, tag
    b[1] = 0
    b[2] = 1
    b[3] = 1
    b[4] = 3
    b[5] = 2
    p = put_int(b, 6, C["epoch"])
    b[p] = 3
    p = put_int(b, p + 1, seq)
    b[p] = 4
    p = put_int(b, p + 1, C["ts"])
    b[p] = 5
    p = put_int(b, p + 1, C["up"])
    b[p] = 6
    ids = C["ids"]
    v = C["values"]
    b[p + 1] = 0x80 | len(ids)
    p += 2
    for i in range(len(ids)):
        p = put_int(b, p, ids[i])
        p = put_int(b, p, v[i])
    d = C["mac"].digest(C["topic"], b"\x00", MV[:p])
    b[p] = 7
    b[p + 1] = 0xC4
    b[p + 2] = 16
    p += 3
    for i in range(16):
        b[p + i] = d[i]
    return p + 16
