"""The controller's OTA server (controller/ota.py, docs/PROTOCOL.md "9 OTA") against a real
broker and a real controller, with a CPython stand-in for the device: the offer goes through the
signed-downlink path and is recorded, REQUESTs are answered with the release file's bytes, a
request for an unknown release gets GONE, STATUS is mirrored, the corruption hook flips a byte
once, and the per-release rate limit paces a burst. The real agent is tests/test_firmware_ota.py."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.config import OtaConfig
from controller.domain.ota import ReleaseInfo, plan
from controller.domain.ratelimit import TokenBucket
from controller.keys import MasterKey
from protocol import manifest as MF
from protocol import messages as M
from protocol import ota
from protocol.envelope import Message, decode, encode
from protocol.sign import Signer
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.ota_kit import make_release
from tests.support.broker import Broker

MASTER = MasterKey(bytes(range(32)))
SITE = "porto"


class FakeDevice:
    """Subscribes to its `ota` topic and publishes signed REQUEST/STATUS on `otr`."""

    def __init__(self, port: int, device: str, key: bytes) -> None:
        self.device, self.signer = device, Signer(key)
        self.base = f"idu/1/{SITE}/{device}/"
        self.got: queue.Queue[Message] = queue.Queue()
        self.seq = 0
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-" + device)
        c.on_message = lambda _c, _u, m: self.got.put(
            decode(m.payload, m.topic, self.signer, "ota")
        )
        subscribed = threading.Event()
        c.on_subscribe = lambda *_: subscribed.set()
        c.connect("127.0.0.1", port)
        c.subscribe(self.base + "ota", 1)
        c.loop_start()
        assert subscribed.wait(5), "no SUBACK"
        self.client = c

    def send(self, body: dict[int, Any]) -> None:
        self.seq += 1
        t = self.base + "otr"
        self.client.publish(t, encode(self.signer, t, Message(M.OTA, 1, self.seq, body, up=1)), 1)

    def next(self, timeout: float = 5.0) -> Message:
        return self.got.get(timeout=timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def stack(tmp_path: Path, broker_factory: Callable[..., Broker]) -> Any:
    broker = broker_factory()
    cfg = replace(
        make_config(sqlite_config(tmp_path), broker.port), ota=OtaConfig(chunks_per_s=200, burst=8)
    )
    ct = ControllerThread(cfg, MASTER).start()
    assert ct.ctl is not None and ct.ctl.fleet is not None
    new = ct.call(ct.ctl.fleet.register, "ap-ota", SITE, "ribeira", "ap")
    dev = FakeDevice(broker.port, "ap-ota", new.key)
    yield ct, dev, make_release(tmp_path / "r.bin", size=40 * 1024)
    dev.close()
    ct.stop()


def test_offer_is_recorded_and_requests_are_served_from_the_release_file(stack: Any) -> None:
    ct, dev, path = stack
    fleet = ct.ctl.fleet
    out = ct.call(fleet.offer_release, "ap-ota", str(path))
    offer = dev.next()
    assert offer.type == M.OTA and offer.epoch == out["epoch"] and offer.seq == out["seq"]
    kind, rid, version, display, size, digest, piece, _ = ota.check_downlink(offer.body)
    assert version == 1000001
    raw = path.read_bytes()
    m = MF.parse(raw)
    assert (kind, size, piece, display) == ("offer", m.size, m.chunk, "1.0.1")
    assert digest == hashlib.sha256(raw[: m.size]).digest() and rid == digest[:8]
    row = ct.call(fleet.command, out["epoch"], out["seq"])
    assert row["op"] == ota.OFFER_OP and row["status"] == "sent"  # settled by the device's ACK
    # the manifest in pieces, then payload chunks, exactly the file's bytes
    pieces = (m.size + piece - 1) // piece
    dev.send(ota.request(rid, M.PART_MANIFEST, 0, pieces))
    got = b"".join(ota.check_downlink(dev.next().body)[5] for _ in range(pieces))
    assert got == raw[: m.size]
    dev.send(ota.request(rid, M.PART_PAYLOAD, m.chunks - 2, 4))  # clipped to the release
    last = [ota.check_downlink(dev.next().body) for _ in range(2)]
    assert [x[3] for x in last] == [m.chunks - 2, m.chunks - 1]
    assert last[1][5] == raw[m.size + (m.chunks - 1) * m.chunk :]
    dev.send(ota.request(rid, M.PART_PAYLOAD, 1, 1, 512))  # split for a small device
    parts = [ota.check_downlink(dev.next().body) for _ in range(4)]
    assert [(x[3], x[4]) for x in parts] == [(1, 0), (1, 512), (1, 1024), (1, 1536)]
    assert b"".join(x[5] for x in parts) == raw[m.size + m.chunk : m.size + 2 * m.chunk]
    with pytest.raises(queue.Empty):
        dev.next(0.3)
    dev.send(ota.status(rid, ota.OS_DOWNLOADED, ota.OR_OK, m.chunks, m.chunks))
    ct.wait(lambda c: (fleet.ota_status("ap-ota") or {}).get("state") == "downloaded")
    st = fleet.ota_status("ap-ota")
    assert st["result"] == "ok" and st["chunks_served"] == 3 and st["chunks_refetched"] == 0


def test_unknown_release_gets_gone_and_a_forged_request_nothing(stack: Any) -> None:
    ct, dev, _ = stack
    dev.send(ota.request(b"\x01" * 8, M.PART_PAYLOAD, 0, 1))
    assert ota.check_downlink(dev.next().body) == ("gone", b"\x01" * 8)
    t = dev.base + "otr"
    forged = encode(Signer(b"\x09" * 32), t, Message(M.OTA, 1, 99, ota.gone(b"\x01" * 8), up=1))
    dev.client.publish(t, forged, 1)
    ct.wait(lambda c: c.fleet.ota.dropped >= 1, what="the forged request counted")
    with pytest.raises(queue.Empty):
        dev.next(0.3)


def test_corruption_hook_flips_one_byte_once(stack: Any) -> None:
    ct, dev, path = stack
    fleet = ct.ctl.fleet
    rid = bytes.fromhex(ct.call(fleet.offer_release, "ap-ota", str(path))["release"])
    dev.next()
    raw = path.read_bytes()
    m = MF.parse(raw)
    fleet.ota.corrupt_once.add(("ap-ota", M.PART_PAYLOAD, 3))
    want = raw[m.size + 3 * m.chunk : m.size + 4 * m.chunk]
    dev.send(ota.request(rid, M.PART_PAYLOAD, 3, 1))
    bad = ota.check_downlink(dev.next().body)[5]
    assert bad != want and bad[1:] == want[1:]
    dev.send(ota.request(rid, M.PART_PAYLOAD, 3, 1))
    assert ota.check_downlink(dev.next().body)[5] == want
    assert fleet.ota_status("ap-ota")["chunks_refetched"] == 1


def test_rate_limit_paces_a_burst_per_release(stack: Any) -> None:
    ct, dev, path = stack  # 200 chunks/s, burst 8
    rid = bytes.fromhex(ct.call(ct.ctl.fleet.offer_release, "ap-ota", str(path))["release"])
    dev.next()
    t0 = time.monotonic()
    for i in range(0, 20, 4):
        dev.send(ota.request(rid, M.PART_PAYLOAD, i, 4))
    got = sorted(ota.check_downlink(dev.next().body)[3] for _ in range(20))
    took = time.monotonic() - t0
    assert got == list(range(20))
    assert took >= (20 - 8) / 200 * 0.8, took  # 12 chunks past the burst at 200/s: >= 60 ms


def test_plan_and_bucket_are_pure() -> None:
    rel = ReleaseInfo(b"r" * 8, "/x", 3000, b"d" * 32, 1, "1", 2048, 5000)
    assert plan(rel, M.PART_MANIFEST, 0, 4) == [(0, 0, 2048), (1, 2048, 952)]
    assert plan(rel, M.PART_PAYLOAD, 2, 4) == [(2, 3000 + 4096, 904)]
    assert plan(rel, M.PART_PAYLOAD, 3, 1) == []
    b = TokenBucket(10.0, 2.0)
    assert [b.reserve(0.0) for _ in range(4)] == [0.0, 0.0, pytest.approx(0.1), pytest.approx(0.2)]
