"""Time placement (docs/PROTOCOL.md section 5, "Time"): the device's ts when plausible, uptime
anchored on the epoch's first BIRTH, the receive time otherwise; the rule ts_implausible; the
`approx` a message is stored with; anchors surviving a controller restart through the store."""

from __future__ import annotations

import pytest

from controller import registry
from controller.devices import DeviceCache
from controller.domain import timeline
from controller.domain.ingest import DeviceState, IngestCore, Rejected
from controller.domain.records import Batch
from controller.domain.timeline import ANCHORED, EXACT, RECEIVED, Anchors, place
from controller.keys import MasterKey
from controller.store import Store
from protocol import messages as M
from protocol.envelope import Message, encode
from protocol.sign import Signer
from tests.vectors.generate import envelope, head

KEY = bytes(range(32))
SIGNER = Signer(KEY)
PROV = 1_790_000_000.0  # when the device was registered
NOW = PROV + 86_400.0
BIRTH = {M.B_FIRMWARE: "1.0", M.B_BOARD: "sim", M.B_BOOT_REASON: 0}


def msg(
    mtype: int, seq: int, body: object, ts: int | None = None, up: int | None = None, epoch: int = 3
) -> tuple[str, bytes]:
    topic = f"idu/1/porto/d1/{M.CHANNEL[mtype]}"
    return topic, encode(SIGNER, topic, Message(mtype, epoch, seq, body, ts=ts, up=up))


def core() -> IngestCore:
    c = IngestCore()
    c.add(DeviceState("d1", "porto", "foz", SIGNER, provisioned=PROV))
    return c


@pytest.mark.parametrize(
    ("ts", "exact"),
    [
        (int(NOW), True),
        (int(NOW + 300), True),  # the clock tolerance, inclusive
        (int(NOW + 301), False),
        (int(PROV - 300), True),
        (int(PROV - 301), False),  # before the device's key existed
        (1, False),  # a clock reset to 1970
    ],
)
def test_plausibility_window_bounds(ts: int, exact: bool) -> None:
    p = place(ts, None, 3, NOW, PROV, Anchors())
    assert (p.t, p.approx, p.ts_implausible) == (
        (ts, EXACT, False) if exact else (NOW, RECEIVED, True)
    )


def test_uptime_only_reports_are_anchored_on_the_epochs_first_birth() -> None:
    c = core()
    acc, _ = c.ingest(*msg(M.BIRTH, 5, BIRTH, up=10), NOW)
    assert (acc.ts, acc.approx) == (NOW, RECEIVED)  # the anchor itself: its receive time
    acc, _ = c.ingest(*msg(M.REPORT, 6, {16: 1}, up=70), NOW + 300)  # received late
    assert (acc.ts, acc.approx) == (NOW + 60, ANCHORED)
    # the epoch's backlog sealed before the BIRTH (lower seq, lower up) lands before it
    acc, _ = c.ingest(*msg(M.REPORT, 2, {16: 1}, up=4), NOW + 301)
    assert (acc.ts, acc.approx) == (NOW - 6, ANCHORED)
    # a reconnect's BIRTH of the same epoch does not move the anchor
    c.ingest(*msg(M.BIRTH, 9, BIRTH, up=500), NOW + 900)
    acc, _ = c.ingest(*msg(M.REPORT, 10, {16: 1}, up=510), NOW + 901)
    assert (acc.ts, acc.approx) == (NOW + 500, ANCHORED)


def test_backlog_of_an_epoch_never_seen_live_is_stored_at_receive_time() -> None:
    c = core()
    c.ingest(*msg(M.BIRTH, 2, BIRTH, up=3, epoch=4), NOW)
    acc, _ = c.ingest(*msg(M.REPORT, 7, {16: 1}, up=900, epoch=3), NOW + 5)
    assert (acc.ts, acc.approx) == (NOW + 5, RECEIVED)


def test_implausible_ts_is_counted_and_the_message_still_stored_by_its_uptime() -> None:
    c = core()
    c.ingest(*msg(M.BIRTH, 5, BIRTH, ts=int(NOW), up=10), NOW + 2)
    assert c.devices["d1"].anchors.get(3) == (NOW, 10)  # a plausible ts anchors exactly
    acc, _ = c.ingest(*msg(M.REPORT, 6, {16: 1}, ts=1, up=40), NOW + 33)
    assert (acc.ts, acc.approx, c.ts_implausible) == (NOW + 30, ANCHORED, 1)
    far = int(NOW + 10 * 86_400)
    acc, _ = c.ingest(*msg(M.EVENT, 7, {M.E_CODE: 6}, ts=far), NOW + 40)
    assert (acc.ts, acc.approx, c.ts_implausible) == (NOW + 40, RECEIVED, 2)


def test_batch_samples_before_the_window_are_clamped_and_approximate() -> None:
    c = core()
    body = [[10, {16: 1}], [2**31, {16: 2}]]
    acc, _ = c.ingest(*msg(M.BATCH, 4, body, ts=int(NOW)), NOW)
    assert [s[1] for s in acc.samples] == [NOW - 10, timeline.window_start(PROV)]
    assert acc.approx == RECEIVED


def test_neither_ts_nor_up_is_refused() -> None:
    topic = "idu/1/porto/d1/rep"
    with pytest.raises(Rejected) as e:
        core().ingest(topic, envelope([*head(M.REPORT, ts=None), (6, {16: 1})], topic), NOW)
    assert e.value.reason == "bad_field"


def test_anchors_keep_the_last_four_epochs_and_round_trip() -> None:
    a = Anchors()
    for e in range(1, 7):
        assert a.set(e, 100.0 * e, e)
    assert not a.set(6, 0.0, 0)  # the first BIRTH of an epoch wins
    assert sorted(a.items) == [3, 4, 5, 6]
    assert Anchors.loads(a.dumps()).items == a.items
    assert Anchors.loads(None).items == {} and Anchors().dumps() is None
    with pytest.raises(ValueError):
        Anchors.loads("[[1, 2]]")


def test_anchors_and_approx_survive_the_store(store: Store, master: MasterKey) -> None:
    """A restarted controller places a backlog as the one that saw the BIRTH; samples and events
    keep their approx (schema migration 6)."""
    dev = registry.create_device(store, master, "d1", "porto", "foz", "ap")
    key = dev.key
    c = IngestCore()
    cache = DeviceCache(c, master)
    rec = store.get_device("d1")
    assert rec is not None
    cache.load(rec)
    signer = Signer(key)

    def sealed(mtype: int, seq: int, body: object, up: int) -> tuple[str, bytes]:
        topic = f"idu/1/porto/d1/{M.CHANNEL[mtype]}"
        return topic, encode(signer, topic, Message(mtype, 3, seq, body, up=up))

    now = rec.created_at + 100
    birth, _ = c.ingest(*sealed(M.BIRTH, 2, BIRTH, 5), now)
    store.write_batch(Batch([birth], c.take_updates()))
    # a new controller: the anchor comes back from the device row
    c2 = IngestCore()
    rec = store.get_device("d1")
    assert rec is not None
    DeviceCache(c2, master).load(rec)
    rep, _ = c2.ingest(*sealed(M.REPORT, 3, {16: 7}, 65), now + 500)
    evt, _ = c2.ingest(*sealed(M.EVENT, 4, {M.E_CODE: 6, M.E_TEXT: "fan"}, 66), now + 501)
    store.write_batch(Batch([rep, evt], c2.take_updates()))
    assert store.raw_series("d1", 16, 0, 2e9) == [(now + 60, 7.0, ANCHORED)]
    [e] = store.device_events("d1")
    assert (e["ts"], e["approx"], e["text"]) == (now + 61, ANCHORED, "fan")
