"""OTA transfer to one real agent (docs/OTA.md): a 512 KiB release pulled by the MicroPython agent
(unix port, 64 KiB heap) from a real controller through a real Mosquitto, against a baseline
measured in the same run: the same micropython binary in the same heap, with the agent's own MQTT
link code (firmware/link.py), fetching the same bytes through the same broker in the same
pattern (one 2 KiB item asked for at a time, answered in 512-byte pieces padded to the size of
the real DATA messages, QoS 1) but with no HMAC, no SHA-256, no flash writes, no verification.

    .venv/bin/python benchmarks/ota.py [--quick] [--size KIB]

Figures: transfer_s (offer to "downloaded" in the controller's mirror, the manifest's
verification reboot included), ratio_vs_raw_receive (target <= 2), chunks_refetched after a
SIGKILL of the agent mid-transfer (target <= 1), heap_high_water_bytes / heapsize_bytes (the
agent's live high water over the whole run, from its diagnostics), verify_phase_heap_bytes (live
heap at the end of the boot-time manifest check), ed25519_verify_ms (the device's whole manifest
verify_file: Ed25519 plus streaming the manifest through SHA-256). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from controller.keys import MasterKey  # noqa: E402
from protocol import manifest as MF  # noqa: E402
from protocol import messages as M  # noqa: E402
from protocol import ota  # noqa: E402
from protocol.envelope import Message, encode  # noqa: E402
from protocol.sign import Signer  # noqa: E402
from tests.controller.harness import ControllerThread, make_config, sqlite_config  # noqa: E402
from tests.firmware.harness import HEAP, Agent, make_flash  # noqa: E402
from tests.ota_kit import make_release, release_key, short_wait  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.upy import run_upy  # noqa: E402
from tools import release as R  # noqa: E402
from tools.firmware_build import build  # noqa: E402

PIECE = 512  # what the agent asks for (firmware/ota.py _SPLIT)

RAW = r"""
import sys
sys.path.insert(0, "ROOT/firmware/_mpy")
sys.path.insert(1, "ROOT/firmware")
sys.path.append(".frozen")
import asyncio, time
from link import Link, sleep_ms

ITEMS = SIZES


async def main():
    b = {"host": "127.0.0.1", "port": PORT, "tls": False, "ca": None, "username": "raw-rx",
         "password": None, "wait_ms": 10000}
    l = Link(b, "raw-rx", 30)
    await l.open(b"raw/will", b"x", (b"raw/data",))
    task = asyncio.create_task(l.run())
    req = bytearray(16)
    rx = l.rx
    n = 0
    t0 = time.ticks_ms()
    for i in range(len(ITEMS)):
        s = b"%d" % i
        req[: len(s)] = s
        await l.publish(b"raw/req", req, len(s), 0, 0)
        got = 0
        while got < ITEMS[i]:
            if not rx:
                await sleep_ms(2)
                continue
            topic, p = rx.pop(0)
            n += len(p)
            got += 1
    print("raw", time.ticks_diff(time.ticks_ms(), t0), n)
    task.cancel()
    l.close()


asyncio.run(main())
"""


def nodelay(c: mqtt.Client) -> None:
    s = c.socket()
    if s is not None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_receive(port: int, release: Path, heap: str) -> tuple[float, int]:
    """The baseline: seconds for the micropython link to receive the release's bytes."""
    raw = release.read_bytes()
    m = MF.parse(raw)
    overhead = len(
        encode(Signer(bytes(32)), "idu/1/porto/upy-ota/ota",
               Message(M.OTA, 1, 1, ota.data(b"r" * 8, 1, 100, b"x" * PIECE, 1536), ts=1))
    ) - PIECE  # fmt: skip
    items: list[bytes] = []
    for base, size in ((0, m.size), (m.size, m.total)):
        for o in range(0, size, m.chunk):
            items.append(raw[base + o : base + min(o + m.chunk, size)])
    pieces = [
        [it[o : o + PIECE] + bytes(overhead) for o in range(0, len(it), PIECE)] for it in items
    ]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-tx")

    def on_msg(cl: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        for p in pieces[int(msg.payload)]:
            cl.publish("raw/data", p, 1)

    ready = threading.Event()
    c.on_message = on_msg
    c.on_subscribe = lambda *_: ready.set()
    c.connect("127.0.0.1", port)
    nodelay(c)
    c.subscribe("raw/req", 0)
    c.loop_start()
    assert ready.wait(5)
    src = RAW.replace("ROOT", str(ROOT)).replace("PORT", str(port))
    src = src.replace("SIZES", repr([len(p) for p in pieces]))
    res = run_upy(src, heap=heap, timeout=120).check()
    c.loop_stop()
    c.disconnect()
    _, ms, n = res.stdout.split()[-3:]
    return int(ms) / 1000.0, int(n)


def wait(pred: Any, timeout: float, what: str, agent: Agent) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            print(agent.console()[-2000:], file=sys.stderr)
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one run of each (under a minute)")
    ap.add_argument("--size", type=int, default=512, help="release payload, KiB")
    ap.add_argument("--heap", default=HEAP)
    args = ap.parse_args()
    build()
    tmp = Path(tempfile.mkdtemp(prefix="ota-bench-"))
    broker = Broker(tmp / "broker").start()
    ct = ControllerThread(
        make_config(sqlite_config(tmp), broker.port), MasterKey(bytes(32))
    ).start()
    agent = None
    try:
        assert ct.ctl is not None and ct.ctl.fleet is not None
        fleet = ct.ctl.fleet
        dev = "upy-ota"
        new = ct.call(fleet.register, dev, "porto", "ribeira", "ap")
        pub = R.raw_public(release_key())
        flash = make_flash(tmp / "flash", dev, broker.port, key=new.key.hex(),
                           release_key=pub.hex(), interval=1)  # fmt: skip
        agent = Agent(short_wait(flash), heap=args.heap).start()
        wait(lambda: "connected" in agent.console(), 20, "the agent", agent)  # type: ignore[union-attr]
        size = args.size * 1024
        rel1 = make_release(tmp / "r1.bin", version="1.0.1", size=size)
        rel2 = make_release(tmp / "r2.bin", version="1.0.2", size=size)
        status = lambda: fleet.ota_status(dev) or {}  # noqa: E731

        t0 = time.monotonic()
        ct.call(fleet.offer_release, dev, str(rel1))
        wait(lambda: status().get("state") in ("downloading", "failed"), 120, "verified", agent)
        verified_s = time.monotonic() - t0
        wait(lambda: status().get("state") in ("downloaded", "failed"), 120, "download", agent)
        transfer_s = time.monotonic() - t0
        assert status()["result"] == "ok", status()
        raw_s, raw_bytes = raw_receive(broker.port, rel1, args.heap)

        # forced disconnect: SIGKILL mid-transfer of the next release, restart, count refetches
        ct.call(fleet.offer_release, dev, str(rel2))
        total = MF.parse(rel2.read_bytes()).chunks
        wait(lambda: status().get("chunks_served", 0) >= total // 2, 120, "half", agent)
        agent.kill()
        agent.start()
        wait(lambda: status().get("state") in ("downloaded", "failed"), 120, "resume", agent)
        refetched = status()["chunks_refetched"]
        assert status()["result"] == "ok", status()

        c = ct.call(fleet.send_command, dev, "diagnostics", None, 30)
        diag = ct.call(fleet.wait_command, c["epoch"], c["seq"], 15.0)["data"]
        con = agent.console()
        v = [(int(ms), int(h)) for ms, h in re.findall(r"ota verify ok (\d+) ms heap (\d+)", con)]
        out = {
            "release_bytes": size,
            "chunk_bytes": MF.parse(rel1.read_bytes()).chunk,
            "piece_bytes": PIECE,
            "transfer_s": round(transfer_s, 3),
            "offer_to_verified_s": round(verified_s, 3),
            "raw_receive_s": round(raw_s, 3),
            "raw_receive_bytes": raw_bytes,
            "ratio_vs_raw_receive": round(transfer_s / raw_s, 2),
            "chunks_refetched": refetched,
            "heap_high_water_bytes": diag[str(M.DG_HEAP_HIGH_WATER)],
            "heap_peak_allocated_bytes": diag[str(M.DG_HEAP_PEAK)],
            "heapsize_bytes": diag[str(M.DG_HEAP_SIZE)],
            "verify_phase_heap_bytes": max(h for _, h in v),
            "ed25519_verify_ms": min(ms for ms, _ in v),
            "memory_errors": con.count("MemoryError"),
            "heap": args.heap,
        }
        print(json.dumps(out))
    finally:
        if agent is not None:
            agent.kill()
        ct.stop()
        broker.stop()


if __name__ == "__main__":
    main()
