"""Boot-time work, loaded once and unloaded after (main.py deletes it from sys.modules so its code
does not sit in the heap): validate <flash>/config.json (docs/DEVICE-CONFIG.md) into one
plain dict with every default filled in, apply the persisted overrides, advance the boot epoch,
run the crash-loop rule, and pick the board. ConfigError names the field to fix.

What boot loads is freed, but every name it introduces stays interned for the whole run: so no
module-level tables (defaults live inside validate()), argument names the rest of the firmware
uses too, and messages longer than 10 characters (shorter str constants are interned)."""

import json
import sys

import heap
from bootstate import END_STABLE, END_UNCLEAN, read_state, write, write_state
from tunables import ConfigError, apply, bad, check_tunables, config_hash  # noqa: F401


def _get(raw, name, kind):
    """raw[key] of type kind, where name is the field as the user knows it ("broker.host")."""
    key = name[name.find(".") + 1 :]
    if key not in raw:
        raise bad(name, "is missing from config.json")
    v = raw[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise bad(name, "has the wrong type")
    return v


def validate(raw):
    """The checked config dict; raises ConfigError naming the first bad field."""
    if not isinstance(raw, dict):
        raise ConfigError("config: config.json must hold one JSON object")
    cfg = {}
    for k in ("device", "site", "zone"):
        v = _get(raw, k, str)
        chars = "abcdefghijklmnopqrstuvwxyz0123456789-"
        if not 0 < len(v) <= 32 or v[0] == "-" or any(c not in chars for c in v):
            raise bad(k, "must be 1-32 chars of a-z 0-9 -")
        cfg[k] = v
    cfg["kind"] = _get(raw, "kind", str)
    if cfg["kind"] not in ("ap", "sensor"):
        raise bad("kind", "must be 'ap' or 'sensor'")
    key = _get(raw, "key", str)
    try:
        import binascii

        cfg["key"] = binascii.unhexlify(key)
    except ValueError:
        cfg["key"] = b""
    if len(cfg["key"]) != 32:
        raise bad("key", "must be 64 hex digits")
    b = _get(raw, "broker", dict)
    pw = b.get("password")
    if pw is not None and not isinstance(pw, str):
        raise bad("broker.password", "must be a string or null")
    wait = b.get("wait_ms", 10000)  # production: 10 s; tests wait less for what they provoke
    if not isinstance(wait, int) or wait < 1:
        raise bad("broker.wait_ms", "must be an int >= 1")
    cfg["broker"] = {
        "host": _get(b, "broker.host", str),
        "port": _get(b, "broker.port", int),
        "tls": bool(b.get("tls")),
        "ca": b.get("ca"),
        "username": b.get("username") or cfg["device"],
        "password": pw,
        "wait_ms": wait,
    }
    if "wifi" in raw:
        w = _get(raw, "wifi", dict)
        cfg["wifi"] = {"ssid": _get(w, "wifi.ssid", str), "password": w.get("password")}
    # Optional fields and their defaults, in one place (docs/DEVICE-CONFIG.md).
    for k, v in {
        "board": None,
        "interval": 60,
        "batch": 1,
        "metrics": None,
        "deadbands": {},
        "keepalive": 60,
        "replay_rate": 20,
        "confirm_ms": 30000,  # delivery confirmation's re-send timeout; 0: a v1 device
        "buffer": 256,
        "backoff": {"base_ms": 1000, "cap_ms": 60000},
        "crash": {"max": 3, "window": 300, "stable": 60},
        "sim": {"speed": 1, "seed": 1, "fault": None, "fault_after": 0},
    }.items():
        got = raw.get(k, v)
        if isinstance(v, dict) and isinstance(got, dict):
            merged = dict(v)
            merged.update(got)
            got = merged
        elif v is not None and got is not None and type(got) is not type(v):
            raise bad(k, "has the wrong type")
        cfg[k] = got
    if cfg["buffer"] < 4:
        raise bad("buffer", "must be at least 4")
    if cfg["confirm_ms"] < 0:
        raise bad("confirm_ms", "must be >= 0")
    check_tunables(cfg)
    return cfg


def ca_der(path, flash):
    """The path of the broker CA as DER, which this Mbed TLS build takes (`cadata`), while
    bundles may carry PEM (docs/SECURITY.md): a PEM file is converted here, at boot, into
    <flash>/ca.der (rewritten only when it changes), so a reconnect reads DER and allocates
    no more than the certificate. A bad certificate surfaces as a TLS failure at connect."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"-----"):
        return path
    import binascii

    body = b"".join(ln.strip() for ln in data.split(b"\n") if ln and not ln.startswith(b"-----"))
    data = binascii.a2b_base64(body)
    out = flash + "/ca.der"
    try:
        with open(out, "rb") as f:
            if f.read() == data:
                return out
    except OSError:
        pass
    write(out, data)
    return out


def decide(count, start, end, now, limit, window):
    """(crashes, window start, safe_mode) for this boot, from count crashes since start and how
    the last run ended. An unclean end counts as a crash; more than limit of them within window
    seconds of the first means safe mode."""
    if end != END_UNCLEAN:
        return 0, now, False
    if now - start > window:
        count, start = 0, now
    count += 1
    return count, start, count > limit


def load_board(name):
    """The board module named in firmware/boards.py (only the chosen one is loaded), with its
    `name` set; name None: the board whose platform is this sys.platform."""
    from boards import BOARDS

    if name is None:
        for k, row in BOARDS.items():
            if row[1] == sys.platform:
                name = k
    if name not in BOARDS:
        raise bad("board", "is not a row of firmware/boards.py")
    board = __import__(BOARDS[name][0])
    board.name = name  # type: ignore[attr-defined]  # the contract's name (board.pyi)
    return board


def start(flash):
    """Everything boot decides: (cfg, board, epoch, safe_mode, boot_reason, config hash), or None
    when config.json holds a claim bundle instead of a key (main.py claims, then boots again).
    The board is its module (firmware/boards.py, contract firmware/board.pyi), set up by its
    start(cfg, flash)."""
    try:
        with open(flash + "/config.json") as f:
            raw = json.load(f)
    except OSError:
        raise ConfigError("config: %s/config.json not found: provision the device" % flash)
    except ValueError:
        raise ConfigError("config: config.json is not valid JSON")
    if isinstance(raw, dict) and "claim" in raw and "key" not in raw:
        return None
    cfg = validate(raw)
    del raw
    try:  # <flash>/config.over: the overrides set_config persisted
        from protocol.codec import unpackb

        with open(flash + "/config.over", "rb") as f:
            apply(cfg, unpackb(f.read()))
    except (OSError, ValueError, ConfigError, AttributeError):
        pass
    del unpackb
    heap.unload("DECODER")  # needed again only when a command arrives
    if cfg["broker"]["tls"] and cfg["broker"]["ca"]:
        cfg["broker"]["ca"] = ca_der(cfg["broker"]["ca"], flash)
    board = load_board(cfg["board"])
    board.start(cfg, flash)
    for k in ("sim", "wifi", "zone", "board"):  # the board keeps what it needs: heap back
        cfg.pop(k, None)
    st = read_state(flash) or (0, 0, 0, END_STABLE)
    c = cfg["crash"]
    count, since, safe = decide(st[1], st[2], st[3], board.unix() or 0, c["max"], c["window"])
    epoch = (st[0] + 1) & 0xFFFFFFFF
    write_state(flash, epoch, count, since, END_UNCLEAN)
    return cfg, board, epoch, safe, board.reset_cause(st[3]), config_hash(cfg)


def run():
    """main.py's boot step: (flash, start(flash)). Flash is argv[1], else $IDU_FLASH, else "/".
    Exits 1 naming the field when the config is refused."""
    import os

    try:
        os.stat(sys.path[0] + "/agent.mpy")
    except OSError:
        print("idu: no firmware/_mpy (run `idufleet firmware build`): running sources")
    try:
        flash = sys.argv[1] if len(sys.argv) > 1 else os.getenv("IDU_FLASH") or "/"
    except AttributeError:  # no environment on a board
        flash = "/"
    try:
        return flash, start(flash)
    except ConfigError as e:
        print("idu: refusing to start:", e)
        sys.exit(1)
