"""Delivery confirmation's shell (docs/PROTOCOL.md section 16, docs/CONTROLLER.md): the pipeline
calls its hooks (a replay of an accepted message, a commit), and its task sends what the pure
ConfirmBook says is due, at most one CONFIRM per device per confirm.interval_ms, persists opt-ins
seen in BIRTHs and re-reads them from the store every confirm.reload_ms (another controller of
a shared group may have stored a device's BIRTH). Imports the domain and the store thread;
sending is a function it is given (app.py wires Fleet.send_confirm), so it never imports fleet."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from controller.config import ConfirmConfig
from controller.devices import DeviceCache
from controller.domain.confirm import ConfirmBook, Key
from controller.domain.ingest import Rejected
from controller.domain.records import Accepted
from controller.errors import ControllerError, StoreError
from controller.store.thread import StoreThread
from protocol import messages as M
from protocol.errors import REPLAY

log = logging.getLogger("idufleet.controller")

Send = Callable[[str, list[int]], bool]  # (device, flat ranges) -> sent


class Confirmer:
    def __init__(self, cfg: ConfirmConfig, devices: DeviceCache, db: StoreThread) -> None:
        self.cfg = cfg
        self.devices = devices
        self.db = db
        self.book = ConfirmBook(cfg.interval_ms / 1000.0)
        self.send: Send | None = None  # set once the Fleet exists (app.py)
        self._optins: dict[str, bool] = {}  # opt-in changes seen in committed BIRTHs, to persist
        self._loaded = False

    # --- pipeline hooks (loop thread, synchronous) ------------------------------------------
    def on_reject(self, r: Rejected) -> None:
        """A replay of a message the device's window holds as accepted is stored (or about to
        be): name it again, after the next commit. Anything else refused is never named."""
        if r.reason != REPLAY or r.key is None or r.device is None or not self.cfg.enabled:
            return
        dev = self.devices.get(r.device)
        if dev is not None and dev.window.accepted(*r.key):
            self.book.hold(r.device, *r.key)

    def take_held(self) -> list[Key]:
        """Taken with the batch the pipeline is about to commit (see ConfirmBook.take_held)."""
        return self.book.take_held()

    def on_commit(self, items: list[Accepted], held: list[Key]) -> None:
        """A batch committed: BIRTHs set opt-ins first, then every message in it (new or a
        duplicate) and what was held is confirmable."""
        if not self.cfg.enabled:
            return
        book = self.book
        for a in items:
            if a.mtype == M.BIRTH:
                dev = self.devices.get(a.device)
                on = dev is not None and dev.confirm
                if book.set_confirming(a.device, on):
                    self._optins[a.device] = on
        book.committed((a.device, a.epoch, a.seq) for a in items)
        book.committed(held)

    # --- task -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Send what is due every quarter interval (at most 250 ms); persist and reload the
        opt-ins. Never raises on a store or broker error: what could not be sent is pending
        again, an opt-in not written is written on the next pass."""
        if not self.cfg.enabled:
            return
        tick = min(0.25, self.cfg.interval_ms / 4000.0)
        reload_every = self.cfg.reload_ms / 1000.0
        next_reload = 0.0
        while True:
            now = time.monotonic()
            if now >= next_reload:
                next_reload = now + reload_every
                await self._reload()
            await self._persist()
            self.flush(time.time())
            await asyncio.sleep(tick)

    def flush(self, now: float) -> int:
        """Send every CONFIRM due at `now`; returns how many went out."""
        send = self.send
        if send is None:
            return 0
        n = 0
        for device, flat in self.book.due(now):
            try:
                if send(device, flat):
                    n += 1
            except ControllerError as e:  # the broker is away: keep the ranges for later
                self.book.restore(device, flat)
                log.debug("confirm not sent", extra={"device": device, "error": str(e)})
        return n

    async def _reload(self) -> None:
        try:
            stored = await self.db.call(lambda s: s.confirming_devices())
        except StoreError as e:
            log.error("confirming devices not read", extra={"error": str(e)})
            return
        for d, on in self._optins.items():  # ours, not yet written: they are newer
            if on:
                stored.add(d)
            else:
                stored.discard(d)
        self.book.replace_confirming(stored)

    async def _persist(self) -> None:
        if not self._optins:
            return
        changes, self._optins = self._optins, {}
        now = time.time()
        try:
            await self.db.call(lambda s: s.set_confirming_many(changes, now))
        except StoreError as e:
            log.error("opt-ins not written; retrying", extra={"error": str(e)})
            for d, on in changes.items():
                self._optins.setdefault(d, on)
            return
        for d, on in changes.items():
            log.info("delivery confirmation", extra={"device": d, "opted_in": on})
