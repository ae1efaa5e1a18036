"""Test and benchmark helpers for the firmware agent: write a device's flash directory, start the
real micropython agent on it, and observe/command it from CPython through a real broker with the
shared protocol package (every uplink is verified with the device key)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.provisioning.bundles import broker_block, device_bundle
from protocol import messages as M
from protocol import topics
from protocol.envelope import Message, decode, encode
from protocol.errors import ProtocolError
from protocol.sign import Signer
from tests.support.upy import ROOT, micropython_binary
from tools.binaries import device_root
from tools.firmware_build import build

# The heap the agent runs in for tests: the issue's 64 KiB, on this 64-bit unix port (where objects
# are pointer-sized and GC blocks 32 bytes: a 32-bit ESP32 needs less for the same code). See
# firmware/README.md, "Heap"; IDU_TEST_HEAP overrides it to probe other sizes.
HEAP = os.environ.get("IDU_TEST_HEAP", "64K")
SITE = "porto"


def key_for(device: str) -> bytes:
    return bytes((i * 7 + len(device) + sum(device.encode())) & 0xFF for i in range(32))


def make_flash(root: Path, name: str, port: int, kind: str = "ap", **extra: Any) -> Path:
    """A flash directory holding config.json for device `name`; extra keys override or add
    fields (even "device", to test validation)."""
    flash = root / name
    flash.mkdir(parents=True, exist_ok=True)
    defaults: dict[str, Any] = {
        "interval": 1,
        "keepalive": 10,
        "backoff": {"base_ms": 200, "cap_ms": 2000},
        "replay_rate": 200,
        "sim": {"speed": 20, "seed": 7},
        # v1 behaviour (forget at PUBACK) unless a test opts in: the Observer confirms nothing
        # unless asked to (Observer.confirm_every)
        "confirm_ms": 0,
    }
    broker = broker_block("127.0.0.1", port, name, None)
    cfg = device_bundle(name, SITE, "ribeira", kind, key_for(name), broker, **defaults)
    cfg.update(extra)  # after: extra may replace the identity too
    (flash / "config.json").write_text(json.dumps(cfg))
    return flash


@dataclass
class Agent:
    """One micropython agent process."""

    flash: Path
    heap: str = HEAP
    entry: Path = ROOT / "firmware" / "main.py"  # or a wrapper that runs it
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    prefix: list[str] = field(default_factory=list)  # runs micropython under it (debian_hosts)

    @property
    def log_path(self) -> Path:
        return self.flash / "console.log"

    def start(self) -> Agent:
        build()
        env = dict(os.environ)
        root = device_root()  # a short path, as on a device (tools/binaries.py says why)
        env["MICROPYPATH"] = f"{root}:{root / 'firmware'}"
        entry = self.entry
        if entry.is_relative_to(ROOT):
            entry = root / entry.relative_to(ROOT)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                micropython_binary(),
                "-X",
                f"heapsize={self.heap}",
                str(entry),
                str(self.flash),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        self.runs += 1
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def console(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Seen:
    t: float
    device: str
    channel: str
    msg: Message
    size: int


@dataclass
class Observer:
    """A CPython subscriber to idu/1/#: verifies every payload with the device's key."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    cleared: list[tuple[float, str]] = field(default_factory=list)  # retained DEATHs deleted
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: Any = None
    cmd_seq: int = 0
    cmd_epoch: int = 7
    persistent: bool = False  # keep the session (and queued messages) across broker restarts
    # > 0: act as a controller confirming delivery (docs/PROTOCOL.md 16): every this many
    # seconds at most, a CONFIRM to each device naming the uplink messages seen since the last
    confirm_every: float = 0.0
    confirming: bool = True  # False: see messages but confirm nothing (a dead controller)
    confirms: list[tuple[str, int]] = field(default_factory=list)  # (device, payload bytes)
    _book: Any = None

    def start(self) -> Observer:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"obs-{self.port}",
            clean_session=not self.persistent,
        )
        c.on_message = self._on_message
        c.on_connect = lambda cl, *_: cl.subscribe("idu/1/#", qos=1)
        c.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # floats work
        c.connect("127.0.0.1", self.port, keepalive=30)
        c.loop_start()
        self.client = c
        if self.confirm_every > 0:
            from controller.domain.confirm import ConfirmBook

            self._book = ConfirmBook(self.confirm_every)
            threading.Thread(target=self._confirm_loop, daemon=True).start()
        return self

    def _confirm_loop(self) -> None:
        while self.client is not None and self._book is not None:
            time.sleep(self.confirm_every / 4)
            if not self.confirming:
                continue
            with self.lock:
                due = self._book.due(time.monotonic())
            for device, flat in due:
                self.cmd_seq += 1
                topic = f"idu/1/{SITE}/{device}/cmd"
                msg = Message(
                    M.CONFIRM, self.cmd_epoch, self.cmd_seq, {M.F_RANGES: flat}, ts=int(time.time())
                )
                payload = encode(Signer(key_for(device)), topic, msg)
                self.client.publish(topic, payload, qos=1)
                with self.lock:
                    self.confirms.append((device, len(payload)))

    def stop(self) -> None:
        self._book = None
        if self.client is not None:
            # DISCONNECT first: the network thread then ends at once, where loop_stop() alone
            # waits out its select() (1 s per test)
            self.client.disconnect()
            self.client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        parts = m.topic.split("/")
        if len(parts) != 5 or parts[4] in ("cmd", "cfg", "ota"):
            return
        if topics.is_death_clear(m.topic, m.payload):
            with self.lock:
                self.cleared.append((time.monotonic(), parts[3]))
            return
        try:
            msg = decode(m.payload, m.topic, Signer(key_for(parts[3])))
        except ProtocolError as e:
            with self.lock:
                self.bad.append((m.topic, e.code))
            return
        with self.lock:
            self.seen.append(Seen(time.monotonic(), parts[3], parts[4], msg, len(m.payload)))
            if self._book is not None and self.confirming:
                self._book.set_confirming(parts[3], True)
                self._book.add(parts[3], msg.epoch, msg.seq)

    def items(self, device: str | None = None, channel: str | None = None) -> list[Seen]:
        with self.lock:
            return [
                s
                for s in self.seen
                if (device is None or s.device == device)
                and (channel is None or s.channel == channel)
            ]

    def wait(self, pred: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def reports(self, device: str) -> list[Seen]:
        return self.items(device, "rep")

    def command(
        self,
        device: str,
        op: int,
        args: dict[int, Any] | None = None,
        ttl: int = 60,
        ts: int | None = None,
        key: bytes | None = None,
        channel: str = "cmd",
        seq: int | None = None,
    ) -> tuple[int, int, bytes]:
        """Publish a signed COMMAND (or CONFIG with channel="cfg"); returns (epoch, seq, bytes)."""
        if seq is None:
            self.cmd_seq += 1
            seq = self.cmd_seq
        now = int(time.time()) if ts is None else ts
        if channel == "cmd":
            body: dict[int, Any] = {M.C_OP: op, M.C_EXPIRES: now + ttl}
            if args:
                body[M.C_ARGS] = args
            mtype = M.COMMAND
        else:
            body = dict(args or {})
            mtype = M.CONFIG
        topic = f"idu/1/{SITE}/{device}/{channel}"
        payload = encode(
            Signer(key or key_for(device)), topic, Message(mtype, self.cmd_epoch, seq, body, ts=now)
        )
        self.publish_raw(topic, payload)
        return self.cmd_epoch, seq, payload

    def publish_raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def ack_for(self, device: str, seq: int, timeout: float = 10) -> Message:
        def find() -> Message | None:
            for s in self.items(device, "ack"):
                body = s.msg.body
                assert isinstance(body, dict)
                if body[M.A_CMD_SEQ] == seq and body[M.A_CMD_EPOCH] == self.cmd_epoch:
                    return s.msg
            return None

        msg: Message = self.wait(find, timeout, f"ack of command {seq} from {device}")
        return msg


def ring_count(flash: Path) -> int:
    """Reports waiting in a (running) agent's flash ring; 0 while it rewrites the header."""
    import struct

    try:
        hdr = (flash / "ring.hdr").read_bytes()
    except FileNotFoundError:
        return 0
    return struct.unpack("<IIII", hdr)[2] if len(hdr) == 16 else 0


def ring_entries(flash: Path) -> list[Message]:
    """The reports waiting in a (stopped) agent's flash ring, oldest first, decoded."""
    import struct

    hdr = (flash / "ring.hdr").read_bytes()
    _magic, head, count, _dropped = struct.unpack("<IIII", hdr)
    cfg = json.loads((flash / "config.json").read_text())
    capacity, slot = cfg.get("buffer", 256), 448
    data = (flash / "ring.dat").read_bytes()
    topic = f"idu/1/{cfg['site']}/{cfg['device']}/rep"
    out = []
    for k in range(count):
        off = ((head + k) % capacity) * slot
        n = struct.unpack_from("<H", data, off)[0]
        out.append(decode(data[off + 2 : off + 2 + n], topic, Signer(key_for(cfg["device"]))))
    return out


def check_stream(obs: Observer, device: str) -> tuple[list[tuple[int, int]], int]:
    """Unique (epoch, seq) of reports in arrival order, and the count of duplicates."""
    seen: set[tuple[int, int]] = set()
    order: list[tuple[int, int]] = []
    dups = 0
    for s in obs.reports(device):
        k = (s.msg.epoch, s.msg.seq)
        if k in seen:
            dups += 1
            continue
        seen.add(k)
        order.append(k)
    return order, dups


def missing_seqs(obs: Observer, device: str, epoch: int, upto: int) -> list[int]:
    """Seqs 1..upto of epoch that were neither a report, a birth, nor a DEATH reserved for a
    will (birth - 1): what was lost."""
    used = {s.msg.seq for s in obs.items(device) if s.msg.epoch == epoch}
    births = {s.msg.seq for s in obs.items(device, "birth") if s.msg.epoch == epoch}
    used |= {b - 1 for b in births}
    return [q for q in range(1, upto + 1) if q not in used]


def persistent_broker(factory: Callable[..., Any]) -> Any:
    """A broker whose persistence really works: Mosquitto started as root drops to the
    `mosquitto` user and cannot write into a root-owned workdir ("Error saving in-memory
    database ... Permission denied"), so sessions would not survive a restart."""
    import os

    return factory(extra=["user root"] if os.geteuid() == 0 else [])
