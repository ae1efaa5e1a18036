"""Bad input through a real broker: each kind is counted under its own reason, nothing of it is
stored, and the service keeps ingesting good messages from the same and other devices."""

from __future__ import annotations

from pathlib import Path

from controller import registry
from controller.keys import MasterKey
from controller.store import open_store
from protocol import messages as M
from protocol.codec import Writer
from protocol.envelope import Message, encode, seal
from protocol.sign import Signer
from tests.controller.devsim import SimDevice, publisher
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.support.broker import Broker

REP = "idu/1/porto/dev-a/rep"


def mistyped(signer: Signer) -> bytes:
    """Correctly signed, but seq is a string."""
    w = Writer(bytearray(256))
    w.map_head(6)
    for k, v in ((0, 1), (1, M.REPORT), (2, 1), (3, "seven"), (6, {16: 1})):
        w.integer(k)
        w.value(v)
    return bytes(w.mv[: seal(w, signer, REP.encode())])


def test_each_bad_input_counted_nothing_stored(
    tmp_path: Path, master: MasterKey, broker: Broker
) -> None:
    store_cfg = sqlite_config(tmp_path)
    s = open_store(store_cfg)
    ka = registry.create_device(s, master, "dev-a", "porto", "baixa", "sensor").key
    kb = registry.create_device(s, master, "dev-b", "porto", "baixa", "sensor").key
    s.close()
    sa, sb = Signer(ka), Signer(kb)
    ct = ControllerThread(make_config(store_cfg, broker.port), master).start()
    try:
        good = encode(sa, REP, Message(M.REPORT, 1, 1, {16: 5}, ts=1_790_000_000))
        bad_tag = good[:-1] + bytes([good[-1] ^ 1])
        deep = encode(sa, REP, Message(M.REPORT, 1, 2, {}, ts=1)).replace(
            b"\x06\x80", b"\x06\x91\x91\x91\x91\x91\x80"
        )
        cases: list[tuple[str, str, bytes]] = [
            ("bad_type", REP, b"\xc1\x00garbage"),
            ("truncated", REP, b"\x87\x00\x01\x01"),
            ("bad_field", REP, mistyped(sa)),
            ("too_big", REP, b"\x00" * 1100),
            ("bad_tag", REP, bad_tag),
            ("too_deep", REP, deep),
            ("replay", REP, good),  # the second copy of `good` (the first is stored)
            (
                "unknown_type",
                REP,
                encode(sa, REP, Message(M.EVENT, 1, 3, {0: 1}, ts=1)),
            ),
            (
                "unknown_device",
                "idu/1/porto/ghost/rep",
                encode(sa, "idu/1/porto/ghost/rep", Message(M.REPORT, 1, 1, {16: 1}, ts=1)),
            ),
            (
                "impersonation",
                REP,
                encode(sb, REP, Message(M.REPORT, 1, 9, {16: 666}, ts=1)),
            ),
            (
                "wrong_site",
                "idu/1/lisboa/dev-a/rep",
                encode(sa, "idu/1/lisboa/dev-a/rep", Message(M.REPORT, 1, 4, {16: 1}, ts=1)),
            ),
        ]
        pub = publisher(broker.port, "attacker")
        pub.publish(REP, good, qos=1).wait_for_publish(5)
        # a device clearing its retained DEATH: counted apart, not refused
        pub.publish("idu/1/porto/dev-a/death", b"", qos=1, retain=True).wait_for_publish(5)
        for _reason, topic, payload in cases:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        # the service is still up: a good device keeps being stored
        b = SimDevice("dev-b", kb, broker.port)
        b.connect()
        b.report({16: 7})
        expected = {reason: 1 for reason, _, _ in cases}
        ct.wait(
            lambda c: (
                all(c.metrics.rejected_count(r) >= n for r, n in expected.items())
                and c.metrics.stored._value.get() >= 3
                and c.metrics.death_cleared._value.get() == 1
            ),
            what="all rejections counted",
        )
        m = ct.ctl.metrics  # type: ignore[union-attr]
        for reason, n in expected.items():
            assert m.rejected_count(reason) == n, reason
        b.close()
        pub.disconnect()  # also wakes paho's loop: loop_stop alone waits up to 1 s
        pub.loop_stop()
    finally:
        ct.stop()
    s = open_store(store_cfg)
    # exactly three messages stored: dev-a's good report, dev-b's BIRTH and its report
    assert s.count("messages") == 3
    assert "birth" in [p["reason"] for p in s.presence_events("dev-b")]
    assert [v for _, v, _ in s.raw_series("dev-a", 16, 0, 2e9)] == [5.0]
    assert [v for _, v, _ in s.raw_series("dev-b", 16, 0, 2e9)] == [7.0]
    s.close()
