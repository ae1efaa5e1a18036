"""When the controller is unhealthy, as pure state: the shell reports events (a commit, the
store failing since, messages waiting since, a broker $SYS counter) with their times, and
`reasons(now)` says what is wrong, if anything. /health answers 503 while that list is not empty.
No I/O, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass

STORE_FAILING = "store_failing"  # every store call failed for store_failing_s
COMMIT_STALE = "commit_stale"  # a received message waits for its commit longer than commit_stale_s
BROKER_DROPPING = "broker_dropping"  # the broker's dropped counter rose within broker_drop_hold_s
BROKER_REFUSED = "broker_refused"  # the broker's last CONNACK refused our login (password, ACL)
DEVICE_KEYS_UNOPENED = "device_keys_unopened"  # devices registered, none opens with the master key


@dataclass
class HealthWatch:
    store_failing_s: float = 30.0
    commit_stale_s: float = 60.0
    broker_drop_hold_s: float = 600.0
    store_failing_since: float | None = None
    waiting_since: float | None = None  # oldest received message not committed yet
    dropped: int | None = None  # the broker's $SYS publish/messages/dropped, last seen
    last_drop: float | None = None  # when that counter was last seen to rise
    drops_seen: int = 0  # messages the broker dropped while we watched
    broker_refused: str | None = None  # the reason of the last refused CONNACK, None once accepted
    devices_registered: int = 0  # in the registry
    devices_loaded: int = 0  # of those, whose key opened with the master key

    def on_dropped(self, value: int, now: float) -> None:
        """The broker's cumulative dropped count. A rise is a drop we saw happen; a fall is the
        broker restarting (its counters start at 0 again); the first value is a baseline (drops
        before we watched are in Prometheus, idufleet_broker_messages_dropped, not in health)."""
        if self.dropped is not None and value > self.dropped:
            self.drops_seen += value - self.dropped
            self.last_drop = now
        self.dropped = value

    def reasons(self, now: float) -> list[str]:
        out = []
        if (
            self.store_failing_since is not None
            and now - self.store_failing_since >= self.store_failing_s
        ):
            out.append(STORE_FAILING)
        if self.waiting_since is not None and now - self.waiting_since >= self.commit_stale_s:
            out.append(COMMIT_STALE)
        if self.last_drop is not None and now - self.last_drop < self.broker_drop_hold_s:
            out.append(BROKER_DROPPING)
        if self.broker_refused is not None:
            out.append(BROKER_REFUSED)
        if self.devices_registered and not self.devices_loaded:
            out.append(DEVICE_KEYS_UNOPENED)  # the wrong master key (a few bad rows: only counted)
        return out
