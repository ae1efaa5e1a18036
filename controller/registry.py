"""The device registry as a library: register a device (returns its generated key once),
disable it, fetch its key. Provisioning (issue 5), the HTTP API, the CLI and the demo all call
these; keys are stored only wrapped under the master key (controller.keys)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.errors import RegistryError
from controller.keys import MasterKey, new_device_key
from controller.provisioning.bundles import broker_block, device_bundle
from controller.store.base import DeviceRecord, Store
from protocol import ProtocolError
from protocol.topics import check_id

KINDS = ("ap", "sensor")
ACTIVE = "active"
DISABLED = "disabled"


@dataclass(frozen=True)
class NewDevice:
    """What registering a device yields. `key` is the only copy in clear: hand it to the device
    bundle (docs/DEVICE-CONFIG.md) and do not log it."""

    id: str
    site: str
    zone: str
    kind: str
    tags: dict[str, str] = field(default_factory=dict)
    key: bytes = field(default=b"", repr=False)

    def bundle(
        self, host: str, port: int, interval: int = 60, **extra: object
    ) -> dict[str, object]:
        """A device config.json (docs/DEVICE-CONFIG.md) for this device and broker."""
        broker = broker_block(host, port, self.id, None)
        return device_bundle(
            self.id, self.site, self.zone, self.kind, self.key, broker, None, interval=interval
        ) | dict(extra)


def zone_problem(zone: str, zones: Sequence[str] | None) -> str | None:
    """Why `zone` may not be used, as a one-line message with the fix, or None when it may.
    `zones` is the config's [fleet] zones; None or empty accepts any well-formed name."""
    if not zones or zone in zones:
        return None
    return (
        f"unknown zone {zone!r}; known zones: {', '.join(zones)}; "
        "use one of them, or add it to [fleet] zones in the controller config"
    )


def check_zone(zone: str, zones: Sequence[str] | None) -> None:
    """Raise RegistryError (code unknown_zone) for a zone outside `zones` (see zone_problem)."""
    problem = zone_problem(zone, zones)
    if problem is not None:
        raise RegistryError(problem, "unknown_zone")


def _check(device_id: str, site: str, zone: str, kind: str, tags: dict[str, str]) -> None:
    try:
        check_id(device_id, "device id")
        check_id(site, "site")
        check_id(zone, "zone")
    except ProtocolError as e:
        raise RegistryError(e.detail) from None
    if kind not in KINDS:
        raise RegistryError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or len(k) > 64 or len(v) > 256:
            raise RegistryError("tags are short strings: key 1-64 chars, value up to 256")


def create_device(
    store: Store,
    master: MasterKey,
    device_id: str,
    site: str,
    zone: str,
    kind: str,
    tags: dict[str, str] | None = None,
    key: bytes | None = None,
    zones: Sequence[str] | None = None,
) -> NewDevice:
    """Register a device and return it with its 32-byte key (generated unless given). Raises
    RegistryError for a bad field, a zone outside `zones` (pass the config's fleet.zones; None
    skips that check, e.g. for a claim whose token was checked when it was issued) or an id
    already taken. Nothing is written when it raises."""
    tags = dict(tags or {})
    _check(device_id, site, zone, kind, tags)
    check_zone(zone, zones)
    key = key if key is not None else new_device_key()
    if len(key) != 32:
        raise RegistryError("device keys are 32 bytes")
    store.add_device(
        DeviceRecord(
            id=device_id,
            site=site,
            zone=zone,
            kind=kind,
            tags=tags,
            key_wrapped=master.wrap(device_id, key),
            status=ACTIVE,
            created_at=time.time(),
        )
    )
    return NewDevice(device_id, site, zone, kind, tags, key)


def disable_device(store: Store, device_id: str) -> None:
    """Refuse every further message from the device (counted as disabled_device)."""
    store.set_status(device_id, DISABLED)


def enable_device(store: Store, device_id: str) -> None:
    store.set_status(device_id, ACTIVE)


def device_key(store: Store, master: MasterKey, device_id: str) -> bytes:
    """The device's key in clear (for re-issuing its bundle). Raises RegistryError if unknown."""
    rec = store.get_device(device_id)
    if rec is None:
        raise RegistryError(f"no device {device_id}; list them with `idufleet devices`")
    return master.unwrap(device_id, rec.key_wrapped)
