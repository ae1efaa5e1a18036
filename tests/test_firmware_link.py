"""The link's write path on the real interpreter, under backpressure: two tasks send packets over
one socket whose peer does not read for a while, both filling the same buffers right before
each send while a third task keeps overwriting them (as the agent shares one buffer with its
reporter), so a send that waited with the caller's bytes instead of a copy would go out
scribbled. Every packet must arrive whole, uncorrupted, never interleaved with another, and each
task's packets in order."""

from __future__ import annotations

import socket
import threading
import time

from tests.support.upy import ROOT, run_upy
from tools.firmware_build import build

PACKETS = 150  # per writer
PINGS = 40  # from the third sender
HEAD = 600  # the first part (the link's header buffer): 4 bytes tag/seq, then a pattern
BODY = 400  # the second part (the payload)

SCRIPT = """
import asyncio, socket, sys
from link import Link

PACKETS, PINGS, HEAD, BODY = %d, %d, %d, %d
hdr = bytearray(HEAD)  # one pair of buffers for both writers, as the agent shares one buffer
body = bytearray(BODY)

def fill(tag, i):
    hdr[0] = tag; hdr[1] = i >> 8; hdr[2] = i & 0xFF; hdr[3] = 0
    for j in range(4, HEAD):
        hdr[j] = (tag + i + j) & 0xFF
    for j in range(BODY):
        body[j] = (tag * 3 + i + j) & 0xFF

async def writer(link, tag):
    for i in range(PACKETS):
        fill(tag, i)
        await link._send(hdr, HEAD, memoryview(body), BODY)  # as the ring drain passes it

async def pinger(link):
    # a sender with its own buffers that starts a packet every few ms, as keepalive and acks
    # do: it must queue behind a packet another task has half written, never cut into it
    h = bytearray(HEAD)
    b = bytearray(BODY)
    for i in range(PINGS):
        h[0] = 3; h[1] = i >> 8; h[2] = i & 0xFF; h[3] = 0
        for j in range(4, HEAD):
            h[j] = (3 + i + j) & 0xFF
        for j in range(BODY):
            b[j] = (9 + i + j) & 0xFF
        await link._send(h, HEAD, b, BODY)
        await asyncio.sleep_ms(3)

async def scribbler(done):
    # another user of the same buffers (the agent's reporter signs the next report into them)
    while not done[0]:
        for j in range(0, HEAD, 5):
            hdr[j] = 0xEE
        for j in range(0, BODY, 5):
            body[j] = 0xEE
        await asyncio.sleep_ms(1)

async def both(link, done):
    await asyncio.gather(writer(link, 1), writer(link, 2), pinger(link))
    done[0] = True

async def main(port):
    link = Link({"host": "127.0.0.1", "port": port, "tls": False, "ca": None,
                 "username": "t", "password": None, "wait_ms": 10000}, "t", 60)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, 7, 4096)  # SO_SNDBUF: small, so writes block early
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.setblocking(False)
    link.sock = s
    done = [False]
    await asyncio.gather(both(link, done), scribbler(done))
    print("SENT")

asyncio.run(main(int(sys.argv[1])))
""" % (PACKETS, PINGS, HEAD, BODY)  # noqa: UP031 - MicroPython source with braces in it


def test_concurrent_sends_under_backpressure_stay_whole_and_ordered() -> None:
    size = HEAD + BODY
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    data = bytearray()

    def serve() -> None:
        conn, _ = srv.accept()
        time.sleep(1.0)  # read nothing for a while: the sender's socket fills up
        conn.settimeout(30)
        while len(data) < (2 * PACKETS + PINGS) * size:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data.extend(chunk)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    mpy = build()
    res = run_upy(SCRIPT, str(port), heap="256K", path=[mpy, ROOT / "firmware"], timeout=60)
    t.join(30)
    srv.close()
    res.check()
    assert "SENT" in res.stdout
    assert len(data) == (2 * PACKETS + PINGS) * size
    seen = {1: 0, 2: 0, 3: 0}
    for off in range(0, len(data), size):
        pkt = data[off : off + size]
        tag, i = pkt[0], pkt[1] << 8 | pkt[2]
        assert tag in seen and pkt[3] == 0, f"packet at {off} is not whole: {bytes(pkt[:8])!r}"
        assert i == seen[tag], f"writer {tag}: packet {i} where {seen[tag]} was due"
        head = bytes((tag + i + j) & 0xFF for j in range(4, HEAD))
        tail = bytes((tag * 3 + i + j) & 0xFF for j in range(BODY))  # tag 3: 9 + i + j too
        assert pkt[4:HEAD] == head and pkt[HEAD:] == tail, f"writer {tag} packet {i} changed"
        seen[tag] += 1
    assert seen == {1: PACKETS, 2: PACKETS, 3: PINGS}


STALL_SCRIPT = """
import asyncio, socket, sys, time
from link import Link

async def main(port):
    link = Link({"host": "127.0.0.1", "port": port, "tls": False, "ca": None,
                 "username": "t", "password": None, "wait_ms": %d}, "t", 60)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, 7, 4096)
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.setblocking(False)
    link.sock = s
    link.up = True
    buf = bytearray(1000)
    t0 = time.ticks_ms()
    try:
        for _ in range(10000):
            await link._send(buf, len(buf))
        print("NO TIMEOUT")
    except OSError as e:
        print("RAISED", e, time.ticks_diff(time.ticks_ms(), t0), link.sock, link.up)

asyncio.run(main(int(sys.argv[1])))
"""
STALL_MS = 1000  # broker.wait_ms: 10 s in production (tests/test_firmware_units.py checks it)


def test_a_write_that_cannot_progress_closes_the_link() -> None:
    """A peer that stops reading (or a TLS handshake that stalls) must not hang the agent: a
    write with no progress for broker.wait_ms closes the link (a packet may be half sent) and
    raises; not before, and within a few seconds after."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    t = threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True)
    t.start()
    mpy = build()
    script = STALL_SCRIPT % STALL_MS
    res = run_upy(script, str(port), heap="64K", path=[mpy, ROOT / "firmware"], timeout=60)
    for c in held:
        c.close()
    srv.close()
    res.check()
    words = res.stdout.split()
    assert words[:2] == ["RAISED", "timeout"], res.stdout
    assert STALL_MS <= int(words[2]) <= STALL_MS + 5000, res.stdout
    assert words[3:] == ["None", "False"], res.stdout
