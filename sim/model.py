"""One simulated device as a sans-I/O state machine: fed the time and events (boot, connected,
PUBACK, downlink message, link lost), it answers with what to send. It mirrors firmware/agent.py
step by step rather than taking shortcuts, and runs the firmware's own pure code where the two
overlap (sim/firmware.py: backoff, ring order, tunables, the sim board's curves) plus the shared
protocol package (sealing, downlink opening, CommandGuard). No sockets, no asyncio, no clock of
its own: every method takes `now` (unix seconds, float) so tests can drive it.

What lives on "flash" (survives a reboot or power loss): the boot epoch, the offline ring, the
command guard, the settable config and the newest CONFIG ts. Everything else is per boot."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from protocol import confirm as pconfirm
from protocol import messages as M
from protocol.commands import CommandGuard
from protocol.downlink import open_downlink
from protocol.sealing import seal, write_head
from protocol.sign import Signer
from protocol.writer import Writer
from sim.firmware import backoff, board_sim, ring, tunables

FIRMWARE = "idu-sim 0.1.0"  # what BIRTH says: the controller can tell simulated devices apart
BOARD = "sim"
SLOT = 448  # firmware/agent.py _SLOT: the largest signed report a ring slot holds
HEALTH = (1, 2, 3, 5, 6)  # firmware/agent.py _HEALTH
HEAP_SIZE = 64 * 1024  # what diagnostics report as heap size: the device budget
HEAP_FREE = 9 * 1024  # a plausible free heap (firmware/README.md: ≈ 56 KB live of 64 KB)
# board_sim._st slots (firmware/board_sim.py)
_SPEED, _T0, _CLOCK0, _SIZE, _FAULT, _RNG = range(6)


@dataclass(frozen=True)
class DeviceSpec:
    """Who a device is: what provisioning produced for it."""

    id: str
    site: str
    zone: str
    kind: str
    key: bytes = field(repr=False)
    password: str | None = field(default=None, repr=False)
    seed: int = 1


@dataclass(frozen=True)
class Behaviour:
    """The settable config's starting values and the knobs firmware config.json carries
    (firmware/startup.py defaults), plus the simulator's own jitter. Validated here, once."""

    interval: int = 60
    batch: int = 1
    deadbands: tuple[tuple[int, int], ...] = ()
    buffer: int = 256
    replay_rate: int = 20
    keepalive: int = 60
    backoff_base_ms: int = 1000
    backoff_cap_ms: int = 60000
    jitter: float = 0.02  # each report period varies by up to this fraction (clock drift)
    clock: bool = True  # False: no RTC, ts only once learnt from a verified downlink
    # delivery confirmation's re-send timeout (firmware config confirm_ms); 0: a v1 device that
    # forgets a report at PUBACK and does not opt in (docs/PROTOCOL.md section 16)
    confirm_ms: int = 30000

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError("interval must be >= 1 second")
        if not 1 <= self.batch <= 4:
            raise ValueError("batch must be 1..4 (firmware/tunables.py)")
        if self.buffer < 4:
            raise ValueError("buffer must be at least 4 (firmware/startup.py)")
        if not 0 <= self.jitter < 0.5:
            raise ValueError("jitter must be in 0..0.5")
        if self.confirm_ms < 0:
            raise ValueError("confirm_ms must be >= 0 (0: no delivery confirmation)")


@dataclass
class Out:
    """One message to publish. kind: birth, clear, report, event, ack, death, bad."""

    topic: bytes
    payload: bytes
    qos: int = 1
    retain: bool = False
    kind: str = "report"


class DeviceModel:
    def __init__(self, spec: DeviceSpec, behaviour: Behaviour, now: float) -> None:
        self.spec = spec
        self.b = behaviour
        self.signer = Signer(spec.key)
        base = f"idu/1/{spec.site}/{spec.id}/"
        self.base = base.encode()
        self.t_death = (base + "death").encode()
        self.t_rep = (base + "rep").encode()
        self.t_evt = (base + "evt").encode()
        self.t_ack = (base + "ack").encode()
        self.t_birth = (base + "birth").encode()
        self.subscriptions = (self.base + b"cmd", self.base + b"cfg", self.base + b"ota")
        self.buf = bytearray(SLOT)
        # flash
        self.epoch = 0
        self.ring = ring.RingState(behaviour.buffer)
        self.slots: list[bytes | None] = [None] * behaviour.buffer
        self.keys: list[tuple[int, int]] = [(0, 0)] * behaviour.buffer  # (epoch, seq) per slot
        self.acked = [False] * behaviour.buffer  # the broker acked this entry at least once
        self.guard = CommandGuard()
        self.cfg: dict[str, Any] = {
            "kind": spec.kind,
            "interval": behaviour.interval,
            "batch": behaviour.batch,
            "deadbands": dict(behaviour.deadbands),
            "metrics": None,
        }
        self.cfg_ts = 0
        self.rng = backoff.Rng(spec.seed * 2654435761 ^ 0x5BD1E995)
        self.boot(now, M.BOOT_POWER_ON)
        # A fleet powers on over time, not in one instant: the first report comes anywhere in
        # the first period, so reports spread evenly (later boots keep the firmware's rhythm).
        self.next_sample = now + self.tick_s * self.rng.r16() / 65536

    # ---------------------------------------------------------------------- boot and clock
    def boot(self, now: float, reason: int) -> None:
        """A (re)boot: new epoch before anything is sent, seq from 1, the board restarted, the
        report schedule from now. Flash (ring, guard, config, epoch) is kept."""
        self.epoch = (self.epoch + 1) & 0xFFFFFFFF
        self.seq = 0
        self.boot_reason = reason
        self.boot_at = now
        self.death_seq = 0  # reserved for the will on the next CONNECT (0: none reserved)
        self.birth_seq = 0
        self.conn_death_seq = 0  # the will of the current connection (a reboot's goodbye)
        self.time_off: int | None = None
        self.reconnects = 0
        self.attempt = 0
        self.refused = [0, 0, 0, 0]  # bad tag, expired, replay, malformed (firmware order)
        self.reports = 0
        self.dropped_event = self.ring.dropped
        self.last_dropped = self.ring.dropped
        self.ring.sent = 0  # RAM: after a boot every entry counts as unsent
        self.t_mark = now  # the oldest entry's last progress (firmware Agent.t_mark)
        self.resends = 0  # re-send passes
        self.confirmed = 0  # ring entries freed by a CONFIRM
        rng = backoff.Rng(self.spec.seed * 7919 + len(self.spec.id) + self.epoch)
        self.board = [1000, 0, int(now), 40 + rng.r16() % 80, -1, rng]
        self.setup_metrics(now)

    def setup_metrics(self, now: float) -> None:
        """firmware Agent.setup_metrics: the ids to report, deadbands, batch rows, schedule."""
        cfg = self.cfg
        kind_ids = range(16, 30) if cfg["kind"] == "ap" else range(48, 64)
        self.ids = [
            i for i in HEALTH + tuple(kind_ids) if cfg["metrics"] is None or i in cfg["metrics"]
        ]
        n = len(self.ids)
        self.vals = [0] * n
        self.last = [0] * n
        self.have_last = False
        self.db = [int(cfg["deadbands"].get(i, 0)) for i in self.ids]
        self.any_db = any(self.db)
        self.batch_rows: list[tuple[float, list[int]]] = []
        period = float(cfg["interval"])
        self.tick_s = period / 4 if self.any_db else period
        self.next_sample = now + self._jittered(self.tick_s)
        # Due half a tick early: the firmware sleeps whole ticks and is never early, while a
        # jittered tick may be, and must not skip a whole period for it.
        self.due_at = now + period - self.tick_s / 2

    def _jittered(self, s: float) -> float:
        j = self.b.jitter
        if not j:
            return s
        return float(s * (1 - j + 2 * j * self.rng.r16() / 65536))

    def uptime(self, now: float) -> int:
        return int(now - self.boot_at)

    def unix(self, now: float) -> int | None:
        """Wall-clock seconds, or None without a clock (firmware Agent.now)."""
        if self.b.clock:
            return int(now)
        if self.time_off is not None:
            return self.time_off + self.uptime(now)
        return None

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def seal_ctl(self, topic: bytes, mtype: int, body: Any, now: float, seq: int = 0) -> bytes:
        """A control message (will, birth, event, ack, death); seq 0: the next one."""
        if not seq:
            seq = self.next_seq()
        w = Writer(self.buf)
        write_head(w, mtype, self.epoch, seq, self.unix(now), self.uptime(now))
        w.value(body, 1)
        return bytes(self.buf[: seal(w, self.signer, topic)])

    # ---------------------------------------------------------------------- connectivity
    def will(self, now: float) -> tuple[bytes, bytes]:
        """The will for the next CONNECT: a DEATH (reason 0) with the reserved seq. The DEATH and
        BIRTH seqs are reserved together (death = birth - 1) and reused while no CONNECT left."""
        if not self.death_seq:
            self.death_seq = self.next_seq()
            self.birth_seq = self.next_seq()
        return self.t_death, self.seal_ctl(
            self.t_death, M.DEATH, {M.D_REASON: M.DEATH_LOST}, now, self.death_seq
        )

    def connected(self, now: float) -> list[Out]:
        """CONNACK accepted: BIRTH, the retained-DEATH clear, then the events owed."""
        self.attempt = 0
        st = self.ring
        birth = {
            M.B_FIRMWARE: FIRMWARE,
            M.B_BOARD: BOARD,
            M.B_BOOT_REASON: self.boot_reason,
            M.B_CONFIG_HASH: self.config_hash(),
            M.B_SAFE_MODE: False,
            M.B_KIND: self.cfg["kind"],
            M.B_INTERVAL: self.cfg["interval"],
            M.B_BUFFERED: st.count,
            M.B_CONFIRM: M.CONFIRM_V1 if self.b.confirm_ms else 0,
        }
        out = [
            Out(
                self.t_birth,
                self.seal_ctl(self.t_birth, M.BIRTH, birth, now, self.birth_seq),
                kind="birth",
            ),
            Out(self.t_death, b"", 0, True, "clear"),
        ]
        if st.dropped != self.dropped_event:
            self.dropped_event = st.dropped
            body = {M.E_CODE: M.EV_BUFFER_DROPPED, M.E_SEVERITY: 1, M.E_DATA: {0: st.dropped}}
            out.append(Out(self.t_evt, self.seal_ctl(self.t_evt, M.EVENT, body, now), kind="event"))
        self.conn_death_seq = self.death_seq
        return out

    def link_closed(self, connect_sent: bool) -> None:
        """The link dropped or a connect failed. A will the broker may hold is never reused."""
        if connect_sent:
            self.death_seq = 0

    def reconnect_delay(self) -> float:
        """Seconds before the next attempt: the firmware's capped exponential full jitter."""
        self.reconnects += 1
        d = backoff.delay_ms(
            self.attempt, self.b.backoff_base_ms, self.b.backoff_cap_ms, self.rng.r16()
        )
        self.attempt += 1
        return float(d) / 1000.0

    def goodbye(self, now: float) -> Out:
        """A commanded reboot's DEATH (reason 2, the connection's reserved seq, retained)."""
        body = {M.D_REASON: M.DEATH_REBOOT}
        p = self.seal_ctl(self.t_death, M.DEATH, body, now, self.conn_death_seq)
        return Out(self.t_death, p, 1, True, "death")

    # ---------------------------------------------------------------------- reports
    def config_hash(self) -> bytes:
        h: bytes = tunables.config_hash(self.cfg)
        return h

    def sample(self, now: float) -> None:
        """The sim board's own sample() (firmware/board_sim.py) on this device's board state."""
        board_sim._st = self.board
        t = int((now - self.boot_at) * 1000)
        board_sim.ms = lambda: t
        board_sim.sample(self.ids, self.vals, self.cfg["interval"])

    def next_due(self) -> float:
        return float(self.next_sample)

    def tick(self, now: float) -> int:
        """Run the reporter if its time has come (firmware Agent.reporter): sample, report when
        the interval is due or a metric moved past its deadband; sealed reports go to the ring.
        Returns the number of reports made (0 or 1)."""
        if now < self.next_sample:
            return 0
        self.next_sample = now + self._jittered(self.tick_s)
        period = self.cfg["interval"]
        self.sample(now)
        ids, vals, last, db = self.ids, self.vals, self.last, self.db
        st = self.ring
        moved = False
        for i in range(len(ids)):
            m = ids[i]
            if m == 1:
                vals[i] = self.uptime(now)
            elif m == 2:
                vals[i] = HEAP_FREE + (self.rng.r16() & 1023)
            elif m == 3:
                vals[i] = -55 - (self.rng.r16() & 7)
            elif m == 5:
                vals[i] = st.count
            elif m == 6:
                vals[i] = st.dropped - self.last_dropped
            if db[i] and self.have_last and abs(vals[i] - last[i]) >= db[i]:
                moved = True
        if now < self.due_at - 1e-6 and not moved:
            return 0
        self.due_at = now + period - self.tick_s / 2
        last[:] = vals
        self.have_last = True
        self.last_dropped = st.dropped
        if self.cfg["batch"] > 1:
            self.batch_rows.append((now, list(vals)))
            if len(self.batch_rows) < self.cfg["batch"]:
                return 0
        w = Writer(self.buf)
        batch = self.batch_rows
        write_head(
            w,
            M.BATCH if batch else M.REPORT,
            self.epoch,
            self.next_seq(),
            self.unix(now),
            self.uptime(now),
        )
        rows = batch if batch else [(now, vals)]
        if batch:
            w.array_head(len(rows))
        for t, row in rows:
            if batch:
                w.array_head(2)
                w.integer(int(now - t))
            w.map_head(len(ids))
            for i in range(len(ids)):
                w.integer(ids[i])
                w.integer(row[i])
        self.batch_rows = []
        n = seal(w, self.signer, self.t_rep)
        self.push(bytes(self.buf[:n]), self.seq)
        self.reports += 1
        return 1

    def push(self, payload: bytes, seq: int) -> bool:
        """Append to the offline ring (the firmware's RingState decides the slot and drops the
        oldest when full). True when an old entry was dropped."""
        before = self.ring.dropped
        i = self.ring.push()
        self.slots[i] = payload
        self.keys[i] = (self.epoch, seq)
        self.acked[i] = False
        return bool(self.ring.dropped != before)

    def next_slot(self) -> int:
        """The ring slot the drain sends next (firmware RingState.next): -1 for none."""
        i: int = self.ring.next()
        return i

    def head(self) -> bytes | None:
        """The oldest buffered report."""
        i = self.ring.peek()
        return None if i < 0 else self.slots[i]

    def delivered(self, i: int, now: float) -> bool:
        """The broker acked the report in slot i (firmware Agent.drain): a v1 device forgets it,
        one that confirms only marks it sent. True the first time this report was acked (a
        re-send is not a new report)."""
        first = not self.acked[i]
        self.acked[i] = True
        if not self.b.confirm_ms:
            self.pop()
            return first
        if not self.ring.sent:
            self.t_mark = now  # the oldest is out: its clock starts
        self.ring.done(i)
        return first

    def pop(self) -> None:
        """Free the oldest entry."""
        i = self.ring.peek()
        if i >= 0:
            self.slots[i] = None
        self.ring.pop()

    def resend_at(self) -> float | None:
        """When a re-send pass is due if nothing is confirmed before (None: nothing waits)."""
        st = self.ring
        if not self.b.confirm_ms or not st.sent or st.sent < st.count:
            return None
        return float(self.t_mark + self.b.confirm_ms / 1000.0)

    def resend_due(self, now: float) -> bool:
        """Start a re-send pass if it is due (firmware Agent.drain): everything sent, the oldest
        without progress for confirm_ms. True when one started."""
        at = self.resend_at()
        if at is None or now <= at:
            return False
        self.ring.sent = 0
        self.t_mark = now
        self.resends += 1
        return True

    def settle(self, flat: list[int], now: float) -> int:
        """A CONFIRM's ranges applied to the ring (firmware settle.py): mark the entries they
        name, free the confirmed ones at the head; how many were freed."""
        st = self.ring
        for off in range(st.count):
            i = (st.head + off) % st.capacity
            e, s = self.keys[i]
            if pconfirm.covered(flat, e, s):
                st.ok[i >> 3] |= 1 << (i & 7)
        n = 0
        while st.count and st.ok[st.head >> 3] & (1 << (st.head & 7)):
            self.pop()
            n += 1
        if n:
            self.t_mark = now
            self.confirmed += n
        return n

    def replay_gap(self) -> float:
        return 1.0 / max(1, self.b.replay_rate)

    # ---------------------------------------------------------------------- downlink
    def downlink(self, topic: bytes, payload: bytes, now: float) -> tuple[list[Out], bool]:
        """A message on cmd/cfg/ota (firmware inbox.handle + cmds.run): ([ack, events], reboot).
        A message that cannot be named in an ack gets no answer."""
        channel = topic[-3:].decode()
        try:
            m = open_downlink(payload, topic, channel, self.signer)
        except ValueError:  # ProtocolError: not msgpack the protocol allows
            m = "malformed"
        result = 0
        if isinstance(m, str):
            self.refused[0 if m == "bad_tag" else 3] += 1
            result = M.R_BAD_TAG if m == "bad_tag" else M.R_BAD_ARGS
            try:
                m = open_downlink(payload, topic, channel, None)
            except ValueError:
                return [], False
            if isinstance(m, str):
                return [], False
        mtype, epoch, seq, ts, body = m
        if mtype == M.CONFIRM:  # never acked (firmware inbox.handle)
            if result or pconfirm.check(body):
                self.refused[3] += int(not result)
                return [], False
            if ts is not None and not self.b.clock:
                self.time_off = ts - self.uptime(now)
            self.settle(body[M.F_RANGES], now)  # type: ignore[arg-type]  # checked above
            return [], False
        if result:
            return [self.ack(epoch, seq, result, None, now)], False
        if ts is not None and not self.b.clock:
            self.time_off = ts - self.uptime(now)  # no RTC: learn the time from verified downlink
        if channel == "cmd":
            code = self.guard.admit(epoch, seq, ts, body, self.unix(now))
            if code:
                i = 1 if code == "expired" else 2 if code == "replay" else 3
                self.refused[i] += 1
                r = M.R_EXPIRED if i == 1 else M.R_REPLAY if i == 2 else M.R_BAD_ARGS
                return [self.ack(epoch, seq, r, None, now)], False
            op = body.get(M.C_OP)
            args = body.get(M.C_ARGS) or {}
        elif channel == "cfg":
            if ts is None or ts < self.cfg_ts:
                self.refused[2] += 1
                return [self.ack(epoch, seq, M.R_REPLAY, None, now)], False
            self.cfg_ts = ts
            op, args = M.OP_SET_CONFIG, body
        else:
            return [self.ack(epoch, seq, M.R_UNKNOWN_OP, None, now)], False
        data: dict[int, Any] | None = None
        result = M.R_OK
        reboot = False
        if op == M.OP_PING:
            data = {0: self.uptime(now)}
        elif op == M.OP_DIAGNOSTICS:
            data = self.diagnostics(now)
        elif op == M.OP_SET_CONFIG:
            result = self.set_config(args, now)
        elif op == M.OP_REBOOT:
            reboot = True
        elif op == M.OP_ROTATE_KEY:
            key = args.get(0) if isinstance(args, dict) else None
            result = M.R_OK if isinstance(key, bytes) and len(key) == 32 else M.R_BAD_ARGS
        else:
            result = M.R_UNKNOWN_OP
        out = [self.ack(epoch, seq, result, data, now)]  # a rotation's ack: still the old key
        if result == M.R_OK and op == M.OP_ROTATE_KEY and isinstance(args, dict):
            self.signer = Signer(args[0])
        if result == M.R_OK and op == M.OP_SET_CONFIG:
            body = {
                M.E_CODE: M.EV_CONFIG_APPLIED,
                M.E_SEVERITY: 0,
                M.E_DATA: {0: self.config_hash()},
            }
            out.append(Out(self.t_evt, self.seal_ctl(self.t_evt, M.EVENT, body, now), kind="event"))
        return out, reboot

    def ack(self, epoch: int, seq: int, result: int, data: Any, now: float) -> Out:
        body: dict[int, Any] = {M.A_CMD_EPOCH: epoch, M.A_CMD_SEQ: seq, M.A_RESULT: result}
        if data:
            body[M.A_DATA] = data
        return Out(self.t_ack, self.seal_ctl(self.t_ack, M.ACK, body, now), kind="ack")

    def set_config(self, args: Any, now: float) -> int:
        """firmware cmds.set_config: validated by the firmware's tunables.apply, then applied."""
        if not isinstance(args, dict):
            return M.R_BAD_ARGS
        try:
            tunables.apply(self.cfg, args)
        except (tunables.ConfigError, TypeError):
            return M.R_BAD_ARGS
        self.setup_metrics(now)
        return M.R_OK

    def diagnostics(self, now: float) -> dict[int, Any]:
        """The firmware's diagnostics keys (firmware/README.md), heap figures plausible."""
        r = self.refused
        return {
            0: HEAP_FREE, 1: HEAP_SIZE - HEAP_FREE, 2: HEAP_SIZE, 3: self.uptime(now), 4: -58,
            5: self.ring.count, 6: self.reconnects, 7: self.ring.dropped, 8: r[0], 9: r[1],
            10: r[2], 11: False, 12: self.reports, 13: self.epoch, 14: HEAP_SIZE - HEAP_FREE,
            15: 0, 16: r[3],
        }  # fmt: skip

    # ---------------------------------------------------------------------- faults
    def forged(self, now: float) -> Out:
        """A report signed with a key that is not the device's: the controller must refuse it
        (bad_tag) and store nothing. Uses no seq of the device's own."""
        wrong = Signer(hashlib.sha256(self.spec.key).digest())
        w = Writer(bytearray(SLOT))
        write_head(w, M.REPORT, self.epoch, 0xFFFFFFF0, self.unix(now), self.uptime(now))
        w.value({1: self.uptime(now)}, 1)
        n = seal(w, wrong, self.t_rep)
        return Out(self.t_rep, bytes(w.buf[:n]), kind="bad")

    def malformed(self) -> Out:
        """Bytes that are not a protocol message (truncated msgpack map)."""
        return Out(self.t_rep, b"\x87\x00\x01\x01\x03\x02", kind="bad")
