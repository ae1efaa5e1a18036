"""Boot-time work, loaded once and unloaded after (agent.py deletes it from sys.modules so its code
does not sit in the heap): validate <flash>/config.json (docs/DEVICE-CONFIG.md) into one
plain dict with every default filled in, apply the persisted overrides, advance the boot epoch,
run the crash-loop rule, and pick the board. ConfigError names the field to fix."""

import json
import sys

from bootstate import END_STABLE, END_UNCLEAN, read_state, write_state
from tunables import ConfigError, apply, check_tunables, config_hash  # noqa: F401
from tunables import bad as _bad

# Optional fields and their defaults, in one place (docs/DEVICE-CONFIG.md).
DEFAULTS = {
    "board": None,
    "interval": 60,
    "batch": 1,
    "metrics": None,
    "deadbands": {},
    "keepalive": 60,
    "replay_rate": 20,
    "buffer": 256,
    "backoff": {"base_ms": 1000, "cap_ms": 60000},
    "crash": {"max": 3, "window": 300, "stable": 60},
    "sim": {"speed": 1, "seed": 1, "fault": None, "fault_after": 0},
}
_IDS = ("device", "site", "zone")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


def _get(d, key, kind, where=""):
    if key not in d:
        raise _bad(where + key, "is missing")
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise _bad(where + key, "has the wrong type")
    return v


def validate(raw):
    """The checked config dict; raises ConfigError naming the first bad field."""
    if not isinstance(raw, dict):
        raise ConfigError("config: config.json must hold one JSON object")
    cfg = {}
    for k in _IDS:
        v = _get(raw, k, str)
        if not 0 < len(v) <= 32 or v[0] == "-" or any(c not in _CHARS for c in v):
            raise _bad(k, "must be 1-32 chars of a-z 0-9 -")
        cfg[k] = v
    cfg["kind"] = _get(raw, "kind", str)
    if cfg["kind"] not in ("ap", "sensor"):
        raise _bad("kind", "must be 'ap' or 'sensor'")
    key = _get(raw, "key", str)
    try:
        import binascii

        cfg["key"] = binascii.unhexlify(key)
    except ValueError:
        cfg["key"] = b""
    if len(cfg["key"]) != 32:
        raise _bad("key", "must be 64 hex digits")
    b = _get(raw, "broker", dict)
    pw = b.get("password")
    if pw is not None and not isinstance(pw, str):
        raise _bad("broker.password", "must be a string or null")
    cfg["broker"] = {
        "host": _get(b, "host", str, "broker."),
        "port": _get(b, "port", int, "broker."),
        "tls": bool(b.get("tls")),
        "ca": b.get("ca"),
        "username": b.get("username") or cfg["device"],
        "password": pw,
    }
    if "wifi" in raw:
        w = _get(raw, "wifi", dict)
        cfg["wifi"] = {"ssid": _get(w, "ssid", str, "wifi."), "password": w.get("password")}
    for k, v in DEFAULTS.items():
        got = raw.get(k, v)
        if isinstance(v, dict) and isinstance(got, dict):
            merged = dict(v)
            merged.update(got)
            got = merged
        elif v is not None and got is not None and type(got) is not type(v):
            raise _bad(k, "has the wrong type")
        cfg[k] = got
    if cfg["buffer"] < 4:
        raise _bad("buffer", "must be at least 4")
    check_tunables(cfg, "")
    return cfg


def load_config(flash):
    """Read, validate, then apply <flash>/config.over (overrides persisted by set_config)."""
    try:
        with open(flash + "/config.json") as f:
            raw = json.load(f)
    except OSError:
        raise ConfigError("config: %s/config.json not found: provision the device" % flash)
    except ValueError:
        raise ConfigError("config: config.json is not valid JSON")
    cfg = validate(raw)
    try:
        from protocol.codec import unpackb

        with open(flash + "/config.over", "rb") as f:
            over = unpackb(f.read())
        apply(cfg, over)
    except (OSError, ValueError, ConfigError, AttributeError):
        pass
    return cfg


# -------------------------------------------------------------------------- boot state


def decide(crashes, window_start, ended, now, max_crashes, window_s):
    """(crashes, window_start, safe_mode) for this boot. An unclean end counts as a crash; more
    than max_crashes of them within window_s seconds of the first means safe mode."""
    if ended != END_UNCLEAN:
        return 0, now, False
    if now - window_start > window_s:
        crashes, window_start = 0, now
    crashes += 1
    return crashes, window_start, crashes > max_crashes


def start(flash):
    """Everything boot decides: (cfg, board, epoch, safe_mode, boot_reason, config hash)."""
    cfg = load_config(flash)
    name = cfg["board"] or ("esp32" if sys.platform == "esp32" else "sim")
    if name not in ("sim", "esp32"):
        raise _bad("board", "must be 'esp32' or 'sim'")
    board = __import__("board_" + name).Board(cfg, flash)  # only the chosen board is loaded
    st = read_state(flash) or (0, 0, 0, END_STABLE)
    c = cfg["crash"]
    crashes, wstart, safe = decide(st[1], st[2], st[3], board.unix() or 0, c["max"], c["window"])
    epoch = (st[0] + 1) & 0xFFFFFFFF
    write_state(flash, epoch, crashes, wstart, END_UNCLEAN)
    return cfg, board, epoch, safe, board.reset_cause(st[3]), config_hash(cfg)
