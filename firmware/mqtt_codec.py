"""Sans-I/O MQTT 3.1.1 packet codec: encoders write into caller-owned buffers, the Parser frames
packets out of bytes fed to it. No sockets, no asyncio; runs unchanged on CPython and MicroPython
(tests check golden bytes on both). Must not import anything from the firmware."""

from micropython import const

CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x82)
SUBACK = const(0x90)
PINGRESP = const(0xD0)

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

_MAX_REMAINING = const(268435455)


# A packet that breaks MQTT 3.1.1 framing raises MqttError: drop the connection and reconnect.
# It is ValueError itself (a class of its own would be heap on a device), with messages under
# 10 characters (longer string constants are heap objects there too).
MqttError = ValueError


def _varlen(buf, pos, n):
    """Write the remaining-length field at pos; returns the new position."""
    if n > _MAX_REMAINING:
        raise MqttError("varlen")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            b |= 0x80
        buf[pos] = b
        pos += 1
        if not n:
            return pos


def _str(buf, pos, s):
    n = len(s)
    buf[pos] = n >> 8
    buf[pos + 1] = n & 0xFF
    buf[pos + 2 : pos + 2 + n] = s
    return pos + 2 + n


def connect(
    buf,
    client_id,
    keepalive,
    clean,
    user=None,
    password=None,
    will=None,
    will_qos=1,
    will_retain=False,
):
    """CONNECT into buf; returns its length. Strings are bytes; will is (topic, payload)."""
    flags = 0x02 if clean else 0
    rl = 10 + 2 + len(client_id)
    if will is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        rl += 4 + len(will[0]) + len(will[1])
    if user is not None:
        flags |= 0x80
        rl += 2 + len(user)
        if password is not None:
            flags |= 0x40
            rl += 2 + len(password)
    if 5 + rl > len(buf):  # up to 4 length bytes: a few bytes of slack, one function less
        raise MqttError("CONNECT")
    buf[0] = CONNECT
    p = _varlen(buf, 1, rl)
    p = _str(buf, p, b"MQTT")
    buf[p] = 4
    buf[p + 1] = flags
    buf[p + 2] = keepalive >> 8
    buf[p + 3] = keepalive & 0xFF
    p = _str(buf, p + 4, client_id)
    if will is not None:
        p = _str(buf, p, will[0])
        p = _str(buf, p, will[1])
    if user is not None:
        p = _str(buf, p, user)
        if password is not None:
            p = _str(buf, p, password)
    return p


def publish_head(buf, topic, payload_len, qos=0, pid=0, dup=False, retain=False):
    """Fixed header, topic and packet id of a PUBLISH; the caller sends the payload after these
    bytes, so a payload already sitting in its own buffer is never copied. Returns the length."""
    rl = 2 + len(topic) + (2 if qos else 0) + payload_len
    if 9 + len(topic) > len(buf):
        raise MqttError("PUBLISH")
    buf[0] = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    p = _str(buf, _varlen(buf, 1, rl), topic)
    if qos:
        buf[p] = pid >> 8
        buf[p + 1] = pid & 0xFF
        p += 2
    return p


def puback(buf, pid):
    buf[0] = PUBACK
    buf[1] = 2
    buf[2] = pid >> 8
    buf[3] = pid & 0xFF
    return 4


def subscribe(buf, pid, topics, qos=1):
    """SUBSCRIBE to every topic (bytes) in topics at one QoS; returns the length."""
    rl = 2
    for t in topics:
        rl += 3 + len(t)
    buf[0] = SUBSCRIBE
    p = _varlen(buf, 1, rl)
    buf[p] = pid >> 8
    buf[p + 1] = pid & 0xFF
    p += 2
    for t in topics:
        p = _str(buf, p, t)
        buf[p] = qos
        p += 1
    return p


def u16(buf, pos):
    return (buf[pos] << 8) | buf[pos + 1]


def parse_publish(first, buf, start, length):
    """(topic_start, topic_len, pid, payload_start, payload_len) of a PUBLISH body."""
    tl = u16(buf, start)
    p = start + 2 + tl
    qos = (first >> 1) & 3
    pid = 0
    if qos:
        pid = u16(buf, p)
        p += 2
    end = start + length
    if p > end or qos == 3:
        raise MqttError("PUBLISH")
    return start + 2, tl, pid, p, end - p


class Parser:
    """Frames packets out of a stream. Feed with space()/added(n); then next() returns
    (first_byte, body_start, body_len) of the next whole packet in buf, or None; call pop() when
    done with it. A packet larger than the buffer is skipped and counted in `oversize`."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.n = 0
        self.total = 0
        self.skip = 0
        self.oversize = 0

    def reset(self):
        self.n = 0
        self.total = 0
        self.skip = 0

    def space(self):
        return self.mv[self.n :]

    def added(self, k):
        if self.skip:
            take = k if k < self.skip else self.skip
            self.skip -= take
            rest = k - take
            if rest:
                self.buf[0:rest] = self.mv[take:k]
            self.n = rest
        else:
            self.n += k

    def next(self):
        b = self.buf
        n = self.n
        if n < 2:
            return None
        rl = 0
        shift = 0
        i = 1
        while True:
            if i >= n:
                return None
            c = b[i]
            rl |= (c & 0x7F) << shift
            i += 1
            if not c & 0x80:
                break
            shift += 7
            if i > 4:
                raise MqttError("varlen")
        total = i + rl
        if total > len(b):
            self.oversize += 1
            self.skip = total - n
            self.n = 0
            return None
        if n < total:
            return None
        self.total = total
        return b[0], i, rl

    def pop(self):
        t = self.total
        r = self.n - t
        if r:
            self.buf[0:r] = self.mv[t : self.n]
        self.n = r
        self.total = 0
