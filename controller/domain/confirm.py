"""Delivery confirmation, pure (docs/PROTOCOL.md section 16): which devices opted in, the uplink
messages this controller committed for each and has not confirmed yet (as ranges), and which
devices' CONFIRM is due: at most one per device per interval. The clock is passed in; the shell
(controller/confirm.py) feeds it commits, sends what is due and persists the opt-ins."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from protocol import messages as M

# Ranges held per device before the oldest are forgotten. A forgotten range is never confirmed
# by this controller, so the device re-sends those reports after its timeout and they are
# confirmed then: memory stays bounded when a device's link or this controller's is down.
MAX_PENDING = 512

Key = tuple[str, int, int]  # (device, epoch, seq)


def _start(r: list[int]) -> tuple[int, int]:
    return r[0], r[1]


class ConfirmBook:
    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the confirmation interval must be > 0 seconds")
        self.interval = interval
        self.confirming: set[str] = set()
        # device -> [[epoch, first, last], ...], ascending and disjoint; adjacent ones merged
        self.pending: dict[str, list[list[int]]] = {}
        self.next_at: dict[str, float] = {}  # device -> earliest time of its next CONFIRM
        self.held: list[Key] = []  # refused as replay of an accepted message: after a commit
        self.forgotten = 0  # ranges dropped past MAX_PENDING

    def set_confirming(self, device: str, on: bool) -> bool:
        """A device's opt-in as its latest BIRTH says; True when that changed it."""
        if on == (device in self.confirming):
            return False
        if on:
            self.confirming.add(device)
        else:
            self.confirming.discard(device)
            self.pending.pop(device, None)
            self.next_at.pop(device, None)
        return True

    def replace_confirming(self, devices: set[str]) -> None:
        """The opt-ins as the store holds them (every controller of the group writes there)."""
        for d in self.confirming - devices:
            self.set_confirming(d, False)
        self.confirming |= devices

    def hold(self, device: str, epoch: int, seq: int) -> None:
        """(epoch, seq) was refused as a replay of a message the window holds as accepted: it is
        stored, or in a batch not committed yet. Named after the next commit (take_held)."""
        if device in self.confirming:
            self.held.append((device, epoch, seq))

    def take_held(self) -> list[Key]:
        """What was held until now: the caller takes it with the batch it is about to commit and
        passes it to committed() once that commit is done (anything the window had accepted by
        then is in this batch or an earlier one)."""
        held, self.held = self.held, []
        return held

    def committed(self, keys: Iterable[Key]) -> None:
        """Messages now in the store (new or already there): confirm them."""
        confirming = self.confirming
        for device, epoch, seq in keys:
            if device in confirming:
                self.add(device, epoch, seq)

    def add(self, device: str, epoch: int, seq: int) -> None:
        rs = self.pending.get(device)
        if rs is None:
            self.pending[device] = [[epoch, seq, seq]]
            return
        last = rs[-1]
        if last[0] == epoch and last[1] <= seq <= last[2] + 1:  # the usual case: next in line
            if seq > last[2]:
                last[2] = seq
            return
        if (epoch, seq) > (last[0], last[2]):
            rs.append([epoch, seq, seq])
        else:
            self._insert(rs, epoch, seq)
        if len(rs) > MAX_PENDING:
            del rs[0]
            self.forgotten += 1

    @staticmethod
    def _insert(rs: list[list[int]], epoch: int, seq: int) -> None:
        i = bisect.bisect_right(rs, (epoch, seq), key=_start)  # rs[i-1] starts at or before
        if i:
            p = rs[i - 1]
            if p[0] == epoch and p[1] <= seq <= p[2] + 1:
                if seq > p[2]:
                    p[2] = seq
                    if i < len(rs) and rs[i][0] == epoch and rs[i][1] == seq + 1:
                        p[2] = rs[i][2]
                        del rs[i]
                return
        if i < len(rs) and rs[i][0] == epoch and rs[i][1] == seq + 1:
            rs[i][1] = seq
            return
        rs.insert(i, [epoch, seq, seq])

    def due(self, now: float) -> list[tuple[str, list[int]]]:
        """(device, flat CONFIRM ranges) for every device with something to confirm whose
        interval has passed: its oldest MAX_CONFIRM_RANGES ranges, the rest wait."""
        out = []
        emptied = []
        for device, rs in self.pending.items():
            if self.next_at.get(device, 0.0) > now:
                continue
            take = rs[: M.MAX_CONFIRM_RANGES]
            del rs[: M.MAX_CONFIRM_RANGES]
            out.append((device, [x for e, f, last in take for x in (e, f, last - f + 1)]))
            self.next_at[device] = now + self.interval
            if not rs:
                emptied.append(device)
        for device in emptied:
            del self.pending[device]
        return out

    def restore(self, device: str, flat: list[int]) -> None:
        """Ranges of a CONFIRM that could not be sent: pending again."""
        if device not in self.confirming:
            return
        rs = self.pending.get(device, [])
        rs += [
            [flat[i], flat[i + 1], flat[i + 1] + flat[i + 2] - 1] for i in range(0, len(flat), 3)
        ]
        rs.sort()
        merged: list[list[int]] = []
        for r in rs:
            m = merged[-1] if merged else None
            if m is not None and m[0] == r[0] and r[1] <= m[2] + 1:
                m[2] = max(m[2], r[2])
            else:
                merged.append(r)
        self.pending[device] = merged[-MAX_PENDING:]


def birth_confirms(body: object) -> bool:
    """A BIRTH body's opt-in (key 8 = CONFIRM_V1)."""
    v = body.get(M.B_CONFIRM) if isinstance(body, dict) else None
    return type(v) is int and v == M.CONFIRM_V1
