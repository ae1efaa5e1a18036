"""Shared fixtures: a private Mosquitto per test (config written by the test) and a runner for
the real MicroPython binary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
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


@pytest.fixture
def upy() -> Callable[..., UpyResult]:
    """run_upy(script, *args, heap="64K"): the real micropython binary, output captured."""
    return run_upy
