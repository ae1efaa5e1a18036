"""Ingest never stops and never silently loses (issue 10, controller side), on a real Mosquitto
and real SQLite/PostgreSQL: a message the store cannot hold is quarantined while the rest of its
batch commits; a stop is bounded while the store hangs; /health turns 503 for each cause (store
failing, commits stale, broker dropping) and back; a lost PostgreSQL connection is reopened;
a message older than the replay window is a question for the store, bounded by retention.

The poison payloads pass today's admission (an EVENT code of 2^63, text with a NUL), so these
tests hold whatever admission rules are added in front of the store."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from controller.config import Config, HealthConfig, StoreConfig
from controller.keys import MasterKey
from controller.store import open_store
from protocol import messages as M
from tests.controller.conftest import drop, raw_sql, store_config
from tests.controller.devsim import SimDevice, wait_for
from tests.controller.harness import ControllerThread, make_config, spawn_serve
from tests.controller.test_service import http, register
from tests.support.broker import Broker, free_port
from tests.support.postgres import PostgresCluster
from tools.cli import cli

TOKEN = "secret-token"


def with_health(cfg: Config, **kw: float) -> Config:
    return replace(cfg, health=replace(HealthConfig(), **kw))


def count(cfg: StoreConfig, table: str) -> int:
    s = open_store(cfg, migrate=False)
    try:
        return s.count(table)
    finally:
        s.close()


def metric(ct: ControllerThread, name: str, labels: dict[str, str] | None = None) -> float:
    assert ct.ctl is not None
    return ct.ctl.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def health(ct: ControllerThread) -> tuple[int, dict[str, Any]]:
    status, body = http(ct.url + "/health")
    return int(status), body


POISON_CODE = 4242  # an EVENT code the test's store refuses (a real constraint, below)


def refuse_poison(cfg: StoreConfig) -> None:
    """Make the store itself refuse one valid message: a trigger (SQLite) or a CHECK constraint
    (PostgreSQL) on device_events. Admission (docs/PROTOCOL.md) now refuses what the stores
    cannot represent (2^63 in SQLite, NUL in PostgreSQL text), so a store refusal is what is
    left for the bisect + quarantine backstop: a constraint added later, a disk-level
    corruption, a driver bug. The refusal is the database's own error, as in the field."""
    s = open_store(cfg, migrate=True)
    try:
        if cfg.backend == "sqlite":
            raw_sql(
                s,
                "CREATE TRIGGER poison BEFORE INSERT ON device_events"
                f" WHEN NEW.code = {POISON_CODE} BEGIN SELECT RAISE(ABORT, 'poison'); END",
            )
        else:
            raw_sql(
                s,
                f"ALTER TABLE device_events ADD CONSTRAINT poison CHECK (code <> {POISON_CODE})",
            )
    finally:
        s.close()


def test_poison_message_is_quarantined_and_ingest_goes_on(
    store_cfg: StoreConfig, master: MasterKey, broker: Broker
) -> None:
    keys = register(store_cfg, master, 1)
    refuse_poison(store_cfg)
    ct = ControllerThread(make_config(store_cfg, broker.port, batch_size=50), master).start()
    try:
        d = SimDevice("dev-0", keys[0], broker.port)
        d.connect()
        # what used to stop ingest is now refused at admission, counted, never stored
        unstorable = {M.E_CODE: 2**63, M.E_SEVERITY: 1}
        d.publish(*d.build(M.EVENT, unstorable))
        d.publish(*d.build(M.EVENT, {M.E_CODE: 7, M.E_SEVERITY: 1, M.E_TEXT: "bad\x00text"}))
        for i in range(40):
            d.report({16: i})
        topic, poison = d.build(M.EVENT, {M.E_CODE: POISON_CODE, M.E_SEVERITY: 1})
        d.publish(topic, poison)
        for i in range(40):
            d.report({16: i})
        # BIRTH + 80 reports stored; the poison quarantined, not retried for ever
        ct.wait(lambda c: c.metrics.stored._value.get() >= 81, what="81 stored")
        assert count(store_cfg, "messages") == 81
        assert (
            sum(
                metric(ct, "idufleet_messages_quarantined_total", {"kind": k})
                for k in ("IntegrityError", "CheckViolation")
            )
            == 1
        )
        status, rows = http(ct.url + "/api/quarantine", token=TOKEN)
        assert status == 200 and len(rows) == 1
        q = rows[0]
        assert (q["topic"], q["payload_hex"], q["device"]) == (topic, poison.hex(), "dev-0")
        assert q["reason"].split(":")[0] in ("IntegrityError", "CheckViolation")
        assert metric(ct, "idufleet_messages_rejected_total", {"reason": "bad_field"}) == 1
        assert metric(ct, "idufleet_messages_rejected_total", {"reason": "bad_type"}) == 1
        # the CLI reads the same list through the API
        out = CliRunner(env={"IDUFLEET_API_TOKEN": TOKEN}).invoke(
            cli, ["quarantine", "list", "--json", "--api", ct.url]
        )
        assert out.exit_code == 0 and '"payload_hex": "' + poison.hex() in out.output
        # a replay before any fix fails again: still quarantined, the attempt counted
        status, res = http(ct.url + "/api/quarantine/replay", {}, token=TOKEN)
        assert status == 200 and res["failed"]["ids"] == [q["id"]]
        assert http(ct.url + "/api/quarantine", token=TOKEN)[1][0]["attempts"] == 2
        # a quarantined message the store can hold (as after a fix) is stored by a replay
        t2, good = d.build(M.REPORT, {16: 99})
        now = time.time()
        assert ct.ctl is not None
        db = ct.ctl.db
        ct.call(lambda: db.call(lambda s: s.quarantine([("dev-0", t2, good, "x", now)], now)))
        ids = [
            r["id"] for r in http(ct.url + "/api/quarantine", token=TOKEN)[1] if r["topic"] == t2
        ]
        out = CliRunner(env={"IDUFLEET_API_TOKEN": TOKEN}).invoke(
            cli, ["quarantine", "replay", str(ids[0]), "--api", ct.url]
        )
        assert out.exit_code == 0 and "stored: 1" in out.output, out.output
        assert count(store_cfg, "messages") == 82
        assert [r["id"] for r in http(ct.url + "/api/quarantine", token=TOKEN)[1]] == [q["id"]]
        assert health(ct)[0] == 200
    finally:
        ct.stop()


def test_stop_is_bounded_while_the_store_hangs_and_nothing_is_lost(
    tmp_path: Path, master: MasterKey, broker: Broker
) -> None:
    """SQLite locked by another process: commits hang (busy timeout), /health says the commits
    are stale, a stop ends within shutdown_timeout (+ the bounded disconnect), and the messages
    left unacknowledged are delivered again to the next controller: stored once each."""
    cfg_store = store_config("sqlite", tmp_path)
    keys = register(cfg_store, master, 1)
    cfg = with_health(make_config(cfg_store, broker.port, shutdown_timeout=1.0), commit_stale_s=0.3)
    ct = ControllerThread(cfg, master).start()
    lock = sqlite3.connect(cfg_store.path, isolation_level=None)
    try:
        d = SimDevice("dev-0", keys[0], broker.port)
        d.connect()
        ct.wait(lambda c: c.metrics.stored._value.get() >= 1, what="BIRTH stored")
        lock.execute("BEGIN EXCLUSIVE")
        for i in range(20):
            d.report({16: i})
        ct.wait(lambda c: c.metrics.received._value.get() >= 21, what="21 received")
        wait_for(lambda: "commit_stale" in health(ct)[1]["reasons"], 5, "commit_stale")
        assert health(ct)[0] == 503
        t0 = time.monotonic()
        ct.stop(timeout=15)
        assert time.monotonic() - t0 < 1.0 + 2.5
    finally:
        lock.rollback() if lock.in_transaction else None
        lock.close()
    ct2 = ControllerThread(cfg, master).start()
    try:
        wait_for(lambda: count(cfg_store, "messages") == 21, 15, "21 stored after restart")
        ct2.wait(lambda c: health(ct2)[0] == 200, what="healthy again")
        assert count(cfg_store, "raw_metrics") == 20  # one sample each: nothing stored twice
    finally:
        ct2.stop()


def test_health_503_while_the_store_fails_then_200_and_all_stored(
    tmp_path: Path, master: MasterKey, broker: Broker
) -> None:
    """SQLite full (max_page_count on the controller's connection: the disk-full error): every
    commit fails, /health turns 503 store_failing after store_failing_s; space back, the
    batch the pipeline kept commits and health returns to 200."""
    cfg_store = store_config("sqlite", tmp_path)
    keys = register(cfg_store, master, 1)
    cfg = with_health(make_config(cfg_store, broker.port), store_failing_s=0.3)
    ct = ControllerThread(cfg, master).start()
    assert ct.ctl is not None
    db = ct.ctl.db
    try:
        d = SimDevice("dev-0", keys[0], broker.port)
        d.connect()
        ct.wait(lambda c: c.metrics.stored._value.get() >= 1, what="BIRTH stored")
        pages = ct.call(lambda: db.call(lambda s: raw_sql(s, "PRAGMA page_count")))[0][0]
        ct.call(lambda: db.call(lambda s: raw_sql(s, f"PRAGMA max_page_count = {pages}")))
        for i in range(300):
            d.report({16: i, 57: 2000 + i, 48: 50})
        wait_for(lambda: "store_failing" in health(ct)[1]["reasons"], 10, "store_failing")
        assert health(ct)[0] == 503 and metric(ct, "idufleet_store_errors_total") >= 1
        ct.call(lambda: db.call(lambda s: raw_sql(s, "PRAGMA max_page_count = 1073741823")))
        wait_for(lambda: health(ct)[0] == 200, 10, "healthy again")
        wait_for(lambda: count(cfg_store, "messages") == 301, 10, "301 stored")
    finally:
        ct.stop()


def test_health_503_while_the_broker_drops_then_200(
    tmp_path: Path, master: MasterKey, broker_factory: Any
) -> None:
    """Another session's queue overflows (max_queued_messages 5): the broker's $SYS dropped
    counter rises, the controller mirrors it to Prometheus and /health says broker_dropping
    for broker_drop_hold_s, then 200 again."""
    broker = broker_factory(["max_queued_messages 5", "sys_interval 1"])
    cfg_store = store_config("sqlite", tmp_path)
    cfg = with_health(make_config(cfg_store, broker.port), broker_drop_hold_s=1.5)
    ct = ControllerThread(cfg, master).start()
    try:
        ct.wait(lambda c: c.pipeline.health.dropped is not None, what="broker $SYS baseline")
        # a persistent session that subscribes and goes away: its queue holds 5
        sleeper = mqtt.Client(CallbackAPIVersion.VERSION2, "sleeper", clean_session=False)
        subscribed = threading.Event()
        sleeper.on_subscribe = lambda *a: subscribed.set()
        sleeper.connect("127.0.0.1", broker.port)
        sleeper.loop_start()
        wait_for(sleeper.is_connected, 5, "sleeper connected")
        sleeper.subscribe("x/#", qos=1)
        assert subscribed.wait(5)
        sleeper.disconnect()
        sleeper.loop_stop()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for i in range(20):
            pub.publish("x/1", str(i), qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        wait_for(lambda: "broker_dropping" in health(ct)[1]["reasons"], 10, "broker_dropping")
        assert health(ct)[0] == 503
        assert metric(ct, "idufleet_broker_messages_dropped") >= 15
        wait_for(lambda: health(ct)[0] == 200, 10, "healthy after the hold")
    finally:
        ct.stop()


def _stream(d: SimDevice, n: int) -> threading.Thread:
    t = threading.Thread(target=lambda: [d.report({16: i}) for i in range(n)])
    t.start()
    return t


@pytest.fixture
def pg_store(postgres: PostgresCluster, tmp_path: Path) -> Iterator[StoreConfig]:
    cfg = store_config("postgres", tmp_path)
    yield cfg
    drop(cfg)


def test_postgres_backends_terminated_at_idle_and_under_load(
    pg_store: StoreConfig, postgres: PostgresCluster, master: MasterKey, broker: Broker
) -> None:
    keys = register(pg_store, master, 1)
    ct = ControllerThread(make_config(pg_store, broker.port, batch_size=50), master).start()
    try:
        d = SimDevice("dev-0", keys[0], broker.port)
        d.connect()
        ct.wait(lambda c: c.metrics.stored._value.get() >= 1, what="BIRTH stored")
        # idle: the next API read reopens the connection and answers
        assert postgres.terminate_backends() >= 1
        status, devs = http(ct.url + "/api/devices", token=TOKEN)
        assert status == 200 and devs[0]["id"] == "dev-0"
        # under load: killed twice while reports stream in, then once more with traffic after
        n = 1500
        pub = _stream(d, n)
        for at in (200, 700):
            ct.wait(lambda c, at=at: c.metrics.stored._value.get() >= at, 20, f"{at} stored")
            # 0 if the stream outran us and the last cut is not reopened yet: not asserted
            postgres.terminate_backends()
        pub.join(60)
        # the connection is reopened lazily, by the next store call: make one, then cut it
        assert http(ct.url + "/api/devices", token=TOKEN)[0] == 200
        assert postgres.terminate_backends() >= 1
        for i in range(50):
            d.report({16: i})
        n += 50
        wait_for(lambda: count(pg_store, "messages") == 1 + n, 20, f"{1 + n} stored")
        assert count(pg_store, "raw_metrics") == n  # no sample twice
        assert ct.ctl is not None and ct.ctl.db.reconnects >= 2
        wait_for(lambda: health(ct)[0] == 200, 10, "healthy")
    finally:
        ct.stop()


def test_postgres_server_restart_under_load(
    pg_store: StoreConfig, postgres: PostgresCluster, master: MasterKey, broker: Broker
) -> None:
    """The server restarts (every session cut, refused while it starts): the pipeline keeps
    its batch, compaction and the ticker keep running, ingest resumes, each report stored once."""
    keys = register(pg_store, master, 1)
    ct = ControllerThread(make_config(pg_store, broker.port, batch_size=50), master).start()
    try:
        d = SimDevice("dev-0", keys[0], broker.port)
        d.connect()
        n = 1500
        pub = _stream(d, n)
        ct.wait(lambda c: c.metrics.stored._value.get() >= 200, 20, "200 stored")
        postgres.restart()
        pub.join(60)
        for i in range(50):  # and after the restart, for certain
            d.report({16: i})
        n += 50
        wait_for(lambda: count(pg_store, "messages") == 1 + n, 30, f"{1 + n} stored")
        assert count(pg_store, "raw_metrics") == n
        assert ct.ctl is not None and ct.ctl.db.reconnects >= 1
        wait_for(lambda: health(ct)[0] == 200, 10, "healthy")
    finally:
        ct.stop()


def test_message_below_the_window_is_a_question_for_the_store(
    tmp_path: Path, master: MasterKey, broker: Broker
) -> None:
    """2,000 seqs behind the window: absent, stored; present, a duplicate; older than raw
    retention, or at or below a key retention deleted, refused as beyond_retention."""
    cfg_store = store_config("sqlite", tmp_path)
    keys = register(cfg_store, master, 1)
    ct = ControllerThread(make_config(cfg_store, broker.port), master).start()
    try:
        d = SimDevice("dev-0", keys[0], broker.port)
        d.connect()  # will seq 1, BIRTH seq 2
        d.publish(*d.build(M.REPORT, {16: 1}, seq=3000))
        ct.wait(lambda c: c.metrics.stored._value.get() >= 2, what="seq 3000 stored")
        late = d.build(M.REPORT, {16: 2}, seq=1000)
        d.publish(*late)
        ct.wait(lambda c: c.metrics.stored._value.get() >= 3, what="late message stored")
        assert metric(ct, "idufleet_messages_late_total") == 1
        d.publish(*late)
        ct.wait(lambda c: c.metrics.duplicates._value.get() >= 1, what="counted duplicate")
        assert count(cfg_store, "messages") == 3
        assert metric(ct, "idufleet_messages_rejected_total", {"reason": "replay"}) == 0
        old_ts = int(time.time()) - 40 * 86400  # raw retention is 30 days
        d.publish(*d.build(M.REPORT, {16: 3}, ts=old_ts, seq=999))
        beyond = {"reason": "beyond_retention"}
        ct.wait(lambda c: c.metrics.rejected_count("beyond_retention") >= 1, what="old ts")
        # retention deletes every key (cut-off in the future): the replayed seq 1000 is not
        # stored a second time
        assert ct.ctl is not None
        ct.call(ct.ctl.pipeline._prune, time.time() + 1)
        assert count(cfg_store, "messages") == 0
        d.publish(*late)
        ct.wait(lambda c: c.metrics.rejected_count("beyond_retention") >= 2, what="pruned key")
        assert metric(ct, "idufleet_messages_rejected_total", beyond) == 2
        assert count(cfg_store, "messages") == 0
    finally:
        ct.stop()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_store_errors_are_translated(backend: str, tmp_path: Path) -> None:
    """No raw driver exception leaves the store thread: the refusal is a StoreDataError."""
    import asyncio

    from controller.domain.records import Accepted, Batch, DeviceEvent
    from controller.errors import StoreDataError
    from controller.store.thread import StoreThread

    async def go() -> None:
        db = StoreThread(store_config(backend, tmp_path))
        await db.open()
        bad = Accepted("d", "z", 1, 1, M.EVENT, 1.0, 1.0, DeviceEvent(2**63, 0, None, None))
        with pytest.raises(StoreDataError) as e:
            await db.call(lambda s: s.write_batch(Batch([bad])))
        assert e.value.kind == "OverflowError" and db.failing_since is None
        assert await db.close(timeout=5)

    asyncio.run(go())


def _serve(tmp: Path, broker: int, db: str, key: Path, api: int) -> subprocess.Popen[bytes]:
    conf = tmp / "serve.toml"
    conf.write_text(
        f'[mqtt]\nport = {broker}\nclient_id = "ctl-term"\nkeepalive = 5\n'
        f'[store]\nbackend = "sqlite"\npath = "{db}"\n'
        f'[keys]\nmaster_key_file = "{key}"\n'
        f"[api]\nport = {api}\n"
        "[ingest]\nbatch_ms = 20\nshutdown_timeout = 1.0\n"
        "[health]\ncommit_stale_s = 0.3\n"
        '[log]\nlevel = "warning"\n'
    )
    return spawn_serve(conf, tmp / "serve.log", api)


def test_sigterm_of_idufleet_serve_with_a_hung_store_is_bounded_and_loses_nothing(
    tmp_path: Path, broker: Broker
) -> None:
    """`idufleet serve` as a process, its SQLite locked by the test (every commit hangs on the
    busy timeout): SIGTERM ends the process within ingest.shutdown_timeout (1 s) plus a bound,
    leaving what it could not commit unacknowledged with the broker; a second controller on
    the same session then stores every report once."""
    master = MasterKey(bytes(range(32)))
    key = tmp_path / "master.key"
    key.write_text(bytes(range(32)).hex() + "\n")
    cfg_store = store_config("sqlite", tmp_path)
    keys = register(cfg_store, master, 1)
    api = free_port()
    p = _serve(tmp_path, broker.port, cfg_store.path, key, api)
    lock = sqlite3.connect(cfg_store.path, isolation_level=None)
    try:
        d = SimDevice("dev-0", keys[0], broker.port)
        d.connect()
        wait_for(lambda: count(cfg_store, "messages") >= 1, 15, "BIRTH stored")
        lock.execute("BEGIN EXCLUSIVE")
        for i in range(20):
            d.report({16: i})
        url = f"http://127.0.0.1:{api}/health"
        wait_for(lambda: "commit_stale" in http(url)[1].get("reasons", []), 10, "commit_stale")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(15)
        took = time.monotonic() - t0
        assert took < 1.0 + 3.0, took  # shutdown_timeout + link close + store close (2 s)
        assert rc == 0, (tmp_path / "serve.log").read_text()[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        if lock.in_transaction:
            lock.rollback()
        lock.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
    p2 = _serve(tmp_path, broker.port, cfg_store.path, key, free_port())
    try:
        wait_for(lambda: count(cfg_store, "messages") == 21, 15, "21 stored after restart")
    finally:
        p2.send_signal(signal.SIGTERM)
        p2.wait(15)
    assert count(cfg_store, "raw_metrics") == 20  # one sample each: nothing stored twice
