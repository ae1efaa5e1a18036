"""The ingest shell around the pure IngestCore: MQTT messages in (the link's callback), unknown
devices parked while the store is asked, batches committed on the store thread, PUBACKs only
after the commit, backpressure on the link, and the periodic work (presence sweep, registry
refresh, retention, rollup compaction), and the delivery-confirmation hooks
(controller/confirm.py: after each commit). Imports the domain, the link and the store thread;
nothing here builds downlink messages (controller.fleet does)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from controller.config import Config
from controller.confirm import Confirmer
from controller.devices import DeviceCache
from controller.domain.batching import Batcher
from controller.domain.ingest import Rejected
from controller.domain.ratelimit import TokenBucket
from controller.domain.records import Accepted, Batch, PresenceEvent
from controller.errors import StoreError
from controller.metrics import Metrics
from controller.store.thread import StoreThread
from controller.transport.mqtt import AckHandle, MqttLink
from protocol import topics

log = logging.getLogger("idufleet.controller")

MAX_LOOKUPS = 64  # unknown device ids looked up in the store at once
MAX_PARKED = 256  # messages held per device while its lookup runs
REFRESH_EVERY = 10.0  # seconds between registry refreshes (status changes made by other processes)
PRUNE_EVERY = 3600.0
# Seconds between rollup compactions (Store.compact_rollups: pending deltas folded into the hourly
# rows). Each batch only appends its deltas; folding a few seconds of batches at once upserts
# each (device or zone, metric, hour) row once instead of once per batch.
COMPACT_EVERY = 2.0
LATENCY_SAMPLES = 65536
# Batches' worth of messages waiting while a commit runs before the link stops reading. Above 1,
# a batch grows while a slow commit runs (PostgreSQL), so per-batch costs such as the rollup
# upsert (one row per device, metric and hour) are shared by more messages; the bound keeps
# memory and receive -> commit latency in check (measured: 2 -> 4 took PostgreSQL from 7-10k to
# 11.5k reports/s, p99 140-170 -> 200-210 ms).
PAUSE_AT = 4

Parked = tuple[str, bytes, AckHandle, float]


class Pipeline:
    """Owns the uplink MQTT link. run() is its tasks (link, flusher, ticker) until drain()."""

    def __init__(self, cfg: Config, devices: DeviceCache, db: StoreThread, metrics: Metrics):
        self.cfg = cfg
        self.devices = devices
        self.core = devices.core
        self.db = db
        self.metrics = metrics
        self.batcher: Batcher[tuple[Accepted, AckHandle]] = Batcher(
            cfg.ingest.batch_size, cfg.ingest.batch_ms / 1000.0
        )
        self.link = MqttLink(
            cfg.mqtt,
            [topics.uplink_filter(c) for c in topics.UPLINK],
            self.on_message,
            manual_ack=cfg.ingest.ack_after_commit,
        )
        self.presence: list[PresenceEvent] = []
        self.acks: list[AckHandle] = []  # every received message, in arrival order, until stored
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # receive -> commit, s
        self.first_received: float | None = None  # for throughput figures (benchmarks, /health)
        self.last_commit: float | None = None
        self._wake = asyncio.Event()
        self._draining = False
        self._flush_lock = asyncio.Lock()
        self._parked: dict[str, list[Parked]] = {}
        self._log_budget = TokenBucket(cfg.ingest.reject_log_per_min / 60.0, 10)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Delivery confirmation (controller/confirm.py): told about replays and commits here,
        # sends on its own task; app.py gives it the Fleet's signed-downlink function.
        self.confirm = Confirmer(cfg.confirm, devices, db)

    # --- receiving (loop thread, synchronous) ----------------------------------------------
    def on_message(
        self, topic: str, payload: bytes, handle: AckHandle, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        if self.first_received is None:
            self.first_received = now
        self.metrics.received.inc()
        if topics.is_death_clear(topic, payload):  # neither ingested nor refused
            self.metrics.death_cleared.inc()
            self.acks.append(handle)
            return
        self._ingest(topic, payload, handle, now)

    def _ingest(self, topic: str, payload: bytes, handle: AckHandle, now: float) -> None:
        try:
            acc, pres = self.core.ingest(topic, payload, now)
        except Rejected as r:
            if (
                r.reason == "unknown_device"
                and r.device
                and self._maybe_park(r.device, (topic, payload, handle, now))
            ):
                return
            self.reject(r, topic)
            self.confirm.on_reject(r)
            self.acks.append(handle)
            return
        if pres is not None:
            self._presence(pres)
        if self.batcher.add((acc, handle), now):
            self._wake.set()
            if len(self.batcher) >= PAUSE_AT * self.cfg.ingest.batch_size:
                # A commit is still running and PAUSE_AT batches wait: stop reading until the
                # store catches up, so memory and receive->commit latency stay bounded.
                self.link.pause()

    def _presence(self, ev: PresenceEvent) -> None:
        self.presence.append(ev)
        log.info("presence", extra={"device": ev.device, "state": ev.state, "reason": ev.reason})

    def reject(self, r: Rejected, topic: str) -> None:
        """Count every refusal; log them at a bounded rate (a flood must not fill the disk)."""
        self.metrics.rejected.labels(r.reason).inc()
        if self._log_budget.allow(time.monotonic()):
            extra: dict[str, Any] = {"reason": r.reason, "topic": topic[:120]}
            if r.detail:
                extra["detail"] = r.detail[:200]
            if self._log_budget.denied:
                extra["suppressed"] = self._log_budget.denied
                self._log_budget.denied = 0
            log.warning("message rejected", extra=extra)

    def _maybe_park(self, device: str, msg: Parked) -> bool:
        """Hold messages of a device not in the cache while the store is asked about it."""
        if self.devices.recently_unknown(device, msg[3]):
            return False
        parked = self._parked.get(device)
        if parked is None and len(self._parked) >= MAX_LOOKUPS:
            return False  # a flood of unknown ids: refuse now rather than queue store lookups
        if parked is not None:
            if len(parked) < MAX_PARKED:
                parked.append(msg)
                return True
            return False
        self._parked[device] = [msg]
        task = asyncio.get_running_loop().create_task(self._lookup(device))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _lookup(self, device: str) -> None:
        try:
            rec = await self.db.call(lambda s: s.get_device(device))
        except StoreError as e:
            log.error("device lookup failed", extra={"device": device, "error": str(e)})
            rec = None
        if rec is not None:
            self.devices.load(rec)
        if self.devices.get(device) is None:
            self.devices.mark_unknown(device, time.time())
        for topic, payload, handle, t in self._parked.pop(device, []):
            self._ingest(topic, payload, handle, t)

    # --- committing ------------------------------------------------------------------------
    async def flush(self) -> None:
        """Commit what is batched (and the device state it changed), then PUBACK it all."""
        async with self._flush_lock:
            items = self.batcher.take()
            acks, self.acks = self.acks, []
            presence, self.presence = self.presence, []
            updates = self.core.take_updates()
            held = self.confirm.take_held()
            if not items and not presence and not updates:
                self.link.ack_many(acks)
                self.confirm.on_commit([], held)  # held ones were in an earlier commit
                return
            batch = Batch([a for a, _ in items], updates, presence)
            if not self._draining:
                # The batcher is empty again: keep receiving while this batch commits. (The
                # link may have paused at PAUSE_AT batches before this flush got to run, since
                # one socket read hands it up to 1,024 messages; without this the next batch
                # was only read after the commit, nothing overlapped.)
                self.link.resume()
            delay = 0.1
            while True:
                t0 = time.perf_counter()
                try:
                    result = await self.db.call(lambda s: s.write_batch(batch))
                    break
                except Exception as e:  # keep the batch; the broker holds the unacked rest
                    self.metrics.store_errors.inc()
                    log.error(
                        "store commit failed; retrying",
                        extra={"error": str(e)[:300], "retry_in": delay},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            done = self.last_commit = time.time()
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(items))
            self.metrics.stored.inc(result.messages)
            self.metrics.rows.inc(result.rows)
            if result.duplicates:
                self.metrics.duplicates.inc(result.duplicates)
            self.latencies.extend(done - a.received for a, _ in items)
            self.link.ack_many(acks + [h for _, h in items])
            self.confirm.on_commit(batch.messages, held)
            if not self._draining:
                self.link.resume()

    def p99_ms(self) -> float | None:
        """Receive -> commit latency, 99th percentile of the last LATENCY_SAMPLES messages."""
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return round(1000.0 * xs[min(len(xs) - 1, int(0.99 * len(xs)))], 3)

    # --- tasks -----------------------------------------------------------------------------
    async def _flusher(self) -> None:
        period = self.cfg.ingest.batch_ms / 1000.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            self._wake.clear()
            now = time.time()
            if self.batcher.due(now) or self.acks or self.presence or self.core.dirty:
                await self.flush()

    async def _ticker(self) -> None:
        last_refresh = last_prune = last_compact = time.monotonic()
        await self._prune()
        await self._compact()  # deltas a stopped or crashed controller left
        while True:
            await asyncio.sleep(1.0)
            for ev in self.core.sweep(time.time()):
                self._presence(ev)
            m = time.monotonic()
            if m - last_refresh >= REFRESH_EVERY:
                last_refresh = m
                with contextlib.suppress(StoreError):
                    await self.refresh()
            if m - last_prune >= PRUNE_EVERY:
                last_prune = m
                await self._prune()
            if m - last_compact >= COMPACT_EVERY and self.db.deltas_pending:
                last_compact = m
                await self._compact()

    async def refresh(self) -> None:
        """Registry changes made by other processes: new devices, status, zone."""
        recs = await self.db.call(lambda s: s.list_devices())
        self.devices.refresh(recs)

    async def _compact(self) -> None:
        """Fold pending rollup deltas (queued on the store thread, so between batches)."""
        try:
            await self.db.call(lambda s: s.compact_rollups())
        except StoreError as e:  # nothing lost: the deltas stay and are folded next time
            log.error("rollup compaction failed", extra={"error": str(e)})

    async def _prune(self) -> None:
        before = time.time() - self.cfg.store.raw_retention_days * 86400
        try:
            n = await self.db.call(lambda s: s.prune_raw(before))
        except StoreError as e:
            log.error("retention prune failed", extra={"error": str(e)})
            return
        if n:
            log.info("raw rows pruned", extra={"rows": n, "before": before})

    def start(self, tg: asyncio.TaskGroup) -> None:
        tg.create_task(self.link.run())
        tg.create_task(self._flusher())
        tg.create_task(self._ticker())
        tg.create_task(self.confirm.run())

    async def drain(self) -> None:
        """Stop reading, commit and PUBACK what was received, disconnect, compact. What is not
        committed stays unacknowledged with the broker."""
        self._draining = True
        log.info("stopping: no new messages, flushing the batch")
        self.link.pause()
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await t
        await self.flush()
        await self.link.close()
        await self._compact()
