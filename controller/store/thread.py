"""The store thread: every store call runs on one dedicated thread, because neither backend's
connection may be shared between threads and the event loop must never block on a commit.
Imports the store interface only; knows nothing of MQTT, the domain or HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from controller.config import StoreConfig
from controller.errors import StoreError
from controller.store import Store, open_store

T = TypeVar("T")


class StoreThread:
    """Owns the store and the one thread that touches it. `await db.call(lambda s: s.x(...))`
    runs a call there; the lambda receives the open store, so nothing outside holds a store
    reference that could be used from the wrong thread."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.cfg = cfg
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idufleet-store")
        self._store: Store | None = None

    @property
    def deltas_pending(self) -> bool:
        """Rollup deltas wait to be compacted (read without a round trip: a plain flag)."""
        return self._store is not None and bool(self._store.deltas_pending)

    async def open(self) -> None:
        """Open the store on its thread (schema migrated). Raises StoreError."""
        self._store = await self._run(lambda: open_store(self.cfg))

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run fn(store) on the store thread. Raises StoreError before open() or after close()."""
        store = self._store
        if store is None:
            raise StoreError("the store is not open (the controller is starting or stopping)")
        return await self._run(lambda: fn(store))

    async def close(self) -> None:
        """Close the store and stop the thread (waits for the call in progress)."""
        store, self._store = self._store, None
        if store is not None:
            await self._run(store.close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
