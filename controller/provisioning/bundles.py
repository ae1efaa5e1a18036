"""Device bundles on the host: the claim bundle (identity still to come) and writing any bundle
owner-only and all-or-nothing. The full bundle's fields are docs/DEVICE-CONFIG.md; a claim
bundle has `claim: {id, secret}` and the bootstrap account instead of `device` and `key`."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

from controller.errors import ControllerError


class ClaimToken(Protocol):
    """What a claim bundle needs of a token (tokens.IssuedToken has it). A protocol, not an
    import: tokens imports the registry, which builds its bundles here."""

    @property
    def id(self) -> str: ...
    @property
    def secret(self) -> bytes: ...
    @property
    def site(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def kind(self) -> str: ...


class BundleError(ControllerError):
    code = "bundle"


def broker_block(
    host: str,
    port: int,
    username: str,
    password: str | None,
    tls: bool = False,
    ca: str | None = None,
) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "tls": tls,
        "ca": ca,
        "username": username,
        "password": password,
    }


def release_key_field(public_key: bytes | None) -> dict[str, str]:
    """The optional `release_key` bundle field (docs/DEVICE-CONFIG.md, docs/OTA.md): the Ed25519
    public key a device checks release manifests with, from `idufleet release keygen`."""
    if public_key is None:
        return {}
    if len(public_key) != 32:
        raise BundleError("the release public key is 32 bytes (64 hex digits in release.pub)")
    return {"release_key": public_key.hex()}


def wifi_block(ssid: str, password: str | None) -> dict[str, Any]:
    """The `wifi` field an esp32 board joins with (docs/DEVICE-CONFIG.md); password None: an
    open network. Raises BundleError when WPA2 would refuse it, before anything is written."""
    if not 1 <= len(ssid.encode()) <= 32:
        raise BundleError(f"Wi-Fi SSID {ssid!r} must be 1-32 bytes")
    if password is not None and not 8 <= len(password) <= 63:
        raise BundleError(
            "the Wi-Fi password must be 8-63 characters (WPA2), or empty for an open network"
        )
    return {"ssid": ssid, "password": password}


def device_bundle(
    device: str,
    site: str,
    zone: str,
    kind: str,
    key: bytes,
    broker: dict[str, Any],
    release_key: bytes | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The config.json a device boots with (docs/DEVICE-CONFIG.md): its identity, its HMAC key,
    the broker block (broker_block()), the release public key when given, then optional agent
    fields from extra (interval, board, keepalive, sim...; a key in extra replaces the one
    above). The one place a full
    bundle is assembled: the registry, provisioning, the firmware tools, the demo and the tests
    all call it. Not validated here: the agent refuses a bad one naming the field. Wi-Fi
    credentials come in extra as `wifi=wifi_block(...)`, for a claim bundle too."""
    cfg: dict[str, Any] = {
        "device": device,
        "site": site,
        "zone": zone,
        "kind": kind,
        "key": key.hex(),
        "broker": dict(broker),
    }
    cfg.update(release_key_field(release_key))
    cfg.update(extra)
    return cfg


def claim_bundle(
    token: ClaimToken, broker: dict[str, Any], release_key: bytes | None = None, **extra: Any
) -> dict[str, Any]:
    """The config.json a board is flashed with before it has an identity (firmware/claim.py
    turns it into a full bundle, keeping every other field: release_key survives the claim).
    extra adds optional agent fields (interval, board, sim...)."""
    cfg: dict[str, Any] = {
        "site": token.site,
        "zone": token.zone,
        "kind": token.kind,
        "claim": {"id": token.id, "secret": token.secret.hex()},
        "broker": dict(broker),
    }
    cfg.update(release_key_field(release_key))
    cfg.update(extra)
    return cfg


def write_bundle(path: Path, cfg: dict[str, Any]) -> Path:
    """Write cfg as JSON with mode 0600, refusing to replace an existing file; a crash leaves
    either no file or the whole file (written aside, then linked into place)."""
    path = Path(path)
    if path.exists():
        raise BundleError(f"{path} exists: remove it or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f, indent=1, sort_keys=True)
            f.write("\n")
        os.link(tmp, path)
    except FileExistsError:
        raise BundleError(f"{path} exists: remove it or choose another --out") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path
