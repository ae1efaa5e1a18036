"""The ingest core, pure: topic + payload + clock in, an Accepted message (and maybe a presence
transition) out, or a Rejected with one reason code. Holds each known device's key schedule,
replay window and presence; the shell loads devices into it and persists take_updates()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.domain import timeline
from controller.domain.confirm import birth_confirms
from controller.domain.presence import Presence
from controller.domain.ratelimit import TokenBucket
from controller.domain.records import (
    Accepted,
    AckRecord,
    DeviceEvent,
    DeviceUpdate,
    PresenceEvent,
    Sample,
)
from protocol import messages as M
from protocol import topics
from protocol.compat import compare_digest
from protocol.envelope import TRAILER, TRAILER_LEN, Message, decode
from protocol.errors import BAD_TAG, CODES, REPLAY, ProtocolError
from protocol.metrics import REGISTRY
from protocol.replay import ReplayWindow
from protocol.sign import TAG_LEN, Signer
from protocol.vectors import value_to_json

UNKNOWN_DEVICE = "unknown_device"  # no such device in the registry
DISABLED_DEVICE = "disabled_device"  # registered but disabled by an operator
WRONG_SITE = "wrong_site"  # the topic's site is not the device's registered site
WRONG_CHANNEL = "wrong_channel"  # a downlink channel published towards the controller
IMPERSONATION = "impersonation"  # signed by another registered device's key: an ACL hole
# Older than the replay window and beyond what the store still remembers: its ts is older than
# raw retention, or its (epoch, seq) is at or below the newest key retention deleted for the
# device. Storing it could store a pruned message a second time, so it is refused.
BEYOND_RETENTION = "beyond_retention"
REASONS = (
    *CODES,
    UNKNOWN_DEVICE,
    DISABLED_DEVICE,
    WRONG_SITE,
    WRONG_CHANNEL,
    IMPERSONATION,
    BEYOND_RETENTION,
)

_UPLINK = frozenset(topics.UPLINK)


class Rejected(Exception):
    """A message refused by the core; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "", device: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.device = device
        self.key: tuple[int, int] | None = None  # (epoch, seq) of a verified message refused


@dataclass
class DeviceState:
    """Everything the core needs about one device, loaded from its registry row."""

    id: str
    site: str
    zone: str
    signer: Signer
    active: bool = True
    window: ReplayWindow = field(default_factory=ReplayWindow)
    presence: Presence = field(default_factory=Presence)
    firmware: str | None = None
    board: str | None = None
    boot_epoch: int | None = None
    death_open: bool = False
    provisioned: float = 0.0  # registry created_at: the start of the plausible-time window
    anchors: timeline.Anchors = field(default_factory=timeline.Anchors)
    pruned: tuple[int, int] | None = None  # newest (epoch, seq) whose store key was pruned
    confirm: bool = False  # its last BIRTH opted into delivery confirmation (PROTOCOL.md 16)

    def update(self) -> DeviceUpdate:
        p = self.presence
        return DeviceUpdate(
            device=self.id,
            last_seen=p.last_seen,
            online=p.online,
            replay=self.window.dumps(),
            firmware=self.firmware,
            board=self.board,
            boot_epoch=self.boot_epoch,
            birth_epoch=p.birth_epoch,
            birth_seq=p.birth_seq,
            death_open=self.death_open,
            anchors=self.anchors.dumps(),
        )


def route(topic: str) -> tuple[str, str, str]:
    """(site, device, channel) of an uplink topic; raises Rejected on anything else."""
    try:
        site, device, channel = topics.parse(topic)
    except ProtocolError as e:
        raise Rejected(e.code, e.detail) from None
    if channel not in _UPLINK:
        raise Rejected(WRONG_CHANNEL, channel, device)
    return site, device, channel


_DIVISOR = {mid: 10.0 ** row[3] for mid, row in REGISTRY.items()}


def _samples(msg: Message, base: float, start: float) -> tuple[tuple[Sample, ...], bool]:
    """Samples in physical units (protocol.metrics.real, inlined: this is the hot path, one
    dict comprehension per sample), and whether a BATCH sample's time (base - age) fell before
    `start`, the plausible window's start, and was placed there (section 5)."""
    div = _DIVISOR.get
    if msg.type == M.REPORT:
        body: dict[int, Any] = msg.body  # type: ignore[assignment]
        return ((0, base, {m: r / div(m, 1.0) for m, r in body.items() if r is not None}),), False
    out: list[Sample] = []
    clamped = False
    batch: list[tuple[int, dict[int, Any]]] = msg.body  # type: ignore[assignment]
    for i, (age, metrics) in enumerate(batch):
        vals = {m: r / div(m, 1.0) for m, r in metrics.items() if r is not None}
        t = base - age
        if t < start:
            t, clamped = start, True
        out.append((i, t, vals))
    return tuple(out), clamped


def _json_map(v: object) -> dict[str, Any] | None:
    j = value_to_json(v) if isinstance(v, dict) else None
    return j if isinstance(j, dict) else None


class IngestCore:
    def __init__(
        self,
        offline_after: float = 180.0,
        impersonation_checks_per_s: float = 10.0,
        retention_s: float = 30 * 86400.0,
    ):
        self.offline_after = offline_after
        self.ts_implausible = 0  # messages stored under rule ts_implausible (section 5)
        self.retention_s = retention_s  # store.raw_retention_days: the bound for late messages
        self.devices: dict[str, DeviceState] = {}
        self.dirty: set[str] = set()
        self._scan_budget = TokenBucket(impersonation_checks_per_s, impersonation_checks_per_s)

    def add(self, dev: DeviceState) -> None:
        self.devices[dev.id] = dev

    def ingest(
        self, topic: str, payload: bytes, now: float, replaying: bool = False
    ) -> tuple[Accepted, PresenceEvent | None]:
        """Check one message. Raises Rejected(reason); nothing changes state unless accepted.

        A message older than the replay window is not refused as a replay: it comes back
        `late` (the store's key decides whether it was stored; the pipeline puts it in the
        batch like any other) unless it is beyond retention (BEYOND_RETENTION). A late message
        changes no device state or presence: it is history. `replaying` (a message replayed
        from quarantine) skips the window and is treated as late."""
        site, dev_id, channel = route(topic)
        dev = self.devices.get(dev_id)
        if dev is None:
            raise Rejected(UNKNOWN_DEVICE, dev_id, dev_id)
        if not dev.active:
            raise Rejected(DISABLED_DEVICE, dev_id, dev_id)
        if site != dev.site:
            raise Rejected(WRONG_SITE, f"{dev_id} is registered at {dev.site}, not {site}", dev_id)
        try:
            msg = decode(payload, topic, dev.signer, channel)
        except ProtocolError as e:
            if e.code == BAD_TAG:
                signer_id = self._who_signed(topic, payload, dev_id, now)
                if signer_id is not None:
                    raise Rejected(
                        IMPERSONATION, f"{signer_id} published on {dev_id}'s topic", dev_id
                    ) from None
            raise Rejected(e.code, e.detail, dev_id) from None
        late = replaying or self._admit(dev, msg)
        when = timeline.place(msg.ts, msg.up, msg.epoch, now, dev.provisioned, dev.anchors)
        if late:
            self._check_retained(dev, msg, now)
            return self._accepted(dev, msg, now, when, late=True), None
        if msg.type == M.BIRTH and msg.up is not None:
            dev.anchors.set(msg.epoch, when.t, msg.up)  # the first BIRTH of an epoch anchors it
        if when.ts_implausible:
            self.ts_implausible += 1
        acc = self._accepted(dev, msg, now, when)
        transition = dev.presence.on_message(msg.type, msg.epoch, msg.seq, msg.body, now)
        self.dirty.add(dev.id)
        if transition is None:
            return acc, None
        return acc, PresenceEvent(dev.id, now, transition[0], transition[1])

    def _admit(self, dev: DeviceState, msg: Message) -> bool:
        """Replay window, with the DEATH rule: the last will reserved at connect (BIRTH seq - 1)
        may be older than the window by the time the broker publishes it; accept it once.
        Returns True for a message below the window (late: a question for the store); raises
        Rejected(REPLAY) only for one the window knows it accepted."""
        p = dev.presence
        reserved = (
            msg.type == M.DEATH
            and dev.death_open
            and p.birth_seq is not None
            and (msg.epoch, msg.seq) == (p.birth_epoch, p.birth_seq - 1)
        )
        if dev.window.seen(msg.epoch, msg.seq):
            if not reserved:
                if dev.window.too_old(msg.epoch, msg.seq):
                    return True
                r = Rejected(REPLAY, f"epoch {msg.epoch} seq {msg.seq}", dev.id)
                r.key = (msg.epoch, msg.seq)  # verified: delivery confirmation may name it
                raise r
        else:
            dev.window.accept(msg.epoch, msg.seq)
        if reserved:
            dev.death_open = False
        if msg.type == M.BIRTH:
            dev.death_open = True
            body = msg.body
            assert isinstance(body, dict)
            dev.firmware = body[M.B_FIRMWARE]
            dev.board = body[M.B_BOARD]
            dev.confirm = birth_confirms(body)
            if dev.boot_epoch is None or msg.epoch > dev.boot_epoch:
                dev.boot_epoch = msg.epoch
        return False

    def _check_retained(self, dev: DeviceState, msg: Message, now: float) -> None:
        """A late message is stored only if the store can still tell it was not: its key is
        above the device's pruned mark, and its own time is within raw retention."""
        if dev.pruned is not None and (msg.epoch, msg.seq) <= dev.pruned:
            raise Rejected(
                BEYOND_RETENTION,
                f"epoch {msg.epoch} seq {msg.seq} is at or below the pruned key"
                f" {dev.pruned[0]}/{dev.pruned[1]}",
                dev.id,
            )
        if msg.ts is not None and msg.ts < now - self.retention_s:
            raise Rejected(BEYOND_RETENTION, f"ts {msg.ts} is older than raw retention", dev.id)

    def _accepted(
        self,
        dev: DeviceState,
        msg: Message,
        now: float,
        when: timeline.Placement,
        late: bool = False,
    ) -> Accepted:
        samples: tuple[Sample, ...] = ()
        event = ack = None
        body = msg.body
        approx = when.approx
        if msg.type in (M.REPORT, M.BATCH):
            samples, clamped = _samples(msg, when.t, timeline.window_start(dev.provisioned))
            if clamped:
                approx = timeline.RECEIVED
        elif msg.type == M.EVENT and isinstance(body, dict):
            text = body.get(M.E_TEXT)
            sev = body.get(M.E_SEVERITY)
            event = DeviceEvent(
                body[M.E_CODE],
                sev if isinstance(sev, int) else 0,
                text if isinstance(text, str) else None,
                _json_map(body.get(M.E_DATA)),
            )
        elif msg.type == M.ACK and isinstance(body, dict):
            ack = AckRecord(
                body[M.A_CMD_EPOCH],
                body[M.A_CMD_SEQ],
                body[M.A_RESULT],
                _json_map(body.get(M.A_DATA)),
            )
        return Accepted(
            dev.id,
            dev.zone,
            msg.epoch,
            msg.seq,
            msg.type,
            now,
            when.t,
            event,
            ack,
            samples,
            approx,
            late,
        )

    def _who_signed(self, topic: str, payload: bytes, owner: str, now: float) -> str | None:
        """Which other registered device's key made this tag, if any. Costs one HMAC per known
        device, so it runs only within a small per-second budget; beyond it, plain bad_tag."""
        n = len(payload)
        if n < TRAILER_LEN or bytes(payload[n - TRAILER_LEN : n - TAG_LEN]) != TRAILER:
            return None
        if not self._scan_budget.allow(now):
            return None
        tag = bytes(payload[n - TAG_LEN :])
        unsigned = payload[: n - TRAILER_LEN]
        t = topic.encode()
        for other in self.devices.values():
            if other.id != owner and compare_digest(other.signer.tag(t, unsigned), tag):
                return other.id
        return None

    def sweep(self, now: float) -> list[PresenceEvent]:
        """Offline transitions for devices silent longer than offline_after."""
        out = []
        for dev in self.devices.values():
            t = dev.presence.on_tick(now, self.offline_after)
            if t is not None:
                out.append(PresenceEvent(dev.id, now, t[0], t[1]))
                self.dirty.add(dev.id)
        return out

    def take_updates(self) -> list[DeviceUpdate]:
        ups = [self.devices[d].update() for d in sorted(self.dirty) if d in self.devices]
        self.dirty.clear()
        return ups
