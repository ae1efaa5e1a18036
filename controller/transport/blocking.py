"""The blocking paho shell shared by the tools that act synchronously beside the controller
(the dynamic-security admin client, the claim service): paho on its own network thread,
TCP_NODELAY on the socket, one subscription made and confirmed before connect() returns,
messages handed to a callback on paho's thread. Knows nothing of what the payloads mean.
connect() raises TransportError whose code says which step failed."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from controller.errors import TransportError

# TransportError codes from connect().
UNREACHABLE = "unreachable"  # TCP/TLS connect failed
REFUSED = "refused"  # CONNACK with a failure reason code (BlockingClient.refused holds it)
NO_ANSWER = "no_answer"  # no CONNACK/SUBACK within the timeout
NOT_SUBSCRIBED = "not_subscribed"  # SUBACK refused the filter (no ACL for it)

OnMessage = Callable[[mqtt.Client, str, bytes], None]


class BlockingClient:
    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        subscribe: str,
        on_message: OnMessage,
        *,
        username: str = "",
        password: str = "",
        v5: bool = True,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.filter = subscribe
        self.on_message = on_message
        self.refused: int | None = None  # CONNACK reason code when the broker said no
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            # A refused login must fail now, not wait in paho's 1 s reconnect sleep at close().
            reconnect_on_failure=False,
        )
        if username:
            self._client.username_pw_set(username, password or None)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.on_socket_open = self._on_socket_open
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._cond = threading.Condition()
        self._connack: int | None = None
        self._subscribed: bool | None = None

    # paho callbacks (network thread)
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connack = int(rc.value)
            self._cond.notify_all()
        if int(rc.value) == 0:
            client.subscribe(self.filter, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self._subscribed = all(int(rc.value) < 0x80 for rc in rcs)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.on_message(client, msg.topic, bytes(msg.payload))

    def connect(self) -> BlockingClient:
        """Connect, subscribe, wait for both answers. Raises TransportError (code above)."""
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise TransportError(
                f"cannot reach broker {self.host}:{self.port} ({e}); is it up?", UNREACHABLE
            ) from e
        self._client.loop_start()
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    self._connack is not None
                    and (self._connack != 0 or self._subscribed is not None)
                ),
                self.timeout,
            )
        if not ok:
            self.close()
            raise TransportError(f"broker {self.host}:{self.port} did not answer", NO_ANSWER)
        if self._connack != 0:
            self.refused = self._connack
            self.close()
            raise TransportError(
                f"broker {self.host}:{self.port} refused the login (reason code {self.refused})",
                REFUSED,
            )
        if not self._subscribed:
            self.close()
            raise TransportError(
                f"broker {self.host}:{self.port} refused the subscription to {self.filter}",
                NOT_SUBSCRIBED,
            )
        return self

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self._client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
