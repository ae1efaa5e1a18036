"""The JSON HTTP API (aiohttp) and Prometheus /metrics. Reads are open (the API binds to
loopback by default); registering, disabling and commanding devices need the operator bearer
token (api.token), and are refused when no token is configured."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.errors import ControllerError, RegistryError
from protocol import metrics as pm

if TYPE_CHECKING:
    from controller.app import Controller

CTRL: web.AppKey[Controller] = web.AppKey("controller")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str | None, default: float, now: float | None = None) -> float:
    """Unix seconds, or a duration back from now: 90s, 15m, 6h, 30d, 2w. Raises ValueError."""
    if text is None or text == "":
        return default
    now = time.time() if now is None else now
    if text[-1:] in _UNITS:
        return now - float(text[:-1]) * _UNITS[text[-1]]
    return float(text)


def _bad(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=_json_text({"error": msg}), content_type="application/json")


def _json_text(obj: Any) -> str:
    import json

    return json.dumps(obj)


def _auth(request: web.Request) -> None:
    token = request.app[CTRL].cfg.api.token
    if not token:
        raise web.HTTPForbidden(
            text=_json_text({"error": "write endpoints are off: set api.token to enable them"}),
            content_type="application/json",
        )
    got = request.headers.get("Authorization", "")
    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
        raise web.HTTPUnauthorized(
            text=_json_text({"error": "send Authorization: Bearer <api.token>"}),
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _bool(v: str | None) -> bool | None:
    if v is None:
        return None
    return v.lower() in ("1", "true", "yes")


async def health(request: web.Request) -> web.Response:
    c = request.app[CTRL]
    devs = c.core.devices.values()
    return web.json_response(
        {
            "status": "ok",
            "mqtt_connected": c.link.connected.is_set(),
            "store": c.cfg.store.backend,
            "devices": len(c.core.devices),
            "online": sum(d.presence.online for d in devs),
            "uptime_s": round(time.time() - c.started, 1),
            "batched": len(c.batcher),
            "ingest_p99_ms": c.p99_ms(),
        }
    )


async def prometheus(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CTRL].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_devices(request: web.Request) -> web.Response:
    c = request.app[CTRL]
    q = request.query
    assert c.store is not None
    recs = await c.db(
        c.store.list_devices,
        q.get("site"),
        q.get("zone"),
        q.get("kind"),
        q.get("status"),
        _bool(q.get("online")),
    )
    out = []
    for r in recs:
        d = r.public()
        live = c.core.devices.get(r.id)
        if live is not None:  # the cache is fresher than the last commit
            d["online"] = live.presence.online
            d["last_seen"] = live.presence.last_seen
        out.append(d)
    return web.json_response(out)


async def device_detail(request: web.Request) -> web.Response:
    c = request.app[CTRL]
    assert c.store is not None
    dev_id = request.match_info["id"]
    rec = await c.db(c.store.get_device, dev_id)
    if rec is None:
        raise web.HTTPNotFound(
            text=_json_text({"error": f"no device {dev_id}"}), content_type="application/json"
        )
    d = rec.public()
    latest = await c.db(c.store.latest, dev_id)
    d["latest"] = {pm.name(m): {"ts": ts, "value": v} for m, (ts, v) in sorted(latest.items())}
    d["events"] = await c.db(c.store.device_events, dev_id, 20)
    return web.json_response(d)


async def register_device(request: web.Request) -> web.Response:
    _auth(request)
    c = request.app[CTRL]
    try:
        body = await request.json()
        new = await c.register(
            str(body["id"]),
            str(body.get("site", "porto")),
            str(body["zone"]),
            str(body["kind"]),
            body.get("tags") or {},
        )
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(f"send JSON with id, zone, kind (and site, tags): {e}") from None
    except RegistryError as e:
        raise _bad(str(e)) from None
    return web.json_response(
        {
            "id": new.id,
            "site": new.site,
            "zone": new.zone,
            "kind": new.kind,
            "tags": new.tags,
            "key": new.key.hex(),
        },
        status=201,
    )


async def list_zones(request: web.Request) -> web.Response:
    """The zones devices may be registered in (fleet.zones); [] means any well-formed name.
    `idufleet provision` asks before it creates anything."""
    return web.json_response({"zones": list(request.app[CTRL].cfg.fleet.zones)})


async def disable_device(request: web.Request) -> web.Response:
    _auth(request)
    c = request.app[CTRL]
    try:
        await c.disable(request.match_info["id"])
    except RegistryError as e:
        raise web.HTTPNotFound(
            text=_json_text({"error": str(e)}), content_type="application/json"
        ) from None
    return web.json_response({"id": request.match_info["id"], "status": "disabled"})


async def send_command(request: web.Request) -> web.Response:
    _auth(request)
    c = request.app[CTRL]
    try:
        body = await request.json()
        args_in = body.get("args") or {}
        args = {int(k): v for k, v in args_in.items()}
        ttl = int(body.get("ttl", 60))
        wait = float(body.get("wait", 0))
        cmd = await c.send_command(request.match_info["id"], body["op"], args or None, ttl)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise _bad(
            f"send JSON with op (and args as {{field number: value}}, ttl, wait): {e}"
        ) from None
    except ControllerError as e:
        raise _bad(str(e)) from None
    if wait > 0:
        settled = await c.wait_command(cmd["epoch"], cmd["seq"], min(wait, 60.0))
        if settled is not None:
            cmd = settled
    return web.json_response(cmd, status=202 if cmd["status"] == "sent" else 200)


async def get_command(request: web.Request) -> web.Response:
    c = request.app[CTRL]
    assert c.store is not None
    cmd = await c.db(
        c.store.get_command, int(request.match_info["epoch"]), int(request.match_info["seq"])
    )
    if cmd is None:
        raise web.HTTPNotFound(
            text=_json_text({"error": "no such command"}), content_type="application/json"
        )
    return web.json_response(cmd)


async def presence(request: web.Request) -> web.Response:
    c = request.app[CTRL]
    assert c.store is not None
    try:
        since = parse_time(request.query.get("since"), 0.0)
        limit = int(request.query.get("limit", "1000"))
    except ValueError as e:
        raise _bad(f"since is unix seconds or like 6h; limit an integer ({e})") from None
    rows = await c.db(c.store.presence_events, request.query.get("device"), since, limit)
    return web.json_response(rows)


async def query_metrics(request: web.Request) -> web.Response:
    """?device=ID or ?zone=Z, &metric=name|id, &since=, &until=, &resolution=raw|hour."""
    c = request.app[CTRL]
    assert c.store is not None
    q = request.query
    device, zone = q.get("device"), q.get("zone")
    if (device is None) == (zone is None):
        raise _bad("give exactly one of device= or zone=")
    try:
        metric = pm.lookup(q.get("metric", ""))
        now = time.time()
        since = parse_time(q.get("since"), now - 86400, now)
        until = parse_time(q.get("until"), now + 1, now)
        limit = int(q.get("limit", "10000"))
    except (KeyError, ValueError) as e:
        raise _bad(str(e).strip('"')) from None
    resolution = q.get("resolution", "raw")
    out: dict[str, Any] = {
        "metric": pm.name(metric),
        "unit": pm.REGISTRY[metric][1] if metric in pm.REGISTRY else None,
        "since": since,
        "until": until,
        "resolution": resolution,
    }
    if resolution == "hour":
        scope, key = ("zone", zone) if zone is not None else ("device", device)
        assert key is not None
        out[scope] = key
        out["points"] = await c.db(c.store.hourly, scope, key, metric, since, until)
    elif resolution == "raw":
        if device is not None:
            out["device"] = device
            pts = await c.db(c.store.raw_series, device, metric, since, until, limit)
            out["points"] = [{"ts": t, "value": v} for t, v in pts]
        else:
            out["zone"] = zone
            zpts = await c.db(c.store.zone_raw_series, zone, metric, since, until, limit)
            out["points"] = [{"ts": t, "device": d, "value": v} for t, d, v in zpts]
    else:
        raise _bad("resolution is raw or hour")
    return web.json_response(out)


def make_app(controller: Controller) -> web.Application:
    app = web.Application()
    app[CTRL] = controller
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/api/devices", list_devices)
    app.router.add_post("/api/devices", register_device)
    app.router.add_get("/api/devices/{id}", device_detail)
    app.router.add_get("/api/zones", list_zones)
    app.router.add_post("/api/devices/{id}/disable", disable_device)
    app.router.add_post("/api/devices/{id}/commands", send_command)
    app.router.add_get("/api/commands/{epoch}/{seq}", get_command)
    app.router.add_get("/api/presence", presence)
    app.router.add_get("/api/metrics", query_metrics)
    from controller.provisioning import api as provisioning_api  # rotate-key (issue 5)

    provisioning_api.register(app)
    return app


async def start_api(controller: Controller) -> tuple[web.AppRunner, int]:
    """Start the API on api.host:api.port (0: a free port); returns the runner and the port."""
    runner = web.AppRunner(make_app(controller), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, controller.cfg.api.host, controller.cfg.api.port)
    await site.start()
    port = controller.cfg.api.port
    for addr in runner.addresses:  # the real port when 0 was asked for
        port = addr[1]
    return runner, int(port)
