"""`idufleet demo` end to end, short: broker + controller + real MicroPython agents; every agent
reports, nothing crashes, everything started is stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from controller.config import StoreConfig
from controller.store import open_store

IDUFLEET = str(Path(sys.executable).parent / "idufleet")


def test_demo_runs_agents_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    r = subprocess.run(
        [
            IDUFLEET,
            "demo",
            # Every agent has sent its BIRTH and a report with metrics ~2 s after the demo starts
            # (--interval 1); 6 s leaves three times that for a loaded machine.
            "--seconds",
            "6",
            "--devices",
            "6",
            "--interval",
            "1",
            "--dir",
            str(workdir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    logs = {p.parent.name: p.read_text()[-800:] for p in workdir.glob("devices/*/agent.log")}
    assert summary["agents_crashed"] == [], logs
    assert summary["devices_seen"] == 6, logs
    assert summary["metric_rows"] > 0 and summary["presence_events"] >= 6
    s = open_store(StoreConfig(path=summary["store"]))
    try:
        kinds = {d.kind for d in s.list_devices() if d.last_seen is not None}
        assert kinds == {"ap", "sensor"}  # 6 devices: one per zone, then a sensor
        assert all(d.firmware for d in s.list_devices())  # every agent sent its BIRTH
    finally:
        s.close()
    # nothing left running: no broker, no agent (their pids are gone)
    out = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True)
    assert out.stdout.strip() == ""
