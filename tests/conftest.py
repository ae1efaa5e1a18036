"""Shared fixtures: a private Mosquitto per test (config written by the test), one private
PostgreSQL cluster per run (started by the first test that needs it), and a runner for the real
MicroPython binary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.postgres import PostgresCluster, session_cluster, stop_session_cluster
from tests.support.upy import UpyResult, run_upy


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make brokers with chosen extra config lines; all are stopped at teardown."""
    started: list[Broker] = []

    def make(extra: list[str] | None = None, anonymous: bool = True, start: bool = True) -> Broker:
        b = Broker(tmp_path / f"broker{len(started)}", extra=list(extra or []), anonymous=anonymous)
        started.append(b)
        return b.start() if start else b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A plain anonymous loopback broker on a free port."""
    return broker_factory()


@pytest.fixture(scope="session")
def postgres() -> PostgresCluster:
    """ONE private PostgreSQL cluster (Debian's binaries, a temp dir, a free loopback port) for
    the whole run, never the machine's own server. Started lazily, by the first test that needs
    it (this fixture, or a postgres store_config), so a run without postgres tests never starts
    one; stopped and removed when the session finishes. Tests isolate themselves by schema."""
    return session_cluster()


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown, which may still use it
def pytest_sessionfinish() -> None:
    stop_session_cluster()


@pytest.fixture
def upy() -> Callable[..., UpyResult]:
    """run_upy(script, *args, heap="64K"): the real micropython binary, output captured."""
    return run_upy
