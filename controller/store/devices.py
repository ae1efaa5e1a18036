"""The device registry in the store: DeviceRecord and its CRUD (add, get, list, status, key).
What a batch writes into device rows (last seen, replay window, ...) is in store/writes.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.errors import RegistryError
from controller.store.core import StoreCore


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    site: str
    zone: str
    kind: str
    tags: dict[str, str]
    key_wrapped: bytes
    status: str
    created_at: float
    firmware: str | None = None
    board: str | None = None
    last_seen: float | None = None
    online: bool = False
    boot_epoch: int | None = None
    birth_epoch: int | None = None
    birth_seq: int | None = None
    death_open: bool = False
    replay: bytes | None = None
    anchors: str | None = None  # time anchors of recent boot epochs (domain/timeline.py)
    # The newest (epoch, seq) whose message key retention deleted (store/retention.py): a
    # message at or below it that is older than the replay window is refused, not re-stored.
    pruned: tuple[int, int] | None = None

    def public(self) -> dict[str, Any]:
        """The JSON view for the API: everything but the wrapped key and the replay state."""
        return {
            "id": self.id,
            "site": self.site,
            "zone": self.zone,
            "kind": self.kind,
            "tags": self.tags,
            "status": self.status,
            "created_at": self.created_at,
            "firmware": self.firmware,
            "board": self.board,
            "last_seen": self.last_seen,
            "online": self.online,
            "boot_epoch": self.boot_epoch,
        }


_DEVICE_COLS = (
    "id, site, zone, kind, tags, key_wrapped, status, created_at, firmware, board, last_seen, "
    "online, boot_epoch, birth_epoch, birth_seq, death_open, replay, anchors, pruned_epoch, "
    "pruned_seq"
)


def _device(row: Sequence[Any]) -> DeviceRecord:
    return DeviceRecord(
        id=row[0],
        site=row[1],
        zone=row[2],
        kind=row[3],
        tags=json.loads(row[4]),
        key_wrapped=bytes(row[5]),
        status=row[6],
        created_at=row[7],
        firmware=row[8],
        board=row[9],
        last_seen=row[10],
        online=bool(row[11]),
        boot_epoch=row[12],
        birth_epoch=row[13],
        birth_seq=row[14],
        death_open=bool(row[15]),
        replay=bytes(row[16]) if row[16] is not None else None,
        anchors=row[17],
        pruned=(int(row[18]), int(row[19])) if row[18] is not None else None,
    )


class Devices(StoreCore):
    """Registry CRUD; controller/registry.py builds key generation and wrapping on it."""

    def add_device(self, rec: DeviceRecord) -> None:
        with self._tx():
            if self._execute("SELECT 1 FROM devices WHERE id = ?", (rec.id,)):
                raise RegistryError(
                    f"device {rec.id} already exists; pick another id or disable the old one"
                )
            self._execute(
                "INSERT INTO devices (id, site, zone, kind, tags, key_wrapped, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.site,
                    rec.zone,
                    rec.kind,
                    json.dumps(rec.tags, sort_keys=True),
                    rec.key_wrapped,
                    rec.status,
                    rec.created_at,
                ),
            )

    def get_device(self, device_id: str) -> DeviceRecord | None:
        rows = self._execute(f"SELECT {_DEVICE_COLS} FROM devices WHERE id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    def list_devices(
        self,
        site: str | None = None,
        zone: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        online: bool | None = None,
    ) -> list[DeviceRecord]:
        where: list[str] = []
        params: list[Any] = []
        for col, val in (("site", site), ("zone", zone), ("kind", kind), ("status", status)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if online is not None:
            where.append("online = ?")
            params.append(int(online))
        sql = f"SELECT {_DEVICE_COLS} FROM devices"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_device(r) for r in self._execute(sql + " ORDER BY id", params)]

    def set_status(self, device_id: str, status: str) -> None:
        with self._tx():
            if not self._execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)):
                raise RegistryError(f"no device {device_id}; list them with `idufleet devices`")
            self._execute("UPDATE devices SET status = ? WHERE id = ?", (status, device_id))

    def set_key(self, device_id: str, key_wrapped: bytes) -> None:
        with self._tx():
            self._execute(
                "UPDATE devices SET key_wrapped = ? WHERE id = ?", (key_wrapped, device_id)
            )
