"""Where an uplink message sits on the controller's time line (docs/PROTOCOL.md section 5,
"Time"), and how sure that is: the device's `ts` when plausible, else its `up` anchored on the
first BIRTH of its boot epoch, else the receive time. Pure: the receive time and the device's
provisioning time are passed in. Imports nothing of ours."""

from __future__ import annotations

import json
from dataclasses import dataclass

CLOCK_TOLERANCE = 300.0  # s: how far a device clock may run ahead, or behind its provisioning

# Stored with every sample and event (raw_samples.approx, device_events.approx), shown by the API.
EXACT = 0  # the device's own ts
ANCHORED = 1  # the device's uptime, anchored on its epoch's first BIRTH
RECEIVED = 2  # the controller's receive time (or a BATCH sample clamped to the window's start)

EPOCHS = 4  # anchors kept per device: the replay window's E (protocol.replay.EPOCHS)


class Anchors:
    """Per boot epoch, the (time, up) of its first BIRTH carrying `up`: the first one wins, later
    BIRTHs of the epoch (reconnects) change nothing. Keeps the EPOCHS highest epochs."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[float, int]] = {}

    def get(self, epoch: int) -> tuple[float, int] | None:
        return self.items.get(epoch)

    def set(self, epoch: int, t: float, up: int) -> bool:
        """Record the anchor of `epoch` unless it has one; True when it changed anything."""
        if epoch in self.items:
            return False
        self.items[epoch] = (t, up)
        while len(self.items) > EPOCHS:
            del self.items[min(self.items)]
        return epoch in self.items

    def dumps(self) -> str | None:
        """The devices.anchors column: JSON [[epoch, t, up], ...], or None when empty."""
        if not self.items:
            return None
        return json.dumps([[e, t, u] for e, (t, u) in sorted(self.items.items())])

    @classmethod
    def loads(cls, text: str | None) -> Anchors:
        """What dumps() wrote; raises ValueError on anything else."""
        a = cls()
        if not text:
            return a
        try:
            for e, t, u in json.loads(text):
                a.items[int(e)] = (float(t), int(u))
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"anchors: {exc}") from None
        return a


@dataclass(frozen=True)
class Placement:
    t: float  # unix seconds on the controller's time line
    approx: int  # EXACT, ANCHORED or RECEIVED
    ts_implausible: bool  # a ts was sent and refused by the window (rule ts_implausible)


def window_start(provisioned: float) -> float:
    """No message can be signed before its device's key exists."""
    return provisioned - CLOCK_TOLERANCE


def plausible(t: float, received: float, provisioned: float) -> bool:
    return window_start(provisioned) <= t <= received + CLOCK_TOLERANCE


def place(
    ts: int | None,
    up: int | None,
    epoch: int,
    received: float,
    provisioned: float,
    anchors: Anchors,
) -> Placement:
    """The message's time by section 5's rule. An implausible ts is treated as absent and
    reported (the message is still stored: a device whose clock reset keeps its measurements)."""
    implausible = False
    if ts is not None:
        if plausible(ts, received, provisioned):
            return Placement(float(ts), EXACT, False)
        implausible = True
    if up is not None:
        a = anchors.get(epoch)
        if a is not None:
            t = a[0] + (up - a[1])
            if plausible(t, received, provisioned):
                return Placement(t, ANCHORED, implausible)
    return Placement(received, RECEIVED, implausible)
