"""A long run on the real interpreter: at least 2,000 reports in the test heap without a
MemoryError, every one verified on the CPython side, and the heap high-water mark reported by
the diagnostics command stays below the heap size."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import messages as M
from tests.firmware.harness import HEAP, Agent, Observer, check_stream, make_flash
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(120)
REPORTS = 2000


def test_2000_reports_without_memory_error(broker: Broker, tmp_path: Path) -> None:
    obs = Observer(broker.port).start()
    # 200 reports per real second: interval 1 s of board time at 200x speed
    flash = make_flash(tmp_path, "ap-soak", broker.port, sim={"speed": 200, "seed": 3})
    agent = Agent(flash).start()
    try:
        obs.wait(lambda: len(obs.reports("ap-soak")) >= REPORTS, 60, f"{REPORTS} reports")
        _, seq, _ = obs.command("ap-soak", M.OP_DIAGNOSTICS)
        diag = obs.ack_for("ap-soak", seq).body[M.A_DATA]  # type: ignore[index]
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        agent.kill()
        obs.stop()
    assert "MemoryError" not in agent.console()
    assert not obs.bad
    order, dups = check_stream(obs, "ap-soak")
    assert len(order) >= REPORTS and dups == 0
    heap = int(HEAP.rstrip("K")) * 1024
    assert diag[M.DG_HEAP_SIZE] <= heap  # heap size as the agent sees it
    assert 0 < diag[M.DG_HEAP_HIGH_WATER] < diag[M.DG_HEAP_SIZE]  # live high water below the heap
    assert diag[M.DG_REPORTS] >= REPORTS and diag[M.DG_DROPPED] == 0  # reports made, none dropped
    print(
        "heap",
        diag[M.DG_HEAP_SIZE],
        "high water",
        diag[M.DG_HEAP_HIGH_WATER],
        "peak",
        diag[M.DG_HEAP_PEAK],
        "free",
        diag[M.DG_HEAP_FREE],
    )
