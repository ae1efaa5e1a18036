"""paho-mqtt 2.x on the asyncio event loop, after paho's own loop_asyncio example and aiomqtt:
paho's socket callbacks register the socket with the loop, so every paho callback runs on the
loop thread and nothing needs locks. MQTT v5, persistent session (clean_start=False plus a
session expiry), QoS 1 subscriptions, optional $share group, TCP_NODELAY on the socket, and
manual acknowledgements so a message is PUBACKed only once the caller has stored it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller.config import MqttConfig
from controller.errors import ConfigError, TransportError

log = logging.getLogger("idufleet.mqtt")

# (topic, payload, ack handle) -> None. The handle is passed back to ack() once stored.
OnMessage = Callable[[str, bytes, "AckHandle"], None]
# Unacknowledged QoS 1 messages the broker may have in flight to us: the MQTT v5 maximum, so
# receiving goes on while a batch commits (4096 stalled the pipeline once batches neared it).
RECEIVE_MAXIMUM = 65535
_PUBACK = struct.Struct("!BBH")  # PUBACK fixed header, remaining length 2, packet id


class AckHandle:
    """Identifies one received QoS 1 message on one connection; acking a handle from a previous
    connection is a no-op (the broker redelivers those, and the store drops the duplicate)."""

    __slots__ = ("generation", "mid", "qos")

    def __init__(self, generation: int, mid: int, qos: int) -> None:
        self.generation = generation
        self.mid = mid
        self.qos = qos


class _BufferedClient(mqtt.Client):
    """paho reads every packet with several tiny recv() calls (PLATFORM-NOTES: that, not our
    pipeline, bounds a Python subscriber). This reads the socket in 64 KiB chunks and serves
    paho's small reads from memory. Relies on paho 2.2's private _sock_recv (pinned in
    pyproject); _readable() drains until paho sees no more data, so nothing waits in the buffer
    without the socket being readable."""

    _rbuf = b""
    _rpos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        if pos >= len(self._rbuf):
            data = super()._sock_recv(65536)  # raises BlockingIOError when nothing is there
            if not data:
                return b""
            self._rbuf, pos = data, 0
        out = self._rbuf[pos : pos + bufsize]
        self._rpos = pos + len(out)
        return out

    def reset_buffer(self) -> None:
        self._rbuf, self._rpos = b"", 0

    # (topic, payload, mid) for QoS 1 PUBLISHes; None: paho's own path for everything
    fast_publish: Callable[[str, bytes, int], None] | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        """QoS 1 PUBLISH straight to fast_publish: paho's own path builds a Properties object
        (MQTT v5), an MQTTMessage, a debug log record and a topic-filter match per message,
        about a fifth of the loop thread's time in the benchmark. We use no PUBLISH property
        (no topic aliases: CONNECT does not offer any), so the property block is skipped. Any
        other QoS or a malformed packet goes through paho (private hook, paho pinned)."""
        cb = self.fast_publish
        header = self._in_packet["command"]
        if cb is None or (header & 0x06) != 0x02:
            return super()._handle_publish()
        pkt = self._in_packet["packet"]
        try:
            slen = (pkt[0] << 8) | pkt[1]
            end = 2 + slen
            topic = pkt[2:end].decode()
            mid = (pkt[end] << 8) | pkt[end + 1]
            i = end + 2
            plen = shift = 0
            while True:  # property length, a variable byte integer (at most 4 bytes)
                b = pkt[i]
                i += 1
                plen |= (b & 0x7F) << shift
                if b < 0x80 or shift >= 21:
                    break
                shift += 7
        except (IndexError, UnicodeDecodeError):
            return super()._handle_publish()
        if i + plen > len(pkt):
            return super()._handle_publish()
        cb(topic, bytes(pkt[i + plen :]), mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        filters: list[str],
        on_message: OnMessage,
        manual_ack: bool = True,
        sys_topics: list[str] | None = None,
        on_sys: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """`filters` are subscribed at QoS 1 (in the $share group when configured) and go to
        on_message; `sys_topics` (broker $SYS statistics) at QoS 0, never shared (each
        controller watches the broker itself), and go to on_sys: off the QoS 1 fast path."""
        self.cfg = cfg
        self.manual_ack = manual_ack
        self.filters = [
            f"$share/{cfg.shared_group}/{f}" if cfg.shared_group else f for f in filters
        ]
        self.sys_topics = list(sys_topics or [])
        self.on_sys = on_sys
        self.on_message_cb = on_message
        self.connected = asyncio.Event()
        # The reason of the broker's last CONNACK refusal (bad password, not authorised), None
        # once a CONNECT is accepted: /health answers 503 while it is set.
        self.refused: str | None = None
        self.generation = 0
        self.reading = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._misc: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._sock: Any = None
        self._stopping = False
        c = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:  # verifies the chain and the host name (PROTOCOL_TLS_CLIENT defaults)
            try:
                c.tls_set(ca_certs=cfg.ca or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except OSError as e:  # missing file, or no certificate in it (ssl.SSLError)
                raise ConfigError(
                    f"mqtt.ca {cfg.ca or '(system store)'}: cannot load CA certificates ({e}); "
                    "point mqtt.ca at the project CA's ca.crt (PEM, from `idufleet ca init`)"
                ) from None
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        if manual_ack:
            c.fast_publish = self._on_publish_qos1
        self.client: _BufferedClient = c

    # --- paho callbacks (all on the loop thread) --------------------------------------------
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # TLS-wrapped or unix: nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.client.reset_buffer()
        assert self._loop is not None
        if self.reading:
            self._loop.add_reader(sock, self._readable)
        self._misc = self._loop.create_task(self._misc_loop())

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._sock = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _readable(self) -> None:
        # paho's loop_read() handles one packet per call; drain everything that is there.
        c = self.client
        for _ in range(1024):
            if c._sock is None or not self.reading:
                return
            rc = c._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                c._loop_rc_handle(rc)
                return
        if len(c._rbuf) > c._rpos:  # more in our buffer: continue on the next loop iteration
            assert self._loop is not None
            self._loop.call_soon(self._readable)

    async def _misc_loop(self) -> None:
        while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1.0)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            self.refused = str(rc)
            log.error(
                "broker refused connection: check mqtt.username / IDUFLEET_MQTT_PASSWORD against"
                " the broker's controller account (`idufleet doctor` checks the login)",
                extra={"reason": str(rc), "username": self.cfg.username},
            )
            return
        self.refused = None
        self.generation += 1
        log.info(
            "mqtt connected",
            extra={"session_present": bool(flags.session_present), "filters": self.filters},
        )
        # Subscribing again is harmless with a present session and needed without one.
        client.subscribe([(f, 1) for f in self.filters] + [(t, 0) for t in self.sys_topics])
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self.connected.clear()
        if not self._stopping:
            log.warning("mqtt disconnected", extra={"reason": str(rc)})
        self._lost.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_sys is not None and msg.topic.startswith("$SYS/"):
            try:
                self.on_sys(msg.topic, bytes(msg.payload))
            except Exception:  # a statistic must never take the link down
                log.exception("broker statistic handler failed", extra={"topic": msg.topic})
            return
        handle = AckHandle(self.generation, msg.mid, msg.qos)
        try:
            self.on_message_cb(msg.topic, bytes(msg.payload), handle)
        except Exception:  # the consumer must never take the link down
            log.exception("message handler failed", extra={"topic": msg.topic})
            self.ack(handle)

    def _on_publish_qos1(self, topic: str, payload: bytes, mid: int) -> None:
        handle = AckHandle(self.generation, mid, 1)
        try:
            self.on_message_cb(topic, payload, handle)
        except Exception:  # the consumer must never take the link down
            log.exception("message handler failed", extra={"topic": topic})
            self.ack(handle)

    # --- API --------------------------------------------------------------------------------
    def ack(self, handle: AckHandle) -> None:
        if (
            self.manual_ack
            and handle.qos
            and handle.generation == self.generation
            and self.connected.is_set()
        ):
            self.client.ack(handle.mid, handle.qos)

    def ack_many(self, handles: list[AckHandle]) -> None:
        """Acknowledge many messages with one write: the PUBACKs (4 bytes each: MQTT v5 allows
        omitting the reason code when it is Success) are queued to paho as one buffer, so a
        stored batch costs one send() instead of one per message. paho 2.2 treats a queued
        PUBACK buffer as opaque bytes (private _packet_queue, paho pinned)."""
        if not self.manual_ack or not self.connected.is_set():
            return
        gen = self.generation
        mids = [h.mid for h in handles if h.qos == 1 and h.generation == gen]
        for h in handles:
            if h.qos == 2 and h.generation == gen:  # never subscribed at QoS 2; kept correct
                self.client.ack(h.mid, h.qos)
        pack = _PUBACK.pack
        for i in range(0, len(mids), 16384):  # 64 KiB writes
            chunk = mids[i : i + 16384]
            data = b"".join([pack(PUBACK, 2, m) for m in chunk])
            self.client._packet_queue(PUBACK, data, chunk[0], 1)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if not self.connected.is_set():
            raise TransportError("not connected to the broker; retry when it is back")
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")

    def pause(self) -> None:
        """Stop reading from the socket: no new messages are taken (backpressure while the
        store catches up, and on shutdown). Unread data waits in the kernel and the broker."""
        if self.reading and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
        self.reading = False

    def resume(self) -> None:
        if self._stopping or self.reading:
            return
        self.reading = True
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock, self._readable)
            self._loop.call_soon(self._readable)  # bytes may already sit in our buffer

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        cfg = self.cfg
        props.SessionExpiryInterval = (
            cfg.shared_session_expiry if cfg.shared_group else cfg.session_expiry
        )
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive,
            clean_start=False,
            properties=props,
        )

    async def run(self) -> None:
        """Connect and stay connected (backoff 0.5 s .. 30 s) until cancelled."""
        self._loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            self._lost.clear()
            try:
                self._connect()
            except ssl.SSLCertVerificationError as e:  # retried: the broker's cert may be fixed
                log.error(
                    "broker certificate not trusted: check that mqtt.ca is the CA that signed the"
                    " broker's certificate and that mqtt.host is a name in it",
                    extra={"host": self.cfg.host, "port": self.cfg.port, "error": str(e)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            except OSError as e:
                log.warning(
                    "mqtt connect failed",
                    extra={"host": self.cfg.host, "port": self.cfg.port, "error": str(e)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            try:
                await asyncio.wait_for(self.connected.wait(), timeout=10)
                delay = 0.5
            except TimeoutError:
                log.warning("no CONNACK within 10 s; reconnecting")
                self.client.disconnect()
            await self._lost.wait()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        """Clean DISCONNECT; the broker keeps our session (and queues QoS 1) for session_expiry."""
        self.pause()
        self._stopping = True
        if self.connected.is_set():
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=5)
