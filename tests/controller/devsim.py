"""A CPython stand-in for a device: real signed protocol messages published with paho, the
DEATH-reserved-at-connect rule, and an optional command responder that ACKs what it gets."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import messages as M
from protocol import topics
from protocol.envelope import Message, decode, encode
from protocol.sign import Signer


class SimDevice:
    def __init__(
        self, device: str, key: bytes, port: int, site: str = "porto", epoch: int = 1
    ) -> None:
        self.device = device
        self.site = site
        self.signer = Signer(key)
        self.port = port
        self.epoch = epoch
        self.seq = 0
        self.client: mqtt.Client | None = None
        self.commands: list[Message] = []
        self._connected = threading.Event()

    def topic(self, channel: str) -> str:
        return topics.topic(self.site, self.device, channel)

    def build(
        self, mtype: int, body: Any, ts: int | None = -1, seq: int | None = None
    ) -> tuple[str, bytes]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        ch = M.CHANNEL[mtype]
        t = int(time.time()) if ts == -1 else ts
        return self.topic(ch), encode(
            self.signer, self.topic(ch), Message(mtype, self.epoch, seq, body, ts=t, up=5)
        )

    def connect(self, respond: bool = False) -> None:
        """Reserve seq n for the DEATH will, publish BIRTH with n+1."""
        # No reconnecting by itself (a reconnect would not resend BIRTH); drop() relies on it.
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device, reconnect_on_failure=False
        )
        will_topic, will = self.build(M.DEATH, {M.D_REASON: M.DEATH_LOST})
        c.will_set(will_topic, will, qos=1)
        c.on_connect = lambda *a: self._connected.set()
        if respond:
            c.on_message = self._on_command
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        assert self._connected.wait(10), "sim device could not connect"
        if respond:
            c.subscribe(self.topic(topics.COMMAND), qos=1)
        self.client = c
        birth = {M.B_FIRMWARE: "sim-1.0", M.B_BOARD: "sim", M.B_BOOT_REASON: 0, M.B_KIND: "ap"}
        self.publish(*self.build(M.BIRTH, birth))

    def _on_command(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        cmd = decode(bytes(msg.payload), msg.topic, self.signer)
        self.commands.append(cmd)
        body = {
            M.A_CMD_EPOCH: cmd.epoch,
            M.A_CMD_SEQ: cmd.seq,
            M.A_RESULT: M.R_OK,
            M.A_DATA: {0: 1},
        }
        assert self.client is not None  # no wait_for_publish on paho's own thread
        self.client.publish(*self.build(M.ACK, body), qos=1)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        assert self.client is not None
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def report(self, values: dict[int, int], ts: int | None = -1) -> tuple[int, int]:
        self.publish(*self.build(M.REPORT, values, ts=ts))
        return self.epoch, self.seq

    def drop(self) -> None:
        """Vanish without DISCONNECT: the broker publishes the DEATH will. Shutting the socket
        down ends paho's network thread at once (it reads end-of-stream and does not reconnect);
        stopping the loop first would wait up to 1 s for paho's select() to time out."""
        assert self.client is not None
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()
        self.client = None

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def publisher(port: int, client_id: str = "") -> mqtt.Client:
    """A bare client for raw (possibly malformed) publishes."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def wait_for(pred: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
