"""A small client for the controller's HTTP API, so the CLI works against a remote controller.
Errors become CliError with the server's message and what to try."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tools.errors import CliError

DEFAULT_API = "http://127.0.0.1:8080"


def resolve(base: str | None, token: str | None) -> tuple[str, str]:
    """The API URL and token, each from the first that gives one: the option, the environment
    (IDUFLEET_API, IDUFLEET_API_TOKEN), the config found by the one discovery rule ([cli] api
    and token, else http://<api.host>:<api.port> and api.token), the default URL."""
    base = base or os.environ.get("IDUFLEET_API") or None
    token = token if token is not None else os.environ.get("IDUFLEET_API_TOKEN")
    if base is None or token is None:
        from controller.config import discover
        from controller.errors import ControllerError

        try:
            cfg, path = discover(None, required=False)
        except ControllerError as e:
            raise CliError(str(e)) from None
        if base is None and path is not None:
            host = cfg.api.host if cfg.api.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            base = cfg.cli.api or (f"http://{host}:{cfg.api.port}" if cfg.api.port else None)
        if token is None:
            token = cfg.cli.token or cfg.api.token
    base = (base or DEFAULT_API).rstrip("/")
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("http", "https") or "://" not in base:
        raise CliError(
            f"--api {base!r} is not a URL; give http://HOST:PORT or https://HOST:PORT "
            f"(like http://{base.split('://')[-1] or '127.0.0.1:8080'})"
        )
    return base, token or ""


class ApiClient:
    def __init__(self, base: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.base, self.token = resolve(base, token)
        self.timeout = timeout

    def request(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", e.reason)
            except (ValueError, AttributeError):
                msg = e.reason
            hint = (
                " (pass --token, set IDUFLEET_API_TOKEN, or put [cli] token in the config)"
                if e.code == 401
                else ""
            )
            raise CliError(f"controller said {e.code}: {msg}{hint}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(
                f"cannot reach the controller API at {self.base} ({e}); is `idufleet serve` "
                "running? pass --api, set IDUFLEET_API, or put [cli] api in the config"
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)
