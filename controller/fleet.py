"""Every operator action on the fleet, as one service object the HTTP API (and anything else
that acts on devices) is handed: register, disable / enable, rotate a key, send a command and
wait for its ACK, and the device views. Signed downlink leaves through one private path
(`_issue`: build, record, publish, count, log), and delivery confirmations through
`send_confirm` (build, publish, count: never recorded, never ACKed). Imports the domain, the
store thread and the registry; never the HTTP layer, never paho (publishing is a function it
is given)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from controller import registry
from controller.config import Config
from controller.devices import DeviceCache
from controller.domain.commands import CommandIssuer, OutgoingCommand
from controller.domain.ingest import DeviceState
from controller.domain.records import PresenceEvent
from controller.domain.rotation import ACK_TIMEOUT_S, ARG_KEY, GRACE_S, DualSigner, current
from controller.errors import CommandError
from controller.keys import MasterKey, new_device_key
from controller.metrics import Metrics
from controller.store.thread import StoreThread
from protocol import messages as M
from protocol import metrics as pm
from protocol.sign import Signer

log = logging.getLogger("idufleet.controller")

Publish = Callable[[str, bytes, int], None]
# diagnostics ack data keys by name (protocol/messages.py DG_*), for the device view
DG_NAMES = {v: k[3:].lower() for k, v in vars(M).items() if k.startswith("DG_")}
# Records built commands in the store before they are published: (store, [(cmd, args)]).
Record = Callable[[Any, list[tuple[OutgoingCommand, dict[str, Any] | None]]], None]
WAIT_POLL_S = 0.05  # how often a waiting command re-reads its row (another controller may ACK)


@dataclass(frozen=True)
class Build:
    """One command for `_issue` to build: to `dev`, signed by `signer`."""

    dev: DeviceState
    signer: Signer
    op: str | int
    args: dict[int, Any] | None
    ttl: int
    recorded_args: dict[str, Any] | None


def _record_commands(s: Any, cmds: list[tuple[OutgoingCommand, dict[str, Any] | None]]) -> None:
    with s.transaction():
        for cmd, args in cmds:
            s.record_command(
                cmd.epoch, cmd.seq, cmd.device, cmd.op, args, float(cmd.issued), cmd.expires
            )


class Fleet:
    def __init__(
        self,
        cfg: Config,
        db: StoreThread,
        devices: DeviceCache,
        master: MasterKey,
        issuer: CommandIssuer,
        publish: Publish,
        metrics: Metrics,
        on_presence: Callable[[PresenceEvent], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.devices = devices
        self.master = master
        self.issuer = issuer
        self.publish = publish
        self.metrics = metrics
        # where a presence change an operator action causes goes: the pipeline's own queue
        # (stored with the next batch, like one a message causes)
        self.on_presence = on_presence

    # --- registry ----------------------------------------------------------------------------
    async def register(
        self, device_id: str, site: str, zone: str, kind: str, tags: dict[str, str] | None = None
    ) -> registry.NewDevice:
        """Register a device (its key returned once). Raises RegistryError for a bad field, an
        unknown zone or a taken id."""
        zones = self.cfg.fleet.zones
        new = await self.db.call(
            lambda s: registry.create_device(
                s, self.master, device_id, site, zone, kind, tags, zones=zones
            )
        )
        rec = await self.db.call(lambda s: s.get_device(device_id))
        if rec is not None:
            self.devices.load(rec)
        return new

    async def disable(self, device_id: str) -> None:
        """Every further message from the device is refused (counted as disabled_device)."""
        await self.db.call(lambda s: registry.disable_device(s, device_id))
        dev = self.devices.get(device_id)
        if dev is not None:
            dev.active = False
            change = dev.presence.on_disabled()
            if change is not None and self.on_presence is not None:
                self.on_presence(PresenceEvent(device_id, time.time(), *change))
        log.info("device disabled", extra={"device": device_id})

    async def enable(self, device_id: str) -> None:
        await self.db.call(lambda s: registry.enable_device(s, device_id))
        dev = self.devices.get(device_id)
        if dev is not None:
            dev.active = True
        log.info("device enabled", extra={"device": device_id})

    # --- commands ----------------------------------------------------------------------------
    async def _issue(
        self,
        builds: Sequence[Build],
        resends: Sequence[OutgoingCommand] = (),
        record: Record | None = None,
    ) -> list[OutgoingCommand]:
        """The one way signed downlink commands leave: build, record (the ACK settles the row),
        publish at QoS 1, count, log. `Build.recorded_args` is what the commands table keeps
        (never a secret). `record` replaces the plain commands rows (a job binds its executions
        to them in the same transaction); it runs before anything is published, so no published
        command is unknown to the store. `resends` are commands built and recorded earlier,
        published again as the same bytes (same epoch and seq: the device's CommandGuard
        refuses a second copy). Raises CommandError for an unknown op or a bad ttl (nothing
        is recorded or published then)."""
        now = int(time.time())
        cmds: list[tuple[OutgoingCommand, dict[str, Any] | None]] = []
        for b in builds:
            try:
                cmd = self.issuer.build(b.signer, b.dev.site, b.dev.id, b.op, b.args, now, b.ttl)
            except ValueError as e:
                raise CommandError(str(e)) from None
            cmds.append((cmd, b.recorded_args))
        if cmds:
            rec = record if record is not None else _record_commands
            await self.db.call(lambda s: rec(s, cmds))
        for cmd, _ in cmds:
            self._publish_command(cmd, "command sent")
        for cmd in resends:
            self._publish_command(cmd, "command re-sent")
        return [c for c, _ in cmds]

    def _publish_command(self, cmd: OutgoingCommand, what: str) -> None:
        self.publish(cmd.topic, cmd.payload, 1)
        self.metrics.commands.labels(str(cmd.op)).inc()
        log.info(
            what,
            extra={"device": cmd.device, "op": cmd.op, "epoch": cmd.epoch, "seq": cmd.seq},
        )

    async def _issue_one(
        self,
        dev: DeviceState,
        signer: Signer,
        op: str | int,
        args: dict[int, Any] | None,
        ttl: int,
        recorded_args: dict[str, Any] | None,
    ) -> OutgoingCommand:
        [cmd] = await self._issue([Build(dev, signer, op, args, ttl, recorded_args)])
        return cmd

    async def issue_for_jobs(
        self,
        sends: Sequence[tuple[str, int, dict[int, Any] | None, int]],
        resends: Sequence[OutgoingCommand],
        record: Record,
    ) -> list[OutgoingCommand]:
        """Job executions' commands (controller/jobs.py): first sends (device, op, args, ttl)
        built and bound by `record` in one transaction, and resends of commands already bound.
        A device that is unknown or disabled now is skipped (its execution stays queued)."""
        builds = []
        for device_id, op, args, ttl in sends:
            dev = self.devices.get(device_id)
            if dev is None or not dev.active:
                continue
            recorded = {str(k): v for k, v in args.items()} if args else None
            builds.append(Build(dev, dev.signer, op, args, ttl, recorded))
        return await self._issue(builds, resends, record)

    def send_confirm(self, device_id: str, ranges: list[int]) -> bool:
        """Delivery confirmation's downlink (docs/PROTOCOL.md section 16): a CONFIRM naming
        `ranges` of the device's stored messages, signed with the key it holds now and published
        at QoS 1 on its cmd topic. Not recorded in the store (it is never ACKed: a lost one
        makes the device re-send, and the re-sent reports are confirmed again). False when the
        device is unknown or disabled. Raises TransportError while the broker is away."""
        dev = self.devices.get(device_id)
        if dev is None or not dev.active:
            return False
        topic, payload = self.issuer.build_confirm(
            current(dev.signer), dev.site, dev.id, ranges, int(time.time())
        )
        self.publish(topic, payload, 1)
        self.metrics.confirms.inc()
        self.metrics.confirm_ranges.inc(len(ranges) // 3)
        return True

    async def send_command(
        self, device_id: str, op: str | int, args: dict[int, Any] | None = None, ttl: int = 60
    ) -> dict[str, Any]:
        """Sign and publish a COMMAND; the ACK settles it in the store (status ok/failed).
        Raises RegistryError (no such active device) or CommandError (bad op or ttl)."""
        dev = self.devices.active(device_id)
        recorded = {str(k): v for k, v in args.items()} if args else None
        cmd = await self._issue_one(dev, dev.signer, op, args, ttl, recorded)
        return {
            "epoch": cmd.epoch,
            "seq": cmd.seq,
            "device": device_id,
            "op": cmd.op,
            "expires": cmd.expires,
            "status": "sent",
        }

    async def wait_command(self, epoch: int, seq: int, timeout: float) -> dict[str, Any] | None:
        """Poll the store until the command is settled (also if another controller got the ACK)."""
        deadline = time.monotonic() + timeout
        while True:
            cmd = await self.db.call(lambda s: s.get_command(epoch, seq))
            if cmd is None or cmd["status"] != "sent" or time.monotonic() >= deadline:
                return cmd
            await asyncio.sleep(WAIT_POLL_S)

    async def rotate_key(
        self,
        device_id: str,
        grace: float = GRACE_S,
        timeout: float = ACK_TIMEOUT_S,
        new_key: bytes | None = None,
    ) -> dict[str, Any]:
        """Send device_id a new key in a command signed with its old one and switch once it
        confirms. Returns {device, status: rotated, epoch, seq, grace_until}. A lost ACK is not a
        failure when a message signed with the new key arrived meanwhile (the device has
        switched). Raises RegistryError (unknown/disabled device) or CommandError (the device
        refused, or neither its ACK nor a new-key message came within timeout: the old key
        stays the stored one, the new key is accepted until the pending window ends). The new
        key is never logged and never written to the commands table."""
        dev = self.devices.active(device_id)
        key = new_key if new_key is not None else new_device_key()
        old = current(dev.signer)
        pending = DualSigner(old, Signer(key), time.time() + timeout + grace)
        dev.signer = pending  # either key verifies from now on
        cmd = await self._issue_one(
            dev,
            old,
            M.OP_ROTATE_KEY,
            {ARG_KEY: key},
            max(1, int(timeout)),
            {str(ARG_KEY): "<new key, not recorded>"},
        )
        deadline = time.monotonic() + timeout
        status = "sent"
        while status == "sent" and time.monotonic() < deadline and not pending.alt_seen:
            left = deadline - time.monotonic()
            settled = await self.wait_command(cmd.epoch, cmd.seq, max(0.0, min(0.25, left)))
            status = settled["status"] if settled else "sent"
        if status != "ok" and pending.alt_seen:
            status = "ok"  # the ACK was lost, but the device already signs with the new key
        if status != "ok":
            if status == "failed":  # the device answered and kept its old key
                dev.signer = old
            raise CommandError(
                f"device {device_id} did not confirm the new key (status {status}); its old key "
                "stays in the registry. Check it is online, then run rotate-key again"
            )
        wrapped = self.master.wrap(device_id, key)
        await self.db.call(lambda s: s.set_key(device_id, wrapped))
        until = time.time() + grace
        dev.signer = DualSigner(pending.alt, old, until)
        log.info("device key rotated", extra={"device": device_id, "grace_until": until})
        return {
            "device": device_id,
            "status": "rotated",
            "epoch": cmd.epoch,
            "seq": cmd.seq,
            "grace_until": until,
        }

    # --- views -------------------------------------------------------------------------------
    async def list_devices(
        self,
        site: str | None = None,
        zone: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        online: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Registry records, with presence from the live cache (fresher than the last commit)."""
        recs = await self.db.call(lambda s: s.list_devices(site, zone, kind, status, online))
        out = []
        for r in recs:
            d = r.public()
            live = self.devices.get(r.id)
            if live is not None:
                d["online"] = live.presence.online
                d["last_seen"] = live.presence.last_seen
            out.append(d)
        return out

    async def device(self, device_id: str, events: int = 20) -> dict[str, Any] | None:
        """One device: its record, the latest value of each metric (with its unit), its last
        events and presence changes, and its last diagnostics (DG_* keys by name)."""
        rec = await self.db.call(lambda s: s.get_device(device_id))
        if rec is None:
            return None
        d = rec.public()
        live = self.devices.get(device_id)
        if live is not None:
            d["online"] = live.presence.online
            d["last_seen"] = live.presence.last_seen
        latest = await self.db.call(lambda s: s.latest(device_id))
        d["latest"] = {
            pm.name(m): {"ts": ts, "value": v, "unit": pm.REGISTRY.get(m, (None, None))[1]}
            for m, (ts, v) in sorted(latest.items())
        }
        d["events"] = await self.db.call(lambda s: s.device_events(device_id, events))
        d["presence"] = (await self.db.call(lambda s: s.presence_events(device_id, 0.0, 100000)))[
            -events:
        ]
        diag = await self.db.call(lambda s: s.last_command_data(device_id, M.OP_DIAGNOSTICS))
        d["diagnostics"] = None
        if diag is not None:
            acked, data = diag
            d["diagnostics"] = {
                "acked": acked,
                "values": {DG_NAMES.get(int(k), str(k)): v for k, v in data.items()},
            }
        return d

    async def command(self, epoch: int, seq: int) -> dict[str, Any] | None:
        return await self.db.call(lambda s: s.get_command(epoch, seq))

    async def presence(self, device: str | None, since: float, limit: int) -> list[Any]:
        return await self.db.call(lambda s: s.presence_events(device, since, limit))

    async def hourly(
        self, scope: str, key: str, metric: int, since: float, until: float
    ) -> list[Any]:
        return await self.db.call(lambda s: s.hourly(scope, key, metric, since, until))

    async def raw_series(
        self, device: str, metric: int, since: float, until: float, limit: int
    ) -> list[tuple[float, float, int]]:
        return await self.db.call(lambda s: s.raw_series(device, metric, since, until, limit))

    async def zone_raw_series(
        self, zone: str, metric: int, since: float, until: float, limit: int
    ) -> list[tuple[float, str, float, int]]:
        return await self.db.call(lambda s: s.zone_raw_series(zone, metric, since, until, limit))
