"""The MQTT link: one connection to the broker over a non-blocking socket on MicroPython's asyncio
(TLS through `ssl` when configured), driven by the sans-I/O codec. It raises OSError on any
failure and never retries: the connectivity loop in agent.py owns reconnect and backoff, so
application tasks never see socket errors. Incoming PUBLISH packets go to
the bounded queue `rx` as (topic, payload) copies (the agent polls it); a full queue drops and
counts in `rx_dropped`.

The socket is driven directly rather than through asyncio.open_connection/Stream, wait_for and
Event: those modules cost ~3.8 KiB of a 64 KiB heap and a task per read. One reader task parks
on the event loop's poller (as Stream.readinto does) and is cancelled when the link closes;
writes are tried at once and retried every few ms when the socket is full (rare: a packet fits
the socket's buffer); run() watches keepalive and a silent broker."""

import asyncio
import time

import mqtt_codec as mq
from micropython import const

_RX_QUEUE = const(4)  # downlink messages waiting for the agent; more are dropped and counted
# MicroPython's asyncio extras (not in the CPython-shaped stubs), named once here.
sleep_ms = asyncio.sleep_ms  # type: ignore[attr-defined]
core = asyncio.core  # type: ignore[attr-defined]


class Link:
    def __init__(self, broker, client_id, keepalive):
        # host, port, tls, ca, username, password, wait_ms (startup.validate): wait_ms bounds the
        # wait for CONNACK and a write (the TLS handshake too) that cannot progress
        self.broker = broker
        self.client_id = client_id.encode()
        self.keepalive = keepalive
        self.rx = []  # incoming PUBLISH (topic, payload), at most _RX_QUEUE
        self.rx_dropped = 0
        self.tx = bytearray(320)  # CONNECT (with the will), SUBSCRIBE, PUBLISH headers
        self.parser = mq.Parser(704)  # a 512-byte command + topic; bigger packets are skipped
        self.sock = None
        self.ctx = None  # the TLS context, kept across connections
        self.task = None  # the reader
        self.err = None  # why the reader stopped
        self.busy = False  # a packet is half written: others queue behind it
        self.up = False
        self.conn_id = 0  # bumped at every successful CONNECT: tells retransmits apart
        self.connect_sent = False
        self.pid = 0
        self.unacked = {}  # pid -> True until PUBACK
        self.acks = core.TaskQueue()  # tasks in wait_ack, woken by a PUBACK or the link closing
        self.last_tx = self.last_rx = time.ticks_ms()

    def next_pid(self):
        p = self.pid % 65535 + 1
        self.pid = p
        return p

    async def open(self, will_topic, will_payload, topics):
        """TCP (+TLS) connect, MQTT CONNECT with the will, SUBSCRIBE topics; raises OSError (or
        the TLS layer's ValueError) on any failure. The will is copied into the CONNECT packet
        before the first await: the caller may lend a buffer it shares with other tasks."""
        import socket

        self.close()
        self.connect_sent = False
        self.err = None
        b = self.broker
        self.parser.reset()
        self.unacked = {}  # the ring drain re-sends its own in-flight payload with DUP
        pw = b["password"]
        n = mq.connect(
            self.tx,
            self.client_id,
            self.keepalive,
            False,
            b["username"].encode(),
            pw.encode() if pw is not None else None,
            (will_topic, will_payload),
            1,
            True,  # retained: the device's status for anyone who subscribes while it is gone
        )
        # Every address the name has, in order, each with its own family: "localhost" is ::1
        # first on Debian while a broker may listen on 127.0.0.1 only (and the reverse on a
        # dual-stack network). Nothing but open() writes tx until the link is up, so the
        # CONNECT built above can go to the next address as it is.
        err = OSError("no address")
        for ai in socket.getaddrinfo(b["host"], b["port"], 0, socket.SOCK_STREAM):
            try:
                self._dial(ai)
                await self._send(self.tx, n)  # waits out the TCP (and TLS) handshake
                break
            except OSError as e:  # refused, unreachable, or no handshake within wait_ms
                err = e
                self.close()
        else:
            raise err
        self.connect_sent = True  # from here the broker may have registered the will
        self.task = asyncio.create_task(self._read(self.sock))
        t0 = time.ticks_ms()
        while not self.up:
            if self.sock is None:
                raise self.err or OSError("closed")
            if time.ticks_diff(time.ticks_ms(), t0) > b["wait_ms"]:
                raise OSError("timeout")
            await sleep_ms(5)
        n = mq.subscribe(self.tx, self.next_pid(), topics, 1)
        await self._send(self.tx, n)

    def _dial(self, ai):
        """A non-blocking socket for one getaddrinfo entry, connecting (TLS-wrapped when
        configured); the connect's outcome shows at the first write."""
        import socket
        from errno import EINPROGRESS

        b = self.broker
        s = self.sock = socket.socket(ai[0], ai[1], ai[2])
        s.setblocking(False)
        try:
            s.setsockopt(6, 1, 1)  # TCP_NODELAY (PLATFORM-NOTES: Nagle + delayed ACK)
        except (AttributeError, OSError):
            pass
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:
                raise
        if b["tls"]:
            ctx = self.ctx
            if ctx is None:
                # One context for every connection, made at the first: it is a single object of
                # about 3 KiB, which a heap fragmented by hours of reports may no longer fit.
                import ssl

                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                if b["ca"]:
                    with open(b["ca"], "rb") as f:  # DER: startup.py converted a PEM bundle
                        ctx.load_verify_locations(cadata=f.read())
                    ctx.verify_mode = ssl.CERT_REQUIRED  # and the name is checked against host
                else:
                    ctx.verify_mode = ssl.CERT_NONE
                self.ctx = ctx
            s = self.sock = ctx.wrap_socket(
                s, server_hostname=b["host"], do_handshake_on_connect=False
            )
            s.setblocking(False)

    async def _send(self, buf, n, payload=None, plen=0):
        """Write buf[:n] then payload[:plen], whole and not interleaved with another task's
        packet. What cannot go out at once is copied before waiting: callers share one buffer
        and refill it as soon as this yields."""
        left = None
        for mv in (memoryview(buf)[:n], payload[:plen] if payload is not None else b""):
            if left is None and not self.busy:
                s = self.sock
                if s is None:
                    raise OSError("link down")
                k = s.write(mv) or 0
                if k == len(mv):
                    continue
                mv = mv[k:]
            left = bytes(mv) if left is None else left + mv
        if left is not None:
            while self.busy:
                await sleep_ms(2)
            self.busy = True
            t0 = time.ticks_ms()
            try:
                while left:
                    s = self.sock
                    if s is None:
                        raise OSError("link down")
                    k = s.write(left)
                    if k:
                        left = left[k:]
                        t0 = time.ticks_ms()
                    elif time.ticks_diff(time.ticks_ms(), t0) > self.broker["wait_ms"]:
                        self.close()  # a stalled peer or handshake, a packet half sent
                        raise OSError("timeout")
                    else:
                        await sleep_ms(5)
            finally:
                self.busy = False
        self.last_tx = time.ticks_ms()

    async def _read(self, s):
        """The reader task: frame and dispatch packets from socket s until it fails; then close."""
        p = self.parser
        try:
            while True:
                pkt = p.next()
                if pkt is None:
                    yield core._io_queue.queue_read(s)  # parked on the poller, as Stream does
                    k = s.readinto(p.space())
                    if k is None:
                        continue  # no whole TLS record yet
                    if not k:
                        raise OSError("EOF")
                    p.added(k)
                    continue
                first, start, length = pkt
                t = first & 0xF0
                if t == mq.PUBACK:
                    if self.unacked.pop(mq.u16(p.buf, start), None):
                        self._wake()
                elif t == mq.PUBLISH:
                    ts, tl, pid, ps, pl = mq.parse_publish(first, p.buf, start, length)
                    if len(self.rx) < _RX_QUEUE:
                        self.rx.append((bytes(p.mv[ts : ts + tl]), bytes(p.mv[ps : ps + pl])))
                    else:
                        self.rx_dropped += 1
                    if pid:
                        b = bytearray(4)
                        await self._send(b, mq.puback(b, pid))
                elif t == mq.CONNACK and length == 2 and not self.up:
                    if p.buf[start + 1]:
                        raise OSError("CONNACK", p.buf[start + 1])
                    self.up = True
                    self.conn_id += 1
                elif t != mq.SUBACK and t != mq.PINGRESP:
                    raise mq.MqttError("packet", first)
                p.pop()
                self.last_rx = time.ticks_ms()
        except Exception as e:  # any failure ends this connection
            self.err = e
            self.task = None  # a task cannot cancel itself
            self.close()

    async def run(self):
        """Keepalive while the link is up: PINGREQ after half a keepalive without sending, and
        the link is dead after 1.5 keepalives without a byte from the broker (pings get
        answers). Returns only by raising why the link went down."""
        ka = self.keepalive * 1000
        self.last_rx = time.ticks_ms()
        while self.up:
            await sleep_ms(100)
            now = time.ticks_ms()
            if time.ticks_diff(now, self.last_rx) > ka * 3 // 2:
                self.err = OSError("silent")
                break
            if time.ticks_diff(now, self.last_tx) >= ka // 2:
                await self._send(mq.PINGREQ, 2)
        e = self.err or OSError("link down")
        self.close()
        raise e

    async def publish(self, topic, payload, plen, qos=1, pid=0, dup=False, retain=False):
        """Send one PUBLISH; with qos 1 the pid is tracked until its PUBACK (see wait_ack)."""
        if not self.up:
            raise OSError("link down")
        if qos:
            self.unacked[pid] = True
        await self._send(
            self.tx, mq.publish_head(self.tx, topic, plen, qos, pid, dup, retain), payload, plen
        )

    async def wait_ack(self, pid):
        """True once pid is acked; False if the link dropped first (resend after reconnect)."""
        while pid in self.unacked:
            if not self.up:
                return False
            await self._park()
        return True

    async def _park(self):
        """Sleep in `acks` until _wake(), as a task waits in an asyncio.Event (which would cost
        a module and an object per wake; the replay rate needs a wake, not a poll)."""
        t = core.cur_task
        self.acks.push(t)
        t.data = self.acks  # so cancelling the task takes it off this queue
        yield

    def _wake(self):
        q = self.acks
        while q.peek():
            core._task_queue.push(q.pop())

    def close(self):
        self.up = False
        t = self.task
        self.task = None
        if t is not None and t is not core.cur_task:
            t.cancel()  # takes the reader off the poller before its socket goes
        s = self.sock
        self.sock = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
        self._wake()
