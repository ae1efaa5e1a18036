"""Retention: raw samples and message keys older than store.raw_retention_days are deleted (the
controller calls prune_raw hourly); rollups are kept. Deleting a message key loses the proof
that the message was stored, so prune_raw records per device the newest key it deleted
(devices.pruned_epoch/seq): ingest refuses a message below the replay window at or under that
mark (`beyond_retention`) instead of storing it a second time."""

from __future__ import annotations

from controller.store.core import StoreCore


class Retention(StoreCore):
    def prune_raw(self, before: float) -> int:
        """Delete raw samples and message keys older than `before` (retention); rollups stay.
        Raises each device's pruned mark to the newest key deleted, in the same transaction.
        Returns the number of metric values deleted."""
        with self._tx():
            n = self._execute("SELECT COUNT(*) FROM raw_metrics WHERE ts < ?", (before,))[0][0]
            p = self._execute("SELECT SUM(n) FROM raw_samples WHERE ts < ?", (before,))[0][0]
            marks: dict[str, tuple[int, int]] = {}
            for dev, epoch, seq in self._execute(
                "SELECT device_id, epoch, MAX(seq) FROM messages WHERE received < ?"
                " GROUP BY device_id, epoch",
                (before,),
            ):
                key = (int(epoch), int(seq))
                if key > marks.get(dev, (-1, -1)):
                    marks[dev] = key
            self._executemany(
                "UPDATE devices SET pruned_epoch = ?, pruned_seq = ? WHERE id = ? AND"
                " (pruned_epoch IS NULL OR pruned_epoch < ?"
                " OR (pruned_epoch = ? AND pruned_seq < ?))",
                [(e, s, d, e, e, s) for d, (e, s) in sorted(marks.items())],
            )
            self._execute("DELETE FROM raw_metrics WHERE ts < ?", (before,))
            self._execute("DELETE FROM raw_samples WHERE ts < ?", (before,))
            self._execute("DELETE FROM messages WHERE received < ?", (before,))
        return int(n) + int(p or 0)
