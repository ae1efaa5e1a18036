"""The live device cache that ingest and operator actions share: registry records become the
domain's DeviceStates (keys unwrapped under the master key) inside the IngestCore, and ids the
store does not know are remembered for a short while. Holds no I/O: callers fetch the records."""

from __future__ import annotations

import logging

from controller import registry
from controller.domain.ingest import DeviceState, IngestCore
from controller.domain.presence import Presence
from controller.domain.timeline import Anchors
from controller.errors import KeyWrapError, RegistryError
from controller.keys import MasterKey
from controller.store.base import DeviceRecord
from protocol.replay import ReplayWindow
from protocol.sign import Signer

log = logging.getLogger("idufleet.controller")

NEGATIVE_TTL = 5.0  # seconds an unknown device id stays unknown before the store is asked again
NEGATIVE_MAX = 10000  # remembered unknown ids before expired ones are forgotten


class DeviceCache:
    def __init__(self, core: IngestCore, master: MasterKey) -> None:
        self.core = core
        self.master = master
        self._unknown: dict[str, float] = {}  # device id -> when to ask the store again
        self.unopened: set[str] = set()  # registered, but the key does not open (wrong master)

    def state(self, rec: DeviceRecord) -> DeviceState:
        """The domain state of a registry record. Raises KeyWrapError if its key does not open."""
        key = self.master.unwrap(rec.id, rec.key_wrapped)
        window = ReplayWindow()
        if rec.replay:
            try:
                window = ReplayWindow.loads(rec.replay)
            except ValueError:
                log.error(
                    "replay state unreadable; starting a fresh window", extra={"device": rec.id}
                )
        anchors = Anchors()
        try:
            anchors = Anchors.loads(rec.anchors)
        except ValueError:
            log.error("time anchors unreadable; starting without", extra={"device": rec.id})
        return DeviceState(
            id=rec.id,
            site=rec.site,
            zone=rec.zone,
            signer=Signer(key),
            active=rec.status == registry.ACTIVE,
            window=window,
            presence=Presence(rec.online, rec.last_seen, rec.birth_epoch, rec.birth_seq),
            firmware=rec.firmware,
            board=rec.board,
            boot_epoch=rec.boot_epoch,
            death_open=rec.death_open,
            provisioned=rec.created_at,
            anchors=anchors,
            pruned=rec.pruned,
        )

    def load(self, rec: DeviceRecord) -> None:
        """Add (or replace) a device; one whose key does not open is logged and left out."""
        self._unknown.pop(rec.id, None)
        try:
            self.core.add(self.state(rec))
            self.unopened.discard(rec.id)
        except KeyWrapError as e:
            self.unopened.add(rec.id)
            log.error(
                "device key does not open; device ignored",
                extra={"device": rec.id, "error": str(e)},
            )

    def refresh(self, recs: list[DeviceRecord]) -> None:
        """Apply registry changes made elsewhere (another process, the CLI): new devices are
        loaded, status and zone follow the store; the live state of known ones is kept."""
        for rec in recs:
            dev = self.core.devices.get(rec.id)
            if dev is None:
                self.load(rec)
            else:
                dev.active = rec.status == registry.ACTIVE
                dev.zone = rec.zone
                dev.pruned = rec.pruned  # retention ran (here or in another controller)

    def get(self, device_id: str) -> DeviceState | None:
        return self.core.devices.get(device_id)

    def active(self, device_id: str) -> DeviceState:
        """The device, if registered and active. Raises RegistryError naming the fix."""
        dev = self.core.devices.get(device_id)
        if dev is None or not dev.active:
            raise RegistryError(f"no active device {device_id}; list them with `idufleet devices`")
        return dev

    def recently_unknown(self, device_id: str, now: float) -> bool:
        """The store said it does not know device_id less than NEGATIVE_TTL ago."""
        return self._unknown.get(device_id, 0.0) > now

    def mark_unknown(self, device_id: str, now: float) -> None:
        if len(self._unknown) > NEGATIVE_MAX:  # bounded: forget expired entries
            self._unknown = {d: t for d, t in self._unknown.items() if t > now}
        self._unknown[device_id] = now + NEGATIVE_TTL

    def registered(self) -> int:
        """Devices the registry holds: those loaded and those whose key did not open."""
        return len(self.core.devices) + len(self.unopened)

    def online(self) -> int:
        return sum(d.presence.online for d in self.core.devices.values())

    def __len__(self) -> int:
        return len(self.core.devices)
