"""The controller as operators run it: `idufleet serve` as a process (SIGTERM flushes; SIGKILL
loses nothing because messages are acknowledged only once stored), `idufleet device add`, and
the API-backed `devices`, `metrics`, `command`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from controller.config import StoreConfig
from controller.store import open_store
from tests.controller.devsim import SimDevice, wait_for
from tests.support.broker import Broker, free_port

IDUFLEET = str(Path(sys.executable).parent / "idufleet")


def env_for(tmp: Path, broker_port: int, api_port: int) -> dict[str, str]:
    env = dict(os.environ)
    (tmp / "idufleet.toml").write_text("# everything from IDUFLEET_* below\n")
    env.update(
        {
            "IDUFLEET_CONFIG": str(tmp / "idufleet.toml"),
            "IDUFLEET_MQTT_PORT": str(broker_port),
            "IDUFLEET_MQTT_CLIENT_ID": "ctl-cli",
            "IDUFLEET_STORE_PATH": str(tmp / "idu.sqlite"),
            "IDUFLEET_KEYS_MASTER_KEY_FILE": str(tmp / "master.key"),
            "IDUFLEET_API_PORT": str(api_port),
            "IDUFLEET_API_TOKEN": "tok",
            "IDUFLEET_API": f"http://127.0.0.1:{api_port}",
            "IDUFLEET_LOG_JSON": "true",
            "IDUFLEET_INGEST_BATCH_MS": "20",
        }
    )
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDUFLEET, *args], env=env, capture_output=True, text=True, timeout=60)


def serve(env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / "serve.log", "ab")  # noqa: SIM115
    p = subprocess.Popen([IDUFLEET, "serve", "--init"], env=env, stdout=log, stderr=log)
    url = env["IDUFLEET_API"] + "/health"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(json.loads(r.read())["mqtt_connected"])
        except OSError:
            return False

    wait_for(up, 20, "idufleet serve healthy")
    return p


def stored(tmp: Path) -> int:
    s = open_store(StoreConfig(path=str(tmp / "idu.sqlite")))
    try:
        return s.count("messages")
    finally:
        s.close()


def test_serve_cli_and_crash_safety(tmp_path: Path, broker: Broker) -> None:
    env = env_for(tmp_path, broker.port, free_port())
    bundle = tmp_path / "flash" / "config.json"
    assert run(env, "init").returncode == 0
    r = run(env, "device", "add", "ap-1", "--zone", "ribeira", "--kind", "ap", "--bundle",
            str(bundle), "--broker-port", str(broker.port))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    key = bytes.fromhex(json.loads(bundle.read_text())["key"])
    assert run(env, "device", "add", "ap-1", "--zone", "foz", "--kind", "ap").returncode == 1
    assert run(env, "serve", "--check").returncode == 0

    p = serve(env, tmp_path)
    dev = SimDevice("ap-1", key, broker.port)
    dev.connect(respond=True)
    try:
        for i in range(10):
            dev.report({16: i})
        wait_for(lambda: stored(tmp_path) >= 11, 10, "11 stored")
        r = run(env, "devices", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)[0]["online"] is True
        r = run(env, "metrics", "ap-1", "--metric", "clients", "--json")
        assert [p["value"] for p in json.loads(r.stdout)["points"]] == [float(i) for i in range(10)]
        r = run(env, "command", "ap-1", "ping", "--wait", "10")
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok", r.stdout + r.stderr
        # SIGKILL in the middle of a stream: what was received but not committed was never
        # acknowledged, so the broker redelivers it to the restarted controller.
        for i in range(10, 1500):
            dev.client.publish(*dev.build(3, {16: i}), qos=1)  # type: ignore[union-attr]
            if i == 700:
                p.send_signal(signal.SIGKILL)
                p.wait(10)  # dead, so its API port is free again; the broker keeps its session
        p = serve(env, tmp_path)
        wait_for(lambda: stored(tmp_path) >= 1 + 1500 + 1, 30, "every report stored")
    finally:
        dev.close()
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    s = open_store(StoreConfig(path=str(tmp_path / "idu.sqlite")))
    values = sorted(v for _, v, _ in s.raw_series("ap-1", 16, 0, 2e9))
    s.close()
    assert values == [float(i) for i in range(1500)]  # each exactly once
    logs = [
        json.loads(line)
        for line in (tmp_path / "serve.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(rec["msg"] == "controller stopped" for rec in logs)
    assert not any("tok" in json.dumps(rec) for rec in logs)  # the token is never logged
