"""Values that cross from the pure ingest core to the store: what one accepted message adds to
the IDU store, and the device state a batch commit persists. Frozen, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# One sample as the ingest core produces it: (index in a BATCH, unix ts, {metric id: value in
# physical units}). One dict per sample instead of a tuple per metric: the MQTT loop thread pays
# for building it, and the store packs the dict as it is (raw_samples.vals).
Sample = tuple[int, float, dict[int, float]]


@dataclass(frozen=True)
class DeviceEvent:
    code: int
    severity: int
    text: str | None
    data: dict[str, Any] | None


@dataclass(frozen=True)
class AckRecord:
    cmd_epoch: int
    cmd_seq: int
    result: int
    data: dict[str, Any] | None


@dataclass(frozen=True)
class Accepted:
    """One verified, fresh message. The store keys it by (device, epoch, seq) exactly once."""

    device: str
    zone: str
    epoch: int
    seq: int
    mtype: int
    received: float  # controller clock, unix seconds
    ts: float  # the message's time (docs/PROTOCOL.md section 5; controller/domain/timeline.py)
    event: DeviceEvent | None = None
    ack: AckRecord | None = None
    samples: tuple[Sample, ...] = ()
    approx: int = 0  # how ts was found: timeline.EXACT, ANCHORED or RECEIVED
    # Older than the replay window (or replayed from quarantine): the window cannot tell
    # whether it was stored, so the store's key decides, and it changes no device state.
    late: bool = False


@dataclass(frozen=True)
class PresenceEvent:
    device: str
    ts: float
    state: str  # "online" or "offline"
    reason: str  # birth, seen, death-lost, death-shutdown, death-reboot, silent


@dataclass(frozen=True)
class DeviceUpdate:
    """The mutable part of a device row, written with the batch that changed it."""

    device: str
    last_seen: float | None
    online: bool
    replay: bytes
    firmware: str | None
    board: str | None
    boot_epoch: int | None
    birth_epoch: int | None
    birth_seq: int | None
    death_open: bool  # the DEATH reserved at the last BIRTH may still be accepted once
    anchors: str | None = None  # timeline.Anchors.dumps(): the time anchors of recent epochs


@dataclass
class Batch:
    """What one store commit writes, in one transaction."""

    messages: list[Accepted] = field(default_factory=list)
    devices: list[DeviceUpdate] = field(default_factory=list)
    presence: list[PresenceEvent] = field(default_factory=list)


@dataclass(frozen=True)
class BatchResult:
    messages: int  # newly stored messages
    rows: int  # newly stored metric rows
    duplicates: int  # messages already in the store (redelivery, second controller)
