"""The IDU store against both backends: migrations, registry, exactly-once batches, rollups,
retention, presence, commands."""

from __future__ import annotations

import time

import pytest

from controller import registry
from controller.config import StoreConfig
from controller.domain.records import (
    Accepted,
    AckRecord,
    Batch,
    DeviceUpdate,
    PresenceEvent,
)
from controller.errors import KeyWrapError, RegistryError, StoreError
from controller.keys import MasterKey
from controller.store import Store, open_store
from controller.store.schema import LATEST
from protocol import messages as M

HOUR = 3600.0
T0 = 1_790_000_000.0 // HOUR * HOUR  # an hour boundary


def report(dev: str, zone: str, seq: int, ts: float, values: dict[int, float]) -> Accepted:
    rows = tuple((0, m, ts, float(v)) for m, v in values.items())
    return Accepted(dev, zone, 1, seq, M.REPORT, ts, ts, rows)


def test_migrate_is_idempotent_and_refuses_newer(store: Store, store_cfg: StoreConfig) -> None:
    assert store.schema_version() == LATEST
    assert store.migrate() == LATEST
    store._execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    with pytest.raises(StoreError, match="upgrade idufleet"):
        open_store(store_cfg)


def test_registry_wraps_keys(store: Store, master: MasterKey) -> None:
    d = registry.create_device(store, master, "ap-1", "porto", "ribeira", "ap", {"pole": "7"})
    assert len(d.key) == 32
    rec = store.get_device("ap-1")
    assert rec is not None and rec.tags == {"pole": "7"} and rec.status == "active"
    assert d.key not in rec.key_wrapped  # not stored in clear
    assert registry.device_key(store, master, "ap-1") == d.key
    with pytest.raises(KeyWrapError):
        registry.device_key(store, MasterKey(b"\x01" * 32), "ap-1")
    # a wrapped key moved onto another row does not open (device id is the associated data)
    registry.create_device(store, master, "ap-2", "porto", "foz", "ap")
    store.set_key("ap-2", rec.key_wrapped)
    with pytest.raises(KeyWrapError):
        registry.device_key(store, master, "ap-2")
    with pytest.raises(RegistryError, match="already exists"):
        registry.create_device(store, master, "ap-1", "porto", "ribeira", "ap")
    with pytest.raises(RegistryError):
        registry.create_device(store, master, "Bad_Id", "porto", "ribeira", "ap")
    with pytest.raises(RegistryError):
        registry.create_device(store, master, "x", "porto", "ribeira", "toaster")
    registry.disable_device(store, "ap-1")
    assert [d.id for d in store.list_devices(status="disabled")] == ["ap-1"]
    assert [d.id for d in store.list_devices(zone="foz")] == ["ap-2"]


def test_batches_store_each_message_once_and_roll_up(store: Store, master: MasterKey) -> None:
    registry.create_device(store, master, "s-1", "porto", "baixa", "sensor")
    registry.create_device(store, master, "s-2", "porto", "baixa", "sensor")
    a = report("s-1", "baixa", 1, T0 + 10, {57: 20.0, 58: 60.0})
    b = report("s-1", "baixa", 2, T0 + 70, {57: 22.0})
    c = report("s-2", "baixa", 1, T0 + 30, {57: 30.0})
    r1 = store.write_batch(Batch([a, b]))
    assert (r1.messages, r1.rows, r1.duplicates) == (2, 3, 0)
    r2 = store.write_batch(Batch([b, c, a]))  # redelivery of a and b, plus a new c
    assert (r2.messages, r2.rows, r2.duplicates) == (1, 1, 2)
    assert store.count("raw_metrics") == 4
    assert store.raw_series("s-1", 57, T0, T0 + HOUR) == [(T0 + 10, 20.0), (T0 + 70, 22.0)]
    dev = store.hourly("device", "s-1", 57, T0, T0 + HOUR)
    assert dev == [{"hour": T0, "count": 2, "min": 20.0, "max": 22.0, "mean": 21.0, "last": 22.0}]
    zone = store.hourly("zone", "baixa", 57, T0, T0 + HOUR)
    assert zone[0]["count"] == 3 and zone[0]["max"] == 30.0 and zone[0]["last"] == 22.0
    # a late sample of an earlier time does not replace "last"
    store.write_batch(Batch([report("s-2", "baixa", 2, T0 + 5, {57: 10.0})]))
    zone = store.hourly("zone", "baixa", 57, T0, T0 + HOUR)
    assert zone[0] == {"hour": T0, "count": 4, "min": 10.0, "max": 30.0, "mean": 20.5, "last": 22.0}
    assert store.latest("s-1") == {57: (T0 + 70, 22.0), 58: (T0 + 10, 60.0)}
    assert len(store.zone_raw_series("baixa", 57, T0, T0 + HOUR)) == 4


def test_device_updates_presence_and_retention(store: Store, master: MasterKey) -> None:
    registry.create_device(store, master, "ap-9", "porto", "foz", "ap")
    up = DeviceUpdate("ap-9", T0, True, b"\x01\x02", "1.0.0", "sim", 7, 7, 3, True)
    store.write_batch(
        Batch(
            [report("ap-9", "foz", 1, T0 - 40 * 86400, {16: 3})],
            [up],
            [PresenceEvent("ap-9", T0, "online", "birth")],
        )
    )
    rec = store.get_device("ap-9")
    assert rec is not None and rec.online and rec.firmware == "1.0.0" and rec.replay == b"\x01\x02"
    assert (rec.boot_epoch, rec.birth_seq, rec.death_open) == (7, 3, True)
    assert store.list_devices(online=True)[0].id == "ap-9"
    assert store.presence_events("ap-9") == [
        {"device": "ap-9", "ts": T0, "state": "online", "reason": "birth"}
    ]
    assert store.prune_raw(T0 - 30 * 86400) == 1
    assert store.count("raw_metrics") == 0
    assert store.hourly("device", "ap-9", 16, 0, T0 + HOUR)[0]["count"] == 1  # rollups stay


def test_commands_and_acks(store: Store, master: MasterKey) -> None:
    registry.create_device(store, master, "ap-1", "porto", "foz", "ap")
    registry.create_device(store, master, "ap-2", "porto", "foz", "ap")
    e1 = store.next_controller_epoch()
    assert store.next_controller_epoch() == e1 + 1
    now = time.time()
    store.record_command(e1, 1, "ap-1", M.OP_PING, None, now, int(now) + 60)
    assert store.get_command(e1, 1)["status"] == "sent"  # type: ignore[index]
    # an ACK from another device does not settle it
    forged = Accepted("ap-2", "foz", 1, 5, M.ACK, now, now, ack=AckRecord(e1, 1, 0, None))
    store.write_batch(Batch([forged]))
    assert store.get_command(e1, 1)["status"] == "sent"  # type: ignore[index]
    real = Accepted("ap-1", "foz", 1, 5, M.ACK, now, now, ack=AckRecord(e1, 1, 0, {"0": 1}))
    store.write_batch(Batch([real]))
    cmd = store.get_command(e1, 1)
    assert cmd is not None and cmd["status"] == "ok" and cmd["data"] == {"0": 1}


def test_packed_samples_answer_per_metric_queries(store: Store, master: MasterKey) -> None:
    """Raw samples are packed one row per (message, sample); a metric query still returns only
    that metric, also when another metric shares its mask bit (1 and 63), and BATCH samples keep
    their own times. Rows stored in raw_metrics before migration 2 are still read."""
    registry.create_device(store, master, "s-1", "porto", "baixa", "sensor")
    batch = Accepted(
        "s-1", "baixa", 1, 1, M.BATCH, T0 + 100, T0 + 100,
        ((0, 1, T0 + 10, 5.0), (0, 63, T0 + 10, 6.0), (1, 63, T0 + 20, 7.0), (2, 1, T0 + 30, 8.0)),
    )  # fmt: skip
    r = store.write_batch(Batch([batch, report("s-1", "baixa", 2, T0 + 40, {63: 9.0})]))
    assert (r.messages, r.rows) == (2, 5)
    assert store.count("raw_metrics") == 5
    store._execute(
        "INSERT INTO raw_metrics (device_id, epoch, seq, sample, metric, ts, value)"
        " VALUES ('s-1', 0, 1, 0, 1, ?, 4.0)",
        (T0 + 5,),
    )
    assert store.raw_series("s-1", 1, T0, T0 + HOUR) == [
        (T0 + 5, 4.0),
        (T0 + 10, 5.0),
        (T0 + 30, 8.0),
    ]
    assert store.raw_series("s-1", 63, T0, T0 + HOUR, limit=2) == [(T0 + 10, 6.0), (T0 + 20, 7.0)]
    assert store.raw_series("s-1", 63, T0 + 15, T0 + HOUR) == [(T0 + 20, 7.0), (T0 + 40, 9.0)]
    assert store.zone_raw_series("baixa", 63, T0, T0 + HOUR)[-1] == (T0 + 40, "s-1", 9.0)
    assert store.raw_series("s-1", 2, T0, T0 + HOUR) == []
    h = store.hourly("device", "s-1", 63, T0, T0 + HOUR)
    assert h == [{"hour": T0, "count": 3, "min": 6.0, "max": 9.0, "mean": 22.0 / 3, "last": 9.0}]
    assert store.prune_raw(T0 + HOUR) == 6
    assert store.count("raw_metrics") == 0


def test_upgrade_from_schema_1_keeps_old_raw_rows(store_cfg: StoreConfig) -> None:
    """A store made by migration 1 alone (raw rows one per metric) is brought to LATEST and its
    old rows stay queryable next to packed ones."""
    from controller.store.schema import MIGRATIONS

    s = open_store(store_cfg, migrate=False)
    with s._tx():
        s._execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        s._execute("INSERT INTO schema_version (version) VALUES (1)")
        for stmt in MIGRATIONS[0]:
            s._execute(stmt.format(blob=s.BLOB, serial=s.SERIAL))
        s._execute(
            "INSERT INTO devices (id, site, zone, kind, key_wrapped, created_at)"
            " VALUES ('s-1', 'porto', 'baixa', 'sensor', ?, 0)",
            (b"k",),
        )
        s._execute(
            "INSERT INTO raw_metrics (device_id, epoch, seq, sample, metric, ts, value)"
            " VALUES ('s-1', 1, 1, 0, 57, ?, 20.5)",
            (T0 + 1,),
        )
    assert s.migrate() == 1 and s.schema_version() == LATEST
    s.write_batch(Batch([report("s-1", "baixa", 2, T0 + 2, {57: 21.0})]))
    assert s.raw_series("s-1", 57, T0, T0 + HOUR) == [(T0 + 1, 20.5), (T0 + 2, 21.0)]
    assert s.count("raw_metrics") == 2
    s.close()
