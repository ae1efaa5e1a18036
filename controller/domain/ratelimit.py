"""A token bucket, pure: the clock is passed in. Bounds rejection logging and the cost of
impersonation checks, so a flood of bad packets cannot flood the logs or the CPU."""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate  # tokens per second
        self.burst = burst
        self.tokens = burst
        self.stamp: float | None = None
        self.denied = 0  # calls refused since the last allowed one

    def allow(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.denied += 1
        return False
