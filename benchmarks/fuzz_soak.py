"""Fuzz soak: a million fuzzed and mutated payloads at a live controller (issue 10, item 8).

A real Controller (verify, admission, replay window, below-window store check, batch commit,
PUBACK after commit, quarantine) runs on its own thread with SQLite, subscribed to a private
Mosquitto. A publisher process generates payloads from a seed and publishes them through the
broker at QoS 1, as devices would, in chunks of --chunk messages (each chunk's PUBACKs awaited
before the next is generated, so the publisher runs at the rate the broker takes them; paho
reuses message ids, so there is no 65,535 limit as with `mosquitto_pub -l`).

Why through the broker and not into Pipeline.on_message: the broker is not the bottleneck here.
It costs about 6.5 us a message in and out (docs/../PLATFORM-NOTES), the controller's paho
link 31 us and a refused message a few us more, so a million payloads take a few minutes end to
end, and the path a hostile device really has (MQTT framing, the link's manual PUBACKs,
backpressure, the parked unknown-device lookups) is exercised too.

The mix, per payload (seeded; the same --seed gives the same corpus):
  - valid: a fresh, correctly signed REPORT, BATCH, EVENT, BIRTH or ACK of a registered device;
  - mutated: one of those with 1-3 byte-level mutations (bit flips, truncation, insertion,
    deletion, corrupted length headers, reserved bytes, duplicated slices, splices), either as
    is (the MAC decides) or with the mutated prefix re-sealed by the device's key (so the parser,
    the body checks and admission decide);
  - edges: correctly signed messages holding what a store cannot (2**63, 2**64-1, 2**53+1, -1 in
    uint fields, NaN, inf, U+0000, invalid UTF-8, nil optional fields, no ts and no up, ts = 1,
    huge epochs and seqs);
  - wrong topics (unknown device, another device's topic, wrong channel) and random bytes.

Checks, on the last line as JSON:
  payloads          published (and PUBACKed by the broker);
  received          the controller's received counter (must equal payloads);
  crashes           controller thread ended before stop, an exception reaching the event loop,
                    or a log record carrying a traceback (must be 0);
  stored_wrongly    rows in `messages` whose (device, epoch, seq, type) no payload that decodes
                    validly on CPython (protocol.envelope.decode with the device's key) carries
                    (must be 0);
  stored, valid_keys, quarantined, broker_dropped, rss_start_mb, rss_end_mb, rss_growth_mb
                    (controller process RSS after the first chunk vs at the end),
  refused_by_reason, seconds, payloads_per_s.

    .venv/bin/python benchmarks/fuzz_soak.py --quick          # 20,000 payloads, ~15 s
    .venv/bin/python benchmarks/fuzz_soak.py                  # 1,000,000 payloads
    .venv/bin/python benchmarks/fuzz_soak.py --payloads 5000000 --max-s 3600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

from benchmarks.ingest import (  # noqa: E402
    AP_REPORT,
    ControllerRunner,
    controller_config,
    start_broker,
)
from controller import registry  # noqa: E402
from controller.config import StoreConfig  # noqa: E402
from controller.keys import MasterKey  # noqa: E402
from controller.security.broker_stats import DROPPED  # noqa: E402
from controller.store import open_store  # noqa: E402
from protocol import messages as M  # noqa: E402
from protocol.envelope import TRAILER, decode, seal, write_head  # noqa: E402
from protocol.errors import ProtocolError  # noqa: E402
from protocol.sign import Signer  # noqa: E402
from protocol.writer import Writer  # noqa: E402

SITE = "porto"
DEVICES = 20
TAIL = len(TRAILER) + 16  # trailer + tag: what re-sealing replaces
INTERESTING = b"\xc1\xd4\xc7\xff\x00\x7f\x80\x90\xa0\xc0\xc2\xc3\xca\xcb\xcf\xd3\xdd\xdf\xdb\xc6"
EDGE_INTS = [2**63, 2**64 - 1, 2**53 + 1, -(2**53) - 1, -1, -(2**63), 2**32, 2**16, 256]
EDGE_VALUES: list[object] = [
    *EDGE_INTS,
    float("nan"),
    float("inf"),
    float("-inf"),
    "a\x00b",
    b"\xff\xfe",
    None,
    True,
    "",
    [],
    {},
    1.5,
    "x" * 300,
]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


# --- the corpus (publisher process) ----------------------------------------------------------


def raw(signer: Signer, topic: str, mtype: int, epoch: Any, seq: Any, ts: Any, up: Any,
        body: Any) -> bytes | None:  # fmt: skip
    """A signed payload written without the encoder's checks (edges the decoder must refuse)."""
    w = Writer(bytearray(4096))
    try:
        write_head(w, mtype, epoch, seq, ts, up)
        w.value(body, 1)
        n = seal(w, signer, topic.encode())
    except (ProtocolError, ValueError, TypeError, OverflowError, IndexError):
        return None
    return bytes(w.mv[:n])


def mutate(rng: random.Random, b: bytes, others: list[bytes]) -> bytes:
    """One byte-level mutation (the operators of tests/upy/mutate.py)."""
    out = bytearray(b)
    n = len(out)
    op = rng.randrange(8)
    if op == 0 and n:
        for _ in range(1 + rng.randrange(3)):
            out[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 1:
        out = out[: rng.randrange(n + 1)]
    elif op == 2:
        p = rng.randrange(n + 1)
        ins = bytes(
            rng.choice(INTERESTING) if rng.randrange(2) else rng.randrange(256)
            for _ in range(1 + rng.randrange(4))
        )
        out = out[:p] + ins + out[p:]
    elif op == 3 and n:
        p = rng.randrange(n)
        out = out[:p] + out[p + 1 + rng.randrange(4) :]
    elif op == 4:
        hs = [i for i, c in enumerate(out) if 0x80 <= c <= 0xBF or 0xC4 <= c <= 0xDF]
        if hs:
            p = rng.choice(hs)
            c = out[p]
            if c <= 0x9F:
                out[p] = (c & 0xF0) | rng.randrange(16)
            elif c <= 0xBF:
                out[p] = 0xA0 | rng.randrange(32)
            elif p + 1 < n:
                out[p + 1] = rng.choice((0xFF, rng.randrange(256), (out[p + 1] + 1) & 0xFF))
    elif op == 5 and n:
        out[rng.randrange(n)] = rng.choice(INTERESTING)
    elif op == 6 and n:
        p = rng.randrange(n)
        d = rng.randrange(n + 1)
        out = out[:d] + out[p : p + 1 + rng.randrange(8)] + out[d:]
    elif others:
        o = rng.choice(others)
        out = out[: rng.randrange(n + 1)] + o[rng.randrange(len(o) + 1) :]
    return bytes(out)


class Corpus:
    """Seeded payload generator for DEVICES registered devices."""

    def __init__(self, keys: list[tuple[str, bytes]], seed: int):
        self.rng = random.Random(seed)
        self.devs = [(d, Signer(k)) for d, k in keys]
        self.signers = dict(self.devs)
        self.seq = {d: 0 for d, _ in keys}
        self.recent: list[bytes] = []

    def _valid(self, dev: str, signer: Signer) -> tuple[str, bytes]:
        rng = self.rng
        self.seq[dev] += 1
        seq = self.seq[dev]
        now = int(time.time())
        r = rng.random()
        if r < 0.6:
            body: Any = {k: v + rng.randrange(-3, 4) for k, v in AP_REPORT.items()}
            mtype = M.REPORT
        elif r < 0.7:
            body = [[rng.randrange(600), dict(AP_REPORT)] for _ in range(1 + rng.randrange(4))]
            mtype = M.BATCH
        elif r < 0.85:
            body = {0: rng.randrange(1, 7), 1: rng.randrange(3), 2: f"fuzz {seq}"}
            mtype = M.EVENT
        elif r < 0.95:
            body = {0: f"1.{rng.randrange(9)}", 1: "sim", 2: rng.randrange(6), 5: "ap", 6: 60}
            mtype = M.BIRTH
        else:
            body = {0: 1, 1: rng.randrange(1, 1000), 2: rng.randrange(6)}
            mtype = M.ACK
        topic = f"idu/1/{SITE}/{dev}/{M.CHANNEL[mtype]}"
        up = rng.randrange(10**6) if rng.random() < 0.3 else None
        ts = None if up is not None and rng.random() < 0.5 else now - rng.randrange(600)
        p = raw(signer, topic, mtype, 1, seq, ts, up, body)
        assert p is not None
        return topic, p

    def _edge(self, dev: str, signer: Signer) -> tuple[str, bytes] | None:
        rng = self.rng
        now = int(time.time())
        mtype = rng.choice((M.REPORT, M.EVENT, M.BIRTH, M.ACK, M.BATCH, M.DEATH))
        topic = f"idu/1/{SITE}/{dev}/{M.CHANNEL[mtype]}"
        self.seq[dev] += 1
        epoch: Any = 1
        seq: Any = self.seq[dev]
        ts: Any = now
        up: Any = None
        v = rng.choice(EDGE_VALUES)
        where = rng.randrange(6)
        if where == 0:
            body: Any = dict(AP_REPORT)
            body[rng.choice(list(AP_REPORT))] = v
            if mtype != M.REPORT:
                body = {0: v, 1: 1, 2: v}
        elif where == 1:
            body = {0: rng.choice((v, 1)), 1: v, 2: rng.choice((v, "t")), 3: {0: v}}
        elif where == 2:
            epoch, seq = rng.choice(((v, seq), (1, v), (rng.choice(EDGE_INTS), seq)))
            body = dict(AP_REPORT)
        elif where == 3:
            ts, up = rng.choice(((None, None), (1, None), (v, None), (None, v), (2**32 - 1, None)))
            body = dict(AP_REPORT)
        elif where == 4:
            body = [[v, dict(AP_REPORT)]] if rng.randrange(2) else [[1, {1: v}]]
        else:
            body = {rng.choice((-1, 2**16, 2**63, 300)): v}
        mt = mtype if rng.random() < 0.9 else rng.choice((0, 11, 255, 2**16, -1))
        return topic, raw(signer, topic, mt, epoch, seq, ts, up, body) or b""

    def next(self) -> tuple[str, bytes]:
        rng = self.rng
        dev, signer = self.devs[rng.randrange(len(self.devs))]
        r = rng.random()
        if r < 0.30 or not self.recent:
            topic, p = self._valid(dev, signer)
            self.recent.append(p)
            if len(self.recent) > 64:
                self.recent.pop(0)
            return topic, p
        if r < 0.55:  # mutated, as is: the MAC (or the parser before it) refuses
            topic, p = self._valid(dev, signer)
            return topic, mutate(rng, p, self.recent)
        if r < 0.85:  # mutated prefix re-sealed with the device's key: the parser decides
            topic, p = self._valid(dev, signer)
            prefix = mutate(rng, p[:-TAIL], self.recent)
            if rng.random() < 0.3:
                prefix = mutate(rng, prefix, self.recent)
            return topic, prefix + TRAILER + signer.tag(topic.encode(), prefix)
        if r < 0.95:
            edge = self._edge(dev, signer)
            assert edge is not None
            return edge
        if r < 0.98:  # the wrong topic for a good payload
            topic, p = self._valid(dev, signer)
            other = rng.randrange(4)
            parts = topic.split("/")
            if other == 0:
                parts[3] = f"nosuch-{rng.randrange(8)}"
            elif other == 1:
                parts[3] = self.devs[(self.devs.index((dev, signer)) + 1) % len(self.devs)][0]
            elif other == 2:
                parts[4] = rng.choice(("rep", "evt", "birth", "ack", "death"))  # subscribed
            else:
                parts[2] = "elsewhere"
            return "/".join(parts), p
        n = rng.randrange(64)
        return f"idu/1/{SITE}/{dev}/rep", bytes(rng.randrange(256) for _ in range(n))

    def valid_key(self, topic: str, payload: bytes) -> tuple[str, int, int, int] | None:
        """(device, epoch, seq, type) if CPython's decoder accepts the payload on its topic
        with the key of the device the topic names; None otherwise."""
        parts = topic.split("/")
        signer = self.signers.get(parts[3]) if len(parts) == 5 and parts[2] == SITE else None
        if signer is None:
            return None
        try:
            m = decode(payload, topic, signer)
        except ProtocolError:
            return None
        return parts[3], m.epoch, m.seq, m.type


def publisher(
    port: int,
    keys: list[tuple[str, bytes]],
    total: int,
    chunk: int,
    seed: int,
    stop_at: float,
    out: Path,
    progress: Any,
) -> None:
    corpus = Corpus(keys, seed)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    sent = 0
    with open(out, "w") as f:
        while sent < total and time.time() < stop_at:
            info = None
            valid: list[str] = []
            for _ in range(min(chunk, total - sent)):
                topic, payload = corpus.next()
                k = corpus.valid_key(topic, payload)
                if k is not None:
                    valid.append("{} {} {} {}\n".format(*k))
                info = c.publish(topic, payload, qos=1)
                sent += 1
            assert info is not None
            info.wait_for_publish(300)
            f.writelines(valid)
            progress.put(sent)
    c.disconnect()
    c.loop_stop()
    progress.put(-1)


# --- the soak (controller process) -----------------------------------------------------------


class Watch(logging.Handler):
    """Counts log records that carry a traceback (an exception nobody handled on purpose)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.CRITICAL:
            self.tracebacks.append(f"{record.name}: {record.getMessage()[:200]}")


def counter(ctl: Any, name: str, label: str | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in ctl.metrics.registry.collect():
        for s in fam.samples:
            if s.name == name:
                out[s.labels.get(label, "") if label else ""] = s.value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--payloads", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 payloads")
    ap.add_argument("--max-s", type=float, default=1800.0, help="stop publishing after this")
    ap.add_argument("--chunk", type=int, default=20_000, help="payloads per PUBACKed chunk")
    ap.add_argument("--seed", type=int, default=20261202)
    args = ap.parse_args()
    total = 20_000 if args.quick else args.payloads
    workdir = Path(tempfile.mkdtemp(prefix="idufleet-fuzz-"))
    broker, port = start_broker(workdir)
    master_hex = os.urandom(32).hex()
    (workdir / "master.key").write_text(master_hex)
    master = MasterKey(bytes.fromhex(master_hex))
    store_cfg = StoreConfig(backend="sqlite", path=str(workdir / "idu.sqlite"))
    watch = Watch()
    logging.getLogger().addHandler(watch)
    loop_errors: list[str] = []
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        store = open_store(store_cfg)
        keys = [
            (d, registry.create_device(store, master, d, SITE, "foz", "ap").key)
            for d in (f"fz-{i:03d}" for i in range(DEVICES))
        ]
        store.close()
        cfg = controller_config(store_cfg, port, workdir, "fuzz-ctl", "", 500, 50)
        runner = ControllerRunner(cfg, master)
        runner.loop.set_exception_handler(
            lambda loop, ctx: loop_errors.append(str(ctx.get("message"))[:200])
        )
        runner.start()
        logging.getLogger().addHandler(watch)  # again: the controller may reset handlers
        ctl = runner.ctl
        received = ctl.metrics.received
        ctx = mp.get_context("spawn")  # no fork: the controller's threads hold locks
        progress: Any = ctx.Queue()
        valid_file = workdir / "valid.txt"
        pub = ctx.Process(
            target=publisher,
            args=(
                port,
                keys,
                total,
                args.chunk,
                args.seed,
                time.time() + args.max_s,
                valid_file,
                progress,
            ),
        )
        pub.start()
        sent = 0
        rss_start: float | None = None
        while True:
            n = progress.get(timeout=600)
            if n < 0:
                break
            sent = n
            if rss_start is None:  # warm: imports, caches and the first batches are in
                warm = time.monotonic() + 60
                while received._value.get() < sent and time.monotonic() < warm:
                    time.sleep(0.01)
                rss_start = rss_mb()
            print(
                f"published {sent:,}, controller received {int(received._value.get()):,}",
                file=sys.stderr,
            )
        pub.join(60)
        deadline = time.monotonic() + 600
        while received._value.get() < sent and time.monotonic() < deadline:
            if not runner.thread.is_alive():
                break
            time.sleep(0.05)
        while ctl.pipeline.batcher.first is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = runner.thread.is_alive()
        rss_end = rss_mb()
        by_reason = counter(ctl, "idufleet_messages_rejected_total", "reason")
        refused = {k: int(v) for k, v in by_reason.items() if v}
        quarantined = int(sum(counter(ctl, "idufleet_messages_quarantined_total", "kind").values()))
        dropped = ctl.metrics.broker.get(DROPPED)
        got = int(received._value.get())
        runner.stop()
        stopped_cleanly = not runner.thread.is_alive()
        seconds = time.monotonic() - t0

        valid = set()
        with open(valid_file) as f:
            for line in f:
                d, e, s, t = line.split()
                valid.add((d, int(e), int(s), int(t)))
        store = open_store(store_cfg)
        rows = store.conn.execute(  # type: ignore[attr-defined]
            "SELECT device_id, epoch, seq, mtype FROM messages"
        ).fetchall()
        store.close()
        wrong = [r for r in rows if tuple(r) not in valid]
        crashes = (0 if alive else 1) + (0 if stopped_cleanly else 1)
        crashes += len(loop_errors) + len(watch.tracebacks)
        for msg in (loop_errors + watch.tracebacks)[:10]:
            print("CRASH:", msg, file=sys.stderr)
        for r in wrong[:10]:
            print("STORED WRONGLY:", tuple(r), file=sys.stderr)
        result = {
            "payloads": sent,
            "received": got,
            "crashes": crashes,
            "stored_wrongly": len(wrong),
            "stored": len(rows),
            "valid_keys": len(valid),
            "quarantined": quarantined,
            "broker_dropped": int(dropped._value.get()) if dropped is not None else None,
            "rss_start_mb": round(rss_start or 0.0, 1),
            "rss_end_mb": round(rss_end, 1),
            "rss_growth_mb": round(rss_end - (rss_start or rss_end), 1),
            "refused_by_reason": dict(sorted(refused.items())),
            "seconds": round(seconds, 1),
            "payloads_per_s": round(sent / seconds),
            "seed": args.seed,
        }
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    if result.get("crashes") or result.get("stored_wrongly") or result["received"] != sent:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
