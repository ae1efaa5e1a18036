"""The controller service, wiring only: opens the store on its thread, builds the device cache,
the ingest pipeline, the Fleet service and the HTTP API, and runs their tasks in one
asyncio.TaskGroup until stop(). Owns no protocol, ingest or operator logic; nothing in
controller/ imports this module (the CLI's `serve`, the demo and tests do)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from controller.api.http import ApiOps, start_api
from controller.config import Config
from controller.devices import DeviceCache
from controller.domain.commands import CommandIssuer
from controller.domain.health import (
    BROKER_DROPPING,
    BROKER_REFUSED,
    COMMIT_STALE,
    DEVICE_KEYS_UNOPENED,
    STORE_FAILING,
)
from controller.domain.ingest import IngestCore
from controller.fleet import Fleet
from controller.jobs import JobRunner
from controller.keys import MasterKey, load_master
from controller.metrics import Metrics
from controller.operators import Operators
from controller.pipeline import Pipeline
from controller.store.thread import StoreThread

log = logging.getLogger("idufleet.controller")
HEALTH_REASONS = (
    STORE_FAILING,
    COMMIT_STALE,
    BROKER_DROPPING,
    BROKER_REFUSED,
    DEVICE_KEYS_UNOPENED,
)


class _Shutdown(Exception):
    pass


class Controller:
    """Build with a config (and the master key, or it is loaded from cfg.keys); run() until
    stop(). `fleet` and `api_port` exist once the store is open and the API listens."""

    def __init__(self, cfg: Config, master: MasterKey | None = None) -> None:
        self.cfg = cfg
        self.master = master or load_master(cfg.keys, create=False)
        self.metrics = Metrics()
        self.db = StoreThread(cfg.store)
        core = IngestCore(
            offline_after=cfg.ingest.offline_after,
            retention_s=cfg.store.raw_retention_days * 86400.0,
        )
        self.devices = DeviceCache(core, self.master)
        self.pipeline = Pipeline(cfg, self.devices, self.db, self.metrics)
        self.core = self.devices.core
        self.link = self.pipeline.link
        self.fleet: Fleet | None = None
        self.jobs: JobRunner | None = None
        self.started = time.time()
        self.api_runner: Any = None
        self.api_port: int | None = None
        self._stop = asyncio.Event()
        self.metrics.bind(
            lambda: float(self.devices.online()),
            lambda: float(len(self.devices)),
            lambda: float(self.link.connected.is_set()),
            lambda: float(self.core.ts_implausible),
        )

    def health(self) -> dict[str, Any]:
        """The /health snapshot. `status` is "failing" (HTTP 503) while `reasons` names any of
        controller.domain.health's causes: the store failing, commits stale, broker drops, the
        broker refusing our login, no registered device's key opening with the master key."""
        now = time.time()
        reasons = self.pipeline.health_reasons(now)
        for r in HEALTH_REASONS:
            self.metrics.unhealthy.labels(r).set(1.0 if r in reasons else 0.0)
        failing = self.db.failing_since
        self.metrics.store_failing.set(0.0 if failing is None else now - failing)
        self.metrics.store_reconnects.set(self.db.reconnects)
        h = self.pipeline.health
        return {
            "status": "failing" if reasons else "ok",
            "reasons": reasons,
            "mqtt_connected": self.link.connected.is_set(),
            "mqtt_refused": self.link.refused,
            "store": self.cfg.store.backend,
            "store_ok": failing is None,
            "store_failing_s": None if failing is None else round(now - failing, 1),
            "store_error": self.db.last_error if failing is not None else None,
            "store_reconnects": self.db.reconnects,
            "last_commit_age_s": None
            if self.pipeline.last_commit is None
            else round(now - self.pipeline.last_commit, 1),
            "waiting_s": None if h.waiting_since is None else round(now - h.waiting_since, 1),
            "broker_dropped": h.dropped,
            "broker_drops_seen": h.drops_seen,
            "devices": len(self.devices),
            "devices_loaded": h.devices_loaded,
            "devices_registered": h.devices_registered,
            "online": self.devices.online(),
            "uptime_s": round(time.time() - self.started, 1),
            "batched": len(self.pipeline.batcher),
            "ingest_p99_ms": self.pipeline.p99_ms(),
        }

    async def start(self) -> None:
        """Open the store, take a command epoch, load the registry, start the API."""
        await self.db.open()
        epoch = await self.db.call(lambda s: s.next_controller_epoch())
        await self.pipeline.refresh()
        self.fleet = Fleet(
            self.cfg,
            self.db,
            self.devices,
            self.master,
            CommandIssuer(epoch),
            self.link.publish,
            self.metrics,
            on_presence=self.pipeline.note_presence,
        )
        self.pipeline.confirm.send = self.fleet.send_confirm
        self.jobs = JobRunner(self.db, self.fleet, self.devices, tick=self.cfg.ingest.jobs_tick)
        self.pipeline.on_presence = self.jobs.on_presence
        log.info(
            "controller starting",
            extra={
                "store": self.cfg.store.backend,
                "devices": len(self.devices),
                "command_epoch": epoch,
            },
        )
        ops = ApiOps(
            self.fleet,
            self.health,
            self.metrics.registry,
            self.cfg.api,
            self.cfg.fleet.zones,
            self.pipeline,
            Operators(self.db, self.master, self.cfg.api.token),
            self.jobs,
        )
        self.api_runner, self.api_port = await start_api(ops)

    def stop(self) -> None:
        self._stop.set()

    async def _shutdown_when_told(self) -> None:
        await self._stop.wait()
        await self.pipeline.drain()
        raise _Shutdown

    async def run(self) -> None:
        """Run until stop() (SIGTERM/SIGINT in `idufleet serve`). Flushes before returning."""
        try:
            await self.start()
            try:
                async with asyncio.TaskGroup() as tg:
                    self.pipeline.start(tg)
                    assert self.jobs is not None
                    tg.create_task(self.jobs.run())
                    tg.create_task(self._shutdown_when_told())
            except* _Shutdown:
                pass
        finally:
            if self.api_runner is not None:
                with contextlib.suppress(Exception):
                    await self.api_runner.cleanup()
            # Bounded: a store call stuck in the driver is left to its daemon thread.
            await self.db.close(timeout=2.0)
            log.info("controller stopped")

    # Figures the benchmarks and tests read.
    def p99_ms(self) -> float | None:
        return self.pipeline.p99_ms()

    @property
    def first_received(self) -> float | None:
        return self.pipeline.first_received

    @property
    def last_commit(self) -> float | None:
        return self.pipeline.last_commit
