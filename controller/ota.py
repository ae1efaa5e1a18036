"""The OTA server (docs/OTA.md, "Transfer"): reads releases, answers the devices' REQUESTs on
`otr` with DATA from the release file, and mirrors their STATUS. A chunk is read from disk per
request (open, seek, read: at most 4 x 4 KiB held per request, whatever the release's size and
however many devices fetch it), rate-limited per release. Sending goes through the function
app.py hands it (Fleet.send_ota, the signed-downlink path), so this module imports no transport,
no store, no API. Its rules are controller/domain/ota.py's."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.config import OtaConfig
from controller.devices import DeviceCache
from controller.domain.ota import DeviceTransfer, ReleaseInfo, plan
from controller.domain.ratelimit import TokenBucket
from controller.errors import OtaError
from protocol import manifest as MF
from protocol import messages as M
from protocol import ota, topics
from protocol.envelope import decode
from protocol.errors import ProtocolError

log = logging.getLogger("idufleet.controller")

Send = Callable[[str, dict[int, Any]], bool]


def read_release(path: str | Path) -> ReleaseInfo:
    """Parse a release file's manifest (not its signature: that is the device's check) and check
    the payload is all there. Raises OtaError naming the fix."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(MF.PREFIX_LEN + MF.MAX_HEAD)
            m = MF.parse(head + f.read(MF.DIGEST_LEN * MF.MAX_CHUNKS + 2 * MF.SIG_LEN))
            f.seek(0)
            digest = hashlib.sha256(f.read(m.size)).digest()
        size = p.stat().st_size
    except OSError as e:
        raise OtaError(f"cannot read release {path}: {e.strerror}", "release_unreadable") from None
    except ProtocolError as e:
        raise OtaError(
            f"{path} is not a release ({e.code}): build one with `idufleet release build`",
            "not_a_release",
        ) from None
    if size != m.size + m.total:
        raise OtaError(
            f"{path} holds {size} bytes, its manifest says {m.size + m.total}: rebuild it",
            "release_truncated",
        )
    return ReleaseInfo(
        ota.release_id(digest), str(p.resolve()), m.size, digest, m.version, m.display, m.chunk,
        m.total,
    )  # fmt: skip


class OtaServer:
    def __init__(self, cfg: OtaConfig, devices: DeviceCache) -> None:
        self.cfg = cfg
        self.devices = devices
        self.send: Send | None = None  # Fleet.send_ota, given by app.py
        self.releases: dict[bytes, ReleaseInfo] = {}
        self.buckets: dict[bytes, TokenBucket] = {}
        self.transfers: dict[str, DeviceTransfer] = {}
        self.pending = 0  # requests waiting for the rate limit
        self.dropped = 0  # requests dropped: too many pending, unknown device, malformed
        self.corrupt_once: set[tuple[str, int, int]] = set()  # test hook: (device, part, index)

    def add(self, path: str | Path) -> ReleaseInfo:
        """Serve the release at path (read again if already served: the file may be new)."""
        rel = read_release(path)
        self.releases[rel.rid] = rel
        self.buckets.setdefault(rel.rid, TokenBucket(self.cfg.chunks_per_s, self.cfg.burst))
        return rel

    def offered(self, device: str, rel: ReleaseInfo) -> None:
        self.transfers[device] = DeviceTransfer(rel.rid.hex(), total=rel.count(M.PART_PAYLOAD))

    def status(self, device: str) -> dict[str, object] | None:
        t = self.transfers.get(device)
        return None if t is None else t.view()

    # --- receiving (loop thread, synchronous) ----------------------------------------------
    def on_message(self, topic: str, payload: bytes, now: float | None = None) -> None:
        """One message on a device's `otr` topic: verified with the device's key, then served
        or mirrored. Anything refused is counted and logged, never raised."""
        now = time.monotonic() if now is None else now
        try:
            _, device, _ = topics.parse(topic)
            dev = self.devices.get(device)
            if dev is None or not dev.active:
                raise ProtocolError("unknown_device", device)
            msg = decode(payload, topic, dev.signer)
            if msg.type != M.OTA:
                raise ProtocolError("unknown_type", str(msg.type))
            what = ota.check_uplink(msg.body)
        except ProtocolError as e:
            self.dropped += 1
            log.info("ota message refused", extra={"topic": topic, "reason": e.code})
            return
        rid = what[1]
        if what[0] == "status":
            t = self.transfers.get(device)
            if t is None or t.release != rid.hex():
                t = self.transfers[device] = DeviceTransfer(rid.hex())
            _, _, state, result, done, total, detail = what
            t.status(state, result, done, total, detail, time.time())
            log.info(
                "ota status",
                extra={"device": device, "release": t.release, "state": t.state,
                       "result": t.result, "done": t.done, "total": t.total, "detail": t.detail},
            )  # fmt: skip
            return
        _, _, part, index, count, split = what
        rel = self.releases.get(rid)
        if rel is None:
            if self.send is not None:
                self.send(device, ota.gone(rid))
            return
        t = self.transfers.get(device)
        if t is None or t.release != rid.hex():
            t = self.transfers[device] = DeviceTransfer(rid.hex())
        bucket = self.buckets[rid]
        loop = asyncio.get_running_loop()
        for i, off, n in plan(rel, part, index, count):
            wait = bucket.reserve(now)
            if wait <= 0:
                self._serve(device, rel, t, part, i, off, n, split)
            elif self.pending < self.cfg.max_pending:
                self.pending += 1
                loop.call_later(wait, self._later, device, rel, t, part, i, off, n, split)
            else:
                self.dropped += 1  # the device asks again after its wait

    def _later(self, *a: Any) -> None:
        self.pending -= 1
        self._serve(*a)

    def _serve(
        self,
        device: str,
        rel: ReleaseInfo,
        t: DeviceTransfer,
        part: int,
        i: int,
        off: int,
        n: int,
        split: int = 0,
    ) -> None:
        """Item i of part (n bytes at file offset off), in DATA of at most `split` bytes when
        the device asked for pieces (a 64 KiB device takes 512-byte messages; docs/OTA.md)."""
        try:
            with open(rel.path, "rb") as f:  # per chunk: memory bounded by the chunk size
                f.seek(off)
                data = f.read(n)
        except OSError as e:
            log.warning("release unreadable", extra={"path": rel.path, "error": str(e)})
            return
        if (device, part, i) in self.corrupt_once:  # test hook: one flipped byte, once
            self.corrupt_once.discard((device, part, i))
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        step = split or len(data)
        sent = False
        for o in range(0, len(data), step):
            if self.send is None or not self.send(
                device, ota.data(rel.rid, part, i, data[o : o + step], o)
            ):
                return
            sent = True
        if sent:
            t.serve(part, i)
