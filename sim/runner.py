"""The simulator's I/O shell: N virtual devices on one asyncio loop, each a DeviceModel (pure)
plus its own MQTT connection (sim/link.py) and one timer handle. No task per device: the loop
calls back on socket data and on each device's timer, so 10,000 devices cost 10,000 sockets and
timers, not 10,000 coroutines.

Connectivity follows firmware/agent.py: one owner of reconnects (here `SimDevice`), capped
exponential backoff with full jitter from the firmware's backoff.py, BIRTH on every connect, the
ring drained oldest first with one report in flight (re-sent with DUP and the same packet id on
the next connection), control messages (acks, events) sent once and not buffered.

Every run is bounded: `Fleet.run` stops at its deadline, the final drain has its own deadline."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protocol import messages as M
from sim.faults import NONE, DeviceFaults
from sim.link import Link, connect_packet
from sim.model import Behaviour, DeviceModel, DeviceSpec, Out
from sim.scenario import Action

CONNECT_TIMEOUT_S = 10.0  # firmware/link.py _TIMEOUT_MS: TCP connect, or no CONNACK


@dataclass
class Stats:
    """Fleet-wide counters (the live view and the summary read them)."""

    connected: int = 0
    connects: int = 0  # CONNACKs accepted
    reconnects: int = 0  # connects after the first per boot
    connect_errors: int = 0  # TCP refused/timed out, CONNACK refused or missing
    links_lost: int = 0
    made: int = 0  # reports (REPORT/BATCH messages) sealed into a ring
    sent: int = 0  # reports the broker acknowledged (a v1 device pops them from its ring)
    confirmed: int = 0  # reports freed from a ring by a CONFIRM (devices that confirm)
    resent: int = 0  # reports sent again after no confirmation came
    confirms: int = 0  # CONFIRMs received
    dropped: int = 0  # reports lost to a full ring
    births: int = 0
    acks: int = 0  # command ACKs sent
    events: int = 0
    commands: int = 0  # downlink messages received
    bad_sent: int = 0  # malformed or forged messages sent on purpose
    power_losses: int = 0
    flaps: int = 0
    reboots: int = 0
    first_connected_at: float | None = None
    all_connected_at: float | None = None


@dataclass
class Target:
    host: str
    port: int


class SimDevice:
    """One device's shell: connect, publish what the model says, feed it what arrives."""

    def __init__(self, fleet: Fleet, model: DeviceModel, faults: DeviceFaults) -> None:
        self.fleet = fleet
        self.model = model
        self.faults = faults
        self.link: Link | None = None
        self.up = False
        self.on = False  # powered
        self.timer: asyncio.TimerHandle | None = None
        self.retry: asyncio.TimerHandle | None = None
        self.pid = 0
        self.inflight = 0  # packet id of the ring entry in flight (0: none)
        self.inflight_conn = 0
        self.inflight_slot = -1
        self.conn_id = 0
        self.connected_once = False  # this boot
        self.ever_connected = False
        self.next_flap: float | None = None
        self.pinged_at = 0.0
        self.made = 0

    # ---------------------------------------------------------------- lifecycle
    def power_on(self, delay: float = 0.0) -> None:
        self.on = True
        self._schedule_connect(delay)
        self._arm()
        if self.faults.flap_every is not None:
            self.next_flap = self.fleet.loop.time() + self._flap_gap()

    def _flap_gap(self) -> float:
        f = self.faults.flap_every or 1.0
        return f * (0.5 + self.fleet.rng.random())

    def power_off(self) -> None:
        """Power loss: no DISCONNECT (the broker fires the will), RAM state gone, flash kept."""
        self.on = False
        for h in (self.timer, self.retry):
            if h is not None:
                h.cancel()
        self.timer = self.retry = None
        if self.link is not None:
            link, self.link = self.link, None
            self._lost(link, connect_sent=True)
            link.abort()
        self.inflight = 0

    def reboot(self, reason: int) -> None:
        """Boot again with a new epoch (flash kept), and connect at once."""
        self.model.boot(time.time(), reason)
        self.connected_once = False
        self.inflight = 0
        self.power_on()

    def stop(self) -> None:
        """End of the run: a clean DISCONNECT, no will."""
        self.on = False
        for h in (self.timer, self.retry):
            if h is not None:
                h.cancel()
        if self.link is not None:
            link, self.link = self.link, None
            if self.up:
                self.up = False
                self.fleet.stats.connected -= 1
            link.disconnect()  # its connection_lost finds self.link replaced: ignored

    # ---------------------------------------------------------------- connectivity
    def _schedule_connect(self, delay: float) -> None:
        if self.retry is not None:
            self.retry.cancel()
        self.retry = self.fleet.loop.call_later(delay, self._connect)

    def _connect(self) -> None:
        self.retry = None
        if not self.on or self.link is not None:
            return
        m = self.model
        will = m.will(time.time())
        spec = m.spec
        pkt = connect_packet(spec.id, m.b.keepalive, spec.id, spec.password, will)
        link = self.link = Link(self, pkt)
        self.fleet.loop.create_task(self._open(link))

    async def _open(self, link: Link) -> None:
        loop = self.fleet.loop
        t = self.fleet.target
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.create_connection(lambda: link, t.host, t.port)
        except (OSError, TimeoutError):
            if self.link is link:
                self.fleet.stats.connect_errors += 1
                self._lost(link, connect_sent=False)
            link.abort()
            return
        loop.call_later(CONNECT_TIMEOUT_S, self._connack_timeout, link)

    def _connack_timeout(self, link: Link) -> None:
        if self.link is link and not self.up:
            self.fleet.stats.connect_errors += 1
            link.abort()

    def on_connack(self, rc: int) -> None:
        link = self.link
        if link is None:
            return
        if rc:
            self.fleet.stats.connect_errors += 1
            link.abort()
            return
        st = self.fleet.stats
        self.up = True
        self.conn_id += 1
        st.connected += 1
        st.connects += 1
        if self.connected_once:
            st.reconnects += 1
        self.connected_once = True
        if not self.ever_connected:
            self.ever_connected = True
            self.fleet.first_connects += 1
            now = time.monotonic()
            if st.first_connected_at is None:
                st.first_connected_at = now
            if self.fleet.first_connects == len(self.fleet.devices):
                st.all_connected_at = now
        link.subscribe(self._next_pid(), self.model.subscriptions)
        for out in self.model.connected(time.time()):
            self._send(out)
        self._pump()

    def on_lost(self, link: Link) -> None:
        if link is self.link:
            self.link = None
            self._lost(link, connect_sent=True)

    def _lost(self, link: Link, connect_sent: bool) -> None:
        if self.link is link:
            self.link = None
        st = self.fleet.stats
        if self.up:
            self.up = False
            st.connected -= 1
            st.links_lost += 1
        self.model.link_closed(connect_sent)
        if self.on and not self.fleet.stopping:
            self._schedule_connect(self.model.reconnect_delay())

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        if self.pid == self.inflight:
            self.pid = self.pid % 65535 + 1
        return self.pid

    # ---------------------------------------------------------------- sending
    def _send(self, out: Out) -> None:
        link = self.link
        if link is None or not self.up:
            return  # control messages are not buffered (firmware publish_ctl)
        st = self.fleet.stats
        if out.kind == "birth":
            st.births += 1
        elif out.kind == "ack":
            st.acks += 1
        elif out.kind == "event":
            st.events += 1
        elif out.kind == "bad":
            st.bad_sent += 1
        link.publish(out.topic, out.payload, out.qos, self._next_pid() if out.qos else 0,
                     False, out.retain)  # fmt: skip

    def _pump(self) -> None:
        """Send the next ring entry if nothing is in flight (one at a time, as the firmware):
        the oldest for a v1 device, the oldest neither sent nor confirmed for one that confirms."""
        link = self.link
        if link is None or not self.up:
            return
        if self.inflight and self.inflight_conn == self.conn_id:
            return
        if self.inflight:  # the entry in flight when the link dropped: again, DUP, same pid
            i = self.inflight_slot
            dup = True
        else:
            i = self.model.next_slot()
            dup = False
        payload = self.model.slots[i] if i >= 0 else None
        if payload is None:
            self.inflight = 0
            return
        pid = self.inflight or self._next_pid()
        self.inflight, self.inflight_conn, self.inflight_slot = pid, self.conn_id, i
        link.publish(self.model.t_rep, payload, 1, pid, dup)

    def on_puback(self, pid: int) -> None:
        if pid != self.inflight or not pid:
            return
        st = self.fleet.stats
        if self.model.delivered(self.inflight_slot, time.time()):
            st.sent += 1
        else:
            st.resent += 1
        self.inflight = 0
        if self.model.ring.sent < self.model.ring.count:  # backlog replay at a bounded rate
            self.fleet.loop.call_later(self.model.replay_gap(), self._pump)

    def on_message(self, topic: bytes, payload: bytes) -> None:
        self.fleet.stats.commands += 1
        before = self.model.confirmed
        outs, reboot = self.model.downlink(topic, payload, time.time())
        if self.model.confirmed != before or not (outs or reboot):
            self.fleet.stats.confirms += 1
            self.fleet.stats.confirmed += self.model.confirmed - before
        delay = self.faults.slow_ack_s
        if delay:
            self.fleet.loop.call_later(delay, self._answer, outs, reboot)
        else:
            self._answer(outs, reboot)

    def _answer(self, outs: list[Out], reboot: bool) -> None:
        for out in outs:
            self._send(out)
        if reboot and self.on:
            self.fleet.stats.reboots += 1
            link = self.link
            if link is not None and self.up:
                self._send(self.model.goodbye(time.time()))
                self.link = None
                self.up = False
                self.fleet.stats.connected -= 1
                link.disconnect()
            self.model.link_closed(True)
            for h in (self.timer, self.retry):
                if h is not None:
                    h.cancel()
            self.reboot(M.BOOT_SOFT_RESET)

    # ---------------------------------------------------------------- the device's timer
    def _arm(self) -> None:
        loop = self.fleet.loop
        wall_due = self.model.next_due()
        resend = self.model.resend_at()
        if resend is not None:
            wall_due = min(wall_due, resend + 0.001)
        at = loop.time() + max(0.0, wall_due - time.time())
        if self.up and self.link is not None:
            at = min(at, self.link.tx_at + self.model.b.keepalive / 2)
        if self.next_flap is not None:
            at = min(at, self.next_flap)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if not self.on:
            return
        loop = self.fleet.loop
        now = time.time()
        m = self.model
        before = m.ring.dropped
        if self.up and m.resend_due(now):  # nothing confirmed for confirm_ms: send again
            self._pump()
        made = m.tick(now)
        if made:
            st = self.fleet.stats
            st.made += made
            st.dropped += m.ring.dropped - before
            self.made += made
            f = self.faults
            if f.malformed_every and self.made % f.malformed_every == 0:
                self._send(m.malformed())
            if f.forged_every and self.made % f.forged_every == 0:
                self._send(m.forged(now))
            self._pump()
        link = self.link
        t = loop.time()
        if self.up and link is not None:
            ka = m.b.keepalive
            if t - link.tx_at >= ka / 2:
                link.ping()
                self.pinged_at = t
            elif self.pinged_at and t - link.rx_at > 1.5 * ka:
                link.abort()  # a silent broker: the link is down
        if self.next_flap is not None and t >= self.next_flap:
            self.next_flap = t + self._flap_gap()
            if link is not None and self.up:
                self.fleet.stats.flaps += 1
                link.abort()
        self._arm()


@dataclass
class Hooks:
    """What the timeline may do beyond the devices: the stack provides these (None: the action
    is not possible against this target, e.g. restarting a broker the simulator did not start)."""

    restart_broker: Callable[[float], Awaitable[None]] | None = None
    command: Callable[[str, str], Awaitable[None]] | None = None


@dataclass
class Fleet:
    specs: list[DeviceSpec]
    behaviour: Behaviour
    target: Target
    faults: list[DeviceFaults] = field(default_factory=list)
    seed: int = 1
    hooks: Hooks = field(default_factory=Hooks)
    clockless: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(self.seed)
        self.stats = Stats()
        self.stopping = False
        self.first_connects = 0
        self.log: list[str] = []
        now = time.time()
        self.devices: list[SimDevice] = []
        for i, spec in enumerate(self.specs):
            f = self.faults[i] if i < len(self.faults) else NONE
            b = self.behaviour
            if f.no_clock:
                from dataclasses import replace

                b = replace(b, clock=False)
            self.devices.append(SimDevice(self, DeviceModel(spec, b, now), f))

    def start(self, ramp: float) -> None:
        """Power every device on, spread uniformly over `ramp` seconds (devices in a city are
        not switched on in the same millisecond; backoff handles what still collides)."""
        for d in self.devices:
            d.power_on(self.rng.uniform(0, ramp) if ramp > 0 else 0.0)

    def buffered(self) -> int:
        return sum(d.model.ring.count for d in self.devices)

    def pick(self, fraction: float) -> list[SimDevice]:
        on = [d for d in self.devices if d.on]
        return self.rng.sample(on, round(len(on) * fraction))

    async def act(self, a: Action, duration_left: float) -> None:
        """One timeline action."""
        self.log.append(f"{a.t:g}s {a.action}")
        if a.action == "restart-broker":
            if self.hooks.restart_broker is None:
                raise RuntimeError("restart-broker needs the simulator's own broker")
            await self.hooks.restart_broker(a.down)
        elif a.action == "kill":
            off = a.off if a.off is not None else duration_left + 1
            for d in self.pick(a.fraction):
                self.stats.power_losses += 1
                d.power_off()
                self.loop.call_later(off, self._revive, d)
        elif a.action == "flap":
            for d in self.pick(a.fraction):
                if d.link is not None and d.up:
                    self.stats.flaps += 1
                    d.link.abort()
        elif a.action == "command":
            if self.hooks.command is None:
                raise RuntimeError("command needs the controller API (--api and --token)")
            chosen = self.pick(a.fraction)
            sem = asyncio.Semaphore(16)

            async def one(d: SimDevice) -> None:
                async with sem:
                    assert self.hooks.command is not None
                    await self.hooks.command(d.model.spec.id, a.op)

            await asyncio.gather(*(one(d) for d in chosen))

    def _revive(self, d: SimDevice) -> None:
        if not self.stopping and not d.on:
            d.reboot(M.BOOT_POWER_ON)

    def schedule_power_losses(self) -> None:
        """The power_loss fault: each chosen device loses power once at its drawn moment."""
        for d in self.devices:
            at = d.faults.power_loss_at
            if at is not None:
                self.loop.call_later(at, self._power_cut, d)

    def _power_cut(self, d: SimDevice) -> None:
        if self.stopping or not d.on:
            return
        self.stats.power_losses += 1
        d.power_off()
        self.loop.call_later(d.faults.power_off, self._revive, d)

    async def drain(self, timeout: float) -> bool:
        """Stop making reports and wait (bounded) until every connected device's ring is empty:
        then `sent` counts every report that will ever be delivered."""
        for d in self.devices:
            if d.timer is not None:
                d.timer.cancel()
                d.timer = None
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            if all(d.model.ring.count == 0 for d in self.devices if d.on):
                return True
            now = time.time()
            for d in self.devices:
                if d.on and d.model.ring.count and not d.inflight:
                    if d.up:
                        d.model.resend_due(now)
                    d._pump()
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> None:
        self.stopping = True
        for d in self.devices:
            d.stop()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0.2)  # let the DISCONNECTs go out
