"""Fifty real agents reconnecting after a broker restart spread their reconnects over the backoff
window (full jitter) instead of coming back in the same instant. The spread is measured and
printed; the assertion is on its shape, not on speed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.firmware.harness import Agent, Observer, make_flash, persistent_broker
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(150)
AGENTS = 50
BASE_MS = 2000


def test_fifty_agents_spread_reconnects(
    broker_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = persistent_broker(broker_factory)
    obs = Observer(broker.port, persistent=True).start()
    names = [f"ap-b{i:02d}" for i in range(AGENTS)]
    agents = [
        Agent(
            make_flash(
                tmp_path,
                n,
                broker.port,
                interval=600,
                keepalive=30,
                backoff={"base_ms": BASE_MS, "cap_ms": 4 * BASE_MS},
                sim={"speed": 1, "seed": i},
            )
        ).start()
        for i, n in enumerate(names)
    ]
    try:
        obs.wait(
            lambda: len({s.device for s in obs.items(channel="birth")}) == AGENTS,
            60,
            "every agent's first birth",
        )
        broker.stop()
        time.sleep(0.3)
        broker.start()
        restart = time.monotonic()

        def second_births() -> dict[str, float]:
            firsts: dict[str, float] = {}
            for s in obs.items(channel="birth"):
                if s.t > restart and s.device not in firsts:
                    firsts[s.device] = s.t - restart
            return firsts

        back = obs.wait(
            lambda: (b := second_births()) and len(b) == AGENTS and b, 40, "every agent back"
        )
    finally:
        for a in agents:
            a.kill()
        obs.stop()
    times = sorted(back.values())
    spread = times[-1] - times[0]
    buckets = {int(t * 10) for t in times}  # distinct 100 ms slots used
    deciles = statistics.quantiles(times, n=10)
    print(
        f"reconnect spread {spread:.2f}s, p10 {deciles[0]:.2f}s, p50 {deciles[4]:.2f}s, "
        f"p90 {deciles[8]:.2f}s, {len(buckets)} distinct 100 ms slots"
    )
    # full jitter over a [0, 2 s) first window: expect the spread to cover a good part of it
    assert spread > 0.5 * BASE_MS / 1000
    assert len(buckets) >= 8
    assert deciles[8] - deciles[0] > 0.3 * BASE_MS / 1000
