"""Hourly rollups kept up to date as data arrives: the pure part folds newly stored rows into
per-(key, metric, hour) aggregates that the store merges into its rollup tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from controller.domain.records import Accepted

HOUR = 3600

# (key, metric, hour start) -> [count, min, max, sum, last value, last ts]: plain lists, since a
# batch folds thousands of samples and attribute access on a dataclass costs more than indexing.
Deltas = dict[tuple[str, int, int], list[float]]


def merge(into: list[float], other: Sequence[float]) -> None:
    """The rollup merge rule, written once: fold the aggregate `other` into `into` (both
    [count, min, max, sum, last value, last ts] of one key and metric). Counts and sums add,
    min and max combine, and "last" is the value with the latest sample time, `other`'s on
    equal times, so merging in the order things were stored makes the later one win.

    Used by fold_batch (zones, mixed metric sets) and by the store's reads (rollup row, then
    its pending deltas in the order they were added). The store's SQL (store/rollups.py:
    _merge_sql, for the upsert and the compaction) states the same rule column by column;
    tests/controller/test_store.py checks that both give what a per-value fold gives."""
    into[0] += other[0]
    if other[1] < into[1]:
        into[1] = other[1]
    if other[2] > into[2]:
        into[2] = other[2]
    into[3] += other[3]
    if other[5] >= into[5]:
        into[4] = other[4]
        into[5] = other[5]


def fold_batch(messages: Iterable[Accepted]) -> tuple[Deltas, Deltas]:
    """Per-device and per-zone hourly deltas of the metric rows of newly stored messages (the
    caller passes only those, so each sample counts once). "last" is the value with the latest
    sample time; on equal times the later message in the batch wins. The zones fold the device
    deltas, not the samples.

    Samples are grouped per (device, hour) first: when a group's samples all carry the same
    metrics in the same order (a device reports a fixed set), each metric's values are one
    column and count/min/max/sum are builtins over it, about 3x faster than a dict update per
    value (the store thread holds the GIL the MQTT loop needs meanwhile); otherwise the group
    is merged value by value."""
    groups: dict[tuple[str, int], tuple[list[float], list[dict[int, float]]]] = {}
    zone_of: dict[str, str] = {}
    for m in messages:
        if not m.samples:
            continue
        d = m.device
        zone_of[d] = m.zone
        for _, ts, vals in m.samples:
            gk = (d, int(ts // HOUR) * HOUR)
            g = groups.get(gk)
            if g is None:
                groups[gk] = ([ts], [vals])
            else:
                g[0].append(ts)
                g[1].append(vals)
    dev: Deltas = {}
    for (d, hour), (times, valss) in groups.items():
        first = list(valss[0])
        if len(valss) == 1:
            ts = times[0]
            for mid, v in valss[0].items():
                dev[(d, mid, hour)] = [1, v, v, v, v, ts]
            continue
        if all(list(v) == first for v in valss):
            tmax = max(times)
            ilast = len(times) - 1 - times[::-1].index(tmax)
            for mid, col in zip(first, zip(*[v.values() for v in valss], strict=True), strict=True):
                dev[(d, mid, hour)] = [len(col), min(col), max(col), sum(col), col[ilast], tmax]
            continue
        for ts, vals in zip(times, valss, strict=True):
            for mid, v in vals.items():
                k = (d, mid, hour)
                a = dev.get(k)
                if a is None:
                    dev[k] = [1, v, v, v, v, ts]
                else:
                    merge(a, (1, v, v, v, v, ts))
    zone: Deltas = {}
    for (d, mid, hour), a in dev.items():
        k = (zone_of[d], mid, hour)
        z = zone.get(k)
        if z is None:
            zone[k] = list(a)
        else:
            merge(z, a)
    return dev, zone
