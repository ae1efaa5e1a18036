"""Shared fixtures: a private Mosquitto per test (config written by the test), one private
PostgreSQL cluster per run (started by the first test that needs it), and a runner for the real
MicroPython binary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.postgres import PostgresCluster
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
def postgres() -> Iterator[PostgresCluster]:
    """ONE private PostgreSQL cluster (Debian's binaries, a temp dir, a free loopback port) for
    the whole run, never the machine's own server. Session-scoped, so it is started lazily: the
    first test that asks for it (a postgres-backed store) pays the start, a run without any
    postgres test never starts it. Tests isolate themselves by schema (store_config)."""
    with PostgresCluster() as pg:
        yield pg


@pytest.fixture
def upy() -> Callable[..., UpyResult]:
    """run_upy(script, *args, heap="64K"): the real micropython binary, output captured."""
    return run_upy
