"""The controller end to end on a real Mosquitto: reports stored once, presence from BIRTH and
the DEATH will, restart with a persistent session, commands and their ACKs, the HTTP API."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from controller import registry
from controller.config import StoreConfig
from controller.keys import MasterKey
from controller.store import open_store
from tests.controller.devsim import SimDevice, wait_for
from tests.controller.harness import ControllerThread, make_config
from tests.support.broker import Broker


def http(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def register(
    store_cfg: StoreConfig, master: MasterKey, n: int, zone: str = "ribeira"
) -> list[bytes]:
    s = open_store(store_cfg)
    keys = [
        registry.create_device(s, master, f"dev-{i}", "porto", zone, "ap").key for i in range(n)
    ]
    s.close()
    return keys


def test_reports_presence_and_api(
    store_cfg: StoreConfig, master: MasterKey, broker: Broker
) -> None:
    keys = register(store_cfg, master, 2)
    ct = ControllerThread(make_config(store_cfg, broker.port), master).start()
    try:
        d0 = SimDevice("dev-0", keys[0], broker.port)
        d0.connect()
        for i in range(20):
            d0.report({16: i, 57: 2000 + i})
        ct.wait(lambda c: c.metrics.stored._value.get() >= 21, what="21 stored")
        status, devs = http(ct.url + "/api/devices", token="secret-token")
        assert status == 200 and [d["id"] for d in devs] == ["dev-0", "dev-1"]
        assert devs[0]["online"] is True and devs[1]["online"] is False
        status, q = http(
            ct.url + "/api/metrics?device=dev-0&metric=clients&since=1h", token="secret-token"
        )
        assert status == 200 and [p["value"] for p in q["points"]] == list(map(float, range(20)))
        status, q = http(
            ct.url + "/api/metrics?zone=ribeira&metric=temperature&resolution=hour&since=2h",
            token="secret-token",
        )
        pts = q["points"]  # one hour, or two when the test straddles an hour boundary
        assert sum(p["count"] for p in pts) == 20 and max(p["max"] for p in pts) == 20.19
        status, detail = http(ct.url + "/api/devices/dev-0", token="secret-token")
        assert detail["firmware"] == "sim-1.0" and detail["latest"]["clients"]["value"] == 19.0
        # the broker publishes the reserved DEATH will when the device vanishes
        d0.drop()
        ct.wait(lambda c: not c.core.devices["dev-0"].presence.online, 20, "offline after will")
        # the API reads the store: the offline event is there once the next batch has committed
        wait_for(
            lambda: len(http(ct.url + "/api/presence?device=dev-0", token="secret-token")[1]) >= 2,
            5,
            "offline stored",
        )
        status, pres = http(ct.url + "/api/presence?device=dev-0", token="secret-token")
        assert [(p["state"], p["reason"]) for p in pres] == [
            ("online", "birth"),
            ("offline", "death-lost"),
        ]
        # register through the API: operator token required
        assert (
            http(ct.url + "/api/devices", {"id": "new-1", "zone": "foz", "kind": "sensor"})[0]
            == 401
        )
        status, new = http(
            ct.url + "/api/devices",
            {"id": "new-1", "zone": "foz", "kind": "sensor"},
            "secret-token",
        )
        assert status == 201 and len(bytes.fromhex(new["key"])) == 32
        n1 = SimDevice("new-1", bytes.fromhex(new["key"]), broker.port)
        n1.connect(respond=True)
        n1.report({57: 1500})
        ct.wait(lambda c: c.core.devices["new-1"].presence.online, what="new device online")
        status, cmd = http(
            ct.url + "/api/devices/new-1/commands", {"op": "ping", "wait": 10}, "secret-token"
        )
        assert status == 200 and cmd["status"] == "ok" and cmd["data"] == {"0": 1}
        assert n1.commands[0].body[0] == 1  # OP_PING
        status, h = http(ct.url + "/health")
        assert h["mqtt_connected"] and h["devices"] == 3
        assert http(ct.url + "/api/devices")[0] == 401  # reads need a token too
        req = urllib.request.Request(ct.url + "/metrics")
        req.add_header("Authorization", "Bearer secret-token")
        with urllib.request.urlopen(req) as r:
            text = r.read().decode()
        assert "idufleet_messages_stored_total" in text
        n1.close()
    finally:
        ct.stop()
    s = open_store(store_cfg)
    assert s.count("raw_metrics") == 41
    s.close()
