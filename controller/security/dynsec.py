"""Runtime broker accounts through Mosquitto's dynamic security plugin.

Two halves: pure builders (the plugin's initial JSON document, the role and ACLs one device or the
controller gets, the control commands that create/disable/delete them) and `DynsecClient`, which
sends a batch to `$CONTROL/dynamic-security/v1` over the shared blocking paho shell
(controller.transport.blocking) and waits for the matching response. Mosquitto 2.0.11 does
not expand `%c`/`%u` in role ACLs, so every device gets its own role (docs/SECURITY.md).
Must not import controller domain/store code.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import secrets
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from controller.errors import (
    BAD_NAME,
    CONNECT_FAILED,
    TIMEOUT,
    DynsecCommandError,
    SecurityError,
    TransportError,
)
from controller.security.broker_stats import SYS_STATS
from controller.transport import blocking
from controller.transport.blocking import BlockingClient
from protocol import topics
from protocol.errors import ProtocolError

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
CONTROLLER_ROLE = "idu-controller"
ADMIN_ROLE = "admin"
# Mosquitto's own default for dynsec password hashes. Passwords we generate are random 192-bit
# tokens, so the low PBKDF2 cost is not what protects them.
PBKDF2_ITERATIONS = 101

Command = dict[str, Any]


def new_password() -> str:
    """A random broker password (192 bits, URL-safe text)."""
    return secrets.token_urlsafe(24)


def _check(site: str, device: str) -> None:
    try:
        topics.check_id(site, "site")
        topics.check_id(device, "device")
    except ProtocolError as e:
        raise SecurityError(BAD_NAME, f"{e.detail}; use 1-32 of a-z 0-9 -") from e


def device_role(site: str, device: str) -> str:
    """One role per device (ids cannot contain '/', so the name is unambiguous)."""
    _check(site, device)
    return f"idu-device/{site}/{device}"


def device_acls(site: str, device: str) -> list[Command]:
    """Publish only its own uplink channels; subscribe to and receive only its own downlink ones."""
    _check(site, device)
    acls: list[Command] = [
        {"acltype": "publishClientSend", "topic": topics.topic(site, device, ch), "allow": True}
        for ch in topics.UPLINK
    ]
    for ch in topics.DOWNLINK:
        t = topics.topic(site, device, ch)
        acls.append({"acltype": "subscribePattern", "topic": t, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": t, "allow": True})
    return acls


def controller_acls() -> list[Command]:
    """The controller reads and writes the whole idu tree, also through shared subscriptions,
    and reads the broker statistics it watches (broker_config.SYS_STATS: drops and queue
    sizes, for /health and Prometheus), nothing else of $SYS."""
    acls: list[Command] = []
    for t in (topics.ROOT + "/#", "$share/+/" + topics.ROOT + "/#"):
        acls.append({"acltype": "subscribePattern", "topic": t, "allow": True})
    acls.append({"acltype": "publishClientSend", "topic": topics.ROOT + "/#", "allow": True})
    acls.append({"acltype": "publishClientReceive", "topic": topics.ROOT + "/#", "allow": True})
    for t in SYS_STATS:
        acls.append({"acltype": "subscribePattern", "topic": t, "allow": True})
        acls.append({"acltype": "publishClientReceive", "topic": t, "allow": True})
    return acls


def create_device_commands(
    site: str, device: str, password: str, username: str | None = None
) -> list[Command]:
    """createRole (with its ACLs), then createClient bound to it; username defaults to the id."""
    role = device_role(site, device)
    return [
        {
            "command": "createRole",
            "rolename": role,
            "textname": f"device {device} at {site}",
            "acls": device_acls(site, device),
        },
        {
            "command": "createClient",
            "username": username or device,
            "password": password,
            "textname": f"device {device} at {site}",
            "roles": [{"rolename": role}],
        },
    ]


def delete_device_commands(site: str, device: str, username: str | None = None) -> list[Command]:
    """deleteClient kicks a connected device; then its role goes."""
    return [
        {"command": "deleteClient", "username": username or device},
        {"command": "deleteRole", "rolename": device_role(site, device)},
    ]


def create_controller_commands(username: str, password: str) -> list[Command]:
    return [
        {
            "command": "createRole",
            "rolename": CONTROLLER_ROLE,
            "textname": "fleet controller",
            "acls": controller_acls(),
        },
        {
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": "fleet controller",
            "roles": [{"rolename": CONTROLLER_ROLE}],
        },
    ]


def hash_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """The plugin's stored form: PBKDF2-HMAC-SHA512 over the password with a 12-byte salt."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": PBKDF2_ITERATIONS,
    }


def device_entries(
    devices: Iterable[tuple[str, str, str]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clients, roles) in the plugin's stored form for many (site, device, password): the same
    account and role `create_device_commands` makes, hashed here (≈ 56 µs each) instead of by the
    broker. For a fleet created before the broker starts: the plugin rewrites its whole file after
    every control command, so thousands of accounts through the API cost minutes and grow
    quadratically (docs/SIMULATOR.md), while this is one file write."""
    clients: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    for site, device, password in devices:
        role = device_role(site, device)
        text = f"device {device} at {site}"
        roles.append({"rolename": role, "textname": text, "acls": device_acls(site, device)})
        clients.append(
            {
                "username": device,
                "textName": text,
                **hash_password(password),
                "roles": [{"rolename": role}],
            }
        )
    return clients, roles


def initial_document(
    admin: str,
    admin_password: str,
    controller: tuple[str, str] | None = None,
    devices: Iterable[tuple[str, str, str]] = (),
) -> dict[str, Any]:
    """What `mosquitto_ctrl dynsec init FILE ADMIN PASSWORD` writes, with default receive access
    denied too (the tool leaves it open) and no `#` read for the admin: a client only gets what a
    role grants. Unsubscribing stays allowed: it cannot leak anything.

    Built here rather than by running mosquitto_ctrl so the admin password never appears on a
    command line (visible in the process list); the hash format is the plugin's own.
    `controller` = (username, password) also creates the controller's account and role, so a
    fresh broker is usable without a first control round trip. `devices` = (site, device,
    password) adds device accounts the same way (`device_entries`)."""
    dyn = CONTROL_TOPIC.rsplit("/", 1)[0] + "/#"
    acls = [
        ("publishClientSend", dyn),
        ("publishClientReceive", dyn),
        ("subscribePattern", dyn),
        ("unsubscribePattern", "#"),
        ("publishClientReceive", "$SYS/#"),
        ("subscribePattern", "$SYS/#"),
    ]
    doc: dict[str, Any] = {
        "clients": [
            {
                "username": admin,
                "textName": "Dynsec admin user",
                **hash_password(admin_password),
                "roles": [{"rolename": ADMIN_ROLE}],
            }
        ],
        "roles": [
            {
                "rolename": ADMIN_ROLE,
                "acls": [{"acltype": a, "topic": t, "allow": True} for a, t in acls],
            }
        ],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    if controller is not None:
        user, password = controller
        doc["clients"].append(
            {
                "username": user,
                "textName": "fleet controller",
                **hash_password(password),
                "roles": [{"rolename": CONTROLLER_ROLE}],
            }
        )
        doc["roles"].append({"rolename": CONTROLLER_ROLE, "acls": controller_acls()})
    clients, roles = device_entries(devices)
    doc["clients"] += clients
    doc["roles"] += roles
    return doc


def write_initial_file(
    path: Path,
    admin: str,
    admin_password: str,
    controller: tuple[str, str] | None = None,
    devices: Iterable[tuple[str, str, str]] = (),
) -> Path:
    """Write the plugin's config file owner-only (0600), atomically. The broker rewrites it on
    every change, so create it once before the first start, never over a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        doc = initial_document(admin, admin_password, controller, devices)
        json.dump(doc, f, indent=1 if len(doc["clients"]) < 100 else None)
    os.replace(tmp, path)
    return path


def failures(responses: list[Command]) -> list[tuple[str, str]]:
    """(command, error) for every response that carries an error."""
    return [(str(r.get("command")), str(r["error"])) for r in responses if r.get("error")]


class DynsecClient:
    """Blocking admin client for the dynamic security plugin (MQTT v5, TCP_NODELAY).

    Use as a context manager. `run` sends one batch and returns the plugin's responses in order,
    raising `DynsecCommandError` when any command failed; `SecurityError(TIMEOUT)` when the
    broker does not answer within `timeout` seconds (plugin not loaded, or no ACL for the admin).
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._client = BlockingClient(
            host,
            port,
            f"idufleet-dynsec-{secrets.token_hex(4)}",
            RESPONSE_TOPIC,
            self._on_message,
            username=username,
            password=password,
            tls=tls,
            timeout=timeout,
        )
        self._cond = threading.Condition()
        self._responses: dict[str, Command] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _on_message(self, client: Any, topic: str, payload: bytes) -> None:
        """paho's network thread: file each response under its correlation id."""
        try:
            doc = json.loads(payload)
            items = doc.get("responses", [])
        except (ValueError, AttributeError):
            return
        with self._cond:
            for r in items:
                if isinstance(r, dict) and "correlationData" in r:
                    self._responses[str(r["correlationData"])] = r
            self._cond.notify_all()

    def connect(self) -> DynsecClient:
        try:
            self._client.connect()
        except TransportError as e:
            where = f"{self.host}:{self.port}"
            if e.code == blocking.UNREACHABLE:
                msg = str(e)
            elif e.code == blocking.NOT_SUBSCRIBED:
                msg = (
                    f"this account may not use the dynamic-security API on {where}: "
                    "log in with the admin account"
                )
            else:
                why = (
                    "no answer"
                    if e.code == blocking.NO_ANSWER
                    else (f"reason code {self._client.refused}")
                )
                msg = (
                    f"broker {where} refused the dynsec admin login ({why}): "
                    "check the admin username and password"
                )
            raise SecurityError(CONNECT_FAILED, msg) from e
        return self

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DynsecClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, commands: list[Command], check: bool = True) -> list[Command]:
        """Send one batch; return the responses in batch order (the plugin answers in order)."""
        if not commands:
            return []
        with self._lock:
            batch = next(self._ids)
            keys = [f"{batch}.{i}" for i in range(len(commands))]
            tagged = [{**c, "correlationData": k} for c, k in zip(commands, keys, strict=True)]
            self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            with self._cond:
                done = self._cond.wait_for(
                    lambda: all(k in self._responses for k in keys), self.timeout
                )
                got = [self._responses.pop(k, {}) for k in keys]
        if not done:
            raise SecurityError(
                TIMEOUT,
                f"no dynamic-security response within {self.timeout}s: is the plugin loaded "
                "and is this the admin account?",
            )
        if check and failures(got):
            raise DynsecCommandError(failures(got))
        return got

    # Convenience wrappers, one batch each.
    def create_device(
        self, site: str, device: str, password: str, username: str | None = None
    ) -> None:
        self.run(create_device_commands(site, device, password, username))

    def create_devices(self, devices: list[tuple[str, str, str]]) -> None:
        """Many (site, device, password) in one control message: all roles, then all clients
        (measured somewhat faster than interleaving them on Mosquitto 2.0.11)."""
        pairs = [create_device_commands(s, d, p) for s, d, p in devices]
        self.run([pair[0] for pair in pairs] + [pair[1] for pair in pairs])

    def delete_device(self, site: str, device: str, username: str | None = None) -> None:
        self.run(delete_device_commands(site, device, username))

    def create_controller(self, username: str, password: str) -> None:
        self.run(create_controller_commands(username, password))

    def disable_client(self, username: str) -> None:
        """Refuses future logins and disconnects the client if it is connected."""
        self.run([{"command": "disableClient", "username": username}])

    def enable_client(self, username: str) -> None:
        self.run([{"command": "enableClient", "username": username}])

    def add_client_role(self, username: str, rolename: str, priority: int = -1) -> None:
        self.run(
            [
                {
                    "command": "addClientRole",
                    "username": username,
                    "rolename": rolename,
                    "priority": priority,
                }
            ]
        )

    def set_client_password(self, username: str, password: str) -> None:
        self.run([{"command": "setClientPassword", "username": username, "password": password}])

    def list_clients(self) -> list[str]:
        (r,) = self.run([{"command": "listClients", "verbose": False, "count": -1}])
        return [str(u) for u in r.get("data", {}).get("clients", [])]

    def get_client(self, username: str) -> Command:
        (r,) = self.run([{"command": "getClient", "username": username}])
        client: Command = r.get("data", {}).get("client", {})
        return client
