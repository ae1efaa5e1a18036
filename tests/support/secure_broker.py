"""A private Mosquitto whose whole config comes from controller.security.broker_config (so the
generator itself is what the security tests exercise), and a small blocking MQTT peer."""

from __future__ import annotations

import getpass
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from controller.security.broker_config import BrokerSettings, render
from tests.support.broker import Broker


@dataclass
class GeneratedBroker(Broker):
    """`settings` port/bind/data_dir/log_dest are overridden with this broker's own."""

    settings: BrokerSettings | None = None
    plain: bool = True

    def write_config(self) -> Path:
        assert self.settings is not None
        s = replace(
            self.settings,
            port=self.port if self.plain else None,
            bind="127.0.0.1",
            data_dir=self.workdir,
            log_dest="stderr",
            # as root, keep root: Mosquitto would otherwise drop to "mosquitto" and be unable to
            # read the owner-only dynsec file under the test's private tmp dir
            user=getpass.getuser() if os.geteuid() == 0 else None,
        )
        self.conf_path.write_text(render(s))
        return self.conf_path

    def listening_ports(self) -> list[int]:
        tls = self.settings.tls.port if self.settings and self.settings.tls else None
        return [p for p in (self.port if self.plain else None, tls) if p is not None]

    def start(self) -> GeneratedBroker:
        super().start()
        if self.settings is not None and self.settings.tls is not None:
            from tests.support.broker import wait_port

            wait_port(self.settings.tls.port)
        return self


@dataclass
class Peer:
    """One paho client, blocking helpers, messages in a queue. v3.1.1 by default like devices."""

    port: int
    username: str | None = None
    password: str | None = None
    protocol: int = mqtt.MQTTv311
    tls: ssl.SSLContext | None = None
    client_id: str = ""
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    connack: int | None = None
    disconnected_at: float | None = None
    suback: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ev = threading.Event()
        self._sub_ev = threading.Event()
        # Never reconnects by itself during a test: once refused or dropped, paho's network
        # thread ends, instead of sleeping out a reconnect delay in 1 s steps that close() (and
        # so every test's teardown) would wait for.
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id or f"peer-{id(self):x}",
            protocol=self.protocol,
            reconnect_on_failure=False,
        )
        if self.username is not None:
            self.c.username_pw_set(self.username, self.password)
        if self.tls is not None:
            self.c.tls_set_context(self.tls)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.c.on_subscribe = self._on_subscribe
        self.c.on_socket_open = lambda c, u, s: s.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack = int(rc.value)
        self._ev.set()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnected_at = time.monotonic()
        self._ev.set()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        self.suback = [int(r.value) for r in rcs]
        self._sub_ev.set()

    def connect(self, timeout: float = 5.0) -> int:
        """Returns the CONNACK reason code (0 accepted); -1 when the link dropped first."""
        self._ev.clear()
        self.connack = None
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self._ev.wait(timeout), "no CONNACK"
        return self.connack if self.connack is not None else -1

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
        self._sub_ev.clear()
        self.c.subscribe(topic, qos)
        assert self._sub_ev.wait(timeout), "no SUBACK"
        return self.suback

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.c.publish(topic, payload, qos).wait_for_publish(5)

    def take_until(self, marker: bytes, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """All messages up to and including the one whose payload is `marker`."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            got.append(item)
            if item[1] == marker:
                return got
        raise AssertionError(f"marker {marker!r} never arrived; got {got}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def start_dynsec_site(
    tmp_path: Path, admin: tuple[str, str], controller: tuple[str, str]
) -> tuple[GeneratedBroker, Any, Path]:
    """A broker on the dynamic-security plugin with an admin and a controller account, and the
    broker directory `idufleet broker init` would have written (credentials.json). Returns the
    started broker, a connected DynsecClient (close it) and that directory."""
    import json

    from controller.security import dynsec
    from controller.security.broker_config import CREDENTIALS

    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", *admin)
    b = GeneratedBroker(tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn))
    b.start()
    client = dynsec.DynsecClient("127.0.0.1", b.port, *admin).connect()
    client.create_controller(*controller)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    (broker_dir / CREDENTIALS).write_text(
        json.dumps(
            {
                "admin": {"username": admin[0], "password": admin[1]},
                "controller": {"username": controller[0], "password": controller[1]},
                "port": b.port,
            }
        )
    )
    return b, client, broker_dir
