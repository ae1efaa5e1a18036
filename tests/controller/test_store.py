"""The IDU store against both backends: migrations, registry, exactly-once batches, rollups
(pending deltas and their compaction), retention, presence, commands."""

from __future__ import annotations

import random
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
from tests.controller.conftest import raw_sql
from tests.controller.rollup_reference import fold

HOUR = 3600.0
T0 = 1_790_000_000.0 // HOUR * HOUR  # an hour boundary


def report(dev: str, zone: str, seq: int, ts: float, values: dict[int, float]) -> Accepted:
    samples = ((0, ts, {m: float(v) for m, v in values.items()}),)
    return Accepted(dev, zone, 1, seq, M.REPORT, ts, ts, samples=samples)


def test_migrate_is_idempotent_and_refuses_newer(store: Store, store_cfg: StoreConfig) -> None:
    assert store.schema_version() == LATEST
    assert store.migrate() == LATEST
    raw_sql(store, "UPDATE schema_version SET version = ?", (LATEST + 1,))  # a newer idufleet
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
    assert store.raw_series("s-1", 57, T0, T0 + HOUR) == [(T0 + 10, 20.0, 0), (T0 + 70, 22.0, 0)]
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
    # nor does a bad-tag ACK (result 5): it names whatever (epoch, seq) a forger wrote
    bad_tag = Accepted(
        "ap-1", "foz", 1, 4, M.ACK, now, now, ack=AckRecord(e1, 1, M.R_BAD_TAG, None)
    )
    store.write_batch(Batch([bad_tag]))
    assert store.get_command(e1, 1)["status"] == "sent"  # type: ignore[index]
    real = Accepted("ap-1", "foz", 1, 5, M.ACK, now, now, ack=AckRecord(e1, 1, 0, {"0": 1}))
    store.write_batch(Batch([real]))
    cmd = store.get_command(e1, 1)
    assert cmd is not None and cmd["status"] == "ok" and cmd["data"] == {"0": 1}


def test_packed_samples_answer_per_metric_queries(store: Store, master: MasterKey) -> None:
    """Raw samples are packed one row per (message, sample); a metric query still returns only
    that metric, also when another metric shares its mask bit (1 and 63), and BATCH samples keep
    their own times and their message's approx (migration 6). Rows stored in raw_metrics before
    migration 2 are still read (approx 0)."""
    registry.create_device(store, master, "s-1", "porto", "baixa", "sensor")
    batch = Accepted(
        "s-1", "baixa", 1, 1, M.BATCH, T0 + 100, T0 + 100,
        samples=((0, T0 + 10, {1: 5.0, 63: 6.0}), (1, T0 + 20, {63: 7.0}), (2, T0 + 30, {1: 8.0})),
        approx=1,
    )  # fmt: skip
    r = store.write_batch(Batch([batch, report("s-1", "baixa", 2, T0 + 40, {63: 9.0})]))
    assert (r.messages, r.rows) == (2, 5)
    assert store.count("raw_metrics") == 5
    raw_sql(
        store,
        "INSERT INTO raw_metrics (device_id, epoch, seq, sample, metric, ts, value)"
        " VALUES ('s-1', 0, 1, 0, 1, ?, 4.0)",
        (T0 + 5,),
    )
    assert store.raw_series("s-1", 1, T0, T0 + HOUR) == [
        (T0 + 5, 4.0, 0),
        (T0 + 10, 5.0, 1),
        (T0 + 30, 8.0, 1),
    ]
    assert store.raw_series("s-1", 63, T0, T0 + HOUR, limit=2) == [
        (T0 + 10, 6.0, 1),
        (T0 + 20, 7.0, 1),
    ]
    assert store.raw_series("s-1", 63, T0 + 15, T0 + HOUR) == [
        (T0 + 20, 7.0, 1),
        (T0 + 40, 9.0, 0),
    ]
    assert store.zone_raw_series("baixa", 63, T0, T0 + HOUR)[-1] == (T0 + 40, "s-1", 9.0, 0)
    assert store.raw_series("s-1", 2, T0, T0 + HOUR) == []
    h = store.hourly("device", "s-1", 63, T0, T0 + HOUR)
    assert h == [{"hour": T0, "count": 3, "min": 6.0, "max": 9.0, "mean": 22.0 / 3, "last": 9.0}]
    assert store.prune_raw(T0 + HOUR) == 6
    assert store.count("raw_metrics") == 0


def test_upgrade_from_schema_1_keeps_old_raw_rows(store_cfg: StoreConfig) -> None:
    """A store made by migration 1 alone (raw rows one per metric) is brought to LATEST and its
    old rows stay queryable next to packed ones."""
    s = open_store(store_cfg, migrate=False)
    assert s.migrate(1) == 0
    with s.transaction():
        raw_sql(
            s,
            "INSERT INTO devices (id, site, zone, kind, key_wrapped, created_at)"
            " VALUES ('s-1', 'porto', 'baixa', 'sensor', ?, 0)",
            (b"k",),
        )
        raw_sql(
            s,
            "INSERT INTO raw_metrics (device_id, epoch, seq, sample, metric, ts, value)"
            " VALUES ('s-1', 1, 1, 0, 57, ?, 20.5)",
            (T0 + 1,),
        )
    assert s.migrate() == 1 and s.schema_version() == LATEST
    s.write_batch(Batch([report("s-1", "baixa", 2, T0 + 2, {57: 21.0})]))
    assert s.raw_series("s-1", 57, T0, T0 + HOUR) == [(T0 + 1, 20.5, 0), (T0 + 2, 21.0, 0)]
    assert s.count("raw_metrics") == 2
    s.close()


# --- rollup deltas and compaction (migration 3) ------------------------------------------------


def pending_deltas(store: Store) -> int:
    return store.count("rollup_device_delta") + store.count("rollup_zone_delta")


def expected_hourly(stored: list[Accepted], scope: str, key: str, metric: int) -> list[dict]:
    """What hourly() must answer, folded from the stored messages in the order they were first
    stored (the reference fold: per value, later wins on equal times)."""
    aggs = fold(
        (key, mid, ts, v)
        for m in stored
        if (m.zone if scope == "zone" else m.device) == key
        for _, ts, vals in m.samples
        for mid, v in vals.items()
        if mid == metric
    )
    return [
        {"hour": h, "count": a.n, "min": a.vmin, "max": a.vmax, "mean": a.mean, "last": a.last}
        for (_, _, h), a in sorted(aggs.items())
    ]


DEVICES = {"s-1": "baixa", "s-2": "baixa", "s-3": "foz"}


def views(store: Store) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in [*DEVICES, "baixa", "foz"]:
        scope = "device" if key in DEVICES else "zone"
        for metric in (57, 58):
            out[f"{key}/{metric}"] = store.hourly(scope, key, metric, T0 - HOUR, T0 + 3 * HOUR)
    for dev in DEVICES:
        out[f"latest/{dev}"] = store.latest(dev)
    return out


def random_reports(rng: random.Random, seqs: dict[str, int], n: int) -> list[Accepted]:
    """Reports over two hours; a device may repeat a sample time (the later batch's value is
    "last"), devices never share one (so zone "last" is defined)."""
    out = []
    for _ in range(n):
        dev = rng.choice(list(DEVICES))
        seqs[dev] += 1
        ts = T0 + rng.choice((5, 5, 600, 3599, 3600, 4000)) + list(DEVICES).index(dev) / 8
        vals = {57: rng.randrange(-80, 80) / 4}
        if rng.random() < 0.7:
            vals[58] = rng.randrange(0, 400) / 4
        out.append(report(dev, DEVICES[dev], seqs[dev], ts, vals))
    return out


@pytest.mark.parametrize(("seed", "deltas"), [(1, True), (2, True), (3, False)])
def test_hourly_identical_before_and_after_compaction(
    store: Store, master: MasterKey, seed: int, deltas: bool
) -> None:
    """Batches append rollup deltas (ROLLUP_DELTAS; PostgreSQL's default, also run on SQLite
    here) or upsert the rollup rows (SQLite's default): hourly and latest answer what the
    reference fold of the stored samples gives, with deltas pending and after compaction."""
    store.ROLLUP_DELTAS = deltas
    for dev, zone in DEVICES.items():
        registry.create_device(store, master, dev, "porto", zone, "sensor")
    rng = random.Random(seed)
    seqs = dict.fromkeys(DEVICES, 0)
    stored: list[Accepted] = []

    def want() -> dict[str, object]:
        out: dict[str, object] = {}
        for key in [*DEVICES, "baixa", "foz"]:
            scope = "device" if key in DEVICES else "zone"
            for metric in (57, 58):
                out[f"{key}/{metric}"] = expected_hourly(stored, scope, key, metric)
        for dev in DEVICES:
            last = fold(
                (m.device, mid, ts, v)
                for m in stored
                for _, ts, vals in m.samples
                for mid, v in vals.items()
            )
            newest = {k[1]: a for k, a in sorted(last.items()) if k[0] == dev}  # latest hour wins
            out[f"latest/{dev}"] = {mid: (a.last_ts, a.last) for mid, a in newest.items()}
        return out

    for _round in range(3):
        for _ in range(4):
            batch = random_reports(rng, seqs, 12)
            if stored:
                batch.append(rng.choice(stored))  # a redelivery: stored once, counted once
            r = store.write_batch(Batch(batch))
            assert r.duplicates == (1 if len(batch) == 13 else 0)
            stored += batch[:12]
        assert (pending_deltas(store) > 0) == deltas
        before = views(store)
        assert before == want()
        assert (store.compact_rollups() > 0) == deltas
        assert pending_deltas(store) == 0
        assert views(store) == before  # rollups alone now, and on later rounds rollups + deltas
    assert store.compact_rollups() == 0


def test_redelivered_message_adds_no_delta(store: Store, master: MasterKey) -> None:
    store.ROLLUP_DELTAS = True
    registry.create_device(store, master, "s-1", "porto", "baixa", "sensor")
    a = report("s-1", "baixa", 1, T0 + 10, {57: 20.0, 58: 1.0})
    store.write_batch(Batch([a]))
    after_first = pending_deltas(store)
    assert after_first > 0
    r = store.write_batch(Batch([a, a]))  # redelivered twice, even within one batch
    assert (r.messages, r.duplicates) == (0, 2)
    assert pending_deltas(store) == after_first
    store.compact_rollups()
    store.write_batch(Batch([a]))
    assert pending_deltas(store) == 0
    assert store.hourly("device", "s-1", 57, T0, T0 + HOUR)[0]["count"] == 1
    assert store.hourly("zone", "baixa", 58, T0, T0 + HOUR)[0]["count"] == 1


@pytest.mark.parametrize(("deltas", "compact_first"), [(True, False), (True, True), (False, False)])
def test_retention_keeps_device_and_zone_hourly(
    store: Store, master: MasterKey, deltas: bool, compact_first: bool
) -> None:
    """Pruning raw samples leaves the hourly answers as they were, whether their rollups are
    compacted yet or still pending deltas; compaction after the prune changes nothing either."""
    store.ROLLUP_DELTAS = deltas
    for dev, zone in DEVICES.items():
        registry.create_device(store, master, dev, "porto", zone, "sensor")
    old = T0 - 40 * 86400
    batch = [
        report("s-1", "baixa", 1, old + 10, {57: 1.0}),
        report("s-2", "baixa", 1, old + 20, {57: 3.0}),
        report("s-3", "foz", 1, old + 30, {57: 5.0}),
        report("s-1", "baixa", 2, T0 + 10, {57: 7.0}),
    ]
    store.write_batch(Batch(batch))
    if compact_first:
        store.compact_rollups()
    span = (old - HOUR, T0 + HOUR)
    before = {
        k: store.hourly(s, k, 57, *span)
        for s, k in (("device", "s-1"), ("device", "s-3"), ("zone", "baixa"), ("zone", "foz"))
    }
    for (scope, key), got in zip(
        [("device", "s-1"), ("device", "s-3"), ("zone", "baixa"), ("zone", "foz")],
        before.values(),
        strict=True,
    ):
        assert got == expected_hourly(batch, scope, key, 57)
    assert store.prune_raw(T0 - 30 * 86400) == 3
    assert store.raw_series("s-1", 57, *span) == [(T0 + 10, 7.0, 0)]
    for _ in range(2):
        assert {
            k: store.hourly("zone" if k in ("baixa", "foz") else "device", k, 57, *span)
            for k in before
        } == before
        store.compact_rollups()


def test_concurrent_compaction_is_skipped(
    store: Store, store_cfg: StoreConfig, master: MasterKey
) -> None:
    """Two controllers on one PostgreSQL store: while one compacts, the other's compaction
    folds nothing (it does not wait, nor fold the same deltas twice, nor the deltas added
    meanwhile); its next one folds what is pending then."""
    if store_cfg.backend != "postgres":
        pytest.skip("SQLite's write transaction already serialises compactions")
    registry.create_device(store, master, "s-1", "porto", "baixa", "sensor")
    store.write_batch(Batch([report("s-1", "baixa", 1, T0 + 10, {57: 2.0})]))
    other = open_store(store_cfg)
    try:
        raw_sql(other, "SET lock_timeout = '10s'")  # waiting on store's rows fails, not hangs
        with store.transaction():  # the compaction's lock is held until this commits
            assert store.compact_rollups() == 2
            other.write_batch(Batch([report("s-1", "baixa", 2, T0 + 20, {57: 3.0})]))
            assert other.compact_rollups() == 0
        assert pending_deltas(store) == 2  # other's batch, untouched by the skipped compaction
        assert other.compact_rollups() == 2
        assert store.hourly("zone", "baixa", 57, T0, T0 + HOUR)[0]["count"] == 2
    finally:
        other.close()
