"""Which devices opted into delivery confirmation (their BIRTH's key 8, docs/PROTOCOL.md section
16), shared through the store so that every controller of a shared subscription group confirms a
device's messages, not only the one that happened to receive its BIRTH. Table `confirming`
(migration 7): one row per opted-in device."""

from __future__ import annotations

from controller.store.core import StoreCore


class Confirms(StoreCore):
    def set_confirming(self, device: str, on: bool, since: float) -> None:
        """Record a device's opt-in (on) or its withdrawal (a BIRTH without key 8)."""
        with self._tx():
            if on:
                self._execute(
                    "INSERT INTO confirming (device_id, since) VALUES (?, ?)"
                    " ON CONFLICT (device_id) DO NOTHING",
                    (device, since),
                )
            else:
                self._execute("DELETE FROM confirming WHERE device_id = ?", (device,))

    def set_confirming_many(self, changes: dict[str, bool], since: float) -> None:
        with self._tx():
            for device, on in changes.items():
                self.set_confirming(device, on, since)

    def confirming_devices(self) -> set[str]:
        return {str(r[0]) for r in self._execute("SELECT device_id FROM confirming")}
