"""Device key rotation: a new key travels to the device in a COMMAND signed with the old key
(OP_ROTATE_KEY, args {0: new key}); the device stores it, ACKs with the old key and then signs
with the new one. The controller accepts both keys from the moment it sends (the device may
switch before its ACK arrives), makes the new key the stored one once the ACK says ok, and keeps
the old key valid for a short grace so messages already in flight still verify.

`DualSigner` is the pure part; `rotate_key` drives a running Controller (its loop, its store
thread, its MQTT link). The new key is never logged, and never written to the commands table
(the recorded args say only that a key was sent)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller.errors import CommandError, RegistryError
from controller.keys import new_device_key
from protocol import messages as M
from protocol.errors import ProtocolError
from protocol.sign import Signer

if TYPE_CHECKING:
    from controller.app import Controller

GRACE_S = 60.0
ACK_TIMEOUT_S = 30.0
ARG_KEY = 0  # OP_ROTATE_KEY args: {0: new key, 32 bytes}


class DualSigner(Signer):
    """Signs with `primary`; verifies with primary, or with `alt` until `until` (unix s)."""

    def __init__(
        self, primary: Signer, alt: Signer, until: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.primary = primary
        self.alt = alt
        self.until = until
        self.clock = clock
        self.alt_seen = False  # a message verified with alt: its sender holds that key

    def digest(self, topic: bytes, unsigned: bytes | memoryview) -> bytes:
        return self.primary.digest(topic, unsigned)

    def tag(self, topic: bytes, unsigned: bytes | memoryview) -> bytes:
        return self.primary.tag(topic, unsigned)

    def verify(self, topic: bytes, unsigned: bytes | memoryview, tag: bytes) -> None:
        try:
            self.primary.verify(topic, unsigned, tag)
        except ProtocolError:
            if self.clock() >= self.until:
                raise
            self.alt.verify(topic, unsigned, tag)
            self.alt_seen = True


def current(signer: Signer) -> Signer:
    """The key a device is known to hold now (a finished grace collapses to its primary)."""
    return signer.primary if isinstance(signer, DualSigner) else signer


async def rotate_key(
    ctl: Controller,
    device_id: str,
    grace: float = GRACE_S,
    timeout: float = ACK_TIMEOUT_S,
    new_key: bytes | None = None,
) -> dict[str, Any]:
    """Rotate device_id's key through ctl. Returns {device, status: rotated, epoch, seq,
    grace_until}. A lost ACK is not a failure when a message signed with the new key arrived
    meanwhile (the device has switched). Raises RegistryError (unknown/disabled device) or
    CommandError (the device refused, or neither its ACK nor a new-key message came within
    timeout: the old key stays the stored one, the new key is accepted until the pending window
    ends)."""
    assert ctl.store is not None and ctl.issuer is not None
    dev = ctl.core.devices.get(device_id)
    if dev is None or not dev.active:
        raise RegistryError(f"no active device {device_id}; list them with `idufleet devices`")
    key = new_key if new_key is not None else new_device_key()
    old = current(dev.signer)
    new = Signer(key)
    now = time.time()
    ttl = max(1, int(timeout))
    dev.signer = DualSigner(old, new, now + timeout + grace)  # pending: either key verifies
    cmd = ctl.issuer.build(old, dev.site, device_id, M.OP_ROTATE_KEY, {ARG_KEY: key}, int(now), ttl)
    await ctl.db(
        ctl.store.record_command,
        cmd.epoch,
        cmd.seq,
        device_id,
        cmd.op,
        {str(ARG_KEY): "<new key, not recorded>"},
        float(cmd.issued),
        cmd.expires,
    )
    ctl.link.publish(cmd.topic, cmd.payload, qos=1)
    ctl.metrics.commands.labels(str(cmd.op)).inc()
    pending = dev.signer
    deadline = time.monotonic() + timeout
    status = "sent"
    while status == "sent" and time.monotonic() < deadline:
        if isinstance(pending, DualSigner) and pending.alt_seen:
            break
        left = deadline - time.monotonic()
        settled = await ctl.wait_command(cmd.epoch, cmd.seq, max(0.0, min(0.25, left)))
        status = settled["status"] if settled else "sent"
    if status != "ok" and isinstance(pending, DualSigner) and pending.alt_seen:
        status = "ok"  # the ACK was lost, but the device already signs with the new key
    if status != "ok":
        if status == "failed":  # the device answered and kept its old key
            dev.signer = old
        raise CommandError(
            f"device {device_id} did not confirm the new key (status {status}); its old key "
            "stays in the registry. Check it is online, then run rotate-key again"
        )
    await ctl.db(ctl.store.set_key, device_id, ctl.master.wrap(device_id, key))
    until = time.time() + grace
    dev.signer = DualSigner(new, old, until)
    return {
        "device": device_id,
        "status": "rotated",
        "epoch": cmd.epoch,
        "seq": cmd.seq,
        "grace_until": until,
    }
