"""One device's MQTT 3.1.1 connection on asyncio: an `asyncio.Protocol` driving the firmware's own
sans-I/O packet codec (firmware/mqtt_codec.py via sim/firmware.py), so the bytes a simulated
device puts on the wire are built by the same code as a real one's. A Protocol rather than
asyncio streams: no reader task per connection (10,000 of them), the loop calls data_received.

It frames packets and hands them to its owner; it never retries (the owner's connectivity logic
does, as in firmware/link.py). TCP_NODELAY is set on every socket (PLATFORM-NOTES: Nagle plus
delayed ACK turn a command round trip into ~90 ms)."""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from sim.firmware import mqtt_codec as mq

PARSER_BYTES = 4096  # an OTA message (2,304 B) plus its topic fits; a device uses 704


class LinkOwner(Protocol):
    def on_connack(self, rc: int) -> None: ...
    def on_puback(self, pid: int) -> None: ...
    def on_message(self, topic: bytes, payload: bytes) -> None: ...
    def on_lost(self, link: Link) -> None: ...


class Link(asyncio.Protocol):
    """Built per connection attempt with the CONNECT packet to send; `alive` until lost."""

    __slots__ = ("alive", "connect_packet", "owner", "parser", "rx_at", "transport", "tx", "tx_at")

    def __init__(self, owner: LinkOwner, connect_packet: bytes) -> None:
        self.owner = owner
        self.connect_packet = connect_packet
        self.transport: asyncio.Transport | None = None
        self.parser = mq.Parser(PARSER_BYTES)
        self.tx = bytearray(512)
        self.alive = False
        self.tx_at = 0.0
        self.rx_at = 0.0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.alive = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._write(self.connect_packet)

    def data_received(self, data: bytes) -> None:
        self.rx_at = asyncio.get_running_loop().time()
        p = self.parser
        mv = memoryview(data)
        try:
            while mv:
                space = p.space()
                k = min(len(space), len(mv))
                space[:k] = mv[:k]
                p.added(k)
                mv = mv[k:]
                while (pkt := p.next()) is not None:
                    self._packet(*pkt)
                    p.pop()
        except (ValueError, IndexError):  # mq.MqttError: the broker broke framing
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.alive = False
            self.transport = None
            self.owner.on_lost(self)

    def _packet(self, first: int, start: int, length: int) -> None:
        b = self.parser.buf
        kind = first & 0xF0
        if kind == mq.PUBACK:
            self.owner.on_puback(mq.u16(b, start))
        elif kind == mq.PUBLISH:
            ts, tl, pid, ps, pl = mq.parse_publish(first, b, start, length)
            topic, payload = bytes(b[ts : ts + tl]), bytes(b[ps : ps + pl])
            if pid:
                n = mq.puback(self.tx, pid)
                self._write(bytes(self.tx[:n]))
            self.owner.on_message(topic, payload)
        elif kind == mq.CONNACK:
            self.owner.on_connack(b[start + 1] if length >= 2 else 255)
        # SUBACK, PINGRESP: nothing to do

    # sending
    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and self.alive:
            t.write(data)
            self.tx_at = asyncio.get_running_loop().time()

    def publish(
        self,
        topic: bytes,
        payload: bytes,
        qos: int,
        pid: int,
        dup: bool = False,
        retain: bool = False,
    ) -> None:
        n = mq.publish_head(self.tx, topic, len(payload), qos, pid, dup, retain)
        self._write(bytes(self.tx[:n]) + payload)

    def subscribe(self, pid: int, topics: tuple[bytes, ...]) -> None:
        n = mq.subscribe(self.tx, pid, topics, 1)
        self._write(bytes(self.tx[:n]))

    def ping(self) -> None:
        self._write(mq.PINGREQ)

    def disconnect(self) -> None:
        """A clean DISCONNECT (the broker drops the will), then close."""
        self._write(mq.DISCONNECT)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Vanish without DISCONNECT (power loss, flapping radio): the broker fires the will."""
        if self.transport is not None:
            self.transport.abort()


def connect_packet(
    client_id: str,
    keepalive: int,
    user: str | None,
    password: str | None,
    will: tuple[bytes, bytes],
) -> bytes:
    """CONNECT with a persistent session and a retained QoS 1 will, as firmware/link.py sends."""
    buf = bytearray(640)
    n = mq.connect(
        buf,
        client_id.encode(),
        keepalive,
        False,
        user.encode() if user is not None else None,
        password.encode() if password is not None else None,
        will,
        1,
        True,
    )
    return bytes(buf[:n])
