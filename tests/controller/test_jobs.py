"""Fleet jobs end to end: a real Mosquitto, the real controller (harness), devices that open
commands with the device's own CommandGuard. A zone job reaches exactly the zone; an offline
device gets it after reconnecting and acks once; the TTL expires executions of devices that never
came back; a restarted controller carries on; a re-sent command does not execute twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from controller import registry
from controller.keys import MasterKey
from controller.store import open_store
from protocol import messages as M
from protocol.commands import CommandGuard
from protocol.envelope import decode
from tests.controller.devsim import SimDevice, wait_for
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.controller.test_service import http
from tests.support.broker import Broker

TOKEN = "secret-token"


class GuardedDevice(SimDevice):
    """Opens commands as the firmware does (CommandGuard: expiry, replays) and counts what it
    executed. lose_acks: the first N ACKs are never published (a lost answer)."""

    def __init__(self, *a: Any, lose_acks: int = 0, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.guard = CommandGuard()
        self.executed: list[tuple[int, int]] = []
        self.lose_acks = lose_acks

    def _on_command(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        cmd = decode(bytes(msg.payload), msg.topic, self.signer)
        self.commands.append(cmd)
        code = self.guard.admit(cmd.epoch, cmd.seq, cmd.ts, cmd.body, None)
        result = {None: M.R_OK, "replay": M.R_REPLAY, "expired": M.R_EXPIRED}[code]
        if code is None:
            self.executed.append((cmd.epoch, cmd.seq))
        if self.lose_acks > 0:
            self.lose_acks -= 1
            return
        body = {M.A_CMD_EPOCH: cmd.epoch, M.A_CMD_SEQ: cmd.seq, M.A_RESULT: result}
        assert self.client is not None
        self.client.publish(*self.build(M.ACK, body), qos=1)


def _register(tmp: Path, master: MasterKey, zones: dict[str, str]) -> dict[str, bytes]:
    s = open_store(sqlite_config(tmp))
    keys = {d: registry.create_device(s, master, d, "porto", z, "ap").key for d, z in zones.items()}
    s.close()
    return keys


def _job(ct: ControllerThread, job_id: int) -> dict[str, Any]:
    status, job = http(f"{ct.url}/api/jobs/{job_id}", token=TOKEN)
    assert status == 200, job
    return job


def _states(job: dict[str, Any]) -> dict[str, str]:
    return {e["device"]: e["state"] for e in job["executions"]}


@pytest.fixture
def ctl(tmp_path: Path, master: MasterKey, broker: Broker) -> Any:
    cts: list[ControllerThread] = []

    def start() -> ControllerThread:
        cfg = make_config(sqlite_config(tmp_path), broker.port, jobs_tick=0.05)
        ct = ControllerThread(cfg, master).start()
        cts.append(ct)
        return ct

    yield start
    for ct in cts:
        if ct._thread.is_alive():
            ct.stop()


def test_a_zone_job_reaches_exactly_the_zone_and_an_offline_device_after_it_returns(
    tmp_path: Path, master: MasterKey, broker: Broker, ctl: Any
) -> None:
    keys = _register(tmp_path, master, {"a": "ribeira", "b": "ribeira", "c": "foz", "d": "ribeira"})
    ct = ctl()
    devs = {d: GuardedDevice(d, k, broker.port) for d, k in keys.items()}
    for d in ("a", "b", "c"):
        devs[d].connect(respond=True)
    ct.wait(lambda c: c.devices.online() == 3, what="3 online")
    status, job = http(
        ct.url + "/api/jobs", {"op": "ping", "selector": {"zone": "ribeira"}, "ttl": "1h"}, TOKEN
    )
    assert status == 201 and job["summary"]["total"] == 3
    wait_for(lambda: _states(_job(ct, job["id"]))["b"] == "succeeded", 10, "online acked")
    wait_for(lambda: _states(_job(ct, job["id"]))["a"] == "succeeded", 10, "online acked")
    assert _states(_job(ct, job["id"]))["d"] == "queued"
    assert devs["c"].commands == []  # not in the zone
    devs["d"].connect(respond=True)  # its BIRTH releases the queued execution
    wait_for(lambda: _job(ct, job["id"])["state"] == "done", 10, "job done")
    final = _job(ct, job["id"])
    assert final["summary"]["states"]["succeeded"] == 3
    assert final["summary"]["results"] == {"ok": 3}
    assert [len(devs[d].executed) for d in "abcd"] == [1, 1, 0, 1]
    # bad selectors, unknown ops, bad args: one-line errors
    for body, needle in [
        ({"op": "ping", "selector": {}}, "empty selector"),
        ({"op": "fly", "selector": {"zone": "ribeira"}}, "unknown operation"),
        ({"op": "ping", "selector": {"zoen": "x"}}, "unknown selector field"),
        ({"op": "ping", "selector": {"zone": "nowhere"}}, "no device matches"),
        ({"op": "ping", "selector": {"zone": "ribeira"}, "args": [1]}, "args must be"),
    ]:
        status, err = http(ct.url + "/api/jobs", body, TOKEN)
        assert status == 400 and needle in err["error"] and "\n" not in err["error"], err
    for d in devs.values():
        d.close()


def test_past_its_ttl_a_job_expires_for_devices_that_never_came_back(
    tmp_path: Path, master: MasterKey, broker: Broker, ctl: Any
) -> None:
    _register(tmp_path, master, {"gone": "foz"})
    ct = ctl()
    status, job = http(
        ct.url + "/api/jobs", {"op": "ping", "selector": {"devices": ["gone"]}, "ttl": 1}, TOKEN
    )
    assert status == 201
    wait_for(lambda: _job(ct, job["id"])["state"] == "done", 10, "job over")
    assert _states(_job(ct, job["id"])) == {"gone": "expired"}


def test_a_restarted_controller_continues_a_job_and_the_device_acks_once(
    tmp_path: Path, master: MasterKey, broker: Broker, ctl: Any
) -> None:
    keys = _register(tmp_path, master, {"x": "foz", "y": "foz"})
    ct = ctl()
    x = GuardedDevice("x", keys["x"], broker.port)
    x.connect(respond=True)
    ct.wait(lambda c: c.devices.online() == 1, what="x online")
    status, job = http(
        ct.url + "/api/jobs", {"op": "ping", "selector": {"zone": "foz"}, "ttl": "1h"}, TOKEN
    )
    assert status == 201
    wait_for(lambda: _states(_job(ct, job["id"]))["x"] == "succeeded", 10, "x acked")
    ct.stop()  # y never came online: its execution stays queued in the store
    ct2 = ctl()
    y = GuardedDevice("y", keys["y"], broker.port)
    y.connect(respond=True)
    wait_for(lambda: _job(ct2, job["id"])["state"] == "done", 10, "job done after restart")
    assert _states(_job(ct2, job["id"])) == {"x": "succeeded", "y": "succeeded"}
    assert (len(x.executed), len(y.executed)) == (1, 1)
    x.close()
    y.close()


def test_a_resent_command_is_the_same_command_and_does_not_execute_twice(
    tmp_path: Path, master: MasterKey, broker: Broker, ctl: Any
) -> None:
    keys = _register(tmp_path, master, {"r": "foz"})
    ct = ctl()
    r = GuardedDevice("r", keys["r"], broker.port, lose_acks=1)
    r.connect(respond=True)
    ct.wait(lambda c: c.devices.online() == 1, what="r online")
    status, job = http(
        ct.url + "/api/jobs",
        {"op": "ping", "selector": {"devices": ["r"]}, "ack_timeout": 0.3, "retries": 2},
        TOKEN,
    )
    assert status == 201
    wait_for(lambda: _job(ct, job["id"])["state"] == "done", 10, "settled")
    [ex] = _job(ct, job["id"])["executions"]
    assert len(r.commands) >= 2  # the retry reached the device ...
    assert {(c.epoch, c.seq) for c in r.commands} == {
        (ex["command"]["epoch"], ex["command"]["seq"])
    }
    assert len(r.executed) == 1  # ... as the same command, refused as a replay
    assert (ex["state"], ex["result"]) == ("failed", "replay")  # its first answer was lost
    r.close()
