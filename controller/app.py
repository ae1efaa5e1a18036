"""The controller service: wires the MQTT link, the pure ingest core, the batcher, the store
(on one dedicated thread) and the HTTP API with asyncio.TaskGroup. Owns no protocol logic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from controller import registry
from controller.api.metrics import Metrics
from controller.config import Config
from controller.domain.batching import Batcher
from controller.domain.commands import CommandIssuer, op_code
from controller.domain.ingest import DeviceState, IngestCore, Rejected
from controller.domain.presence import Presence
from controller.domain.ratelimit import TokenBucket
from controller.domain.records import Accepted, Batch, PresenceEvent
from controller.errors import ControllerError, KeyWrapError, RegistryError, StoreError
from controller.keys import MasterKey, load_master
from controller.store import Store, open_store
from controller.store.base import DeviceRecord
from controller.transport.mqtt import AckHandle, MqttLink
from protocol import topics
from protocol.replay import ReplayWindow
from protocol.sign import Signer

log = logging.getLogger("idufleet.controller")
T = TypeVar("T")

NEGATIVE_TTL = 5.0  # seconds an unknown device id stays unknown before the store is asked again
MAX_LOOKUPS = 64  # unknown device ids looked up in the store at once
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


class _Shutdown(Exception):
    pass


class Controller:
    def __init__(self, cfg: Config, master: MasterKey | None = None) -> None:
        self.cfg = cfg
        self.master = master or load_master(cfg.keys, create=False)
        self.metrics = Metrics()
        self.core = IngestCore(offline_after=cfg.ingest.offline_after)
        self.batcher: Batcher[tuple[Accepted, AckHandle]] = Batcher(
            cfg.ingest.batch_size, cfg.ingest.batch_ms / 1000.0
        )
        self.presence: list[PresenceEvent] = []
        self.acks: list[AckHandle] = []  # every received message, in arrival order, until stored
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # receive -> commit, s
        self.first_received: float | None = None  # for throughput figures (benchmarks, /health)
        self.last_commit: float | None = None
        self.link = MqttLink(
            cfg.mqtt,
            [topics.uplink_filter(c) for c in topics.UPLINK],
            self._on_message,
            manual_ack=cfg.ingest.ack_after_commit,
        )
        self.issuer: CommandIssuer | None = None
        self.store: Store | None = None
        self.started = time.time()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idufleet-store")
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._unknown: dict[str, float] = {}  # device id -> when to ask the store again
        self._parked: dict[str, list[tuple[str, bytes, AckHandle, float]]] = {}
        self._log_budget = TokenBucket(cfg.ingest.reject_log_per_min / 60.0, 10)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics.bind(
            lambda: float(sum(d.presence.online for d in self.core.devices.values())),
            lambda: float(len(self.core.devices)),
            lambda: float(self.link.connected.is_set()),
        )
        self.api_runner: Any = None
        self.api_port: int | None = None

    # --- store thread --------------------------------------------------------------------
    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call on the store thread (the store is not thread-safe)."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def _open_store(self) -> Store:
        return open_store(self.cfg.store)

    def _state(self, rec: DeviceRecord) -> DeviceState:
        key = self.master.unwrap(rec.id, rec.key_wrapped)
        window = ReplayWindow()
        if rec.replay:
            try:
                window = ReplayWindow.loads(rec.replay)
            except ValueError:
                log.error(
                    "replay state unreadable; starting a fresh window", extra={"device": rec.id}
                )
        return DeviceState(
            id=rec.id,
            site=rec.site,
            zone=rec.zone,
            signer=Signer(key),
            active=rec.status == registry.ACTIVE,
            window=window,
            presence=Presence(rec.online, rec.last_seen, rec.birth_epoch, rec.birth_seq),
            firmware=rec.firmware,
            board=rec.board,
            boot_epoch=rec.boot_epoch,
            death_open=rec.death_open,
        )

    def _load(self, rec: DeviceRecord) -> None:
        try:
            self.core.add(self._state(rec))
        except KeyWrapError as e:
            log.error(
                "device key does not open; device ignored",
                extra={"device": rec.id, "error": str(e)},
            )

    async def _refresh(self) -> None:
        """Registry changes made by other processes: new devices, status, zone."""
        assert self.store is not None
        for rec in await self.db(self.store.list_devices):
            dev = self.core.devices.get(rec.id)
            if dev is None:
                self._load(rec)
            else:
                dev.active = rec.status == registry.ACTIVE
                dev.zone = rec.zone

    # --- ingest (loop thread, synchronous) ------------------------------------------------
    def _on_message(
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
                and self._maybe_park(r.device, topic, payload, handle, now)
            ):
                return
            self._reject(r, topic)
            self.acks.append(handle)
            return
        if pres is not None:
            self.presence.append(pres)
            log.info(
                "presence",
                extra={"device": pres.device, "state": pres.state, "reason": pres.reason},
            )
        if self.batcher.add((acc, handle), now):
            self._wake.set()
            if len(self.batcher) >= PAUSE_AT * self.cfg.ingest.batch_size:
                # A commit is still running and PAUSE_AT batches wait: stop reading until the
                # store catches up, so memory and receive->commit latency stay bounded.
                self.link.pause()

    def _reject(self, r: Rejected, topic: str) -> None:
        self.metrics.rejected.labels(r.reason).inc()
        if self._log_budget.allow(time.monotonic()):
            extra: dict[str, Any] = {"reason": r.reason, "topic": topic[:120]}
            if r.detail:
                extra["detail"] = r.detail[:200]
            if self._log_budget.denied:
                extra["suppressed"] = self._log_budget.denied
                self._log_budget.denied = 0
            log.warning("message rejected", extra=extra)

    def _maybe_park(
        self, device: str, topic: str, payload: bytes, handle: AckHandle, now: float
    ) -> bool:
        """Hold messages of a device not in the cache while the store is asked about it."""
        if self._unknown.get(device, 0.0) > now or self.store is None:
            return False
        parked = self._parked.get(device)
        if parked is None and len(self._parked) >= MAX_LOOKUPS:
            return False  # a flood of unknown ids: refuse now rather than queue store lookups
        if parked is not None:
            if len(parked) < 256:
                parked.append((topic, payload, handle, now))
                return True
            return False
        self._parked[device] = [(topic, payload, handle, now)]
        task = asyncio.get_running_loop().create_task(self._lookup(device))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _lookup(self, device: str) -> None:
        assert self.store is not None
        try:
            rec = await self.db(self.store.get_device, device)
        except StoreError as e:
            log.error("device lookup failed", extra={"device": device, "error": str(e)})
            rec = None
        if rec is not None:
            self._load(rec)
        if device not in self.core.devices:
            now = time.time()
            if len(self._unknown) > 10000:  # bounded: forget expired negative entries
                self._unknown = {d: t for d, t in self._unknown.items() if t > now}
            self._unknown[device] = now + NEGATIVE_TTL
        for topic, payload, handle, t in self._parked.pop(device, []):
            self._ingest(topic, payload, handle, t)

    # --- batching and flushing ------------------------------------------------------------
    async def flush(self) -> None:
        """Commit what is batched (and the device state it changed), then PUBACK it all."""
        async with self._flush_lock:
            items = self.batcher.take()
            acks, self.acks = self.acks, []
            presence, self.presence = self.presence, []
            updates = self.core.take_updates()
            if not items and not presence and not updates:
                self.link.ack_many(acks)
                return
            batch = Batch([a for a, _ in items], updates, presence)
            if not self._stop.is_set():
                # The batcher is empty again: keep receiving while this batch commits. (The
                # link may have paused at PAUSE_AT batches before this flush got to run, since
                # one socket read hands it up to 1,024 messages; without this the next batch
                # was only read after the commit, nothing overlapped.)
                self.link.resume()
            delay = 0.1
            while True:
                t0 = time.perf_counter()
                try:
                    assert self.store is not None
                    result = await self.db(self.store.write_batch, batch)
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
            if not self._stop.is_set():
                self.link.resume()

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
                self.presence.append(ev)
                log.info(
                    "presence", extra={"device": ev.device, "state": ev.state, "reason": ev.reason}
                )
            m = time.monotonic()
            if m - last_refresh >= REFRESH_EVERY:
                last_refresh = m
                with contextlib.suppress(StoreError):
                    await self._refresh()
            if m - last_prune >= PRUNE_EVERY:
                last_prune = m
                await self._prune()
            if m - last_compact >= COMPACT_EVERY and self.store and self.store.deltas_pending:
                last_compact = m
                await self._compact()

    async def _compact(self) -> None:
        """Fold pending rollup deltas (queued on the store thread, so between batches)."""
        assert self.store is not None
        try:
            await self.db(self.store.compact_rollups)
        except StoreError as e:  # nothing lost: the deltas stay and are folded next time
            log.error("rollup compaction failed", extra={"error": str(e)})

    async def _prune(self) -> None:
        assert self.store is not None
        before = time.time() - self.cfg.store.raw_retention_days * 86400
        try:
            n = await self.db(self.store.prune_raw, before)
        except StoreError as e:
            log.error("retention prune failed", extra={"error": str(e)})
            return
        if n:
            log.info("raw rows pruned", extra={"rows": n, "before": before})

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, take a command epoch, load the registry, start the API."""
        self.store = await self.db(self._open_store)
        epoch = await self.db(self.store.next_controller_epoch)
        self.issuer = CommandIssuer(epoch)
        await self._refresh()
        log.info(
            "controller starting",
            extra={
                "store": self.cfg.store.backend,
                "devices": len(self.core.devices),
                "command_epoch": epoch,
            },
        )
        from controller.api.http import start_api

        self.api_runner, self.api_port = await start_api(self)

    def stop(self) -> None:
        self._stop.set()

    async def _shutdown_when_told(self) -> None:
        await self._stop.wait()
        log.info("stopping: no new messages, flushing the batch")
        self.link.pause()
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await t
        await self.flush()
        await self.link.close()
        await self._compact()
        raise _Shutdown

    async def run(self) -> None:
        """Run until stop() (SIGTERM/SIGINT in `idufleet serve`). Flushes before returning."""
        await self.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.link.run())
                tg.create_task(self._flusher())
                tg.create_task(self._ticker())
                tg.create_task(self._shutdown_when_told())
        except* _Shutdown:
            pass
        finally:
            if self.api_runner is not None:
                await self.api_runner.cleanup()
            if self.store is not None:
                await self.db(self.store.close)
            self._db.shutdown(wait=True)
            log.info("controller stopped")

    # --- operator actions (API) ------------------------------------------------------------
    async def register(
        self, device_id: str, site: str, zone: str, kind: str, tags: dict[str, str] | None = None
    ) -> registry.NewDevice:
        assert self.store is not None
        new = await self.db(
            partial(
                registry.create_device,
                self.store,
                self.master,
                device_id,
                site,
                zone,
                kind,
                tags,
                zones=self.cfg.fleet.zones,
            )
        )
        self._unknown.pop(device_id, None)
        rec = await self.db(self.store.get_device, device_id)
        if rec is not None:
            self._load(rec)
        return new

    async def disable(self, device_id: str) -> None:
        assert self.store is not None
        await self.db(registry.disable_device, self.store, device_id)
        dev = self.core.devices.get(device_id)
        if dev is not None:
            dev.active = False

    async def send_command(
        self, device_id: str, op: str | int, args: dict[int, Any] | None = None, ttl: int = 60
    ) -> dict[str, Any]:
        """Sign and publish a COMMAND; the ACK settles it in the store (status ok/failed)."""
        assert self.store is not None and self.issuer is not None
        dev = self.core.devices.get(device_id)
        if dev is None or not dev.active:
            raise RegistryError(f"no active device {device_id}; list them with `idufleet devices`")
        try:
            code = op_code(op)
            cmd = self.issuer.build(
                dev.signer, dev.site, device_id, code, args, int(time.time()), ttl
            )
        except ValueError as e:
            raise ControllerError(str(e), "command") from None
        json_args = {str(k): v for k, v in args.items()} if args else None
        await self.db(
            self.store.record_command,
            cmd.epoch,
            cmd.seq,
            device_id,
            cmd.op,
            json_args,
            float(cmd.issued),
            cmd.expires,
        )
        self.link.publish(cmd.topic, cmd.payload, qos=1)
        self.metrics.commands.labels(str(cmd.op)).inc()
        log.info(
            "command sent",
            extra={"device": device_id, "op": cmd.op, "epoch": cmd.epoch, "seq": cmd.seq},
        )
        return {
            "epoch": cmd.epoch,
            "seq": cmd.seq,
            "device": device_id,
            "op": cmd.op,
            "expires": cmd.expires,
            "status": "sent",
        }

    async def wait_command(self, epoch: int, seq: int, timeout: float) -> dict[str, Any] | None:
        """Poll the store until the command is settled (also if another controller got the ACK)."""
        assert self.store is not None
        deadline = time.monotonic() + timeout
        while True:
            cmd = await self.db(self.store.get_command, epoch, seq)
            if cmd is None or cmd["status"] != "sent" or time.monotonic() >= deadline:
                return cmd
            await asyncio.sleep(0.05)

    def p99_ms(self) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return round(1000.0 * xs[min(len(xs) - 1, int(0.99 * len(xs)))], 3)
