"""Presence of one device, as a pure state machine fed with verified messages and clock ticks.
BIRTH puts a device online, its DEATH (the last will reserved at connect) or silence longer than
`offline_after` puts it offline, any other message from an offline device brings it back."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import messages as M

ONLINE = "online"
OFFLINE = "offline"
_DEATH_REASONS = {
    M.DEATH_LOST: "death-lost",
    M.DEATH_SHUTDOWN: "death-shutdown",
    M.DEATH_REBOOT: "death-reboot",
}


@dataclass
class Presence:
    online: bool = False
    last_seen: float | None = None
    birth_epoch: int | None = None
    birth_seq: int | None = None

    def on_message(
        self, mtype: int, epoch: int, seq: int, body: object, now: float
    ) -> tuple[str, str] | None:
        """Update for one accepted message; returns (state, reason) on a transition."""
        self.last_seen = now
        if mtype == M.BIRTH:
            self.birth_epoch, self.birth_seq = epoch, seq
            if not self.online:
                self.online = True
                return ONLINE, "birth"
            return None
        if mtype == M.DEATH:
            # A will from an older connection arriving after the new BIRTH must not win.
            if (
                self.birth_seq is not None
                and self.birth_epoch is not None
                and (epoch, seq) < (self.birth_epoch, self.birth_seq - 1)
            ):
                return None
            if self.online:
                self.online = False
                code = body.get(M.D_REASON) if isinstance(body, dict) else None
                return OFFLINE, _DEATH_REASONS.get(code if isinstance(code, int) else -1, "death")
            return None
        if not self.online:
            self.online = True
            return ONLINE, "seen"
        return None

    def on_disabled(self) -> tuple[str, str] | None:
        """The operator disabled or revoked the device: offline now, not at the silence
        timeout (whatever it still sends is refused before it reaches presence)."""
        if self.online:
            self.online = False
            return OFFLINE, "disabled"
        return None

    def on_tick(self, now: float, offline_after: float) -> tuple[str, str] | None:
        if self.online and self.last_seen is not None and now - self.last_seen > offline_after:
            self.online = False
            return OFFLINE, "silent"
        return None
