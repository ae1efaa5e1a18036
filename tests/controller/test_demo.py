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


def test_demo_sighup_stops_everything(tmp_path: Path) -> None:
    """Closing the terminal (SIGHUP) stops the demo like Ctrl-C: no broker, no agent left."""
    import signal
    import time

    workdir = tmp_path / "demo"
    p = subprocess.Popen(
        [IDUFLEET, "demo", "--seconds", "120", "--devices", "3", "--interval", "1",
         "--dir", str(workdir), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip

    def running() -> list[str]:
        out = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True)
        return [pid for pid in out.stdout.split() if int(pid) != p.pid]

    try:
        deadline = time.monotonic() + 60
        while len(running()) < 4 and time.monotonic() < deadline:  # the broker and 3 agents
            assert p.poll() is None, p.stderr.read().decode()[-2000:] if p.stderr else ""
            time.sleep(0.1)
        assert len(running()) >= 4, "demo did not start its broker and agents"
        p.send_signal(signal.SIGHUP)
        assert p.wait(40) == 0
        assert running() == []
    finally:
        if p.poll() is None:
            p.kill()
        for pid in running():
            subprocess.run(["kill", pid], check=False)


def test_demo_hint_works_without_the_sqlite3_binary(tmp_path: Path) -> None:
    r = subprocess.run(
        [IDUFLEET, "demo", "--seconds", "1", "--devices", "1", "--dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "import sqlite3" in r.stdout and "idufleet devices" in r.stdout
    cmd = r.stdout[r.stdout.index(".venv/bin/python -c") :].split("  # ")[0]
    q = subprocess.run(cmd.replace(".venv/bin/python", sys.executable), shell=True,
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert q.returncode == 0 and q.stderr == "", q.stderr  # runs as printed (no rows yet: 1 s)
    assert not any(line.strip().startswith("sqlite3 ") for line in r.stdout.splitlines())
