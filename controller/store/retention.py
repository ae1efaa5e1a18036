"""Retention: raw samples and message keys older than store.raw_retention_days are deleted (the
controller calls prune_raw hourly); rollups are kept."""

from __future__ import annotations

from controller.store.core import StoreCore


class Retention(StoreCore):
    def prune_raw(self, before: float) -> int:
        """Delete raw samples and message keys older than `before` (retention); rollups stay.
        Returns the number of metric values deleted."""
        with self._tx():
            n = self._execute("SELECT COUNT(*) FROM raw_metrics WHERE ts < ?", (before,))[0][0]
            p = self._execute("SELECT SUM(n) FROM raw_samples WHERE ts < ?", (before,))[0][0]
            self._execute("DELETE FROM raw_metrics WHERE ts < ?", (before,))
            self._execute("DELETE FROM raw_samples WHERE ts < ?", (before,))
            self._execute("DELETE FROM messages WHERE received < ?", (before,))
        return int(n) + int(p or 0)
