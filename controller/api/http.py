"""The JSON HTTP API (aiohttp) and Prometheus /metrics. Handlers get one narrow object, `ApiOps`
(the Fleet service, a health snapshot, the metrics registry, the API settings); they parse,
call it, and answer. Every error is {"error": message, "code": reason} from one place
(`error`), and one middleware (`auth`) checks the bearer token and the role every route needs
(ROUTE_ROLES, beside make_app) and records every change in the audit log (ACTIONS). Only /health
is open, and /metrics when api.metrics_open is set."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.config import ApiConfig
from controller.domain import jobs as J
from controller.domain.commands import op_code
from controller.domain.rotation import ACK_TIMEOUT_S, GRACE_S
from controller.errors import (
    ControllerError,
    OperatorError,
    RegistryError,
    StoreError,
    StoreUnavailable,
)
from controller.fleet import Fleet
from controller.jobs import JobRunner
from controller.operators import ROLES, Operators, Principal
from protocol import metrics as pm

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WAIT_S = 60.0  # a command request waits at most this long for its ACK
MAX_ROTATE_WAIT_S = 120.0


class QuarantineOps(Protocol):
    """Quarantined messages (the ingest pipeline keeps and replays them)."""

    async def list_quarantine(
        self, include_resolved: bool = False, limit: int = 1000
    ) -> list[dict[str, Any]]: ...

    async def replay_quarantine(self, ids: list[int] | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ApiOps:
    """What the HTTP layer may use: nothing else of the running controller reaches it."""

    fleet: Fleet
    health: Callable[[], dict[str, Any]]
    registry: CollectorRegistry
    cfg: ApiConfig
    zones: tuple[str, ...]
    quarantine: QuarantineOps
    operators: Operators
    jobs: JobRunner


OPS: web.AppKey[ApiOps] = web.AppKey("ops")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")  # set by `auth`
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_time(text: str | None, default: float, now: float | None = None) -> float:
    """Unix seconds, or a duration back from now: 90s, 15m, 6h, 30d, 2w. Raises ValueError."""
    if text is None or text == "":
        return default
    now = time.time() if now is None else now
    if text[-1:] in _UNITS:
        return now - float(text[:-1]) * _UNITS[text[-1]]
    return float(text)


def error(
    cls: type[web.HTTPException], message: str, code: str = "bad_request", **kw: Any
) -> web.HTTPException:
    """The API's one error shape: {"error": what is wrong and what to do, "code": reason}."""
    body = json.dumps({"error": message, "code": code})
    return cls(text=body, content_type="application/json", **kw)


def _bad(message: str) -> web.HTTPException:
    return error(web.HTTPBadRequest, message)


PUBLIC = "public"  # no token: /health only
METRICS = "metrics"  # public when api.metrics_open, else a viewer's


def _unauthorized(message: str) -> web.HTTPException:
    return error(
        web.HTTPUnauthorized, message, "unauthorized", headers={"WWW-Authenticate": "Bearer"}
    )


def _target(request: web.Request, body: Any) -> str | None:
    m = request.match_info
    if "id" in m:
        return m["id"]
    if "name" in m:
        return m["name"]
    if isinstance(body, dict):
        for k in ("id", "name"):
            if k in body:
                return str(body[k])
    return None


async def _body(request: web.Request) -> Any:
    """The request's JSON body for the audit row (aiohttp keeps it once read): {} if none."""
    try:
        return await request.json() if request.body_exists else {}
    except ValueError:
        return {}


@web.middleware
async def store_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A store failure on any route is the one error shape too: 503 while the store is
    unreachable (the controller is reconnecting: retry), 500 for anything else it refused."""
    try:
        return await handler(request)
    except StoreUnavailable as e:
        raise error(
            web.HTTPServiceUnavailable,
            f"the store is unavailable ({e}); the controller is reconnecting, retry shortly",
            e.code,
        ) from None
    except StoreError as e:
        raise error(web.HTTPInternalServerError, str(e), e.code) from None


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API's one access check and one audit point. Every route has a minimum role in
    ROUTE_ROLES (a route missing there is refused: fail closed); the bearer token names the
    principal (an operator, or api.token as the bootstrap admin). Every request to a route in
    ACTIONS is recorded once, after the handler ran, with its result, through Operators.record
    (which also logs it), so no handler writes audit rows by hand."""
    route = request.match_info.route
    if route.resource is None:  # no such route: let aiohttp answer 404/405
        return await handler(request)
    method = "GET" if request.method == "HEAD" else request.method
    key = (method, route.resource.canonical)
    ops = request.app[OPS]
    needed = ROUTE_ROLES.get(key)
    if needed is None:
        raise error(web.HTTPInternalServerError, f"route {key} has no role", "no_role")
    if needed == PUBLIC or (needed == METRICS and ops.cfg.metrics_open):
        return await handler(request)
    if needed == METRICS:
        needed = "viewer"
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    who = await ops.operators.authenticate(token.strip()) if scheme == "Bearer" else None
    if who is None:
        raise _unauthorized(
            "send Authorization: Bearer <token>: an operator token from `idufleet operator "
            "add`, or the config's api.token"
        )
    request[PRINCIPAL] = who
    action = ACTIONS.get(key)
    if not who.may(needed):
        if action is not None:
            body = await _body(request)
            await ops.operators.record(who, action, _target(request, body), body, "denied")
        raise error(
            web.HTTPForbidden,
            f"{who.name} is a {who.role}; this needs the {needed} role (ask an admin)",
            "forbidden",
        )
    if action is None:
        return await handler(request)
    result = "error"
    try:
        resp = await handler(request)
        result = "ok"
        return resp
    except web.HTTPException as e:
        result = f"error {e.status}"
        with contextlib.suppress(ValueError):
            result += " " + str(json.loads(e.text or "{}").get("code", ""))
        raise
    finally:
        body = await _body(request)
        await ops.operators.record(who, action, _target(request, body), body, result.strip())


def _bool(v: str | None) -> bool | None:
    if v is None:
        return None
    return v.lower() in ("1", "true", "yes")


async def _json(request: web.Request) -> Any:
    return await request.json() if request.can_read_body else {}


async def health(request: web.Request) -> web.Response:
    """200 while healthy; 503 with the reasons in the JSON (controller.domain.health)."""
    h = request.app[OPS].health()
    return web.json_response(h, status=503 if h.get("reasons") else 200)


async def list_quarantine(request: web.Request) -> web.Response:
    """GET /api/quarantine?all=1&limit=N: messages the store refused, oldest first."""
    try:
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        raise _bad("limit is an integer") from None
    rows = await request.app[OPS].quarantine.list_quarantine(
        bool(_bool(request.query.get("all"))), limit
    )
    return web.json_response(rows)


async def replay_quarantine(request: web.Request) -> web.Response:
    """POST /api/quarantine/replay {"ids": [..]} (default: every open one), after a fix."""
    try:
        body = await _json(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        ids = None if ids is None else [int(i) for i in ids]
    except (ValueError, TypeError) as e:
        raise _bad(f'send JSON {{"ids": [id, ...]}} or nothing for all: {e}') from None
    return web.json_response(await request.app[OPS].quarantine.replay_quarantine(ids))


async def prometheus(request: web.Request) -> web.Response:
    body = generate_latest(request.app[OPS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_devices(request: web.Request) -> web.Response:
    q = request.query
    fleet = request.app[OPS].fleet
    out = await fleet.list_devices(
        q.get("site"), q.get("zone"), q.get("kind"), q.get("status"), _bool(q.get("online"))
    )
    return web.json_response(out)


async def device_detail(request: web.Request) -> web.Response:
    dev_id = request.match_info["id"]
    d = await request.app[OPS].fleet.device(dev_id)
    if d is None:
        raise error(web.HTTPNotFound, f"no device {dev_id}", "not_found")
    return web.json_response(d)


async def register_device(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        new = await request.app[OPS].fleet.register(
            str(body["id"]),
            str(body.get("site", "porto")),
            str(body["zone"]),
            str(body["kind"]),
            body.get("tags") or {},
        )
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(f"send JSON with id, zone, kind (and site, tags): {e}") from None
    except RegistryError as e:
        raise error(web.HTTPBadRequest, str(e), e.code) from None
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
    return web.json_response({"zones": list(request.app[OPS].zones)})


async def _set_status(request: web.Request, enable: bool) -> web.Response:
    dev_id = request.match_info["id"]
    fleet = request.app[OPS].fleet
    try:
        await (fleet.enable if enable else fleet.disable)(dev_id)
    except RegistryError as e:
        raise error(web.HTTPNotFound, str(e), "not_found") from None
    return web.json_response({"id": dev_id, "status": "active" if enable else "disabled"})


async def disable_device(request: web.Request) -> web.Response:
    return await _set_status(request, False)


async def enable_device(request: web.Request) -> web.Response:
    return await _set_status(request, True)


async def send_command(request: web.Request) -> web.Response:
    """POST /api/devices/{id}/commands {op, args?, ttl?, wait?}: a job of one device. Answers
    the command and its ACK once settled (200), else what is known so far (202: queued while
    the device is offline, or sent and not yet answered)."""
    jobs = request.app[OPS].jobs
    device = request.match_info["id"]
    try:
        body = await request.json()
        args_in = body.get("args") or {}
        args = {int(k): v for k, v in args_in.items()}
        ttl = int(body.get("ttl", 60))
        wait = float(body.get("wait", 0))
        spec = J.JobSpec(
            op=op_code(body["op"]),
            args=args or None,
            selector=J.Selector(devices=(device,)),
            ttl=float(ttl),
            rate=1.0,
            policy=J.Policy(ack_timeout=max(1.0, ttl / 3), max_attempts=3, cmd_ttl=ttl),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise _bad(
            f"send JSON with op (and args as {{field number: value}}, ttl, wait): {e}"
        ) from None
    try:
        job = await jobs.create(spec, request[PRINCIPAL].name)
    except ControllerError as e:
        raise error(web.HTTPBadRequest, str(e), e.code) from None
    out = await jobs.one_command(job["id"], device, min(wait, MAX_WAIT_S))
    return web.json_response(out, status=202 if out["status"] in ("sent", "queued") else 200)


def _job_spec(body: Any) -> J.JobSpec:
    """A JobSpec from the API's JSON; raises ValueError (or KeyError/TypeError) saying what."""
    if not isinstance(body, dict):
        raise ValueError("send a JSON object")
    known = {"op", "args", "selector", "ttl", "rate", "continuous", "ack_timeout", "retries"}
    extra = set(body) - known
    if extra:
        raise ValueError(f"unknown field(s) {sorted(extra)}; known: {sorted(known)}")
    args_in = body.get("args") or {}
    if not isinstance(args_in, dict):
        raise ValueError("args must be an object {field number: value}")
    policy = J.Policy(
        ack_timeout=float(body.get("ack_timeout", J.Policy.ack_timeout)),
        max_attempts=1 + int(body.get("retries", J.Policy.max_attempts - 1)),
    )
    return J.JobSpec(
        op=op_code(body["op"]),
        args={int(k): v for k, v in args_in.items()} or None,
        selector=J.Selector.from_json(body.get("selector", {})),
        ttl=J.parse_duration(body.get("ttl", 86400)),
        rate=float(body.get("rate", 100)),
        continuous=bool(body.get("continuous", False)),
        policy=policy,
    )


async def create_job(request: web.Request) -> web.Response:
    """POST /api/jobs {op, args?, selector: {devices, zone, site, tags, kind, version,
    online_only, all}, ttl? (seconds or "7d"), rate? (devices/s), continuous?}: 201 and the job."""
    try:
        spec = _job_spec(await request.json())
    except KeyError as e:
        raise _bad(f"missing field {e}; a job needs op and selector") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise _bad(str(e)) from None
    try:
        job = await request.app[OPS].jobs.create(spec, request[PRINCIPAL].name)
    except ControllerError as e:
        raise error(web.HTTPBadRequest, str(e), e.code) from None
    return web.json_response(job, status=201)


def _job_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise _bad("a job id is an integer") from None


async def list_jobs(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise _bad("limit is an integer") from None
    return web.json_response(await request.app[OPS].jobs.list_jobs(limit))


async def get_job(request: web.Request) -> web.Response:
    try:
        return web.json_response(await request.app[OPS].jobs.get(_job_id(request)))
    except ControllerError as e:
        raise error(web.HTTPNotFound, str(e), e.code) from None


async def cancel_job(request: web.Request) -> web.Response:
    try:
        return web.json_response(await request.app[OPS].jobs.cancel(_job_id(request)))
    except ControllerError as e:
        raise error(web.HTTPNotFound, str(e), e.code) from None


async def rotate_key(request: web.Request) -> web.Response:
    """POST /api/devices/{id}/rotate-key {grace, timeout}: 200 once the device confirmed."""
    try:
        body = await _json(request)
        grace = float(body.get("grace", GRACE_S))
        timeout = min(float(body.get("timeout", ACK_TIMEOUT_S)), MAX_ROTATE_WAIT_S)
    except (ValueError, TypeError, AttributeError) as e:
        raise _bad(f"send JSON with grace and timeout seconds: {e}") from None
    try:
        out = await request.app[OPS].fleet.rotate_key(request.match_info["id"], grace, timeout)
    except ControllerError as e:
        raise error(web.HTTPConflict, str(e), e.code) from None
    return web.json_response(out)


async def get_command(request: web.Request) -> web.Response:
    try:
        epoch, seq = int(request.match_info["epoch"]), int(request.match_info["seq"])
    except ValueError:
        raise _bad("a command is /api/commands/EPOCH/SEQ, both integers") from None
    cmd = await request.app[OPS].fleet.command(epoch, seq)
    if cmd is None:
        raise error(web.HTTPNotFound, "no such command", "not_found")
    return web.json_response(cmd)


async def presence(request: web.Request) -> web.Response:
    try:
        since = parse_time(request.query.get("since"), 0.0)
        limit = int(request.query.get("limit", "1000"))
    except ValueError as e:
        raise _bad(f"since is unix seconds or like 6h; limit an integer ({e})") from None
    rows = await request.app[OPS].fleet.presence(request.query.get("device"), since, limit)
    return web.json_response(rows)


async def query_metrics(request: web.Request) -> web.Response:
    """?device=ID or ?zone=Z, &metric=name|id, &since=, &until=, &resolution=raw|hour."""
    fleet = request.app[OPS].fleet
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
        out["points"] = await fleet.hourly(scope, key, metric, since, until)
    elif resolution == "raw":
        if device is not None:
            out["device"] = device
            pts = await fleet.raw_series(device, metric, since, until, limit)
            out["points"] = [{"ts": t, "value": v, "approx": a} for t, v, a in pts]
        else:
            assert zone is not None
            out["zone"] = zone
            zpts = await fleet.zone_raw_series(zone, metric, since, until, limit)
            out["points"] = [{"ts": t, "device": d, "value": v, "approx": a} for t, d, v, a in zpts]
    else:
        raise _bad("resolution is raw or hour")
    return web.json_response(out)


async def add_operator(request: web.Request) -> web.Response:
    """POST /api/operators {name, role}: 201 with the token, shown this once."""
    try:
        body = await request.json()
        name, role = str(body["name"]), str(body["role"])
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(f"send JSON with name and role ({', '.join(ROLES)}): {e}") from None
    who = request[PRINCIPAL]
    try:
        rec, token = await request.app[OPS].operators.add(name, role, who)
    except OperatorError as e:
        raise error(web.HTTPBadRequest, str(e), e.code) from None
    return web.json_response({**rec.public(), "token": token}, status=201)


async def list_operators(request: web.Request) -> web.Response:
    return web.json_response(await request.app[OPS].operators.accounts())


async def revoke_operator(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        await request.app[OPS].operators.revoke(name)
    except OperatorError as e:
        raise error(web.HTTPNotFound, str(e), e.code) from None
    return web.json_response({"name": name, "state": "revoked"})


async def audit_log(request: web.Request) -> web.Response:
    """GET /api/audit?since=&who=&limit=: audit rows, oldest first."""
    try:
        since = parse_time(request.query.get("since"), 0.0)
        limit = int(request.query.get("limit", "1000"))
    except ValueError as e:
        raise _bad(f"since is unix seconds or like 6h; limit an integer ({e})") from None
    rows = await request.app[OPS].operators.audit(since, request.query.get("who"), limit)
    return web.json_response(rows)


async def whoami(request: web.Request) -> web.Response:
    """GET /api/whoami: the operator the token belongs to, and its role (`idufleet doctor`)."""
    who = request[PRINCIPAL]
    return web.json_response({"name": who.name, "role": who.role})


# The minimum role of every route (method, path): the auth middleware refuses a route missing
# here, and tests/controller/test_operators.py fails for one. viewer reads; operator acts on
# devices without changing who they are (commands; later rollouts and jobs); admin provisions,
# rotates, revokes and manages operators.
ROUTE_ROLES: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/metrics"): METRICS,
    ("GET", "/api/devices"): "viewer",
    ("POST", "/api/devices"): "admin",
    ("GET", "/api/devices/{id}"): "viewer",
    ("POST", "/api/devices/{id}/disable"): "admin",
    ("POST", "/api/devices/{id}/enable"): "admin",
    ("POST", "/api/devices/{id}/commands"): "operator",
    ("POST", "/api/devices/{id}/rotate-key"): "admin",
    ("GET", "/api/commands/{epoch}/{seq}"): "viewer",
    ("GET", "/api/zones"): "viewer",
    ("GET", "/api/presence"): "viewer",
    ("GET", "/api/metrics"): "viewer",
    ("GET", "/api/operators"): "admin",
    ("POST", "/api/operators"): "admin",
    ("POST", "/api/operators/{name}/revoke"): "admin",
    ("GET", "/api/audit"): "admin",
    ("GET", "/api/whoami"): "viewer",
    ("GET", "/api/quarantine"): "viewer",
    ("POST", "/api/quarantine/replay"): "operator",
    ("GET", "/api/jobs"): "viewer",
    ("POST", "/api/jobs"): "operator",
    ("GET", "/api/jobs/{id}"): "viewer",
    ("POST", "/api/jobs/{id}/cancel"): "operator",
}
# The audit action of every route that changes something (every non-GET route must have one).
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/api/devices"): "device.register",
    ("POST", "/api/devices/{id}/disable"): "device.disable",
    ("POST", "/api/devices/{id}/enable"): "device.enable",
    ("POST", "/api/devices/{id}/commands"): "device.command",
    ("POST", "/api/devices/{id}/rotate-key"): "device.rotate_key",
    ("POST", "/api/operators"): "operator.add",
    ("POST", "/api/operators/{name}/revoke"): "operator.revoke",
    ("POST", "/api/quarantine/replay"): "quarantine.replay",
    ("POST", "/api/jobs"): "job.create",
    ("POST", "/api/jobs/{id}/cancel"): "job.cancel",
}


def make_app(ops: ApiOps) -> web.Application:
    """Every route of the API, in one table."""
    app = web.Application(middlewares=[store_errors, auth])
    app[OPS] = ops
    r = app.router
    r.add_get("/health", health)
    r.add_get("/metrics", prometheus)
    r.add_get("/api/devices", list_devices)
    r.add_post("/api/devices", register_device)
    r.add_get("/api/devices/{id}", device_detail)
    r.add_post("/api/devices/{id}/disable", disable_device)
    r.add_post("/api/devices/{id}/enable", enable_device)
    r.add_post("/api/devices/{id}/commands", send_command)
    r.add_post("/api/devices/{id}/rotate-key", rotate_key)
    r.add_get("/api/commands/{epoch}/{seq}", get_command)
    r.add_get("/api/zones", list_zones)
    r.add_get("/api/presence", presence)
    r.add_get("/api/metrics", query_metrics)
    r.add_get("/api/quarantine", list_quarantine)
    r.add_post("/api/quarantine/replay", replay_quarantine)
    r.add_get("/api/operators", list_operators)
    r.add_post("/api/operators", add_operator)
    r.add_post("/api/operators/{name}/revoke", revoke_operator)
    r.add_get("/api/audit", audit_log)
    r.add_get("/api/whoami", whoami)
    r.add_get("/api/jobs", list_jobs)
    r.add_post("/api/jobs", create_job)
    r.add_get("/api/jobs/{id}", get_job)
    r.add_post("/api/jobs/{id}/cancel", cancel_job)
    return app


async def start_api(ops: ApiOps) -> tuple[web.AppRunner, int]:
    """Start the API on api.host:api.port (0: a free port); returns the runner and the port."""
    runner = web.AppRunner(make_app(ops), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ops.cfg.host, ops.cfg.port)
    await site.start()
    port = ops.cfg.port
    for addr in runner.addresses:  # the real port when 0 was asked for
        port = addr[1]
    return runner, int(port)
