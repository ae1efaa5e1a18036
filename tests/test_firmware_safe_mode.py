"""Crash loops: a sensor driver that crashes the agent at every boot trips the boot counter, and
the next boot comes up in safe mode (connectivity and commands, no sensors), says so in its
birth and an event, and still answers commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import messages as M
from tests.firmware.harness import Agent, Observer, make_flash
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(120)


def test_crash_loop_enters_safe_mode(broker: Broker, tmp_path: Path) -> None:
    obs = Observer(broker.port).start()
    flash = make_flash(
        tmp_path,
        "sn-crash",
        broker.port,
        kind="sensor",
        sim={"speed": 20, "seed": 1, "fault": "crash", "fault_after": 2},
        crash={"max": 2, "window": 300, "stable": 600},
    )
    agent = Agent(flash)
    try:
        codes = []
        for _ in range(3):  # boot 1 (first ever) and two crashes counted: still normal mode
            agent.start()
            codes.append(agent.wait_exit(30))
        assert codes == [1, 1, 1]
        assert "sim sensor fault" in agent.console()
        agent.start()  # the third counted crash within the window: safe mode
        births = obs.wait(
            lambda: [s for s in obs.items("sn-crash", "birth") if s.msg.epoch == 4],
            20,
            "birth of boot 4",
        )
        body = births[0].msg.body
        assert isinstance(body, dict)
        assert body[M.B_SAFE_MODE] is True and body[M.B_BOOT_REASON] == M.BOOT_CRASH
        obs.wait(
            lambda: [
                s for s in obs.items("sn-crash", "evt") if s.msg.body[M.E_CODE] == M.EV_SAFE_MODE
            ],
            10,
            "safe-mode event",
        )
        earlier = [
            s.msg.body[M.B_SAFE_MODE] for s in obs.items("sn-crash", "birth") if s.msg.epoch < 4
        ]
        assert earlier and not any(earlier)
        _, seq, _ = obs.command("sn-crash", M.OP_DIAGNOSTICS)
        diag = obs.ack_for("sn-crash", seq).body[M.A_DATA]  # type: ignore[index]
        assert diag[M.DG_SAFE_MODE] is True and diag[M.DG_REPORTS] == 0  # no reports made
        assert agent.proc is not None and agent.proc.poll() is None  # stays up: no sensors
        assert not obs.reports("sn-crash") or all(s.msg.epoch < 4 for s in obs.reports("sn-crash"))
    finally:
        agent.kill()
        obs.stop()
