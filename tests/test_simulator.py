"""The simulator against the real parts: a private Mosquitto, the real controller, and real
MicroPython agents beside simulated devices. Tests wait for events (stored counts, presence),
never a fixed sleep beyond the run's own duration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.domain.ingest import REASONS
from controller.keys import MasterKey
from sim.model import Behaviour
from sim.scenario import parse
from sim.session import RunConfig, simulate
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.firmware.harness import Agent, make_flash
from tests.support.broker import Broker


def test_200_devices_through_a_broker_restart_store_every_report_once(tmp_path: Path) -> None:
    scenario = parse('[[at]]\nt = 3\naction = "restart-broker"\ndown = 0.5\n', "restart.toml")
    rc = RunConfig(
        devices=200,
        interval=1,
        duration=8,
        ramp=0.5,
        scenario=scenario,
        zones=("ribeira", "foz"),
        workdir=tmp_path / "stack",
        behaviour=Behaviour(interval=1, backoff_base_ms=500, backoff_cap_ms=4000),
    )
    s = asyncio.run(simulate(rc))
    assert s["connected"] == 200 and s["drained"] and s["stored_caught_up"], s
    assert s["sent"] > 1000 and s["sent"] == s["stored"] == s["made"], s
    assert s["duplicates"] == 0, s
    assert s["broker_restart_recovered_s"] is not None, s
    # QoS 1 copies re-sent across the restart are refused by the replay window, nothing else
    assert set(s["controller_rejected_by_reason"]) <= {"replay"}, s["controller_rejected_by_reason"]


def test_simulated_devices_are_recorded_like_micropython_agents(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    broker = broker_factory()
    ctl = ControllerThread(
        make_config(sqlite_config(tmp_path), broker.port), MasterKey(bytes(range(32)))
    ).start()
    agents: list[Agent] = []
    try:
        assert ctl.ctl is not None and ctl.ctl.fleet is not None
        fleet = ctl.ctl.fleet
        real = {"upy-ap": "ap", "upy-sensor": "sensor"}
        for dev, kind in real.items():
            new = ctl.call(fleet.register, dev, "porto", "ribeira", kind)
            flash = make_flash(
                tmp_path / "flash", dev, broker.port, kind, key=new.key.hex(),
                sim={"speed": 1, "seed": 3},
            )  # fmt: skip
            agents.append(Agent(flash).start())
        rc = RunConfig(
            devices=4,
            kind="mix",
            interval=1,
            duration=4,
            broker=("127.0.0.1", broker.port),
            api=ctl.url,
            token="secret-token",
            prefix="simx",
            zones=("ribeira",),
            keep=True,
            behaviour=Behaviour(interval=1),
        )
        s = asyncio.run(simulate(rc))
        assert s["sent"] >= 8 and s["connected"] == 4, s

        def recorded() -> dict[str, dict[str, Any]]:
            out = {}
            for dev in [*real, "simx-ap-00001", "simx-sensor-00002"]:
                out[dev] = ctl.call(fleet.device, dev)
            return out

        ctl.wait(
            lambda c: all(len(d["latest"]) > 5 for d in recorded().values()),
            60,
            "every device's metrics stored",
        )
        got = recorded()
        for kind, sim_dev in (("ap", "simx-ap-00001"), ("sensor", "simx-sensor-00002")):
            a, b = got[f"upy-{kind}"], got[sim_dev]
            assert set(a["latest"]) == set(b["latest"]), (kind, a["latest"], b["latest"])
            for d in (a, b):
                assert d["board"] == "sim" and d["boot_epoch"] >= 1 and d["kind"] == kind, d
                assert d["firmware"].startswith("idu-"), d
        assert got["simx-ap-00001"]["firmware"] == "idu-sim 0.1.0"
        m = ctl.ctl.metrics
        assert {r: m.rejected_count(r) for r in REASONS if m.rejected_count(r)} == {}
        deadline = time.monotonic() + 10
        while not all(ctl.call(fleet.device, d)["online"] for d in real):
            assert time.monotonic() < deadline, "agents not online"
            time.sleep(0.05)
    finally:
        for a in agents:
            a.kill()
        ctl.stop()
