"""Operator accounts, roles and the audit log (issue 14): every route has a minimum role, every
change is audited once with who did it, and no token or key reaches the audit table or the log."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner

from controller.api.http import ACTIONS, METRICS, PUBLIC, ROUTE_ROLES, ApiOps, make_app
from controller.config import StoreConfig
from controller.keys import MasterKey
from controller.operators import ROLES, redact
from controller.store import open_store
from controller.store.base import OperatorRecord
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.controller.test_service import http
from tests.support.broker import Broker
from tools.cli import cli

ADMIN = "secret-token"  # the harness's api.token: the bootstrap admin


def test_every_route_has_a_minimum_role_and_every_write_an_audit_action() -> None:
    app = make_app(cast(ApiOps, object()))
    seen = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        key = (route.method, route.resource.canonical)
        seen.add(key)
        assert key in ROUTE_ROLES, f"{key} has no minimum role in ROUTE_ROLES"
        assert ROUTE_ROLES[key] in (PUBLIC, METRICS, *ROLES)
        if route.method != "GET":
            assert key in ACTIONS, f"{key} changes something but has no audit action"
    assert set(ROUTE_ROLES) == seen and set(ACTIONS) <= seen
    assert [k for k, r in ROUTE_ROLES.items() if r == PUBLIC] == [("GET", "/health")]


def test_redact_hides_every_secret_named_argument() -> None:
    args = {"name": "ana", "token": "t", "args": {"key": "k", "1": 5}, "wifi_password": "p"}
    assert redact(args) == {"name": "ana", "token": "***", "args": {"key": "***", "1": 5},
                            "wifi_password": "***"}  # fmt: skip


def test_store_keeps_operator_names_unique_and_audit_in_order(store_cfg: StoreConfig) -> None:
    s = open_store(store_cfg)
    try:
        rec = OperatorRecord("ana", "viewer", "h1", 1.0, "bootstrap")
        assert s.add_operator(rec) and not s.add_operator(rec)
        assert s.revoke_operator("ana", 2.0) and not s.revoke_operator("ana", 3.0)
        assert s.operator_by_hash("h1") == OperatorRecord("ana", "viewer", "h1", 1.0,
                                                          "bootstrap", 2.0)  # fmt: skip
        s.append_audit(10.0, "ana", "viewer", "a.one", "d1", {"x": 1}, "ok")
        s.append_audit(20.0, "bo", "admin", "a.two", None, {}, "error 404 not_found")
        assert [e["action"] for e in s.audit_entries()] == ["a.one", "a.two"]
        assert s.audit_entries(since=15.0)[0]["who"] == "bo"
        assert s.audit_entries(who="ana")[0]["args"] == {"x": 1}
    finally:
        s.close()


@pytest.fixture
def ct(broker: Broker, tmp_path: Path, master: MasterKey) -> Iterator[ControllerThread]:
    c = ControllerThread(make_config(sqlite_config(tmp_path), broker.port), master).start()
    yield c
    c.stop()


def _status(url: str, body: Any, token: str | None) -> tuple[int, Any]:
    if url.endswith("/metrics"):  # text, not JSON
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, None
        except urllib.error.HTTPError as e:
            return e.code, None
    return http(url, body, token)


def _cli(*args: str) -> Any:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r


def _add(ct: ControllerThread, name: str, role: str) -> str:
    r = _cli("operator", "add", name, "--role", role, "--api", ct.url, "--token", ADMIN)
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert token.startswith("idu_") and len(token) > 40
    return token


def test_roles_gate_every_route_and_the_token_is_shown_once(
    ct: ControllerThread, caplog: pytest.LogCaptureFixture
) -> None:
    top = logging.getLogger("idufleet")
    added = not top.propagate  # `idufleet serve` run in-process earlier stops propagation
    if added:
        top.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="idufleet")
    try:
        tokens = {role: _add(ct, f"{role}-1", role) for role in ROLES}
        u = ct.url
        dev = {"id": "ap-1", "zone": "foz", "kind": "ap"}
        table = [  # (who, method body, path, expected status)
            (None, None, "/health", 200),
            (None, None, "/api/devices", 401),
            (None, None, "/metrics", 401),
            ("viewer", None, "/api/devices", 200),
            ("viewer", None, "/metrics", 200),
            ("viewer", None, "/api/audit", 403),
            ("viewer", {}, "/api/devices/ap-1/disable", 403),
            ("operator", dev, "/api/devices", 403),
            ("admin", dev, "/api/devices", 201),
            ("operator", {"op": "ping"}, "/api/devices/ap-1/commands", 202),
            ("operator", {}, "/api/devices/ap-1/rotate-key", 403),
            ("operator", {"name": "x", "role": "admin"}, "/api/operators", 403),
            ("admin", {"timeout": 0.2}, "/api/devices/ap-1/rotate-key", 409),
            ("admin", {}, "/api/devices/ap-1/disable", 200),
            ("admin", None, "/api/operators", 200),
        ]
        for who, body, path, want in table:
            status, out = _status(u + path, body, tokens[who] if who else None)
            assert status == want, (who, path, out)
        listing = http(u + "/api/operators", token=ADMIN)[1]
        assert {o["name"]: o["role"] for o in listing} == {f"{r}-1": r for r in ROLES}
        assert not any(t in json.dumps(listing) for t in tokens.values())  # never again
        # a revoked token stops working at once
        assert _cli("operator", "revoke", "viewer-1", "--api", u, "--token", ADMIN).exit_code == 0
        assert http(u + "/api/devices", token=tokens["viewer"])[0] == 401
        # the audit log: who, role, action, target, arguments without secrets, result
        r = _cli("audit", "--json", "--api", u, "--token", tokens["admin"])
        rows = json.loads(r.output)
        got = [(e["who"], e["action"], e["target"], e["result"]) for e in rows]
        assert got == [
            ("bootstrap", "operator.add", "viewer-1", "ok"),
            ("bootstrap", "operator.add", "operator-1", "ok"),
            ("bootstrap", "operator.add", "admin-1", "ok"),
            ("viewer-1", "device.disable", "ap-1", "denied"),
            ("operator-1", "device.register", "ap-1", "denied"),
            ("admin-1", "device.register", "ap-1", "ok"),
            ("operator-1", "device.command", "ap-1", "ok"),
            ("operator-1", "device.rotate_key", "ap-1", "denied"),
            ("operator-1", "operator.add", "x", "denied"),
            ("admin-1", "device.rotate_key", "ap-1", "error 409 command"),
            ("admin-1", "device.disable", "ap-1", "ok"),
            ("bootstrap", "operator.revoke", "viewer-1", "ok"),
        ]
        assert rows[5]["role"] == "admin" and rows[5]["args"] == dev
        mine = _cli("audit", "--who", "operator-1", "--since", "1h", "--api", u, "--token", ADMIN)
        assert mine.exit_code == 0 and len(mine.output.strip().splitlines()) == 4
        assert json.loads(
            _cli("audit", "--json", "--since", str(time.time() + 60), "--api", u,
                 "--token", ADMIN).output
        ) == []  # fmt: skip
        # one service-log line per audited action, rotate-key and revocation included
        acts = [r for r in caplog.records if r.getMessage() == "operator action"]
        assert [(a.__dict__["who"], a.__dict__["action"]) for a in acts] == [
            (e["who"], e["action"]) for e in rows
        ]
        text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
        for secret in [*tokens.values(), ADMIN]:
            assert secret not in text
    finally:
        if added:
            top.removeHandler(caplog.handler)
