# ruff: noqa: UP031  -- runs on MicroPython too; %-formatting is its cheapest form
"""Exercises the firmware's sans-I/O parts and prints one `name hex-or-value` line per case.
Runs unchanged on CPython (with tests/firmware/shim on the path) and on MicroPython; the pytest
compares both outputs with the golden table, so the device and the host agree byte for byte."""

import backoff
import mqtt_codec as mq
from ring import RingState

try:
    from binascii import hexlify
except ImportError:  # pragma: no cover
    hexlify = None


def hx(buf, n):
    return hexlify(bytes(buf[:n])).decode()


def out(name, value):
    print(name, value)


b = bytearray(128)
n = mq.connect(b, b"ap-1", 60, False, b"ap-1", None, (b"t/d", b"\x01\x02"), 1, False)
out("connect_will_user", hx(b, n))
n = mq.connect(b, b"ap-1", 60, True, b"ap-1", b"pw")
out("connect_clean_pw", hx(b, n))
n = mq.publish_head(b, b"a/b", 5, 1, 10, True)
out("publish_q1_dup", hx(b, n))
n = mq.publish_head(b, b"a/b", 5, 0, 0, False, True)
out("publish_q0_retain", hx(b, n))
n = mq.publish_head(b, b"t", 200, 0)
out("publish_varlen2", hx(b, n))
n = mq.publish_head(b, b"t", 20000, 0)
out("publish_varlen3", hx(b, n))
n = mq.puback(b, 258)
out("puback", hx(b, n))
n = mq.subscribe(b, 1, (b"a", b"bc"), 1)
out("subscribe", hx(b, n))
out("pingreq", hx(mq.PINGREQ, 2))
out("disconnect", hx(mq.DISCONNECT, 2))

# Parser: a CONNACK, a SUBACK and a QoS 1 PUBLISH fed one byte at a time
stream = b"\x20\x02\x01\x00" + b"\x90\x03\x00\x01\x01" + b"\x32\x0a\x00\x03a/b\x00\x07xyz"
p = mq.Parser(64)
got = []
for i in range(len(stream)):
    sp = p.space()
    sp[0] = stream[i]
    p.added(1)
    pkt = p.next()
    while pkt is not None:
        first, start, length = pkt
        if first & 0xF0 == mq.PUBLISH:
            ts, tl, pid, ps, pl = mq.parse_publish(first, p.buf, start, length)
            got.append(
                "pub:%s:%d:%s"
                % (bytes(p.buf[ts : ts + tl]).decode(), pid, bytes(p.buf[ps : ps + pl]).decode())
            )
        else:
            got.append("%02x:%s" % (first, hx(p.mv[start:], length)))
        p.pop()
        pkt = p.next()
out("parse_stream", "|".join(got))

# A packet bigger than the buffer is skipped, the next one still parses
p = mq.Parser(16)
big = b"\x30\x14\x00\x01t" + b"x" * 17 + b"\xd0\x00"
k = 0
seen = []
while k < len(big):
    sp = p.space()
    m = min(len(sp), len(big) - k, 5)
    sp[:m] = big[k : k + m]
    p.added(m)
    k += m
    pkt = p.next()
    while pkt is not None:
        seen.append("%02x" % pkt[0])
        p.pop()
        pkt = p.next()
out("parse_oversize", "%s:%d" % (",".join(seen), p.oversize))
try:
    p = mq.Parser(16)
    sp = p.space()
    sp[:6] = b"\x30\xff\xff\xff\xff\x01"
    p.added(6)
    p.next()
    out("parse_bad_length", "accepted")
except mq.MqttError:
    out("parse_bad_length", "refused")

# Offline ring bookkeeping: capacity 3, overflow drops (and counts) the oldest
r = RingState(3)
slots = [r.push() for _ in range(5)]
out("ring_push", "%s head=%d count=%d dropped=%d" % (slots, r.head, r.count, r.dropped))
r.pop()
r.pop()
out("ring_pop", "peek=%d count=%d" % (r.peek(), r.count))
r.pop()
r.pop()
out("ring_empty", "peek=%d count=%d" % (r.peek(), r.count))

# Backoff: window doubles per attempt, capped; full jitter spreads inside it
out("backoff", [backoff.delay_ms(a, 1000, 8000, 65535) for a in range(6)])
out("backoff_min", [backoff.delay_ms(a, 1000, 8000, 0) for a in range(3)])
g = backoff.Rng(12345)
out("rng", [g.r16() for _ in range(4)])
