"""HTTP routes of the provisioning flows, added to the controller's API by
`controller.api.http.make_app` (one register() call). Same auth as the other write endpoints."""

from __future__ import annotations

import json

from aiohttp import web

from controller.errors import ControllerError
from controller.provisioning.rotation import ACK_TIMEOUT_S, GRACE_S, rotate_key


def _error(cls: type[web.HTTPException], msg: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": msg}), content_type="application/json")


async def rotate_key_route(request: web.Request) -> web.Response:
    """POST /api/devices/{id}/rotate-key {grace, timeout}: 200 once the device ACKed."""
    from controller.api.http import CTRL, _auth

    _auth(request)
    c = request.app[CTRL]
    try:
        body = await request.json() if request.can_read_body else {}
        grace = float(body.get("grace", GRACE_S))
        timeout = min(float(body.get("timeout", ACK_TIMEOUT_S)), 120.0)
    except (ValueError, TypeError, AttributeError) as e:
        raise _error(web.HTTPBadRequest, f"send JSON with grace and timeout seconds: {e}") from None
    try:
        out = await rotate_key(c, request.match_info["id"], grace, timeout)
    except ControllerError as e:
        raise _error(web.HTTPConflict, str(e)) from None
    return web.json_response(out)


def register(app: web.Application) -> None:
    app.router.add_post("/api/devices/{id}/rotate-key", rotate_key_route)
