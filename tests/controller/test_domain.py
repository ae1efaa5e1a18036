"""The pure parts without any I/O: ingest checks and the DEATH rule, presence, batching,
rollups, commands, config validation."""

from __future__ import annotations

import random

import pytest

from controller.config import ConfigError, build
from controller.domain.batching import Batcher
from controller.domain.commands import CommandIssuer
from controller.domain.ingest import DeviceState, IngestCore, Rejected
from controller.domain.records import Accepted, Sample
from controller.domain.rollup import fold_batch, merge
from protocol import messages as M
from protocol.commands import CommandGuard
from protocol.envelope import Message, decode, encode
from protocol.replay import WINDOW
from protocol.sign import Signer
from tests.controller.rollup_reference import fold

KEY = bytes(range(32))
SIGNER = Signer(KEY)
NOW = 1_790_000_000.0


def payload(
    mtype: int, seq: int, body: object, epoch: int = 3, device: str = "d1"
) -> tuple[str, bytes]:
    topic = f"idu/1/porto/{device}/{M.CHANNEL[mtype]}"
    return topic, encode(SIGNER, topic, Message(mtype, epoch, seq, body, ts=int(NOW)))


def core() -> IngestCore:
    c = IngestCore(offline_after=60)
    c.add(DeviceState("d1", "porto", "foz", SIGNER))
    return c


BIRTH = {M.B_FIRMWARE: "1.0", M.B_BOARD: "sim", M.B_BOOT_REASON: 0}


def test_death_reserved_at_connect_is_accepted_once_even_outside_the_window() -> None:
    c = core()
    c.ingest(*payload(M.BIRTH, 11, BIRTH), NOW)  # the DEATH will holds seq 10
    for seq in range(12, 12 + WINDOW + 5):
        c.ingest(*payload(M.REPORT, seq, {16: 1}), NOW)
    death = payload(M.DEATH, 10, {M.D_REASON: M.DEATH_LOST})
    acc, pres = c.ingest(*death, NOW + 1)
    assert acc.mtype == M.DEATH and pres is not None and pres.state == "offline"
    assert not acc.late
    # A second copy is below the window: late, a question for the store's key (which holds
    # the first), and it changes no presence; so is any other old seq (issue 10, item 2).
    again, pres = c.ingest(*death, NOW + 2)
    assert again.late and pres is None
    older, pres = c.ingest(*payload(M.DEATH, 9, {M.D_REASON: 0}), NOW)
    assert older.late and pres is None and not c.devices["d1"].death_open


def test_stale_will_after_a_new_birth_does_not_mark_offline() -> None:
    c = core()
    c.ingest(*payload(M.BIRTH, 2, BIRTH), NOW)
    c.ingest(*payload(M.BIRTH, 6, BIRTH), NOW)  # reconnected: will 5, birth 6
    _, pres = c.ingest(*payload(M.DEATH, 1, {M.D_REASON: M.DEATH_LOST}), NOW)  # old will
    assert pres is None and c.devices["d1"].presence.online


def test_presence_sweep_and_return() -> None:
    c = core()
    _, p = c.ingest(*payload(M.REPORT, 1, {16: 1}), NOW)
    assert p is not None and (p.state, p.reason) == ("online", "seen")
    assert c.sweep(NOW + 30) == []
    [off] = c.sweep(NOW + 61)
    assert (off.state, off.reason) == ("offline", "silent")
    assert {u.device for u in c.take_updates()} == {"d1"}


def test_batch_body_becomes_rows_with_sample_times() -> None:
    c = core()
    acc, _ = c.ingest(*payload(M.BATCH, 1, [[120, {57: 2150}], [60, {57: 2200, 48: None}]]), NOW)
    assert acc.samples == ((0, NOW - 120, {57: 21.5}), (1, NOW - 60, {57: 22.0}))


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("idu/1/porto/d2/rep", "unknown_device"),
        ("idu/1/braga/d1/rep", "wrong_site"),
        ("idu/1/porto/d1/cmd", "wrong_channel"),
        ("idu/2/porto/d1/rep", "unknown_version"),
        ("elsewhere/x", "bad_topic"),
    ],
)
def test_routing_rejections(topic: str, reason: str) -> None:
    with pytest.raises(Rejected) as e:
        core().ingest(topic, payload(M.REPORT, 1, {16: 1})[1], NOW)
    assert e.value.reason == reason


def test_disabled_device_is_refused() -> None:
    c = core()
    c.devices["d1"].active = False
    with pytest.raises(Rejected) as e:
        c.ingest(*payload(M.REPORT, 1, {16: 1}), NOW)
    assert e.value.reason == "disabled_device"


def test_batcher_size_or_time() -> None:
    b: Batcher[int] = Batcher(max_weight=3, max_age=0.1)
    assert not b.due(0.0)
    assert not b.add(1, 0.0)
    assert not b.due(0.05) and b.due(0.1)
    assert b.add(2, 0.01, weight=2)
    assert b.take() == [1, 2] and not b.due(10.0)


def test_rollup_fold_takes_the_latest_sample_as_last_whatever_the_order() -> None:
    def acc(seq: int, ts: float, v: float) -> Accepted:
        return Accepted("a", "z", 1, seq, M.REPORT, 0.0, 0.0, samples=((0, ts, {57: v}),))

    dev, _ = fold_batch([acc(1, 7200.0, 1.0), acc(2, 7300.0, 3.0), acc(3, 7250.0, 2.0)])
    n, vmin, vmax, vsum, last, last_ts = dev[("a", 57, 7200)]
    assert (n, vmin, vmax, vsum / n, last, last_ts) == (3, 1.0, 3.0, 2.0, 3.0, 7300.0)


def test_rollup_merge_adds_combines_and_the_later_wins_on_equal_times() -> None:
    a = [2, 1.0, 5.0, 6.0, 5.0, 100.0]
    merge(a, (1, 0.5, 0.5, 0.5, 0.5, 90.0))  # older sample: last stays
    assert a == [3, 0.5, 5.0, 6.5, 5.0, 100.0]
    merge(a, (2, 2.0, 9.0, 11.0, 9.0, 100.0))  # same time, merged later: it is "last"
    assert a == [5, 0.5, 9.0, 17.5, 9.0, 100.0]


def test_fold_batch_device_then_zone() -> None:
    def acc(dev: str, seq: int, samples: tuple[Sample, ...]) -> Accepted:
        return Accepted(dev, "z", 1, seq, M.REPORT, 0.0, 0.0, samples=samples)

    dev, zone = fold_batch(
        [
            acc("a", 1, ((0, 7200.0, {57: 1.0, 58: 9.0}),)),
            acc("a", 2, ((0, 7300.0, {57: 3.0}),)),
            acc("b", 1, ((0, 7250.0, {57: 2.0}), (1, 10900.0, {57: 4.0}))),
            acc("b", 2, ()),
        ]
    )
    assert dev[("a", 57, 7200)] == [2, 1.0, 3.0, 4.0, 3.0, 7300.0]
    assert dev[("b", 57, 10800)] == [1, 4.0, 4.0, 4.0, 4.0, 10900.0]
    assert zone[("z", 57, 7200)] == [3, 1.0, 3.0, 6.0, 3.0, 7300.0]
    assert zone[("z", 58, 7200)] == [1, 9.0, 9.0, 9.0, 9.0, 7200.0]
    assert len(dev) == 4 and len(zone) == 3


@pytest.mark.parametrize("seed", range(6))
def test_fold_batch_matches_the_per_value_fold(seed: int) -> None:
    """fold_batch takes a column-wise path for (device, hour) groups whose samples carry the
    same metrics in the same order, and a per-value path otherwise; both must give what the
    plain per-value fold gives, "last" ties (equal sample times) included."""
    rng = random.Random(seed)
    metric_sets = [(57, 58, 59), (57, 58, 59), (58, 57, 59), (57,), (60, 57)]
    msgs = []
    for seq in range(1, 80):
        dev = f"d{rng.randrange(4)}"
        samples = []
        for i in range(rng.choice((1, 1, 3))):
            ts = 7200.0 + rng.choice((0, 5, 5, 600, 3599, 3600, 3700))  # ties and two hours
            mids = metric_sets[0] if seed % 2 else rng.choice(metric_sets)
            samples.append((i, ts, {m: float(rng.randrange(-50, 50)) / 4 for m in mids}))
        zone = "z0" if dev in ("d0", "d1") else "z1"
        msgs.append(Accepted(dev, zone, 1, seq, M.REPORT, 0.0, 0.0, samples=tuple(samples)))
    dev, zone = fold_batch(msgs)
    rows = [
        (m.device, m.zone, ts, mid, v)
        for m in msgs
        for _, ts, vals in m.samples
        for mid, v in vals.items()
    ]
    want = fold((d, mid, ts, v) for d, _, ts, mid, v in rows)
    assert {k: [a.n, a.vmin, a.vmax, a.vsum, a.last, a.last_ts] for k, a in want.items()} == dev
    # Zones fold the device deltas: the same, except that when two devices' latest samples
    # have equal times, "last" is either one's.
    want = fold((z, mid, ts, v) for _, z, ts, mid, v in rows)
    assert {k: [a.n, a.vmin, a.vmax, a.vsum, a.last_ts] for k, a in want.items()} == {
        k: [a[0], a[1], a[2], a[3], a[5]] for k, a in zone.items()
    }
    for (z, mid, _), a in zone.items():
        assert a[4] in {v for _, z2, ts, m, v in rows if (z2, m, ts) == (z, mid, a[5])}


def test_commands_verify_on_the_device_side() -> None:
    issuer = CommandIssuer(epoch=4)
    cmd = issuer.build(SIGNER, "porto", "d1", "set-config", {M.G_INTERVAL: 30}, int(NOW), ttl=60)
    msg = decode(cmd.payload, cmd.topic, SIGNER)
    assert (msg.epoch, msg.seq, msg.ts) == (4, 1, int(NOW))
    assert msg.body == {M.C_OP: M.OP_SET_CONFIG, M.C_EXPIRES: int(NOW) + 60, M.C_ARGS: {0: 30}}
    guard = CommandGuard()
    guard.accept(msg, None)
    assert issuer.build(SIGNER, "porto", "d1", "ping", None, int(NOW)).seq == 2
    with pytest.raises(ValueError):
        issuer.build(SIGNER, "porto", "d1", "self-destruct", None, int(NOW))


def test_config_env_overrides_and_errors() -> None:
    cfg = build(
        {"mqtt": {"port": 1884}, "store": {"backend": "sqlite"}},
        {
            "IDUFLEET_MQTT_PORT": "1999",
            "IDUFLEET_API_TOKEN": "t0k",
            "IDUFLEET_INGEST_ACK_AFTER_COMMIT": "no",
        },
    )
    assert cfg.mqtt.port == 1999 and cfg.api.token == "t0k" and not cfg.ingest.ack_after_commit
    assert cfg.redacted()["api"]["token"] == "***"
    for data, env, match in [
        ({"mqtt": {"port": "x"}}, {}, "mqtt.port must be an integer"),
        ({"mqtt": {"prot": 1}}, {}, "unknown key mqtt.prot"),
        ({"nope": {}}, {}, r"unknown section \[nope\]"),
        ({}, {"IDUFLEET_STORE_BACKEND": "mysql"}, "use 'sqlite' or 'postgres'"),
        ({"store": {"backend": "postgres"}}, {}, "store.dsn must be set"),
        ({}, {"IDUFLEET_STORE_BACKEND": "postgres", "IDUFLEET_STORE_DSN": " "}, "store.dsn"),
        ({"ingest": {"batch_size": 0}}, {}, "batch_size"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build(data, env)


def test_shipped_example_config_is_valid() -> None:
    from pathlib import Path

    from controller.config import load

    cfg = load(Path(__file__).resolve().parents[2] / "deploy" / "idufleet.toml", {})
    assert cfg.ingest.ack_after_commit and cfg.log.json and cfg.api.token == ""


def test_rejections_all_counted_but_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from controller.app import Controller
    from controller.config import Config
    from controller.keys import MasterKey

    ctl = Controller(Config(), MasterKey(bytes(32)))
    with caplog.at_level("WARNING", logger="idufleet.controller"):
        for _ in range(1000):
            ctl.pipeline.reject(Rejected("bad_tag", "x", "d1"), "idu/1/porto/d1/rep")
    assert ctl.metrics.rejected_count("bad_tag") == 1000
    records = [r for r in caplog.records if r.getMessage() == "message rejected"]
    assert 1 <= len(records) <= 11  # the burst, plus at most one refill during the loop
    assert all(getattr(r, "reason", None) == "bad_tag" for r in records)


def test_below_the_window_is_late_not_a_replay_and_retention_bounds_it() -> None:
    """Issue 10, item 2, in the pure core: 2,000 seqs behind the newest is late (the store's
    key decides) and changes no state; in the window a seen seq is still `replay`; at or below
    the pruned key, or with a ts older than retention, it is `beyond_retention`."""
    c = IngestCore(offline_after=60, retention_s=30 * 86400.0)
    c.add(DeviceState("d1", "porto", "foz", SIGNER))
    c.ingest(*payload(M.REPORT, 3000, {16: 1}), NOW)
    c.take_updates()
    acc, pres = c.ingest(*payload(M.REPORT, 1000, {16: 2}), NOW)
    assert acc.late and pres is None and c.take_updates() == []
    with pytest.raises(Rejected) as e:
        c.ingest(*payload(M.REPORT, 3000, {16: 1}), NOW)
    assert e.value.reason == "replay"
    c.devices["d1"].pruned = (3, 1000)
    with pytest.raises(Rejected) as e:
        c.ingest(*payload(M.REPORT, 1000, {16: 2}), NOW)
    assert e.value.reason == "beyond_retention"
    assert c.ingest(*payload(M.REPORT, 1001, {16: 2}), NOW)[0].late
    with pytest.raises(Rejected) as e:
        c.ingest(*payload(M.REPORT, 1002, {16: 2}), NOW + 31 * 86400)  # ts 31 days old
    assert e.value.reason == "beyond_retention"


def test_presence_disabled_goes_offline_once() -> None:
    from controller.domain.presence import Presence

    p = Presence()
    assert p.on_disabled() is None  # already offline: nothing to record
    assert p.on_message(M.BIRTH, 1, 1, {}, 100.0) == ("online", "birth")
    assert p.on_disabled() == ("offline", "disabled")
    assert p.on_disabled() is None
    assert p.on_tick(1000.0, 30) is None  # no second "silent" offline later
