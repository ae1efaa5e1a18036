"""Command admission, execution and acks, loaded once inbox.py has opened a downlink message and
been unloaded (agent.py), and unloaded after the ack (heap.py COMMAND), so its code does not sit in
the heap between commands. Admission (heap.py ADMIT: protocol.commands, the saved guard) and
set_config (heap.py SETTINGS: tunables) each unload their helper when done. An expired or replayed
command is refused, counted and acked as such, never executed."""

import heap
from micropython import const

# Wire numbers from protocol.messages, as const(): private consts cost no heap, while importing
# the module costs its tables (tests/test_firmware_heap.py checks they match).
_ACK = const(6)
_A_CMD_EPOCH = const(0)
_A_CMD_SEQ = const(1)
_A_DATA = const(3)
_A_RESULT = const(2)
_C_ARGS = const(2)
_EVENT = const(5)
_E_CODE = const(0)
_E_DATA = const(3)
_E_SEVERITY = const(1)
_C_OP = const(0)
_EV_CONFIG_APPLIED = const(3)
_OP_DIAGNOSTICS = const(4)
_OP_PING = const(1)
_OP_REBOOT = const(2)
_OP_ROTATE_KEY = const(5)
_OP_SET_CONFIG = const(3)
_R_BAD_ARGS = const(1)
_R_EXPIRED = const(3)
_R_FAILED = const(7)
_R_OK = const(0)
_R_REPLAY = const(4)
_R_UNKNOWN_OP = const(2)
_RF_BAD_TAG = const(0)
_RF_EXPIRED = const(1)
_RF_REPLAY = const(2)
_RF_MALFORMED = const(3)
_REBOOT = const(75)  # agent.REBOOT (the same test checks copies of firmware consts)
_DG_HEAP_FREE = const(0)
_DG_HEAP_HIGH_WATER = const(1)
_DG_HEAP_SIZE = const(2)
_DG_UPTIME = const(3)
_DG_RSSI = const(4)
_DG_BUFFER_DEPTH = const(5)
_DG_RECONNECTS = const(6)
_DG_DROPPED = const(7)
_DG_REFUSED_BAD_TAG = const(8)
_DG_REFUSED_EXPIRED = const(9)
_DG_REFUSED_REPLAY = const(10)
_DG_SAFE_MODE = const(11)
_DG_REPORTS = const(12)
_DG_EPOCH = const(13)
_DG_HEAP_PEAK = const(14)
_DG_CMD_DROPPED = const(15)
_DG_REFUSED_MALFORMED = const(16)


async def run(a, topic, result, epoch, seq, ts, body):
    """Ack a downlink message inbox.handle refused (result), or admit (expiry, replay), execute
    and ack one it opened, for agent a. OTA is acked as an unknown op: not in this firmware."""
    if not result:
        if ts is not None and a.board.unix() is None:
            a.time_off = ts - a.uptime()  # no RTC: learn the time from verified downlink
        if topic.endswith(b"/cmd"):  # the agent subscribes to its own cmd, cfg and ota only
            result = _admit(a, epoch, seq, ts, body)
        elif topic.endswith(b"/cfg"):
            if ts is None or ts < a.cfg_ts:
                result = _R_REPLAY
                a.refused[_RF_REPLAY] += 1
        else:
            result = _R_UNKNOWN_OP
        if result and result != _R_UNKNOWN_OP:
            print("idu: refused command:", result)
    if result:
        await ack(a, epoch, seq, result)
        return
    if topic.endswith(b"/cmd"):
        op = body.get(_C_OP)
        args = body.get(_C_ARGS) or {}
    else:
        a.cfg_ts = ts
        op = _OP_SET_CONFIG
        args = body
    data = None
    result = _R_OK
    if op == _OP_PING:
        data = {0: a.uptime()}
    elif op == _OP_DIAGNOSTICS:
        data = diagnostics(a)
    elif op == _OP_SET_CONFIG:
        result = set_config(a, args)
    elif op == _OP_REBOOT:
        a.result = _REBOOT  # the main loop stops after this ack
    elif op == _OP_ROTATE_KEY:
        result, new_key = rotate_key(a, args)
    else:
        result = _R_UNKNOWN_OP
    a.sample_heap()
    await ack(a, epoch, seq, result, data)  # a rotation's ack: still the old key
    if result == _R_OK and op == _OP_ROTATE_KEY:
        from protocol.sign import Signer

        a.signer = Signer(new_key)  # from now on (docs/PROVISIONING.md, "Key rotation")
    if result == _R_OK and op == _OP_SET_CONFIG:
        await a.publish_ctl(
            a.t_evt, _EVENT, {_E_CODE: _EV_CONFIG_APPLIED, _E_SEVERITY: 0, _E_DATA: {0: a.cfg_hash}}
        )


async def ack(a, epoch, seq, result, data=None):
    body = {_A_CMD_EPOCH: epoch, _A_CMD_SEQ: seq, _A_RESULT: result}
    if data:
        body[_A_DATA] = data
    await a.publish_ctl(a.t_ack, _ACK, body)


def _admit(a, epoch, seq, ts, body):
    """The command guard's verdict (a result code, 0 to run), persisted before running so a
    command never runs twice, even across a reset."""
    from protocol.commands import CommandGuard

    path = a.flash + "/guard.bin"
    try:
        with open(path, "rb") as f:
            guard = CommandGuard.loads(f.read())
    except (OSError, ValueError):
        guard = CommandGuard()
    code = guard.admit(epoch, seq, ts, body, a.now())
    if code == "expired":
        a.refused[_RF_EXPIRED] += 1
        return _R_EXPIRED
    if code == "replay":
        a.refused[_RF_REPLAY] += 1
        return _R_REPLAY
    if code:
        a.refused[_RF_MALFORMED] += 1
        return _R_BAD_ARGS
    a.sample_heap()
    from bootstate import write

    write(path, guard.dumps())
    del guard, CommandGuard, write
    heap.unload("ADMIT")
    return _R_OK


def rotate_key(a, args):
    """OP_ROTATE_KEY {0: new key, 32 bytes}: store it in config.json before acking, so a reset
    after the ack still boots with the key the controller switched to. (result, key)."""
    import json

    key = args.get(0) if isinstance(args, dict) else None
    if not isinstance(key, bytes) or len(key) != 32:
        return _R_BAD_ARGS, None
    try:
        import binascii
        import os

        path = a.flash + "/config.json"
        with open(path) as f:
            raw = json.load(f)
        raw["key"] = binascii.hexlify(key).decode()
        with open(path + ".tmp", "w") as f:  # write-then-rename: old file or new, never half
            json.dump(raw, f)
        os.rename(path + ".tmp", path)
    except (OSError, ValueError):
        return _R_FAILED, None
    return _R_OK, key


def set_config(a, args):
    import tunables as t

    if not isinstance(args, dict):
        return _R_BAD_ARGS
    try:
        t.apply(a.cfg, args)
    except (t.ConfigError, TypeError):
        return _R_BAD_ARGS
    a.cfg_hash = t.config_hash(a.cfg, a.flash)
    del t
    heap.unload("SETTINGS")
    a.setup_metrics()
    return _R_OK


def diagnostics(a):
    import gc

    a.sample_heap()
    r = a.refused
    st = a.ring.state
    return {
        _DG_HEAP_FREE: gc.mem_free(),
        _DG_HEAP_HIGH_WATER: a.heap_hw,
        _DG_HEAP_SIZE: a.heap_size,
        _DG_UPTIME: a.uptime(),
        _DG_RSSI: a.board.rssi(),
        _DG_BUFFER_DEPTH: st.count,
        _DG_RECONNECTS: a.reconnects,
        _DG_DROPPED: st.dropped,
        _DG_REFUSED_BAD_TAG: r[_RF_BAD_TAG],
        _DG_REFUSED_EXPIRED: r[_RF_EXPIRED],
        _DG_REFUSED_REPLAY: r[_RF_REPLAY],
        _DG_SAFE_MODE: a.safe,
        _DG_REPORTS: a.reports,
        _DG_EPOCH: a.epoch,
        _DG_HEAP_PEAK: a.heap_peak,
        _DG_CMD_DROPPED: a.link.rx_dropped,
        _DG_REFUSED_MALFORMED: r[_RF_MALFORMED],
    }
