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
from collections.abc import Callable
from typing import Any

from controller.config import Config
from controller.confirm import Confirmer
from controller.devices import DeviceCache
from controller.domain.batching import Batcher
from controller.domain.health import HealthWatch
from controller.domain.ingest import Rejected
from controller.domain.ratelimit import TokenBucket
from controller.domain.records import Accepted, Batch, BatchResult, DeviceUpdate, PresenceEvent
from controller.errors import StoreDataError, StoreError
from controller.metrics import Metrics
from controller.security.broker_stats import DROPPED, SYS_STATS
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
RETRY_MAX = 5.0  # seconds between attempts while the store is unavailable
MAX_REPLAY = 1000  # quarantined messages replayed per request

Parked = tuple[str, bytes, AckHandle, float]
# An accepted message until its commit: the raw topic and payload stay with it so that, if the
# store refuses it, it can be quarantined as received (and replayed through verification after a
# fix). They are the objects the link already made, so keeping them costs a reference each,
# and only for what waits or commits: at most (PAUSE_AT + 1) batches, ~200 B a message.
Pending = tuple[Accepted, AckHandle, str, bytes]


def _kind(e: BaseException) -> str:
    """The label a store refusal is counted under: the driver's error class."""
    return e.kind if isinstance(e, StoreDataError) else type(e).__name__


class Pipeline:
    """Owns the uplink MQTT link. run() is its tasks (link, flusher, ticker) until drain()."""

    def __init__(self, cfg: Config, devices: DeviceCache, db: StoreThread, metrics: Metrics):
        self.cfg = cfg
        self.devices = devices
        self.core = devices.core
        self.db = db
        self.metrics = metrics
        ing = cfg.ingest
        self.batcher: Batcher[Pending] = Batcher(ing.batch_size, ing.batch_ms / 1000.0)
        self.link = MqttLink(
            cfg.mqtt,
            [topics.uplink_filter(c) for c in topics.UPLINK],
            self.on_message,
            manual_ack=cfg.ingest.ack_after_commit,
            sys_topics=list(SYS_STATS),
            on_sys=self.on_broker_stat,
        )
        h = cfg.health
        self.health = HealthWatch(h.store_failing_s, h.commit_stale_s, h.broker_drop_hold_s)
        self.presence: list[PresenceEvent] = []
        # Told of every presence transition as ingest sees it (before it commits): the jobs
        # runner sends a device's queued executions when its BIRTH arrives.
        self.on_presence: Callable[[PresenceEvent], None] | None = None
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
        if acc.late:
            self.metrics.late.inc()
        if self.health.waiting_since is None:
            self.health.waiting_since = now
        if self.batcher.add((acc, handle, topic, payload), now):
            self._wake.set()
            if len(self.batcher) >= PAUSE_AT * self.cfg.ingest.batch_size:
                # A commit is still running and PAUSE_AT batches wait: stop reading until the
                # store catches up, so memory and receive->commit latency stay bounded.
                self.link.pause()

    def on_broker_stat(self, topic: str, payload: bytes) -> None:
        """A $SYS statistic from the broker (SYS_STATS): mirrored to its gauge; the dropped
        counter also feeds /health."""
        name = SYS_STATS.get(topic)
        if name is None:
            return
        try:
            value = int(float(payload.decode()))
        except (ValueError, UnicodeDecodeError):
            return
        self.metrics.broker[name].set(value)
        if name == DROPPED:
            before = self.health.drops_seen
            self.health.on_dropped(value, time.time())
            if self.health.drops_seen > before:
                log.error(
                    "the broker dropped messages it had acknowledged to devices",
                    extra={"dropped": self.health.drops_seen - before, "total": value},
                )

    def health_reasons(self, now: float) -> list[str]:
        """Why /health should answer 503 now (empty: healthy)."""
        self.health.store_failing_since = self.db.failing_since
        self.health.broker_refused = self.link.refused
        self.health.devices_loaded = len(self.devices)
        self.health.devices_registered = self.devices.registered()
        return self.health.reasons(now)

    def note_presence(self, ev: PresenceEvent) -> None:
        """A presence change from outside the message path (an operator disabled the device):
        stored with the next batch, like the ones messages cause."""
        self._presence(ev)
        self._wake.set()

    def _presence(self, ev: PresenceEvent) -> None:
        self.presence.append(ev)
        if self.on_presence is not None:
            self.on_presence(ev)
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
        """Commit what is batched (and the device state it changed), then PUBACK it all.

        While the store is unavailable the batch is kept and retried (the broker holds the
        rest). When the store refuses the batch's data, the batch is bisected: the messages it
        cannot hold go to the quarantine table, everything else commits, and all of it is
        acknowledged, so one poison message never stops ingest for the fleet."""
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
            if not self._draining:
                # The batcher is empty again: keep receiving while this batch commits. (The
                # link may have paused at PAUSE_AT batches before this flush got to run, since
                # one socket read hands it up to 1,024 messages; without this the next batch
                # was only read after the commit, nothing overlapped.)
                self.link.resume()
            t0 = time.perf_counter()
            try:
                result = await self._write(Batch([p[0] for p in items], updates, presence))
                done_items = items
            except Exception as e:  # the store refuses something in it: find it, keep the rest
                log.warning(
                    "store refused a batch; isolating what it cannot hold",
                    extra={"messages": len(items), "error": str(e)[:300]},
                )
                result, done_items = await self._isolate(items, updates, presence)
            done = self.last_commit = time.time()
            self.metrics.batch_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(items))
            self.metrics.stored.inc(result.messages)
            self.metrics.rows.inc(result.rows)
            if result.duplicates:
                self.metrics.duplicates.inc(result.duplicates)
            self.latencies.extend(done - p[0].received for p in items)
            self.link.ack_many(acks + [p[1] for p in done_items])
            self.health.waiting_since = self.batcher.first
            # stored, found stored, or kept in quarantine: the device may forget them
            self.confirm.on_commit([p[0] for p in done_items], held)
            if not self._draining:
                self.link.resume()

    async def _write(self, batch: Batch) -> BatchResult:
        """write_batch, retried with backoff while the store is unavailable (a lost connection
        is reopened by the store thread). Raises StoreDataError (or any non-store exception)
        when the store refuses the data: retrying would fail the same way."""
        delay = 0.1
        while True:
            try:
                return await self.db.call(lambda s: s.write_batch(batch))
            except StoreDataError:
                raise
            except StoreError as e:  # keep the batch; the broker holds the unacked rest
                self.metrics.store_errors.inc()
                log.error(
                    "store commit failed; retrying",
                    extra={"error": str(e)[:300], "retry_in": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _isolate(
        self, items: list[Pending], updates: list[DeviceUpdate], presence: list[PresenceEvent]
    ) -> tuple[BatchResult, list[Pending]]:
        """Bisect a refused batch: halves that commit are stored, a single message that does
        not is quarantined. k bad messages in n cost about 2k log2(n) small commits. Device
        state and presence then commit on their own. Returns the total and the messages that
        may be acknowledged (stored or quarantined)."""
        stored = rows = dups = 0
        bad: list[tuple[Pending, BaseException]] = []
        stack = [items]
        while stack:
            chunk = stack.pop()
            if not chunk:
                continue
            try:
                r = await self._write(Batch([p[0] for p in chunk]))
            except Exception as e:
                if len(chunk) == 1:
                    bad.append((chunk[0], e))
                else:
                    half = len(chunk) // 2
                    stack += [chunk[half:], chunk[:half]]
                continue
            stored, rows, dups = stored + r.messages, rows + r.rows, dups + r.duplicates
        await self._write_state(updates, presence)
        lost = await self._quarantine(bad)
        done = [p for p in items if id(p) not in lost] if lost else items
        return BatchResult(stored, rows, dups), done

    async def _write_state(
        self, updates: list[DeviceUpdate], presence: list[PresenceEvent]
    ) -> None:
        """Device state and presence of a bisected batch. An update the store refuses (a
        firmware string it cannot hold) is dropped and counted: the messages are stored, and
        the device row keeps its previous state."""
        if not updates and not presence:
            return
        try:
            await self._write(Batch([], updates, presence))
            return
        except Exception:
            pass
        parts = [Batch([], [], presence)] + [Batch([], [u], []) for u in updates]
        for b in parts:
            try:
                await self._write(b)
            except Exception as e:
                self.metrics.updates_refused.inc()
                log.error(
                    "store refused a device-state update; dropped",
                    extra={
                        "device": b.devices[0].device if b.devices else None,
                        "error": str(e)[:300],
                    },
                )

    async def _quarantine(self, bad: list[tuple[Pending, BaseException]]) -> set[int]:
        """Keep refused messages in the quarantine table (retrying while the store is
        unavailable); returns the ids of the Pendings that could not be kept even there, which
        stay unacknowledged (the broker still has them)."""
        if not bad:
            return set()
        now = time.time()
        rows: list[tuple[str | None, str, bytes, str, float]] = [
            (p[0].device, p[2], p[3], f"{_kind(err)}: {err}", p[0].received) for p, err in bad
        ]
        delay = 0.1
        while True:
            try:
                await self.db.call(lambda s: s.quarantine(rows, now))
                break
            except StoreDataError as qe:
                log.error("quarantine refused too; left unacknowledged", extra={"error": str(qe)})
                return {id(p) for p, _ in bad}
            except StoreError as qe:
                log.error("quarantine write failed; retrying", extra={"error": str(qe)[:300]})
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        for p, e in bad:
            self.metrics.quarantined.labels(_kind(e)).inc()
            log.error(
                "message quarantined: the store cannot hold it",
                extra={
                    "device": p[0].device,
                    "epoch": p[0].epoch,
                    "seq": p[0].seq,
                    "topic": p[2][:120],
                    "error": str(e)[:300],
                },
            )
        return set()

    async def list_quarantine(
        self, include_resolved: bool = False, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Quarantined messages, oldest first (the API's view: payload in hex)."""
        rows = await self.db.call(lambda s: s.quarantined(None, include_resolved, limit))
        return [q.public() for q in rows]

    async def replay_quarantine(self, ids: list[int] | None = None) -> dict[str, Any]:
        """Ingest quarantined messages again (after a fix): verified and checked as a late
        message (the store's key decides), each committed on its own. Outcomes: stored,
        duplicate, rejected (a rule refuses it now: resolved with the reason), or still
        refused (stays quarantined, attempt counted). Returns counts and the ids per outcome."""
        rows = await self.db.call(lambda s: s.quarantined(ids, limit=MAX_REPLAY))
        now = time.time()
        resolved: list[tuple[int, str]] = []
        failed: list[tuple[int, str]] = []
        out: dict[str, list[int]] = {"stored": [], "duplicate": [], "rejected": [], "failed": []}
        for q in rows:
            try:
                acc, _ = self.core.ingest(q.topic, q.payload, now, replaying=True)
            except Rejected as r:
                resolved.append((q.id, f"rejected: {r.reason}"))
                out["rejected"].append(q.id)
                continue
            try:
                res = await self._write(Batch([acc]))
            except Exception as e:
                failed.append((q.id, f"{_kind(e)}: {e}"))
                out["failed"].append(q.id)
                continue
            outcome = "stored" if res.messages else "duplicate"
            resolved.append((q.id, outcome))
            out[outcome].append(q.id)
            if res.messages:
                self.metrics.stored.inc(res.messages)
                self.metrics.rows.inc(res.rows)
        if resolved:
            await self.db.call(lambda s: s.resolve_quarantined(resolved, now))
        if failed:
            await self.db.call(lambda s: s.requarantine(failed, now))
        for k, v in out.items():
            if v:
                self.metrics.replayed.labels(k).inc(len(v))
        return {k: {"count": len(v), "ids": v} for k, v in out.items()}

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

    async def _prune(self, before: float | None = None) -> None:
        """Retention (store.prune_raw), then a registry refresh so the devices' pruned marks
        (the bound for late messages) apply at once."""
        cut = time.time() - self.cfg.store.raw_retention_days * 86400 if before is None else before
        try:
            n = await self.db.call(lambda s: s.prune_raw(cut))
            await self.refresh()
        except StoreError as e:
            log.error("retention prune failed", extra={"error": str(e)})
            return
        if n:
            log.info("raw rows pruned", extra={"rows": n, "before": cut})

    def start(self, tg: asyncio.TaskGroup) -> None:
        tg.create_task(self.link.run())
        tg.create_task(self._flusher())
        tg.create_task(self._ticker())
        tg.create_task(self.confirm.run())

    async def drain(self) -> None:
        """Stop reading, commit and PUBACK what was received, disconnect, compact, all within
        ingest.shutdown_timeout: a store that fails or hangs cannot hold up a stop. What is not
        committed by then stays unacknowledged with the broker (the session is kept), which
        delivers it again to the next controller."""
        self._draining = True
        deadline = time.monotonic() + self.cfg.ingest.shutdown_timeout
        log.info("stopping: no new messages, flushing the batch")
        self.link.pause()

        async def commit() -> None:
            for t in list(self._tasks):
                with contextlib.suppress(Exception):
                    await t
            await self.flush()

        try:
            await asyncio.wait_for(commit(), self.cfg.ingest.shutdown_timeout)
        except TimeoutError:
            log.error(
                "shutdown: the store did not commit in time; the messages not committed stay"
                " unacknowledged with the broker, which delivers them again",
                extra={"timeout_s": self.cfg.ingest.shutdown_timeout},
            )
        await self.link.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._compact(), max(0.1, deadline - time.monotonic()))
