"""Ingest throughput: how close the controller comes to a paho subscriber that does nothing.

Publishers flood a private Mosquitto with valid signed 13-metric access-point reports from many
device ids at QoS 1 while the subscriber is offline (its persistent session queues them), then
the subscriber connects and drains the backlog. Measured in the same run, on the same broker:

1. noop: a paho QoS 1 subscriber (MQTT v5, paho's own loop) that only counts messages;
2. controller: the real Controller (verify, replay window, decode, batch commit, PUBACK after
   commit) on SQLite, or PostgreSQL with --backend postgres (a private cluster this starts from
   Debian's binaries and removes at the end, as the tests do; --dsn uses an existing server);
3. shared: two `idufleet serve` processes on a $share subscription, one store.

Also the pure per-report costs: protocol decode+verify, and the whole ingest core.

    .venv/bin/python benchmarks/ingest.py --quick            # < 1 minute
    .venv/bin/python benchmarks/ingest.py --backend postgres
    .venv/bin/python benchmarks/ingest.py --backend postgres --dsn "host=... dbname=..."

Last line: JSON with backend, sent, stored, lost, duplicated, noop_per_s, stored_per_s, ratio
(stored_per_s / noop_per_s), p99_ingest_ms (controller receive -> commit), shared_per_s, the
per-report microsecond costs, and the CPU microseconds per report this process spent during each
drain (noop_cpu_us, controller_cpu_us: every thread, including start-up and the store).
Target: ratio >= 0.8, lost 0, duplicated 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from controller import registry  # noqa: E402
from controller.config import (  # noqa: E402
    ApiConfig,
    Config,
    IngestConfig,
    KeysConfig,
    LogConfig,
    MqttConfig,
    StoreConfig,
)
from controller.domain.ingest import DeviceState, IngestCore  # noqa: E402
from controller.keys import MasterKey  # noqa: E402
from controller.store import open_store  # noqa: E402
from protocol import messages as M  # noqa: E402
from protocol.envelope import Message, decode, encode  # noqa: E402
from protocol.sign import Signer  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402

FILTER = "idu/1/+/+/rep"
AP_REPORT = {1: 86400, 2: 41000, 3: -61, 16: 37, 17: 12, 18: 25, 20: -84, 21: -63, 22: -41,
             23: 4, 24: 18_400_000, 25: 3_100_000, 27: 43}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"""per_listener_settings false
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 2000000
max_queued_bytes 0
max_inflight_messages 0
persistence false
log_dest stderr
log_type error
log_type warning
listener {port} 127.0.0.1
"""
    )
    from tools.binaries import mosquitto

    mosq = mosquitto()
    log = open(workdir / "mosquitto.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([mosq, "-c", str(conf)], stdout=log, stderr=log)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def payloads(keys: list[tuple[str, bytes]], per_device: int, epoch: int) -> list[tuple[str, bytes]]:
    out = []
    now = int(time.time())
    signers = [(d, Signer(k)) for d, k in keys]
    for seq in range(1, per_device + 1):
        for dev, signer in signers:
            topic = f"idu/1/porto/{dev}/rep"
            out.append(
                (topic, encode(signer, topic, Message(M.REPORT, epoch, seq, AP_REPORT, ts=now)))
            )
    return out


def _publish_worker(port: int, keys: list[tuple[str, bytes]], per_device: int, epoch: int) -> None:
    msgs = payloads(keys, per_device, epoch)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    info = None
    for topic, payload in msgs:
        info = c.publish(topic, payload, qos=1)
    assert info is not None
    info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def flood(
    port: int, keys: list[tuple[str, bytes]], per_device: int, epoch: int, procs: int = 2
) -> float:
    """Publish per_device reports for every device from `procs` processes; returns seconds."""
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    workers = [
        ctx.Process(target=_publish_worker, args=(port, keys[i::procs], per_device, epoch))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
        if w.exitcode != 0:
            raise RuntimeError(f"publisher exited {w.exitcode}")
    return time.perf_counter() - t0


def session(port: int, client_id: str) -> mqtt.Client:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    return c


def noop_drain(port: int, expected: int, keys: list[tuple[str, bytes]], per_device: int) -> float:
    """Register a persistent session, go away, let the flood queue, then drain; returns msg/s."""
    c = session(port, "bench-noop")
    c.subscribe(FILTER, qos=1)
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()
    flood(port, keys, per_device, epoch=1)
    got = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal got, first, last
        got += 1
        if got == 1:
            first = time.perf_counter()
        if got >= expected:
            last = time.perf_counter()
            done.set()

    c = session(port, "bench-noop")
    c.on_message = on_message
    cpu0 = cpu_s()
    c.loop_start()
    if not done.wait(300):
        raise RuntimeError(f"noop subscriber got {got}/{expected}")
    CPU["noop"] = cpu_s() - cpu0
    c.disconnect()
    c.loop_stop()
    return (expected - 1) / (last - first)


CPU: dict[str, float] = {}  # CPU seconds this process spent per drain phase


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class ControllerRunner:
    """The real Controller on its own thread and event loop."""

    def __init__(self, cfg: Config, master: MasterKey) -> None:
        from controller.app import Controller

        self.ctl = Controller(cfg, master)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.ctl.run(),))

    def start(self) -> ControllerRunner:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.ctl.link.connected.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("controller did not connect")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.ctl.stop)
        self.thread.join(60)


def per_report_costs(keys: list[tuple[str, bytes]], n: int = 20000) -> dict[str, float]:
    msgs = payloads(keys[:100], max(1, n // 100), epoch=9)
    signers = {d: Signer(k) for d, k in keys[:100]}
    t0 = time.perf_counter()
    for topic, payload in msgs:
        decode(payload, topic, signers[topic.split("/")[3]])
    t_decode = (time.perf_counter() - t0) / len(msgs)
    core = IngestCore()
    for d, s in signers.items():
        core.add(DeviceState(d, "porto", "foz", s))
    t0 = time.perf_counter()
    now = time.time()
    for topic, payload in msgs:
        core.ingest(topic, payload, now)
    t_core = (time.perf_counter() - t0) / len(msgs)
    return {"decode_verify_us": round(t_decode * 1e6, 2), "ingest_core_us": round(t_core * 1e6, 2)}


def store_config(backend: str, workdir: Path, dsn: str = "") -> StoreConfig:
    if backend == "postgres":
        return StoreConfig(backend="postgres", dsn=dsn, schema="bench_" + uuid.uuid4().hex[:10])
    return StoreConfig(backend="sqlite", path=str(workdir / "idu.sqlite"))


def controller_config(
    store: StoreConfig,
    port: int,
    workdir: Path,
    client_id: str,
    group: str = "",
    batch_size: int = 500,
    batch_ms: int = 50,
) -> Config:
    return Config(
        mqtt=MqttConfig(port=port, client_id=client_id, shared_group=group),
        store=store,
        keys=KeysConfig(master_key_file=str(workdir / "master.key")),
        ingest=IngestConfig(batch_size=batch_size, batch_ms=batch_ms),
        api=ApiConfig(port=0),
        log=LogConfig(level="error"),
    )


def shared_drain(
    store_cfg: StoreConfig,
    port: int,
    workdir: Path,
    keys: list[tuple[str, bytes]],
    per_device: int,
    before: int,
) -> float:
    """Two `idufleet serve` processes on one $share group: messages/s over the drain."""
    env_base = dict(os.environ)
    env_base.update(
        {
            "IDUFLEET_MQTT_PORT": str(port),
            "IDUFLEET_MQTT_SHARED_GROUP": "bench",
            "IDUFLEET_STORE_BACKEND": store_cfg.backend,
            "IDUFLEET_STORE_PATH": store_cfg.path,
            "IDUFLEET_STORE_DSN": store_cfg.dsn,
            "IDUFLEET_STORE_SCHEMA": store_cfg.schema,
            "IDUFLEET_KEYS_MASTER_KEY_FILE": str(workdir / "master.key"),
            "IDUFLEET_INGEST_BATCH_SIZE": "1000",
            "IDUFLEET_INGEST_BATCH_MS": "50",
            "IDUFLEET_API_PORT": "0",
            "IDUFLEET_LOG_LEVEL": "error",
        }
    )
    exe = str(Path(sys.executable).parent / "idufleet")

    def start_two() -> list[subprocess.Popen[bytes]]:
        out = []
        for name in ("bench-sh-a", "bench-sh-b"):
            env = dict(env_base, IDUFLEET_MQTT_CLIENT_ID=name)
            out.append(subprocess.Popen([exe, "serve"], env=env, stderr=subprocess.DEVNULL))
        return out

    def stop_all(ps: list[subprocess.Popen[bytes]]) -> None:
        for p in ps:
            p.send_signal(signal.SIGTERM)
        for p in ps:
            p.wait(60)

    ps = start_two()
    time.sleep(2.0)  # both sessions subscribed
    stop_all(ps)
    flood(port, keys, per_device, epoch=3)
    expected = before + per_device * len(keys)
    ps = start_two()
    store = open_store(store_cfg)
    deadline = time.monotonic() + 300
    try:
        while store.count("messages") < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        done = time.time()  # all stored (committed), seen by polling the store
        rows = store.conn.execute(  # type: ignore[attr-defined]  # sqlite3 or psycopg
            "SELECT MIN(received), COUNT(*) FROM messages WHERE epoch = 3"
        ).fetchall()
    finally:
        store.close()
        stop_all(ps)
    first, n = rows[0]
    return n / (done - first) if n and first else 0.0  # first receive -> last commit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="30k reports per phase (< 1 minute)")
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument(
        "--dsn",
        default="",
        help="postgres: use this server (libpq string) instead of starting a private cluster",
    )
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--per-device", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=500, help="ingest.batch_size")
    ap.add_argument("--batch-ms", type=int, default=50, help="ingest.batch_ms")
    ap.add_argument("--no-shared", action="store_true", help="skip the two-controller phase")
    args = ap.parse_args()
    if args.backend == "postgres" and not args.dsn:
        # Durable settings (fsync, synchronous_commit on), as a deployment and the server the
        # numbers in docs/CONTROLLER.md were measured on; stopped and removed however we end.
        with PostgresCluster(speed=False) as pg:
            print(f"private PostgreSQL: {pg.dsn} ({pg.start_seconds:.2f} s)", file=sys.stderr)
            run(args, pg.dsn)
    else:
        run(args, args.dsn)


def run(args: argparse.Namespace, dsn: str) -> None:
    n_dev = args.devices or (100 if args.quick else 500)
    per_device = args.per_device or (300 if args.quick else 400)
    n = n_dev * per_device
    workdir = Path(tempfile.mkdtemp(prefix="idufleet-bench-"))
    broker, port = start_broker(workdir)
    store_cfg = store_config(args.backend, workdir, dsn)
    master_hex = os.urandom(32).hex()
    (workdir / "master.key").write_text(master_hex)
    master = MasterKey(bytes.fromhex(master_hex))
    result: dict[str, Any] = {"backend": args.backend, "devices": n_dev}
    try:
        store = open_store(store_cfg)
        keys = [
            (d, registry.create_device(store, master, d, "porto", "foz", "ap").key)
            for d in (f"ap-{i:05d}" for i in range(n_dev))
        ]
        store.close()
        result.update(per_report_costs(keys))
        print(f"per report: {result}", file=sys.stderr)

        noop = noop_drain(port, n, keys, per_device)
        print(f"noop paho QoS 1 drain: {noop:,.0f} msg/s", file=sys.stderr)

        cfg = controller_config(
            store_cfg, port, workdir, "bench-ctl", "", args.batch_size, args.batch_ms
        )
        r = ControllerRunner(cfg, master).start()  # registers the persistent session
        r.stop()
        flood(port, keys, per_device, epoch=2)
        cpu0 = cpu_s()
        r = ControllerRunner(cfg, master).start()
        ctl = r.ctl
        deadline = time.monotonic() + 600
        while ctl.metrics.stored._value.get() < n and time.monotonic() < deadline:
            time.sleep(0.005)
        CPU["controller"] = cpu_s() - cpu0
        p99 = ctl.p99_ms()
        r.stop()
        store = open_store(store_cfg)
        stored = store.count("messages")
        store.close()
        # first message received -> last batch committed, as the controller clocked them
        assert ctl.first_received is not None and ctl.last_commit is not None
        stored_per_s = ctl.metrics.stored._value.get() / (ctl.last_commit - ctl.first_received)
        print(
            f"controller drain: {stored_per_s:,.0f} msg/s stored ({args.backend})", file=sys.stderr
        )
        result.update(
            sent=n,
            stored=stored,
            lost=max(0, n - stored),
            duplicated=max(0, stored - n),
            duplicates_suppressed=int(ctl.metrics.duplicates._value.get()),
            noop_per_s=round(noop),
            stored_per_s=round(stored_per_s),
            ratio=round(stored_per_s / noop, 3),
            p99_ingest_ms=p99,
            noop_cpu_us=round(CPU["noop"] / n * 1e6, 1),
            controller_cpu_us=round(CPU["controller"] / n * 1e6, 1),
        )
        if not args.no_shared:
            shared = shared_drain(store_cfg, port, workdir, keys, per_device, stored)
            print(f"two controllers, shared subscription: {shared:,.0f} msg/s", file=sys.stderr)
            store = open_store(store_cfg)
            total = store.count("messages")
            store.close()
            result["shared_per_s"] = round(shared)
            result["shared_lost"] = max(0, 2 * n - total)
    finally:
        broker.terminate()
        broker.wait(10)
        if args.backend == "postgres":
            from controller.store.postgres import PostgresStore

            s = PostgresStore(store_cfg.dsn, store_cfg.schema)
            s.drop_schema()
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
