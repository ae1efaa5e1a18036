"""Which MQTT client the fleet simulator drives: paho-mqtt per device on the asyncio loop (as
controller/transport/mqtt.py drives its one connection) or the firmware's own sans-I/O codec
(firmware/mqtt_codec.py) under an asyncio.Protocol (sim/link.py). Measured in the same run on the
same private broker, each variant in its own process so memory figures do not mix:

- memory per connection: RSS after N connections are up (CONNACK + SUBACK), minus RSS before;
- CPU per report: process CPU time for N x R QoS 1 publishes of a 100-byte payload (one in flight
  per connection, next one sent on PUBACK), divided by N x R.

    .venv/bin/python benchmarks/sim_mqtt_client.py [--connections 1000] [--reports 20]

Last line: JSON with both variants' kib_per_connection and cpu_us_per_report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAYLOAD = bytes(100)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def run_codec(port: int, n: int, reports: int) -> dict[str, float]:
    from sim.link import Link, connect_packet

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    left = [n * reports]
    connected = [0]

    class Owner:
        def __init__(self, i: int) -> None:
            self.i = i
            self.link: Link | None = None
            self.sent = 0
            self.topic = f"bench/{i}/rep".encode()

        def on_connack(self, rc: int) -> None:
            assert self.link is not None
            self.link.subscribe(1, (f"bench/{self.i}/cmd".encode(),))
            connected[0] += 1
            if connected[0] == n:
                done.set()

        def send(self) -> None:
            assert self.link is not None
            self.sent += 1
            self.link.publish(self.topic, PAYLOAD, 1, 2 + self.sent % 60000)

        def on_puback(self, pid: int) -> None:
            left[0] -= 1
            if self.sent < reports:
                self.send()
            if left[0] == 0:
                done.set()

        def on_message(self, topic: bytes, payload: bytes) -> None:
            pass

        def on_lost(self, link: Link) -> None:
            pass

    owners = [Owner(i) for i in range(n)]
    r0 = rss()
    for o in owners:
        o.link = Link(o, connect_packet(f"c{o.i}", 60, None, None, (b"bench/will", b"x")))
        await loop.create_connection(lambda o=o: o.link, "127.0.0.1", port)  # type: ignore[misc]
    await asyncio.wait_for(done.wait(), 60)
    r1 = rss()
    done.clear()
    c0 = time.process_time()
    for o in owners:
        o.send()
    await asyncio.wait_for(done.wait(), 300)
    cpu = time.process_time() - c0
    return {
        "kib_per_connection": (r1 - r0) / n / 1024,
        "cpu_us_per_report": cpu / (n * reports) * 1e6,
    }


async def run_paho(port: int, n: int, reports: int) -> dict[str, float]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    left = [n * reports]
    connected = [0]
    clients: list[Any] = []

    def make(i: int) -> Any:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"p{i}", clean_session=False)
        c.will_set("bench/will", b"x", qos=1, retain=True)
        sent = [0]
        topic = f"bench/{i}/rep"

        def opened(cl: Any, u: Any, sock: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop.add_reader(sock, cl.loop_read)

        def on_connect(cl: Any, *a: Any) -> None:
            cl.subscribe(f"bench/{i}/cmd", qos=1)
            connected[0] += 1
            if connected[0] == n:
                done.set()

        def send() -> None:
            sent[0] += 1
            c.publish(topic, PAYLOAD, qos=1)

        def on_publish(cl: Any, *a: Any) -> None:
            left[0] -= 1
            if sent[0] < reports:
                send()
            if left[0] == 0:
                done.set()

        c.on_socket_open = opened
        c.on_socket_close = lambda cl, u, s: loop.remove_reader(s)
        c.on_socket_register_write = lambda cl, u, s: loop.add_writer(s, cl.loop_write)
        c.on_socket_unregister_write = lambda cl, u, s: loop.remove_writer(s)
        c.on_connect = on_connect
        c.on_publish = on_publish
        c.send = send  # type: ignore[attr-defined]
        return c

    async def misc() -> None:
        while True:
            await asyncio.sleep(1)
            for c in clients:
                c.loop_misc()

    r0 = rss()
    for i in range(n):
        c = make(i)
        clients.append(c)
        c.connect("127.0.0.1", port, 60)
    task = asyncio.create_task(misc())
    await asyncio.wait_for(done.wait(), 60)
    r1 = rss()
    done.clear()
    c0 = time.process_time()
    for c in clients:
        c.send()
    await asyncio.wait_for(done.wait(), 300)
    cpu = time.process_time() - c0
    task.cancel()
    return {
        "kib_per_connection": (r1 - r0) / n / 1024,
        "cpu_us_per_report": cpu / (n * reports) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--reports", type=int, default=20)
    ap.add_argument("--variant", choices=["codec", "paho"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:  # child: one variant, one JSON line
        fn = run_codec if a.variant == "codec" else run_paho
        print(json.dumps(asyncio.run(fn(a.port, a.connections, a.reports))))
        return
    from sim.stack import raise_fd_limit
    from tests.support.broker import Broker

    raise_fd_limit(a.connections * 2)
    result: dict[str, Any] = {"bench": "sim_mqtt_client", "connections": a.connections,
                              "reports_per_connection": a.reports}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        b = Broker(Path(tmp), extra=[]).start()
        try:
            for variant in ("codec", "paho", "codec", "paho"):  # interleaved, two rounds
                out = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, "--port", str(b.port),
                     "--connections", str(a.connections), "--reports", str(a.reports)],
                    capture_output=True, text=True, timeout=600, check=True,
                )  # fmt: skip
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{variant}: {r}", file=sys.stderr)
                result.setdefault(variant, []).append({k: round(v, 1) for k, v in r.items()})
        finally:
            b.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
