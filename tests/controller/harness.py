"""Run a real Controller on its own thread and event loop, so tests can drive devices and the
broker with plain blocking code and stop the controller as SIGTERM would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.app import Controller
from controller.config import ApiConfig, Config, IngestConfig, MqttConfig, StoreConfig
from controller.keys import MasterKey


def make_config(
    store: StoreConfig,
    port: int,
    client_id: str = "ctl-test",
    shared_group: str = "",
    token: str = "secret-token",
    **ingest: Any,
) -> Config:
    return Config(
        mqtt=MqttConfig(port=port, client_id=client_id, shared_group=shared_group, keepalive=5),
        store=store,
        ingest=replace(IngestConfig(batch_ms=20), **ingest),
        api=ApiConfig(port=0, token=token),
    )


class ControllerThread:
    def __init__(self, cfg: Config, master: MasterKey) -> None:
        self.cfg = cfg
        self.master = master
        self.ctl: Controller | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._ready = threading.Event()

    def _main(self) -> None:
        async def go() -> None:
            self.loop = asyncio.get_running_loop()
            self.ctl = Controller(self.cfg, self.master)
            self._ready.set()
            await self.ctl.run()

        try:
            asyncio.run(go())
        except BaseException as e:  # surfaced by stop()/the test
            self.error = e
            self._ready.set()

    def start(self, timeout: float = 15.0) -> ControllerThread:
        self._thread.start()
        assert self._ready.wait(timeout), "controller did not start"
        self.wait(lambda c: c.link.connected.is_set() and c.api_port is not None, timeout)
        return self

    def call(self, coro_fn: Any, *args: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine function of the controller on its loop and return the result."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(coro_fn(*args), self.loop)
        return fut.result(timeout)

    def wait(self, pred: Any, timeout: float = 15.0, what: str = "controller condition") -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise AssertionError(f"controller crashed: {self.error!r}")
            if self.ctl is not None and pred(self.ctl):
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    @property
    def url(self) -> str:
        assert self.ctl is not None
        return f"http://127.0.0.1:{self.ctl.api_port}"

    def stop(self, timeout: float = 20.0) -> None:
        if self.loop is not None and self.ctl is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.ctl.stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "controller did not stop"
        if self.error is not None:
            raise AssertionError(f"controller failed: {self.error!r}")


def sqlite_config(tmp: Path) -> StoreConfig:
    return StoreConfig(backend="sqlite", path=str(tmp / "idu.sqlite"))


def spawn_serve(conf: Path, log_path: Path, api_port: int) -> subprocess.Popen[bytes]:
    """`idufleet serve --config conf` as its own process (its own session, so a test can SIGTERM
    or SIGKILL it alone), output to log_path; returns once its API port accepts connections."""
    from tests.support.broker import wait_port

    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tools.cli import main; main()",
            "serve",
            "--config",
            str(conf),
        ],
        stdout=log,
        stderr=log,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
    )
    log.close()
    wait_port(api_port, 30)
    return p
