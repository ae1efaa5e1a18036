"""The device's side of an OTA transfer (docs/PROTOCOL.md section 7 "9 OTA", docs/OTA.md): take an
offer, fetch the manifest to flash, hand it to the verifier phase (otaverify.py, run at boot: the
verifier does not fit next to the running agent), then fetch the payload one chunk at a time,
each checked against the signed chunk table before it is written to the staging file in the
inactive slot. Progress is on flash after every chunk, so a reset re-fetches at most the chunk
that was in flight. Loaded per message and per timeout like cmds.py, unloaded after (heap.py
OTA): the transfer's state lives in the agent (a.ota: the persisted fields, then a few in
RAM). Imports only builtins: hashlib, os, struct, time."""

import hashlib
import os
import struct
import time

from micropython import const

# protocol.messages / protocol.ota numbers (tests/test_firmware_heap.py checks they match)
_OTA = const(9)
_ACK = const(6)
_O_PHASE = const(0)
_O_RELEASE = const(1)
_OP_OFFER = const(1)
_OP_DATA = const(2)
_OP_GONE = const(3)
_OP_REQUEST = const(4)
_OP_STATUS = const(5)
_O_MANIFEST_SIZE = const(4)
_O_MANIFEST_SHA256 = const(5)
_O_PIECE = const(6)
_O_EXPIRES = const(7)
_O_PART = const(2)
_O_INDEX = const(3)
_O_COUNT = const(4)
_O_DATA = const(4)
_O_SPLIT = const(5)
_O_OFFSET = const(5)
_O_STATE = const(2)
_O_RESULT = const(3)
_O_DONE = const(4)
_O_TOTAL = const(5)
_O_DETAIL = const(6)
_OS_OFFERED = const(1)
_OS_DOWNLOADING = const(2)
_OS_DOWNLOADED = const(3)
_OS_FAILED = const(8)
_OR_NONE = const(0)
_OR_OK = const(1)
_OR_NO_STORAGE = const(2)
_OR_CONNECTION_LOST = const(4)
_OR_INTEGRITY = const(5)
_R_OK = const(0)
_R_BAD_ARGS = const(1)
_R_EXPIRED = const(3)
_R_BUSY = const(6)
_REBOOT = const(75)  # agent.REBOOT: main.py boots again, and the verifier runs at boot
_VERIFY = const(100)  # not on the wire (reported as offered): the manifest awaits otaverify.py
_SPLIT = const(512)  # DATA bytes per message: with its headers within link.py's 704-byte buffer
_PROGRESS = const(16)  # a STATUS every this many chunks
_RETRIES = const(3)  # manifest downloads before integrity failure

# The state file <flash>/ota.st: release id, state, result, reported, mlen, piece (= chunk),
# total, chunks, next payload chunk, next manifest piece, table offset, manifest SHA-256,
# payload SHA-256, detail.
_FMT = "<8sBBBxIIIIIII32s32s16s"
_STAGE = "/slot_b/stage.bin"  # the staging file in the inactive slot (slots are slice 3's)
_RID = const(0)
_STATE = const(1)
_RESULT = const(2)
_REPORTED = const(3)
_MLEN = const(4)
_PIECE = const(5)
_TOTAL = const(6)
_CHUNKS = const(7)
_NEXT = const(8)
_MNEXT = const(9)
_TOFF = const(10)
_MDIGEST = const(11)
_PDIGEST = const(12)
_DETAIL = const(13)
# In RAM after the persisted fields (agent.py reads _AT and _WAIT as const copies): spare,
# last request (ticks), bytes of the item in flight, the running SHA-256 of the chunk in
# flight, failed manifest downloads, uplink seq, request timeout
_AT = const(15)
_OFF = const(16)
_H = const(17)
_BAD = const(18)
_SEQ = const(19)
_WAIT = const(20)


def read(flash):
    """The persisted transfer as a list (indexes above), or None."""
    try:
        with open(flash + "/ota.st", "rb") as f:
            return list(struct.unpack(_FMT, f.read()))
    except (OSError, ValueError):
        return None


def _ram(a, st):
    st += [0, time.ticks_ms(), 0, None, 0, 0, a.cfg["broker"]["wait_ms"]]
    return st


def write(flash, st):
    """Write-then-rename: the old state or the new, never half of one."""
    p = flash + "/ota.st"
    with open(p + ".tmp", "wb") as f:
        f.write(struct.pack(_FMT, *st[:14]))
    os.rename(p + ".tmp", p)


def active(st):
    return st is not None and st[_STATE] in (_OS_OFFERED, _OS_DOWNLOADING, _VERIFY)


def resume(a):
    """The transfer on flash into a.ota (None when it has ended and was reported)."""
    st = read(a.flash)
    a.ota = _ram(a, st) if st is not None and (active(st) or not st[_REPORTED]) else None


async def send(a, body, qos):
    """An OTA uplink on `otr`, numbered by its own counter (never ingested, never
    replay-checked: the report stream keeps no gaps). False when the link is down."""
    st = a.ota
    st[_AT] = time.ticks_ms()
    st[_SEQ] += 1
    t = a.base + b"otr"
    n = a.seal_ctl(t, _OTA, body, st[_SEQ])
    try:
        await a.link.publish(t, a.buf, n, qos, a.link.next_pid() if qos else 0)
    except OSError:
        return False
    return True


async def status(a):
    st = a.ota
    state = _OS_OFFERED if st[_STATE] == _VERIFY else st[_STATE]
    body = {
        _O_PHASE: _OP_STATUS,
        _O_RELEASE: st[_RID],
        _O_STATE: state,
        _O_RESULT: st[_RESULT],
        _O_DONE: st[_NEXT],
        _O_TOTAL: st[_CHUNKS],
    }
    d = st[_DETAIL].rstrip(b"\0")
    if d:
        body[_O_DETAIL] = d.decode()
    if await send(a, body, 1) and not active(st):  # the verdict is out: forget the transfer
        if not st[_REPORTED]:
            st[_REPORTED] = 1
            write(a.flash, st)
        a.ota = None


async def request(a):
    """Ask for the next manifest piece or payload chunk (one in flight: a reset loses at most
    that one)."""
    st = a.ota
    st[_AT] = time.ticks_ms()
    st[_OFF] = 0  # the item is asked for whole again
    if st[_STATE] == _OS_OFFERED:
        part, i = 0, st[_MNEXT]
    elif st[_STATE] == _OS_DOWNLOADING:
        part, i = 1, st[_NEXT]
    else:
        return
    await send(a, {_O_PHASE: _OP_REQUEST, _O_RELEASE: st[_RID], _O_PART: part, _O_INDEX: i,
                   _O_COUNT: 1, _O_SPLIT: _SPLIT}, 0)  # fmt: skip


async def tick(a):
    """Run by agent.py while connected: a transfer boot found on flash (a.ota True) is loaded,
    reported and resumed; otherwise the item due is asked for again (nothing came for
    broker.wait_ms: the controller's answer is as overdue as a CONNACK would be)."""
    if a.ota is True:
        resume(a)
        if a.ota is None:
            return
        await status(a)
    elif not active(a.ota):
        await status(a)  # a verdict the link lost: again
    if a.ota is not None:
        await request(a)


async def _ack(a, epoch, seq, result):
    await a.publish_ctl(a.t_ack, _ACK, {0: epoch, 1: seq, 2: result}, 0, False)


async def _fail(a, result, detail=b""):
    st = a.ota
    st[_STATE] = _OS_FAILED
    st[_RESULT] = result
    st[_REPORTED] = 0
    st[_DETAIL] = detail
    write(a.flash, st)
    print("idu: ota failed", result, detail)
    await status(a)


async def on_message(a, epoch, seq, ts, body):
    """One verified OTA downlink message (inbox.py opened it): OFFER, DATA or GONE."""
    phase = body.get(_O_PHASE)
    rid = body.get(_O_RELEASE)
    st = a.ota
    if not isinstance(rid, bytes) or len(rid) != 8:
        if phase == _OP_OFFER:
            await _ack(a, epoch, seq, _R_BAD_ARGS)
        return
    if phase == _OP_OFFER:
        now = a.now() or ts
        exp = body.get(_O_EXPIRES)
        size = body.get(_O_MANIFEST_SIZE)
        piece = body.get(_O_PIECE)
        digest = body.get(_O_MANIFEST_SHA256)
        if type(exp) is not int or type(size) is not int or type(piece) is not int:
            await _ack(a, epoch, seq, _R_BAD_ARGS)
            return
        if not isinstance(digest, bytes) or len(digest) != 32 or not 0 < size <= 139392:
            await _ack(a, epoch, seq, _R_BAD_ARGS)
            return
        if now is not None and now >= exp:
            await _ack(a, epoch, seq, _R_EXPIRED)
            return
        if active(st) and st[_RID] != rid:
            await _ack(a, epoch, seq, _R_BUSY)
            return
        await _ack(a, epoch, seq, _R_OK)
        if active(st):  # the same release again: resume where it is
            await request(a)
            return
        for n in ("/ota.man", _STAGE):
            try:
                os.remove(a.flash + n)
            except OSError:
                pass
        a.ota = st = _ram(a, [rid, _OS_OFFERED, _OR_NONE, 0, size, piece, 0, 0, 0, 0, 0,
                              digest, b"", b""])  # fmt: skip
        write(a.flash, st)
        print("idu: ota offered", size)
        await status(a)
        await request(a)
        return
    if st is None or st[_RID] != rid or not active(st):
        return
    if phase == _OP_GONE:
        await _fail(a, _OR_CONNECTION_LOST, b"gone")
        return
    if phase != _OP_DATA:
        return
    part = body.get(_O_PART)
    i = body.get(_O_INDEX)
    data = body.get(_O_DATA)
    if not isinstance(data, bytes) or body.get(_O_OFFSET) != st[_OFF]:
        return  # a duplicate or one out of order: dropped; the next request names the one due
    if part == 0 and st[_STATE] == _OS_OFFERED and i == st[_MNEXT]:
        await _manifest_piece(a, st, i, data)
    elif part == 1 and st[_STATE] == _OS_DOWNLOADING and i == st[_NEXT]:
        await _chunk(a, st, i, data)


async def _manifest_piece(a, st, i, data):
    off = i * st[_PIECE] + st[_OFF]
    n = min(st[_PIECE], st[_MLEN] - i * st[_PIECE])  # this item's length
    if st[_OFF] + len(data) > n:
        return
    p = a.flash + "/ota.man"
    try:
        with open(p, "r+b" if off else "wb") as f:
            f.seek(off)
            f.write(data)
    except OSError:
        await _fail(a, _OR_NO_STORAGE)
        return
    st[_OFF] += len(data)
    st[_AT] = time.ticks_ms()
    if st[_OFF] < n:
        return
    st[_MNEXT] = i + 1
    if st[_MNEXT] * st[_PIECE] < st[_MLEN]:
        write(a.flash, st)
        await request(a)
        return
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    if h.digest() != st[_MDIGEST]:  # not the manifest offered: fetch it again, twice at most
        st[_BAD] += 1
        st[_MNEXT] = 0
        write(a.flash, st)
        if st[_BAD] >= _RETRIES:
            await _fail(a, _OR_INTEGRITY, b"manifest")
            return
        await request(a)
        return
    st[_STATE] = _VERIFY
    write(a.flash, st)
    print("idu: ota manifest", st[_MLEN])
    a.result = _REBOOT  # the verifier runs at boot, where it fits (otaverify.py)
    a.stop = True


async def _chunk(a, st, i, data):
    n = min(st[_PIECE], st[_TOTAL] - i * st[_PIECE])  # the chunk's signed length
    if st[_OFF] + len(data) > n:  # never past it
        return
    off = i * st[_PIECE] + st[_OFF]
    try:  # staged before it is checked, but only counted (_NEXT) once the whole chunk checks
        with open(a.flash + _STAGE, "r+b" if off else "wb") as f:
            f.seek(off)
            f.write(data)
    except OSError:
        await _fail(a, _OR_NO_STORAGE)
        return
    if not st[_OFF]:  # a chunk starts (also one the broker kept for us across a reset)
        st[_H] = hashlib.sha256()
    st[_H].update(data)
    st[_OFF] += len(data)
    st[_AT] = time.ticks_ms()
    if st[_OFF] < n:
        return
    with open(a.flash + "/ota.man", "rb") as f:
        f.seek(st[_TOFF] + 32 * i)
        want = f.read(32)
    if st[_H].digest() != want:
        print("idu: ota chunk", i, "corrupt")
        await request(a)  # asked again at once; its bytes on flash are written over
        return
    st[_NEXT] = i = i + 1
    if i < st[_CHUNKS]:
        write(a.flash, st)
        await request(a)
        if i % _PROGRESS == 0:
            await status(a)
        return
    h = hashlib.sha256()  # every chunk checked: the whole, once more, against the manifest
    with open(a.flash + _STAGE, "rb") as f:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    if h.digest() != st[_PDIGEST]:
        await _fail(a, _OR_INTEGRITY, b"payload")
        return
    st[_STATE] = _OS_DOWNLOADED
    st[_RESULT] = _OR_OK
    st[_REPORTED] = 0
    write(a.flash, st)
    print("idu: ota downloaded", st[_TOTAL])
    await status(a)
