"""Bulk provisioning for a simulated fleet, through the same doors an operator uses: the
controller's HTTP API registers each device and returns its key once (POST /api/devices), and
the broker's dynamic-security plugin gets one account and role per device
(controller/security/dynsec.py, batched). Removal: accounts deleted, devices disabled through the
API (the API has no delete; a disabled device's messages are refused and its rows stay).
Never reads the controller's store or master key."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from controller.errors import TIMEOUT, ControllerError, SecurityError
from controller.security import dynsec
from sim.model import DeviceSpec

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


def new_passwords(planned: Sequence[Planned]) -> dict[str, str]:
    """A fresh broker password per device id."""
    return {p.id: dynsec.new_password() for p in planned}


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
    passwords: Mapping[str, str] | None,
    progress: Callable[[int], None] | None = None,
) -> list[DeviceSpec]:
    """Register every device through the API (keys come back once); bounded concurrency.
    `passwords`: each device's broker password by id (None: a broker without accounts)."""
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
        pw = passwords[p.id] if passwords is not None else None
        out[i] = DeviceSpec(p.id, site, p.zone, p.kind, bytes.fromhex(doc["key"]), pw, i + 1)
        done += 1
        if progress is not None:
            progress(done)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(planned)))
    return [s for s in out if s is not None]


# Control messages to a remote broker, sized as it goes. Mosquitto 2.0.11's plugin rewrites its
# whole JSON file after every control *command* (measured: ≈ 16 µs per account already there,
# per command; 2 commands per device), and the broker serves nobody meanwhile. So a batch is
# sized to take about BATCH_TARGET_S: a busy broker is never blocked for long, the admin client
# never waits into its timeout, and the batch shrinks as the file grows.
BATCH_FIRST = 50
BATCH_MIN, BATCH_MAX = 1, 500
BATCH_TARGET_S = 1.0
BATCH_TIMEOUT_S = 60.0
BATCH_RETRIES = 5  # timeouts in a row before giving up


@dataclass
class AccountReport:
    """What create_accounts did: created, already there and verified, messages, seconds."""

    created: int = 0
    existed: int = 0
    messages: int = 0
    timeouts: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


def next_batch(size: int, took_s: float) -> int:
    """The next batch size from how long this one took: aim at BATCH_TARGET_S, at most double."""
    if took_s <= 0:
        return min(BATCH_MAX, size * 2)
    return max(BATCH_MIN, min(BATCH_MAX, size * 2, int(size * BATCH_TARGET_S / took_s)))


def _already(r: dict[str, Any]) -> bool:
    return "already exists" in str(r.get("error", ""))


def _verify(c: dynsec.DynsecClient, specs: Sequence[DeviceSpec]) -> None:
    """Accounts that already existed: each must be this device's (its own role, with exactly the
    device ACLs) and enabled; then its password is set to ours. That makes a re-sent or repeated
    batch (a QoS 1 re-send to a busy broker, a retry after a timeout) harmless. Safe to reset
    the password: the controller has just registered the id as new, so no device uses it."""
    cmds: list[dict[str, Any]] = []
    for s in specs:
        cmds.append({"command": "getClient", "username": s.id})
        cmds.append({"command": "getRole", "rolename": dynsec.device_role(s.site, s.id)})
    got = c.run(cmds, check=False)

    def acl_set(acls: Sequence[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {(a.get("acltype"), a.get("topic"), a.get("allow")) for a in acls}

    for k, s in enumerate(specs):
        client = got[2 * k].get("data", {}).get("client")
        role = got[2 * k + 1].get("data", {}).get("role")
        want_role = dynsec.device_role(s.site, s.id)
        problem = None
        if not isinstance(client, dict) or not isinstance(role, dict):
            problem = "missing after 'already exists'"
        elif [r.get("rolename") for r in client.get("roles", [])] != [want_role]:
            problem = f"has roles {client.get('roles')}, not {want_role}"
        elif client.get("disabled"):
            problem = "is disabled"
        elif acl_set(role.get("acls", [])) != acl_set(dynsec.device_acls(s.site, s.id)):
            problem = f"role {want_role} has other ACLs"
        if problem:
            raise ProvisionError(
                f"broker account {s.id} already exists and {problem}: not ours; delete it "
                "(mosquitto_ctrl dynsec deleteClient/deleteRole) or use another --prefix"
            )
    c.run(
        [
            {"command": "setClientPassword", "username": s.id, "password": s.password or ""}
            for s in specs
        ]
    )


def _adaptive(
    c: dynsec.DynsecClient,
    specs: Sequence[DeviceSpec],
    commands: Callable[[Sequence[DeviceSpec]], list[dict[str, Any]]],
    done: Callable[[Sequence[DeviceSpec], list[dict[str, Any]]], None],
    rep: AccountReport,
) -> None:
    """Send `commands(part)` for consecutive parts, sized by next_batch. A timeout shrinks the
    batch and sends the same part again (the broker may still apply the first: `done` must
    treat that as success); BATCH_RETRIES timeouts in a row raise."""
    i, size, misses = 0, BATCH_FIRST, 0
    while i < len(specs):
        part = specs[i : i + size]
        t = time.monotonic()
        try:
            got = c.run(commands(part), check=False)
        except SecurityError as e:
            if e.code != TIMEOUT or misses >= BATCH_RETRIES:
                raise
            misses += 1
            rep.timeouts += 1
            size = max(BATCH_MIN, size // 4)
            continue
        took = time.monotonic() - t
        misses = 0
        rep.messages += 1
        rep.batch_sizes.append(len(part))
        done(part, got)
        i += len(part)
        size = next_batch(size, took)


def create_accounts(admin: Admin, specs: Sequence[DeviceSpec]) -> AccountReport:
    """One dynsec account + role per device (blocking), idempotent: an account that already
    exists as this device's is verified and counts as done. Raises ProvisionError naming how
    far it got."""
    rep = AccountReport()
    t0 = time.monotonic()

    def commands(part: Sequence[DeviceSpec]) -> list[dict[str, Any]]:
        pairs = [dynsec.create_device_commands(s.site, s.id, s.password or "") for s in part]
        return [p[0] for p in pairs] + [p[1] for p in pairs]  # roles, then clients

    try:
        with dynsec.DynsecClient(
            admin.host, admin.port, admin.username, admin.password, timeout=BATCH_TIMEOUT_S
        ) as c:

            def done(part: Sequence[DeviceSpec], got: list[dict[str, Any]]) -> None:
                n = len(part)
                existed = []
                for k, s in enumerate(part):
                    role, client = got[k], got[n + k]
                    for r in (role, client):
                        if r.get("error") and not _already(r):
                            raise ControllerError(f"{r.get('command')} {s.id}: {r['error']}")
                    if _already(role) or _already(client):
                        existed.append(s)
                if existed:
                    _verify(c, existed)
                rep.existed += len(existed)
                rep.created += n - len(existed)

            _adaptive(c, specs, commands, done, rep)
    except ControllerError as e:
        raise ProvisionError(
            f"broker accounts: {rep.created + rep.existed} of {len(specs)} done, then: "
            f"{str(e)[:300]}"
        ) from None
    rep.seconds = time.monotonic() - t0
    return rep


def delete_accounts(admin: Admin, specs: Sequence[DeviceSpec]) -> AccountReport:
    """Delete the accounts and roles (a missing one is fine), batches sized as for creation."""
    rep = AccountReport()
    t0 = time.monotonic()

    def commands(part: Sequence[DeviceSpec]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for s in part:
            out += dynsec.delete_device_commands(s.site, s.id)
        return out

    def done(part: Sequence[DeviceSpec], got: list[dict[str, Any]]) -> None:
        rep.created += len(part)

    with dynsec.DynsecClient(
        admin.host, admin.port, admin.username, admin.password, timeout=BATCH_TIMEOUT_S
    ) as c:
        _adaptive(c, specs, commands, done, rep)
    rep.seconds = time.monotonic() - t0
    return rep


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
