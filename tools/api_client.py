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


class ApiClient:
    def __init__(self, base: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.base = (base or os.environ.get("IDUFLEET_API") or DEFAULT_API).rstrip("/")
        self.token = token if token is not None else os.environ.get("IDUFLEET_API_TOKEN", "")
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
            hint = " (set IDUFLEET_API_TOKEN)" if e.code in (401, 403) else ""
            raise CliError(f"controller said {e.code}: {msg}{hint}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(
                f"cannot reach the controller API at {self.base} ({e}); is `idufleet serve` "
                "running? pass --api or set IDUFLEET_API"
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)
