"""The test oracle for rollups: a plain per-value fold, written apart from controller.domain.rollup
on purpose, so that the domain's fold_batch and the store's merges (Python and SQL) are checked
against something other than themselves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Agg:
    """count, min, max, sum and the latest value (by sample time; on equal times the value
    folded later) of one metric in one hour."""

    n: int
    vmin: float
    vmax: float
    vsum: float
    last: float
    last_ts: float

    @property
    def mean(self) -> float:
        return self.vsum / self.n


def fold(samples: Iterable[tuple[str, int, float, float]]) -> dict[tuple[str, int, int], Agg]:
    """(key, metric, ts, value) in storing order -> {(key, metric, hour start): Agg}."""
    out: dict[tuple[str, int, int], Agg] = {}
    for key, metric, ts, value in samples:
        k = (key, metric, int(ts // 3600) * 3600)
        a = out.get(k)
        if a is None:
            out[k] = Agg(1, value, value, value, value, ts)
            continue
        a.n += 1
        a.vmin = min(a.vmin, value)
        a.vmax = max(a.vmax, value)
        a.vsum += value
        if ts >= a.last_ts:
            a.last, a.last_ts = value, ts
    return out
