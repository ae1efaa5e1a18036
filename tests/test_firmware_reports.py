"""Report shapes: report-by-exception past a deadband (between interval reports), and BATCH
messages carrying several samples with their ages."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from protocol import messages as M
from tests.firmware.harness import Agent, Observer, make_flash
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("deadbands", "step"), [({}, 4), ({"1": 1}, 1)])
def test_deadband_reports_between_intervals(
    broker: Broker, tmp_path: Path, deadbands: dict[str, int], step: int
) -> None:
    obs = Observer(broker.port).start()
    # interval 4 board-seconds; with a deadband the agent samples every second (interval / 4)
    # and uptime (metric 1) moving by 1 is an exception worth a report
    a = Agent(
        make_flash(
            tmp_path,
            "ap-db",
            broker.port,
            interval=4,
            deadbands=deadbands,
            sim={"speed": 20, "seed": 2},
        )
    ).start()
    try:
        reps = obs.wait(
            lambda: len(obs.reports("ap-db")) >= 8 and obs.reports("ap-db"), 20, "8 reports"
        )
    finally:
        a.kill()
        obs.stop()
    ups = [s.msg.body[1] for s in reps[1:8]]  # type: ignore[index]
    gaps = {b - x for x, b in itertools.pairwise(ups)}
    assert gaps <= {step - 1, step, step + 1} and step in gaps, (ups, gaps)


def test_batch_messages_carry_several_samples(broker: Broker, tmp_path: Path) -> None:
    obs = Observer(broker.port).start()
    a = Agent(
        make_flash(tmp_path, "sn-batch", broker.port, kind="sensor", interval=2, batch=3)
    ).start()
    try:
        reps = obs.wait(
            lambda: len(obs.reports("sn-batch")) >= 3 and obs.reports("sn-batch"), 20, "3 batches"
        )
    finally:
        a.kill()
        obs.stop()
    for s in reps:
        assert s.msg.type == M.BATCH
        body = s.msg.body
        assert isinstance(body, list) and len(body) == 3
        ages = [age for age, _ in body]
        assert ages[0] > ages[1] > ages[2] == 0 and ages[0] - ages[2] in (3, 4, 5)
        assert all(set(range(48, 64)) <= set(metrics) for _, metrics in body)
        assert s.size <= M.MAX_PACKET["rep"]
