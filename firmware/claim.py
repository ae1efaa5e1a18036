"""The device side of the claim flow (docs/PROVISIONING.md): a board whose config.json holds a
`claim` object instead of a `key` generates an X25519 key pair, proves its claim token on the
bootstrap topic, receives its identity sealed to that key pair, rewrites config.json with it and
returns; the agent then boots normally. Blocking sockets and one short-lived MQTT connection per
attempt (mqtt_codec frames the packets): the claim runs once, before the agent's tasks exist.

Hook for the agent (one call before config.load): `claim.ensure(flash)` is a no-op once
config.json holds a key. It raises ClaimFailed with a one-line message when the controller
refuses the token (used, expired, refused): a person has to issue a new bundle."""

import gc
import json
import os
import time

import mqtt_codec as mq
from micropython import const

_BUF = const(1280)
_WAIT_MS = const(8000)  # for the answer, per attempt (default of the bundle's claim.wait_ms)
_KEYFILE = "/claim.key"  # the board's claim private key: kept across reboots until claimed


class ClaimFailed(Exception):
    """The controller refused the token, or the bundle is unusable; the message says what to do."""


def log(*parts):
    print("idu: claim:", *parts)


def _read(flash):
    try:
        with open(flash + "/config.json") as f:
            return json.load(f)
    except OSError:
        raise ClaimFailed("%s/config.json not found: provision the device" % flash)
    except ValueError:
        raise ClaimFailed("config.json is not valid JSON: rewrite the bundle")


def ensure(flash, attempts=0, retry_ms=2000):
    """Claim if config.json asks for it; attempts=0 retries forever (backoff capped at 60 s)."""
    raw = _read(flash)
    if "key" in raw or "claim" not in raw:
        return False
    try:
        run(flash, raw, attempts, retry_ms)
    finally:
        import heap

        heap.unload("CLAIM")  # protocol.claim alone is about 12 KiB on the 64-bit unix port
    return True


def boot(flash):
    """main.py's claim step: claim, or exit 1 saying why (the device cannot run without it)."""
    import sys

    try:
        ensure(flash)
    except ClaimFailed as e:
        print("idu: claim failed:", e)
        sys.exit(1)


def _check(raw):
    c = raw.get("claim")
    b = raw.get("broker")
    if not isinstance(c, dict) or not isinstance(b, dict):
        raise ClaimFailed("config: 'claim' and 'broker' must be objects: rewrite the bundle")
    tid = c.get("id")
    sec = c.get("secret")
    if not isinstance(tid, str) or not isinstance(sec, str) or len(sec) != 32:
        raise ClaimFailed("config: claim.id / claim.secret malformed: rewrite the bundle")
    wait = c.get("wait_ms", _WAIT_MS)
    if not isinstance(wait, int) or wait < 1:
        raise ClaimFailed("config: claim.wait_ms must be an int >= 1: rewrite the bundle")
    import binascii

    try:
        secret = binascii.unhexlify(sec)
    except ValueError:
        raise ClaimFailed("config: claim.secret is not hex: rewrite the bundle")
    for k in ("host", "port", "username"):
        if k not in b:
            raise ClaimFailed("config: field 'broker.%s' is missing" % k)
    return tid, secret, b, wait


def _keypair(flash):
    from protocol import claim as wire

    try:
        with open(flash + _KEYFILE, "rb") as f:
            priv = f.read()
    except OSError:
        priv = b""
    if len(priv) != 32:
        priv = os.urandom(32)
        with open(flash + _KEYFILE, "wb") as f:
            f.write(priv)
    return wire.keypair(priv)


def run(flash, raw, attempts=0, retry_ms=2000):
    from protocol import claim as wire

    tid, secret, broker, wait_ms = _check(raw)
    priv, pub = _keypair(flash)
    resp_topic = wire.topic(tid, wire.RESP)
    board = raw.get("board") or "sim"
    n = 0
    delay = retry_ms
    while True:
        n += 1
        nonce = os.urandom(16)
        t, payload = wire.encode_request(tid, secret, nonce, pub, board)
        try:
            got = _exchange(broker, tid, t, payload, resp_topic, wait_ms)
        except OSError as e:
            log("attempt", n, "failed:", e)
            got = None
        if got is not None:
            status, ident = _open(wire, got, resp_topic, tid, secret, priv, pub, nonce)
            if status == wire.OK:
                _write(flash, raw, ident)
                try:
                    os.remove(flash + _KEYFILE)
                except OSError:
                    pass
                log("claimed as", ident[wire.I_DEVICE])
                return ident[wire.I_DEVICE]
            if status is not None and status != wire.BUSY:
                why = wire.STATUS_NAMES.get(status, str(status))
                raise ClaimFailed(
                    "controller refused claim token %s (%s): ask for a new claim bundle"
                    % (tid, why)
                )
        if attempts and n >= attempts:
            raise ClaimFailed(
                "no answer to claim token %s after %d attempts: check the broker "
                "address and that the claim service runs" % (tid, n)
            )
        gc.collect()
        time.sleep_ms(delay)
        delay = min(delay * 2, 60000)


def _open(wire, payloads, resp_topic, tid, secret, priv, pub, nonce):
    """First answer among payloads that authenticates for this request: (status, identity)."""
    from protocol.errors import ProtocolError

    for p in payloads:
        try:
            return wire.decode_response(resp_topic, p, tid, secret, priv, pub, nonce)
        except ProtocolError as e:
            log("ignored an answer:", e.code)  # forged, or for an earlier request
    return None, None


def _connect(broker):
    import socket

    host = broker["host"]
    # every address the name has, each with its own family ("localhost" is ::1 first on Debian)
    err = OSError("no address")
    for ai in socket.getaddrinfo(host, broker["port"], 0, socket.SOCK_STREAM):
        s = socket.socket(ai[0], ai[1], ai[2])
        try:
            s.connect(ai[-1])
            break
        except OSError as e:
            err = e
            s.close()
    else:
        raise err
    try:
        try:
            s.setsockopt(6, 1, 1)  # TCP_NODELAY
        except OSError:
            pass
        if broker.get("tls"):
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if broker.get("ca"):
                try:
                    ctx.load_verify_locations(cafile=broker["ca"])
                except (OSError, ValueError):
                    raise ClaimFailed(
                        "broker.ca %s is not a readable DER certificate: "
                        "rewrite the bundle" % broker["ca"]
                    )
                ctx.verify_mode = ssl.CERT_REQUIRED
            else:
                ctx.verify_mode = ssl.CERT_NONE
            try:
                s = ctx.wrap_socket(s, server_hostname=host)
            except ValueError as e:  # MicroPython reports a failed verification this way
                raise OSError("TLS: " + str(e).strip())
    except Exception:
        s.close()
        raise
    return s


def _send(s, poller, data):
    """Write all of data to the non-blocking socket (short writes are rare but legal)."""
    import select

    mv = memoryview(data)
    while len(mv):
        n = s.write(mv)
        if n is None:
            poller.modify(s, select.POLLOUT)
            poller.poll(2000)
            poller.modify(s, select.POLLIN)
            continue
        mv = mv[n:]


def _exchange(broker, tid, req_topic, payload, resp_topic, wait_ms):
    """One connection: CONNECT, SUBSCRIBE to the answer, PUBLISH the request, collect answers
    until one arrives or wait_ms passes. Returns the list of answer payloads (may be empty).
    Non-blocking reads: MicroPython's blocking readinto() waits for a full buffer."""
    import select

    s = _connect(broker)
    s.setblocking(False)
    buf = bytearray(_BUF)
    parser = mq.Parser(_BUF)
    poller = select.poll()
    poller.register(s, select.POLLIN)
    out: list = []
    topic_b = resp_topic.encode()
    try:
        pw = broker.get("password")
        n = mq.connect(
            buf,
            ("claim-" + tid).encode(),
            30,
            True,
            broker["username"].encode(),
            pw.encode() if pw is not None else None,
        )
        _send(s, poller, memoryview(buf)[:n])
        n = mq.subscribe(buf, 1, (topic_b,), 1)
        _send(s, poller, memoryview(buf)[:n])
        deadline = time.ticks_add(time.ticks_ms(), wait_ms)
        sent = False
        while not out:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                break
            if not poller.poll(left):
                continue
            k = s.readinto(parser.space())
            if k is None:
                continue
            if not k:
                raise OSError("connection closed by broker")
            parser.added(k)
            while True:
                pkt = parser.next()
                if pkt is None:
                    break
                first, start, length = pkt
                b = parser.buf
                t = first & 0xF0
                if t == mq.CONNACK and b[start + 1]:
                    raise OSError("broker refused the claim account (CONNACK %d)" % b[start + 1])
                if t == mq.SUBACK and not sent:
                    if b[start + length - 1] == 0x80:
                        raise OSError("broker refused the answer subscription")
                    h = mq.publish_head(buf, req_topic.encode(), len(payload), 1, 2)
                    _send(s, poller, memoryview(buf)[:h])
                    _send(s, poller, payload)
                    sent = True
                elif t == mq.PUBLISH:
                    ts, tl, pid, ps, pl = mq.parse_publish(first, b, start, length)
                    if bytes(b[ts : ts + tl]) == topic_b:
                        out.append(bytes(b[ps : ps + pl]))
                    if pid:
                        _send(s, poller, memoryview(buf)[: mq.puback(buf, pid)])
                parser.pop()
        try:
            _send(s, poller, mq.DISCONNECT)
        except OSError:
            pass
    finally:
        s.close()
    return out


def _write(flash, raw, ident):
    """config.json with the identity in and the claim out, written to a temporary file and
    renamed, so a power cut leaves either the claim bundle or the full one."""
    import binascii

    from protocol import claim as wire

    cfg = dict(raw)
    del cfg["claim"]
    cfg["device"] = ident[wire.I_DEVICE]
    cfg["site"] = ident[wire.I_SITE]
    cfg["zone"] = ident[wire.I_ZONE]
    cfg["kind"] = ident[wire.I_KIND]
    cfg["key"] = binascii.hexlify(ident[wire.I_KEY]).decode()
    b = dict(raw["broker"])
    b["username"] = ident[wire.I_USERNAME]
    b["password"] = ident[wire.I_PASSWORD]
    cfg["broker"] = b
    tmp = flash + "/config.json.tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, flash + "/config.json")
