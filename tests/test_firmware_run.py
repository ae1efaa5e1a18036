"""`idufleet firmware run` (issue 14): registers the device through the controller's API with an
operator token and runs it on the real unix-port micropython until the controller sees it; a
broker that refuses the login gets one clear console line (CONNACK 5) instead of a loop of
OSError('CONNACK', 5)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

from controller.keys import MasterKey
from controller.security import dynsec
from controller.security.broker_config import BrokerSettings
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.support.broker import Broker
from tests.support.secure_broker import GeneratedBroker

IDUFLEET = [sys.executable, "-c", "from tools.cli import main; main()"]


def _run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*IDUFLEET, "firmware", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _until(p: subprocess.Popen[str], want: str, timeout: float = 30.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert p.stdout is not None
    while time.monotonic() < deadline:
        if select.select([p.stdout], [], [], 0.2)[0]:
            line = p.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip())
            if want in line:
                return seen
    raise AssertionError(f"{want!r} not seen in: {seen}")


def test_firmware_run_registers_through_the_api_and_comes_online(
    tmp_path: Path, broker: Broker
) -> None:
    ct = ControllerThread(
        make_config(sqlite_config(tmp_path), broker.port), MasterKey(b"\x05" * 32)
    ).start()
    p = _run("--port", str(broker.port), "--device", "ap-run-1", "--zone", "foz",
             "--api", ct.url, "--token", "secret-token", "--flash", str(tmp_path / "flash"),
             "--interval", "1")  # fmt: skip
    try:
        _until(p, "idu: connected")
        ct.wait(lambda c: c.core.devices["ap-run-1"].presence.online, 20, "ap-run-1 online")
        assert ct.ctl is not None and ct.ctl.core.devices["ap-run-1"].zone == "foz"
    finally:
        p.kill()
        p.wait()
        ct.stop()


def test_a_refused_login_is_one_clear_line(tmp_path: Path) -> None:
    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", "admin", dynsec.new_password())
    b = GeneratedBroker(tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn))
    b.start()
    bundle = tmp_path / "ap-x.json"
    from tools.firmware_build import sim_config

    bundle.write_text(json.dumps(sim_config("ap-x", "127.0.0.1", b.port, "11" * 32)))
    p = _run("--bundle", str(bundle), "--flash", str(tmp_path / "flash"))
    try:
        seen = _until(p, "login refused")
        line = seen[-1]
        assert "CONNACK 5" in line and "register this device" in line, line
        assert not any("OSError('CONNACK'" in s for s in seen), seen
    finally:
        p.kill()
        p.wait()
        b.stop()
