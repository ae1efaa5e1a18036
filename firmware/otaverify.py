"""The OTA verifier phase (docs/OTA.md): run by main.py at boot, before the agent loads, when a
downloaded manifest waits (ota.py state VERIFY). The Ed25519 verifier and the manifest decoder
(protocol.manifest, ed25519, sha512, reader: ~25 KB) do not fit next to the running agent
(~52 KB live) in a 64 KiB heap, so the transfer stops, the agent unloads and this phase runs
with the heap nearly empty; heap.py VERIFY unloads it all before the agent starts again.
Verdict: state DOWNLOADING with the manifest's sizes and digests, or FAILED with the refusal's
result code and name; nothing is staged before it verified."""

import gc
import os
import time

import heap
import ota
from micropython import const

# ota.py's state fields (its private consts; tests/test_firmware_heap.py checks copies agree)
_STATE = const(1)
_RESULT = const(2)
_REPORTED = const(3)
_MLEN = const(4)
_PIECE = const(5)
_TOTAL = const(6)
_CHUNKS = const(7)
_NEXT = const(8)
_TOFF = const(10)
_PDIGEST = const(12)
_DETAIL = const(13)
_VERIFY = const(100)
_OS_DOWNLOADING = const(2)
_OS_FAILED = const(8)
_OR_NONE = const(0)
_OR_OUT_OF_RAM = const(3)
_OR_UNSUPPORTED = const(6)
# protocol.ota OR_* 10-16, by the manifest refusal's name (anything else: unsupported)
_CODES = ("bad_signature", "wrong_key", "wrong_board", "expired", "below_floor", "not_newer",
          "jump_not_allowed")  # fmt: skip


def _state(flash):
    """(floor, installed version) persisted by install (slice 3): <flash>/ota.floor holds both."""
    try:
        with open(flash + "/ota.floor") as f:
            a, b = f.read().split()
        return int(a), int(b)
    except (OSError, ValueError):
        return 0, 0


def run(flash, booted):
    st = ota.read(flash)
    if st is None or st[_STATE] != _VERIFY:
        heap.unload("VERIFY")
        return
    cfg, board = booted[0], booted[1]
    gc.collect()
    t0 = time.ticks_ms()
    detail = ""
    try:
        import json

        with open(flash + "/config.json") as f:
            key = json.load(f).get("release_key")
        del json
        if not isinstance(key, str) or len(key) != 64:
            raise ValueError("no_release_key")
        key = bytes.fromhex(key)
        floor, current = _state(flash)
        from protocol.manifest import verify_file

        now = board.unix() or 0
        with open(flash + "/ota.man", "rb") as f:
            m = verify_file(f, st[_MLEN], key, board.name, now, floor, current, cfg["kind"])
        st[_TOTAL] = m.total
        st[_CHUNKS] = m.chunks
        st[_TOFF] = m.table_offset
        st[_PDIGEST] = m.digest
        if m.chunk != st[_PIECE]:
            raise ValueError("bad_field")  # the offer's piece size is the manifest's chunk
        del m, verify_file
        st[_STATE] = _OS_DOWNLOADING
        st[_NEXT] = 0
        try:
            os.mkdir(flash + "/slot_b")
        except OSError:
            pass
    except MemoryError:
        st[_STATE], st[_RESULT], detail = _OS_FAILED, _OR_OUT_OF_RAM, "out_of_ram"
    except ValueError as e:  # ProtocolError is one: its code names the refusal
        detail = getattr(e, "code", None) or str(e)
        st[_STATE] = _OS_FAILED
        st[_RESULT] = 10 + _CODES.index(detail) if detail in _CODES else _OR_UNSUPPORTED
    gc.collect()
    ms = time.ticks_diff(time.ticks_ms(), t0)
    st[_REPORTED] = 0
    st[_DETAIL] = detail.encode()[:16]
    ota.write(flash, st)
    print("idu: ota verify", detail or "ok", ms, "ms", "heap", gc.mem_alloc())
    heap.unload("VERIFY")  # all of it, this module included, before the agent loads
