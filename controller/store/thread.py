"""The store thread: every store call runs on one dedicated thread, because neither backend's
connection may be shared between threads and the event loop must never block on a commit.
It also owns what every call path needs when the store fails: driver errors translated to our
own (no raw psycopg/sqlite3 exception reaches a caller), a lost connection reopened with
backoff, and how long the store has been failing (for /health). Imports the store interface
only; knows nothing of MQTT, the domain or HTTP."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from controller.config import StoreConfig
from controller.errors import StoreError, StoreUnavailable
from controller.store import Store, open_store

T = TypeVar("T")
log = logging.getLogger("idufleet.store")

# Reopening a lost connection: first attempt at once, then 0.25 s doubling to 5 s between
# attempts; calls in between fail fast with StoreUnavailable (their callers keep their own
# retry: the pipeline keeps its batch, the API answers 503).
RECONNECT_FIRST = 0.25
RECONNECT_MAX = 5.0

_Job = tuple[Callable[[], Any], "Future[Any]"]


class StoreThread:
    """Owns the store and the one thread that touches it. `await db.call(lambda s: s.x(...))`
    runs a call there; the lambda receives the open store, so nothing outside holds a store
    reference that could be used from the wrong thread.

    The thread is a daemon of our own rather than a ThreadPoolExecutor: a call stuck in the
    driver (a locked SQLite file, a server that stopped answering) must not keep the process
    from exiting after a bounded shutdown (`close(timeout)`); an executor's worker is joined at
    interpreter exit."""

    def __init__(self, cfg: StoreConfig) -> None:
        self.cfg = cfg
        self._store: Store | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="idufleet-store", daemon=True)
        self._thread.start()
        self._retry_at = 0.0  # monotonic: no reconnect attempt before this
        self._retry_delay = RECONNECT_FIRST
        # Set when a call fails because the store is unavailable, cleared by the next call
        # that succeeds: /health turns 503 when it stays set (health.store_failing_s).
        self.failing_since: float | None = None
        self.last_error = ""
        self.reconnects = 0

    @property
    def deltas_pending(self) -> bool:
        """Rollup deltas wait to be compacted (read without a round trip: a plain flag)."""
        return self._store is not None and bool(self._store.deltas_pending)

    async def open(self) -> None:
        """Open the store on its thread (schema migrated). Raises StoreError (StoreUnavailable
        when the server cannot be reached)."""

        def go() -> Store:
            try:
                return open_store(self.cfg)
            except StoreError:
                raise
            except Exception as e:  # a driver error during the migration
                raise StoreUnavailable(f"cannot open the store: {e.__class__.__name__}: {e}") from e

        self._store = await self._run(go)

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run fn(store) on the store thread. Raises StoreError before open() or after close();
        StoreUnavailable while the store cannot be reached (a lost connection is reopened here,
        and a call the drop interrupted is run once more on the new one); StoreDataError for
        data the store refuses. Any other exception fn raises is passed on unchanged."""
        store = self._store
        if store is None:
            raise StoreError("the store is not open (the controller is starting or stopping)")
        return await self._run(lambda: self._guarded(store, fn))

    def _guarded(self, store: Store, fn: Callable[[Store], T]) -> T:
        """On the store thread: reconnect if needed, run fn, translate driver errors."""
        try:
            self._ensure_connected(store)
            try:
                out = fn(store)
            except Exception as e:
                err = store.translate(e)
                if err is None:
                    raise
                if not (isinstance(err, StoreUnavailable) and store.broken):
                    raise err from e
                # The connection died under this call: reopen at once and run it again (every
                # store call is safe to repeat: the batch is keyed, the rest are reads or
                # idempotent); a second failure goes to the caller.
                log.warning("store connection lost; reconnecting", extra={"error": str(e)[:300]})
                self._retry_at = 0.0
                self._ensure_connected(store)
                try:
                    out = fn(store)
                except Exception as e2:
                    err2 = store.translate(e2)
                    if err2 is None:
                        raise
                    raise err2 from e2
        except StoreUnavailable as e:
            if self.failing_since is None:
                self.failing_since = time.time()
            self.last_error = str(e)[:300]
            raise
        self.failing_since = None
        return out

    def _ensure_connected(self, store: Store) -> None:
        if not store.broken:
            return
        now = time.monotonic()
        if now < self._retry_at:
            raise StoreUnavailable(
                "store connection lost; reconnecting"
                f" (next attempt in {self._retry_at - now:.1f} s)"
            )
        try:
            store.reconnect()
        except StoreError:
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RECONNECT_MAX)
            raise
        self._retry_delay = RECONNECT_FIRST
        self.reconnects += 1
        log.info("store connection reopened", extra={"reconnects": self.reconnects})

    async def close(self, timeout: float | None = None) -> bool:
        """Close the store and stop the thread, waiting at most `timeout` seconds (None: as
        long as the call in progress takes). False when the thread was still busy: it is left
        behind (a daemon, so it cannot hold up the process's exit)."""
        store, self._store = self._store, None
        done: Future[None] = Future()

        def finish() -> None:
            if store is not None:
                store.close()

        self._jobs.put((finish, done))
        self._jobs.put(None)
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), timeout)
        except TimeoutError:
            log.error("store thread still busy at shutdown; leaving it", extra={"after_s": timeout})
            return False
        except Exception as e:  # closing a dead connection: nothing to keep
            log.warning("store close failed", extra={"error": str(e)[:300]})
        return True

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    async def _run(self, fn: Callable[[], T]) -> T:
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return await asyncio.wrap_future(fut)
