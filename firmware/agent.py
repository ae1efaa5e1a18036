"""The device agent: four tasks over one MQTT link (connectivity, reporter, ring drain, downlink
with housekeeping: heap high-water, crash-loop clearing), and main() feeding the watchdog.
Hardware is reached only through the board module startup.py picked. Boot-only and command-only
code (startup.py, inbox.py, cmds.py) is imported when needed and unloaded after, to keep the
agent inside a 64 KiB heap; for the same reason tasks poll a few flags on short sleeps instead of
waiting on events."""

import asyncio
import gc
import sys
import time

import backoff
import heap
from link import Link, sleep_ms
from micropython import const
from ring import RingFile

from protocol.sealing import seal, write_head
from protocol.sign import Signer
from protocol.writer import Writer

# Wire numbers from protocol.messages, as const(): private consts cost no heap, while importing
# the module costs its tables (tests/test_firmware_heap.py checks they match).
_BATCH = const(4)
_BIRTH = const(1)
_B_BOARD = const(1)
_B_BOOT_REASON = const(2)
_B_BUFFERED = const(7)
_B_CONFIG_HASH = const(3)
_B_CONFIRM = const(8)
_B_FIRMWARE = const(0)
_B_INTERVAL = const(6)
_B_KIND = const(5)
_B_SAFE_MODE = const(4)
_DEATH = const(2)
_DEATH_LOST = const(0)
_DEATH_REBOOT = const(2)
_D_REASON = const(0)
_EVENT = const(5)
_EV_BUFFER_DROPPED = const(1)
_EV_SAFE_MODE = const(2)
_E_CODE = const(0)
_E_DATA = const(3)
_E_SEVERITY = const(1)
_E_TEXT = const(2)
_REPORT = const(3)

FIRMWARE = "idu-agent 0.1.0"
STOPPED = const(0)
CRASHED = const(70)  # a task died: main.py resets the board (exits 1 on the unix port)
REBOOT = const(75)  # a reboot command: main.py restarts the agent

_SLOT = const(448)  # ring slot: 2-byte length + one signed REPORT/BATCH payload
_HEALTH = (1, 2, 3, 5, 6)


class Agent:
    def __init__(self, flash, booted):
        """booted: what startup.start(flash) returned (main.py runs it before importing this module,
        so boot's code and the agent's are never in the heap together)."""
        self.flash = flash
        cfg, self.board, self.epoch, self.safe, self.boot_reason, self.cfg_hash = booted
        self.cfg = cfg
        self.seq = 0
        key = cfg.pop("key")  # kept only inside the signer (cmds.rotate_key rewrites the file)
        self.signer = Signer(key)
        base = "idu/1/" + cfg["site"] + "/" + cfg["device"] + "/"
        self.t_death = (base + "death").encode()
        self.t_rep = (base + "rep").encode()
        self.t_evt = (base + "evt").encode()
        self.t_ack = (base + "ack").encode()
        self.base = base.encode()  # + channel: birth and the downlink topics, built at connect
        self.ring = RingFile(flash, cfg["buffer"], _SLOT)
        # One buffer for the report being built, the ring head being sent, the will and
        # birth/ack/event/death: each use fills it and hands it to the link without an await in
        # between, and the link writes it or copies what it could not write before its first
        # await (link._send, link.open), so the uses never overlap.
        self.buf = bytearray(_SLOT)
        self.link = Link(cfg["broker"], cfg["device"], cfg["keepalive"])
        try:
            import os

            seed = os.urandom(4)
        except (ImportError, AttributeError):
            seed = key  # per-device secret: at least every device differs
        self.rng = backoff.Rng(int.from_bytes(seed[:4], "little") ^ self.epoch)
        # Tasks poll these few flags on short sleeps rather than wait on events: an event
        # object, its wait queue and the code around them cost more heap than polling costs time.
        self.ready = False  # connected and birth sent
        self.stop = False  # main() winds down: a crash, or a reboot command acked
        self.reconnects = 0
        self.refused = [0, 0, 0, 0]  # protocol.messages RF_*: bad tag, expired, replay, malformed
        self.reports = 0
        self.dropped_event = self.ring.state.dropped
        self.time_off = None  # unix - uptime learned from verified downlink ts (no RTC)
        self.heap_size = gc.mem_free() + gc.mem_alloc()
        self.heap_hw = 0  # live heap after a collection: what the agent really holds
        self.heap_peak = 0  # allocated before collection, garbage included
        self.result = STOPPED
        self.inflight_pid = 0
        self.inflight_conn = 0
        self.cfg_gen = 0  # bumped by set_config: the reporter restarts its schedule
        self.cfg_ts = 0  # ts of the newest CONFIG applied; an older one is a replay
        self.death_seq = 0
        # Delivery confirmation (docs/PROTOCOL.md 16): when the oldest ring entry last made
        # progress (freed by a CONFIRM, first sent, or a re-send pass began), and the passes made.
        self.t_mark = time.ticks_ms()
        self.resends = 0
        self.setup_metrics()

    def setup_metrics(self):
        cfg = self.cfg
        ids = []
        for i in _HEALTH + tuple(self.board.measures):  # the board says what it measures
            if cfg["metrics"] is None or i in cfg["metrics"]:
                ids.append(i)
        n = len(ids)
        self.ids = ids
        self.vals = [0] * n
        self.last = [0] * n
        self.have_last = False
        self.db = db = [0] * n
        for i in range(n):
            db[i] = cfg["deadbands"].get(ids[i], 0)
        self.any_db = any(db)
        self.batch_n = k = cfg["batch"]
        # batch rows: [sample time ms, values]; None when every sample is its own REPORT
        self.batch: list | None = None
        if k > 1:
            self.batch = [[0, [0] * n] for _ in range(k)]
        self.batch_len = 0
        self.last_dropped = self.ring.state.dropped
        self.cfg_gen += 1

    def uptime(self):
        return self.board.ms() // 1000

    def now(self):
        t = self.board.unix()
        if t is None and self.time_off is not None:
            t = self.time_off + self.uptime()
        return t

    def seal_ctl(self, topic, mtype, body, seq=0):
        """A control message (will, birth, event, ack, death) signed into buf; its length. seq 0:
        the next one."""
        if not seq:
            self.seq = seq = (self.seq + 1) & 0xFFFFFFFF
        w = Writer(self.buf)
        write_head(w, mtype, self.epoch, seq, self.now(), self.uptime())
        w.value(body, 1)
        return seal(w, self.signer, topic)

    async def publish_ctl(self, topic, mtype, body, seq=0, wait=True, retain=False):
        """Event, ack, death: sealed into buf and sent QoS 1, not buffered (state, not data).
        True once acked (the pid when not wait); False when the link is or goes down."""
        n = self.seal_ctl(topic, mtype, body, seq)
        link = self.link
        pid = link.next_pid()
        try:
            await link.publish(topic, self.buf, n, 1, pid, False, retain)
        except OSError:
            return False
        return await link.wait_ack(pid) if wait else pid

    # ------------------------------------------------------------------------------- tasks
    async def connectivity(self):
        """The only place that connects: forever, with capped exponential backoff and full
        jitter. Other tasks wait on self.ready and never see socket errors. Birth goes out
        on every connect, before anything else."""
        bo = self.cfg["backoff"]
        link = self.link
        attempt = 0
        death_seq = 0
        while self.result == STOPPED:
            if not death_seq:  # DEATH and BIRTH seqs are reserved together: DEATH = BIRTH - 1
                death_seq = (self.seq + 1) & 0xFFFFFFFF
                self.seq = birth_seq = (death_seq + 1) & 0xFFFFFFFF
            try:
                await self.board.net_up()  # Wi-Fi on an ESP32; nothing on the sim
                # The will goes into buf too: link.open copies it into CONNECT before its first
                # await, so no other use of buf can come in between.
                n = self.seal_ctl(self.t_death, _DEATH, {_D_REASON: _DEATH_LOST}, death_seq)
                await link.open(
                    self.t_death,
                    memoryview(self.buf)[:n],
                    (self.base + b"cmd", self.base + b"cfg", self.base + b"ota"),
                )
                attempt = 0
                cfg = self.cfg
                st = self.ring.state
                t = self.base + b"birth"
                n = self.seal_ctl(
                    t,
                    _BIRTH,
                    {
                        _B_FIRMWARE: FIRMWARE,
                        _B_BOARD: self.board.name,
                        _B_BOOT_REASON: self.boot_reason,
                        _B_CONFIG_HASH: self.cfg_hash,
                        _B_SAFE_MODE: self.safe,
                        _B_KIND: cfg["kind"],
                        _B_INTERVAL: cfg["interval"],
                        _B_BUFFERED: st.count,
                        _B_CONFIRM: 1 if cfg["confirm_ms"] else 0,  # CONFIRM_V1: opted in
                    },
                    birth_seq,
                )
                await link.publish(t, self.buf, n, 1, link.next_pid())  # raises: reconnect
                del t
                # Back: clear the retained DEATH (a zero-length retained message deletes it), so
                # the retained status on `death` exists only while the device is gone.
                await link.publish(self.t_death, b"", 0, 0, 0, False, True)
                if self.safe:
                    asyncio.create_task(
                        self.publish_ctl(
                            self.t_evt,
                            _EVENT,
                            {
                                _E_CODE: _EV_SAFE_MODE,
                                _E_SEVERITY: 2,
                                _E_TEXT: "crash loop: sensors off",
                            },
                        )
                    )
                if st.dropped != self.dropped_event:
                    self.dropped_event = st.dropped
                    asyncio.create_task(
                        self.publish_ctl(
                            self.t_evt,
                            _EVENT,
                            {_E_CODE: _EV_BUFFER_DROPPED, _E_SEVERITY: 1, _E_DATA: {0: st.dropped}},
                        )
                    )
                self.death_seq = death_seq
                self.ready = True
                print("idu:", "connected", link.conn_id)
                await link.run()
            except Exception as e:  # any link failure means reconnect
                a = e.args
                if len(a) == 2 and a[0] == "CONNACK" and a[1] in (4, 5):  # bad login / not allowed
                    print(
                        "idu:",
                        "login refused, CONNACK",
                        a[1],
                        "- register this device or use its bundle",
                    )
                else:
                    print("idu:", "link down:", repr(e))
            if link.connect_sent:
                death_seq = 0  # the broker may hold (and publish) this will: never reuse it
            self.ready = False
            link.close()
            if self.result != STOPPED:
                return
            self.reconnects += 1
            d = backoff.delay_ms(attempt, bo["base_ms"], bo["cap_ms"], self.rng.r16())
            attempt += 1
            await sleep_ms(d)

    async def drain(self):
        """Send the ring oldest first, one in flight. A payload unacked when the link dropped
        is sent again with DUP and the same packet id on the next connection. A v1 device
        (confirm_ms 0) pops an entry at its PUBACK; with delivery confirmation the PUBACK only
        marks it sent, inbox.py frees it when a CONFIRM names it, and once everything is sent
        and the oldest entry has made no progress for confirm_ms, the unconfirmed entries are
        sent again, oldest first, at replay_rate (docs/PROTOCOL.md section 16)."""
        ring = self.ring
        st = ring.state
        link = self.link
        gap = 1000 // max(1, self.cfg["replay_rate"])
        wait = self.cfg["confirm_ms"]
        mv = memoryview(self.buf)
        while True:
            i = st.next() if self.ready else -1
            if i < 0:
                t = time.ticks_ms()
                if self.ready and st.sent and time.ticks_diff(t, self.t_mark) > wait:
                    st.sent = 0  # a re-send pass (a v1 device, wait 0, never has sent > 0)
                    self.t_mark = t
                    self.resends += 1
                    continue
                await sleep_ms(20)
                continue
            n = ring.read(i, self.buf)
            if n <= 0:  # unreadable slot: count it lost rather than stall forever
                if i == st.head:
                    ring.pop()
                    st.dropped += 1
                else:
                    st.done(i)  # skipped; dropped when it is the oldest
                continue
            pid = self.inflight_pid
            dup = bool(pid) and self.inflight_conn != link.conn_id
            if not pid:
                pid = link.next_pid()
            self.inflight_pid = pid
            self.inflight_conn = link.conn_id
            try:
                await link.publish(self.t_rep, mv, n, 1, pid, dup)
            except OSError:  # the reader saw the link drop; connectivity clears ready soon
                await sleep_ms(50)
                continue
            if await link.wait_ack(pid):
                self.inflight_pid = 0
                if not wait:
                    ring.pop()
                else:
                    if not st.sent:
                        self.t_mark = time.ticks_ms()  # the oldest is out: its clock starts
                    st.done(i)
                if st.sent < st.count:
                    await sleep_ms(gap)  # backlog replay at a bounded rate

    async def reporter(self):
        """Sample on a schedule; report every interval, and early when a metric moves past its
        deadband. Each report is signed into buf when sampled and pushed to the ring: no
        allocation beyond the HMAC."""
        b = self.board
        st = self.ring.state
        while True:
            gen = self.cfg_gen
            period = self.cfg["interval"] * 1000
            tick = period // 4 if self.any_db else period
            due_at = b.ms() + period
            while gen == self.cfg_gen:
                await sleep_ms(b.real_ms(tick))
                now = b.ms()
                ids, vals, last, db = self.ids, self.vals, self.last, self.db
                b.sample(ids, vals, period // 1000)
                moved = False
                for i in range(len(ids)):
                    m = ids[i]
                    if m == 1:
                        vals[i] = now // 1000
                    elif m == 2:
                        vals[i] = gc.mem_free()
                    elif m == 3:
                        vals[i] = b.rssi()
                    elif m == 5:
                        vals[i] = st.count
                    elif m == 6:
                        vals[i] = st.dropped - self.last_dropped
                    if db[i] and self.have_last and abs(vals[i] - last[i]) >= db[i]:
                        moved = True
                if now < due_at and not moved:
                    continue
                due_at = now + period
                for i in range(len(vals)):
                    last[i] = vals[i]
                self.have_last = True
                self.last_dropped = st.dropped
                batch = self.batch
                if batch is not None:
                    s = batch[self.batch_len]
                    s[0] = now
                    sv = s[1]
                    for i in range(len(vals)):
                        sv[i] = vals[i]
                    self.batch_len += 1
                    if self.batch_len < self.batch_n:
                        continue
                self.seq = (self.seq + 1) & 0xFFFFFFFF
                w = Writer(self.buf)
                write_head(
                    w, _BATCH if batch else _REPORT, self.epoch, self.seq, self.now(), now // 1000
                )
                rows = self.batch_len if batch else 1
                if batch:
                    w.array_head(rows)
                for j in range(rows):
                    if batch:
                        w.array_head(2)
                        w.integer((now - batch[j][0]) // 1000)
                        vals = batch[j][1]
                    w.map_head(len(ids))
                    for i in range(len(ids)):
                        w.integer(ids[i])
                        w.integer(vals[i])
                self.batch_len = 0
                self.ring.push(self.buf, seal(w, self.signer, self.t_rep))
                a = gc.mem_alloc()
                if a > self.heap_peak:
                    self.heap_peak = a
                self.reports += 1

    async def downlink(self):
        """Commands as they arrive (within 200 ms), and housekeeping in the same loop: track the
        live-heap high water, and clear the crash-loop counter once this run has been up
        crash.stable seconds. (main() feeds the watchdog: a command waiting on its ack must not
        starve it.)"""
        stable_ms = self.cfg["crash"]["stable"] * 1000
        marked = False
        t0 = time.ticks_ms()
        rx = self.link.rx  # downlink messages, queued by the link's reader
        while True:
            self.sample_heap()
            if not marked and time.ticks_diff(time.ticks_ms(), t0) >= stable_ms:
                import bootstate

                bootstate.mark(self.flash, bootstate.END_STABLE)
                del bootstate
                heap.unload("RECORD")
                marked = True
            if not rx:
                await sleep_ms(200)
                continue
            gc.collect()  # the command's code and data go into holes left by report garbage
            while rx:
                topic, payload = rx.pop(0)
                import inbox  # open and verify; unloaded before cmds loads to admit and ack

                try:
                    m = inbox.handle(self, topic, payload)
                    del inbox, payload
                    heap.unload("DECODER")
                    if m:
                        import cmds

                        await cmds.run(self, topic, *m)
                        del cmds
                except (OSError, MemoryError) as e:  # the ack was lost with the link, or
                    print("idu:", "command", repr(e))  # it did not fit: the controller retries
                m = topic = payload = None
                heap.unload("DECODER", "COMMAND")  # what a finished or failed one left
            if self.result != STOPPED:
                self.stop = True  # a reboot command, now acked

    def sample_heap(self):
        """Track the heap: allocated before a collection (garbage included) and live after it,
        whose high water diagnostics report. Commands call it at their peaks too."""
        a = gc.mem_alloc()
        if a > self.heap_peak:
            self.heap_peak = a
        gc.collect()
        a = gc.mem_alloc()
        if a > self.heap_hw:
            self.heap_hw = a

    # ------------------------------------------------------------------------------- lifecycle
    def crashed(self, loop, context):
        exc = context.get("exception")
        print("idu:", "task", "crashed:", repr(exc))
        self.result = CRASHED
        self.stop = True

    async def main(self):
        asyncio.get_event_loop().set_exception_handler(self.crashed)
        print(
            "idu:",
            "boot",
            "epoch",
            self.epoch,
            "safe" if self.safe else "normal",
            "buffered",
            self.ring.state.count,
        )
        tasks = []
        for c in (self.connectivity(), self.drain(), self.downlink()):
            tasks.append(asyncio.create_task(c))
        if not self.safe:
            tasks.append(asyncio.create_task(self.reporter()))
        while not self.stop:  # the main loop: feeds the watchdog, which a stuck task cannot
            self.board.wdt_feed()
            await sleep_ms(100)
        if self.result == REBOOT and self.link.up:
            try:  # goodbye with the reserved DEATH seq, acked within 2 s, then DISCONNECT
                pid = await self.publish_ctl(
                    self.t_death, _DEATH, {_D_REASON: _DEATH_REBOOT}, self.death_seq, False, True
                )
                t0 = time.ticks_ms()
                while pid in self.link.unacked and time.ticks_diff(time.ticks_ms(), t0) < 2000:
                    await sleep_ms(10)
            except Exception:  # best effort on the way down
                pass
            from mqtt_codec import DISCONNECT

            try:
                await self.link._send(DISCONNECT, 2)  # a clean DISCONNECT: the will is dropped
            except OSError:
                pass
        for t in tasks:
            t.cancel()
        self.link.close()
        self.ring.close()
        if self.result == REBOOT:
            import bootstate

            bootstate.mark(self.flash, bootstate.END_REBOOT)
            del bootstate
            heap.unload("RECORD")
        return self.result


def run(flash, booted):
    """Run the agent until it stops. True after a reboot command on the unix port, once the
    agent's code is unloaded (main.py boots again); an ESP32 resets instead, and a crash
    resets it (exits 1 on the unix port). False when it stopped otherwise."""
    agent = Agent(flash, booted)
    board = agent.board
    del booted
    gc.collect()
    # Collect after every few KiB allocated instead of only when the heap is full: short-lived
    # report garbage then never spreads across the heap, so a command's code and buffers still
    # find contiguous room (the heap is small and 64-bit objects fragment it fast).
    gc.threshold(4096)
    result = asyncio.run(agent.main())
    del agent
    if result == CRASHED or result == REBOOT:
        board.reset()  # hardware restarts here; the unix port goes on
    if result == CRASHED:
        sys.exit(1)
    if result != REBOOT:
        return False
    asyncio.new_event_loop().set_exception_handler(None)  # it held the old agent alive
    heap.unload("AGENT", board.__name__)  # the agent's code is freed before boot runs
    print("idu:", "soft", "reboot")
    return True
