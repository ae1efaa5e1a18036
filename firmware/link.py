"""The MQTT link: one connection to the broker over an asyncio stream (TLS through `ssl` when
configured), driven by the sans-I/O codec. It raises OSError on any failure and never retries:
the connectivity loop in agent.py owns reconnect and backoff, so application tasks never see
socket errors. Incoming PUBLISH packets go to `on_publish(topic_mv, payload_mv)`."""

import asyncio
import time

import mqtt_codec as mq
from micropython import const

_CONNACK_TIMEOUT_MS = const(10000)
# MicroPython's asyncio extras (not in the CPython-shaped stubs), named once here.
sleep_ms = asyncio.sleep_ms  # type: ignore[attr-defined]
wait_for_ms = asyncio.wait_for_ms  # type: ignore[attr-defined]


def _ca_der(path):
    """The CA certificate as DER: this Mbed TLS build takes only DER (`cadata`), while bundles may
    carry PEM (docs/SECURITY.md). Verification failures surface as ValueError at the first write;
    the connectivity loop treats them like any link failure."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"-----BEGIN"):
        import binascii

        body = b"".join(
            ln.strip() for ln in data.split(b"\n") if ln and not ln.startswith(b"-----")
        )
        data = binascii.a2b_base64(body)
    return data


class Link:
    def __init__(self, broker, client_id, keepalive, on_publish):
        self.host = broker["host"]
        self.port = broker["port"]
        self.tls = broker["tls"]
        self.ca = broker["ca"]
        self.user = broker["username"].encode()
        pw = broker["password"]
        self.password = pw.encode() if pw is not None else None
        self.client_id = client_id.encode()
        self.keepalive = keepalive
        self.on_publish = on_publish
        self.tx = bytearray(320)  # CONNECT (with the will), SUBSCRIBE, PUBLISH headers
        self.small = bytearray(4)  # PUBACK
        self.parser = mq.Parser(704)  # a 512-byte command + topic; bigger packets are skipped
        self.reader = None
        self.writer = None
        self.up = False
        self.conn_id = 0  # bumped at every successful CONNECT: tells retransmits apart
        self.session_present = False
        self.connect_sent = False
        self.pid = 0
        self.unacked = {}  # pid -> True until PUBACK
        self.ack_evt = asyncio.Event()
        self.last_tx = time.ticks_ms()
        self.last_rx = time.ticks_ms()
        self.oversize = 0
        self.rx_timeout = keepalive * 1500

    def next_pid(self):
        p = self.pid % 65535 + 1
        self.pid = p
        return p

    async def open(self, will_topic, will_payload):
        """TCP (+TLS) connect and MQTT CONNECT with the will; raises OSError on any failure."""
        self.close()
        self.connect_sent = False
        ctx = None
        if self.tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if self.ca:
                ctx.load_verify_locations(cadata=_ca_der(self.ca))
                ctx.verify_mode = ssl.CERT_REQUIRED  # and the name is checked against host
            else:
                ctx.verify_mode = ssl.CERT_NONE
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=ctx)
        try:
            self.writer.s.setsockopt(6, 1, 1)  # type: ignore[attr-defined]  # TCP_NODELAY (PLATFORM-NOTES: Nagle + delayed ACK)
        except (AttributeError, OSError):
            pass  # a TLS socket does not expose setsockopt on this port
        self.parser.reset()
        self.unacked = {}  # the ring drain re-sends its own in-flight payload with DUP
        n = mq.connect(
            self.tx,
            self.client_id,
            self.keepalive,
            False,
            self.user,
            self.password,
            (will_topic, will_payload),
            1,
            False,
        )
        await self._send(self.tx, n)
        self.connect_sent = True  # from here the broker may have registered the will
        pkt = await wait_for_ms(self._packet(), _CONNACK_TIMEOUT_MS)
        first, start, length = pkt
        b = self.parser.buf
        if first != mq.CONNACK or length != 2:
            raise OSError("expected CONNACK")
        rc = b[start + 1]
        self.session_present = bool(b[start] & 1)
        self.parser.pop()
        if rc:
            raise OSError("CONNACK refused, code %d" % rc)
        self.up = True
        self.conn_id += 1
        self.last_rx = time.ticks_ms()
        return self.session_present

    async def _send(self, buf, n, payload=None, plen=0):
        w = self.writer
        if w is None:
            raise OSError("not connected")
        w.write(memoryview(buf)[:n])
        if payload is not None:
            w.write(payload[:plen])
        await w.drain()
        self.last_tx = time.ticks_ms()

    async def _packet(self):
        p = self.parser
        r = self.reader
        if r is None:
            raise OSError("not connected")
        while True:
            pkt = p.next()
            if pkt is not None:
                return pkt
            # No byte for 1.5 keepalives means the broker is gone (keepalive pings get answers).
            n = await wait_for_ms(r.readinto(p.space()), self.rx_timeout)
            if not n:
                raise OSError("connection closed by broker")  # also: r is None (closed)
            p.added(n)

    async def subscribe(self, topics):
        n = mq.subscribe(self.tx, self.next_pid(), topics, 1)
        await self._send(self.tx, n)

    async def publish(self, topic, payload, plen, qos=1, pid=0, dup=False):
        """Send one PUBLISH; with qos 1 the pid is tracked until its PUBACK (see wait_ack)."""
        if not self.up:
            raise OSError("link down")
        if qos:
            self.unacked[pid] = True
        n = mq.publish_head(self.tx, topic, plen, qos, pid, dup)
        await self._send(self.tx, n, payload, plen)

    async def wait_ack(self, pid):
        """True once pid is acked; False if the link dropped first (resend after reconnect)."""
        while pid in self.unacked:
            if not self.up:
                return False
            await self.ack_evt.wait()
        return True

    def _wake(self):
        ev = self.ack_evt
        self.ack_evt = asyncio.Event()
        ev.set()

    async def run(self):
        """Read and dispatch until the connection fails; keepalive runs alongside. Returns only
        by raising OSError (or MqttError)."""
        pinger = asyncio.create_task(self._keepalive())
        try:
            p = self.parser
            while True:
                first, start, length = await self._packet()
                t = first & 0xF0
                if t == mq.PUBACK:
                    pid = mq.u16(p.buf, start)
                    if self.unacked.pop(pid, None):
                        self._wake()
                elif t == mq.PUBLISH:
                    ts, tl, pid, ps, pl = mq.parse_publish(first, p.buf, start, length)
                    self.on_publish(p.mv[ts : ts + tl], p.mv[ps : ps + pl])
                    if pid:
                        await self._send(self.small, mq.puback(self.small, pid))
                elif t != mq.SUBACK and t != mq.PINGRESP:
                    raise mq.MqttError("unexpected packet 0x%02x" % first)
                p.pop()
                self.last_rx = time.ticks_ms()
                self.oversize = p.oversize
        finally:
            pinger.cancel()
            self.close()

    async def _keepalive(self):
        ka = self.keepalive * 1000
        while self.up:
            await sleep_ms(ka // 4)
            if time.ticks_diff(time.ticks_ms(), self.last_tx) >= ka // 2:
                try:
                    await self._send(mq.PINGREQ, 2)
                except OSError:
                    self.close()
                    return

    async def disconnect(self):
        try:
            await self._send(mq.DISCONNECT, 2)
        except OSError:
            pass
        self.close()

    def close(self):
        was = self.up
        self.up = False
        w = self.writer
        self.writer = None
        if w is not None:
            try:
                w.close()
            except OSError:
                pass
        if was:
            self._wake()
