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

    def reserve(self, now: float) -> float:
        """Take a token even when none is left (the balance goes negative): the seconds until
        it would have been there, 0.0 when it was. The OTA server defers a chunk that long
        instead of refusing it, so a burst of requests is paced, not dropped."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0.0 else -self.tokens / self.rate
