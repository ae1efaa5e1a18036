"""The command-settable part of the config (interval, deadbands, metrics, batch): checks, the
overrides file set_config persists, and the hash birth carries. Small on purpose: cmds.py loads
it for set_config without pulling in the whole of startup.py."""


class ConfigError(Exception):
    """config.json is missing or unreadable, or a field is absent, mistyped or out of range."""


def bad(name, reason):
    """The error naming a config field (argument names are builtin names: no new qstrs)."""
    return ConfigError("config: field '%s' %s" % (name, reason))


def check_tunables(cfg):
    """The command-settable fields (also checked for set_config args, whose error text nobody
    reads: cmds answers BAD_ARGS); normalises deadbands."""
    if not isinstance(cfg["interval"], int) or cfg["interval"] < 1:
        raise bad("interval", "must be an int >= 1")
    if not isinstance(cfg["batch"], int) or not 1 <= cfg["batch"] <= 4:
        raise bad("batch", "must be 1..4")
    m = cfg["metrics"]
    if m is not None and (not isinstance(m, list) or any(not isinstance(i, int) for i in m)):
        raise bad("metrics", "must be a list of metric ids")
    d = cfg["deadbands"]
    clean = {}
    try:
        for k, v in d.items():
            clean[int(k)] = int(v)
    except (AttributeError, TypeError, ValueError):
        raise bad("deadbands", "must map metric id to delta")
    cfg["deadbands"] = clean


def apply(cfg, args):
    """Apply a CONFIG body / set_config args (protocol.messages G_* keys) to cfg; raises
    ConfigError and leaves cfg unchanged on a bad value."""
    trial = dict(cfg)
    for key, name in ((0, "interval"), (1, "deadbands"), (2, "metrics"), (3, "batch")):
        if key in args:
            trial[name] = args[key]
    check_tunables(trial)
    cfg.update(trial)


def tunables(cfg):
    """The settable part of cfg as a G_* map: what overrides persist and the config hash covers."""
    g = {0: cfg["interval"], 1: cfg["deadbands"], 3: cfg["batch"]}
    if cfg["metrics"] is not None:
        g[2] = cfg["metrics"]
    return g


def config_hash(cfg, flash=None):
    """First 8 bytes of SHA-256 over the canonical msgpack of the settable config; with flash,
    that msgpack is also saved as the overrides set_config persists (one packing for both)."""
    import hashlib

    from protocol.writer import Writer

    w = Writer(bytearray(320))
    w.value(tunables(cfg))
    data = w.mv[: w.pos]
    if flash is not None:
        from bootstate import write

        write(flash + "/config.over", data)
    return hashlib.sha256(data).digest()[:8]
