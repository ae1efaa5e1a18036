"""Bulk provisioning for a simulated fleet, through the same doors an operator uses: the
controller's HTTP API registers each device and returns its key once (POST /api/devices), and
the broker's dynamic-security plugin gets one account and role per device
(controller/security/dynsec.py, batched). Removal: accounts deleted, devices disabled through the
API (the API has no delete; a disabled device's messages are refused and its rows stay).
Never reads the controller's store or master key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from controller.errors import ControllerError
from controller.security import dynsec
from sim.model import DeviceSpec

DYNSEC_BATCH = 500  # devices per control message (PLATFORM-NOTES: 200 in ~0.6 s with roles)
API_CONCURRENCY = 32  # registrations in flight: the controller commits each on its store thread


class ProvisionError(RuntimeError):
    """A step failed; the message says which and what to check."""


@dataclass(frozen=True)
class Planned:
    id: str
    zone: str
    kind: str


def plan(n: int, kind: str, zones: Sequence[str], prefix: str) -> list[Planned]:
    """n device ids `<prefix>-<kind>-<00001>`, zones round-robin; kind "mix" alternates ap and
    sensor. Raises ValueError when the ids would not be valid device ids."""
    width = max(5, len(str(n)))
    out = []
    for i in range(n):
        k = kind if kind != "mix" else ("ap", "sensor")[i % 2]
        dev = f"{prefix}-{k}-{i + 1:0{width}d}"
        if len(dev) > 32:
            raise ValueError(f"device id {dev!r} is over 32 characters; use a shorter --prefix")
        out.append(Planned(dev, zones[i % len(zones)], k))
    return out


@dataclass(frozen=True)
class Admin:
    """The dynsec admin account (credentials.json of `idufleet broker init`)."""

    host: str
    port: int
    username: str
    password: str

    @classmethod
    def from_dir(cls, broker_dir: Path, host: str, port: int) -> Admin:
        path = broker_dir / "credentials.json"
        try:
            doc = json.loads(path.read_text())
            a = doc["admin"]
            return cls(host, port, str(a["username"]), str(a["password"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ProvisionError(
                f"{path}: cannot read the broker admin account ({e}); point --broker-dir at the "
                "directory `idufleet broker init` wrote"
            ) from None


class Api:
    """The few controller API calls the simulator makes (aiohttp, one session)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=API_CONCURRENCY),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        try:
            async with self.session.request(method, self.base + path, json=body) as r:
                text = await r.text()
                if r.status >= 400:
                    try:
                        msg = json.loads(text).get("error", text)
                    except ValueError:
                        msg = text[:200]
                    hint = " (check --token)" if r.status in (401, 403) else ""
                    raise ProvisionError(
                        f"{method} {path}: controller said {r.status}: {msg}{hint}"
                    )
                return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ProvisionError(
                f"cannot reach the controller API at {self.base} ({e or type(e).__name__}); "
                "check --api"
            ) from None

    async def metrics(self) -> dict[str, float]:
        """Prometheus counters from /metrics, by sample name (labels folded in)."""
        assert self.session is not None
        async with self.session.get(self.base + "/metrics") as r:
            text = await r.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with_labels = name
                try:
                    out[with_labels] = float(value)
                except ValueError:
                    continue
        return out

    async def health(self) -> dict[str, Any]:
        h: dict[str, Any] = await self.call("GET", "/health")
        return h

    async def zones(self) -> list[str]:
        doc = await self.call("GET", "/api/zones")
        return [str(z) for z in doc.get("zones", [])]

    async def command(self, device: str, op: str) -> None:
        await self.call("POST", f"/api/devices/{device}/commands", {"op": op, "ttl": 120})


async def register(
    api: Api,
    planned: Sequence[Planned],
    site: str,
    with_passwords: bool,
    progress: Callable[[int], None] | None = None,
) -> list[DeviceSpec]:
    """Register every device through the API (keys come back once); bounded concurrency."""
    sem = asyncio.Semaphore(API_CONCURRENCY)
    out: list[DeviceSpec | None] = [None] * len(planned)
    done = 0

    async def one(i: int, p: Planned) -> None:
        nonlocal done
        async with sem:
            doc = await api.call(
                "POST",
                "/api/devices",
                {"id": p.id, "site": site, "zone": p.zone, "kind": p.kind, "tags": {"sim": "1"}},
            )
        pw = dynsec.new_password() if with_passwords else None
        out[i] = DeviceSpec(p.id, site, p.zone, p.kind, bytes.fromhex(doc["key"]), pw, i + 1)
        done += 1
        if progress is not None:
            progress(done)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(planned)))
    return [s for s in out if s is not None]


def create_accounts(admin: Admin, specs: Sequence[DeviceSpec]) -> None:
    """One dynsec account + role per device, DYNSEC_BATCH per control message (blocking).
    Raises ProvisionError naming how far it got."""
    done = 0
    try:
        with dynsec.DynsecClient(
            admin.host, admin.port, admin.username, admin.password, timeout=120
        ) as c:
            for i in range(0, len(specs), DYNSEC_BATCH):
                part = specs[i : i + DYNSEC_BATCH]
                c.create_devices([(s.site, s.id, s.password or "") for s in part])
                done += len(part)
    except ControllerError as e:
        raise ProvisionError(
            f"broker accounts: {done} of {len(specs)} created, then: {str(e)[:300]}"
        ) from None


def delete_accounts(admin: Admin, specs: Sequence[DeviceSpec]) -> None:
    with dynsec.DynsecClient(
        admin.host, admin.port, admin.username, admin.password, timeout=120
    ) as c:
        for i in range(0, len(specs), DYNSEC_BATCH):
            cmds: list[dict[str, Any]] = []
            for s in specs[i : i + DYNSEC_BATCH]:
                cmds += dynsec.delete_device_commands(s.site, s.id)
            c.run(cmds, check=False)


async def disable(api: Api, ids: Sequence[str]) -> int:
    """Disable the devices through the API; returns how many failed (reported, not raised)."""
    sem = asyncio.Semaphore(API_CONCURRENCY)
    failed = 0

    async def one(dev: str) -> None:
        nonlocal failed
        async with sem:
            try:
                await api.call("POST", f"/api/devices/{dev}/disable", {})
            except ProvisionError:
                failed += 1

    await asyncio.gather(*(one(d) for d in ids))
    return failed
