"""Delivery confirmation on the real MicroPython agent (docs/PROTOCOL.md section 16) with the
real controller: the broker acknowledges a backlog while the controller is down, is SIGKILLed
(what it held in memory is gone), comes back; the agent, never confirmed, re-sends those reports
after confirm_ms and frees its ring only as the controller confirms them. Everything it made is
stored exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from controller.config import ConfirmConfig
from controller.keys import MasterKey
from protocol import messages as M
from sim.session import stored_counts
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.firmware.harness import Agent, make_flash, ring_count
from tests.support.broker import Broker

MASTER = MasterKey(bytes(range(32)))


def wait(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def reports_stored(db: Path, device: str) -> tuple[int, int, int]:
    """(reports stored, samples stored, distinct samples) of one device."""
    return stored_counts(db, device)


def test_agent_resends_what_a_sigkilled_broker_acked_and_stores_everything_once(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    # persistence on, but saved only every hour: a SIGKILL loses every message the broker had
    # acknowledged and queued for the controller (docs/RELIABILITY.md; PLATFORM-NOTES)
    extra = ["autosave_interval 3600"] + (["user root"] if os.geteuid() == 0 else [])
    broker = broker_factory(extra=extra)
    store = sqlite_config(tmp_path)
    cfg = replace(
        make_config(store, broker.port), confirm=ConfirmConfig(interval_ms=300, reload_ms=500)
    )
    ct = ControllerThread(cfg, MASTER).start()
    assert ct.ctl is not None and ct.ctl.fleet is not None
    dev = "upy-cf"
    new = ct.call(ct.ctl.fleet.register, dev, "porto", "ribeira", "ap")
    flash = make_flash(
        tmp_path / "flash", dev, broker.port, key=new.key.hex(), confirm_ms=1500,
        sim={"speed": 10, "seed": 3}, buffer=256,
    )  # fmt: skip
    agent = Agent(flash).start()
    db = Path(store.path)
    try:
        wait(lambda: reports_stored(db, dev)[0] >= 20, 30, "reports stored and confirmed")
        wait(lambda: ring_count(flash) <= 3, 10, "the ring emptied by CONFIRMs")
        ct.stop()  # the broker acks and queues for the controller's session meanwhile
        wait(lambda: ring_count(flash) >= 30, 30, "a backlog the broker acknowledged")
        backlog = ring_count(flash)
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait(10)
        broker.proc = None
        broker.start()
        ct = ControllerThread(cfg, MASTER).start()
        assert ct.ctl is not None and ct.ctl.fleet is not None
        fleet = ct.ctl.fleet
        wait(lambda: reports_stored(db, dev)[0] >= 60, 40, "the backlog re-sent and stored")
        # stop reporting, then read how many reports the agent made
        c = ct.call(fleet.send_command, dev, "set-config", {M.G_INTERVAL: 3600}, 30)
        assert ct.call(fleet.wait_command, c["epoch"], c["seq"], 15.0)["status"] == "ok"
        c = ct.call(fleet.send_command, dev, "diagnostics", None, 30)
        diag = ct.call(fleet.wait_command, c["epoch"], c["seq"], 15.0)
        assert diag["status"] == "ok", diag
        made = diag["data"][str(M.DG_REPORTS)]
        wait(lambda: ring_count(flash) == 0, 30, "every report confirmed")
        wait(lambda: reports_stored(db, dev)[0] >= made, 10, "every report stored")
    except AssertionError:
        print(agent.console()[-3000:])
        raise
    finally:
        agent.kill()
        ct.stop()
    n, samples, distinct = reports_stored(db, dev)
    assert backlog >= 30 and n == made and samples == distinct, (backlog, n, made)
    assert "MemoryError" not in agent.console()
