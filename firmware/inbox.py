"""A downlink message's first steps, loaded when one arrives and unloaded before cmds.py executes
and acks it (agent.py): open and verify it (protocol.downlink and the decoder), then admit it
(protocol.commands: expiry and replay), unloading each helper before the next loads, so the heap
holds one of them at a time. A bad tag, an expired or a replayed command is refused and counted
here, and acked as such by cmds.run, never executed."""

from agent import unload
from micropython import const

# protocol.messages R_*
_R_BAD_ARGS = const(1)
_R_BAD_TAG = const(5)
_R_EXPIRED = const(3)
_R_OK = const(0)
_R_REPLAY = const(4)
_R_UNKNOWN_OP = const(2)


def handle(a, topic, payload):
    """Open and admit one downlink message for agent a: (result, epoch, seq, ts, body) for
    cmds.run, which executes it when result is 0 and acks it either way (OTA is acked as an
    unknown op: not in this firmware yet); None when it cannot even be named in an ack."""
    from protocol.downlink import open_downlink  # local: unload() below can then free it

    channel = "cmd" if topic == a.t_cmd else "cfg" if topic == a.t_cfg else "ota"
    try:
        m = open_downlink(payload, topic, channel, a.signer)
    except ValueError as e:  # ProtocolError from the decoder: not msgpack the protocol allows
        m = e.code  # type: ignore[attr-defined]
    code = None
    if isinstance(m, str):
        code = m
        a.refused[0 if code == "bad_tag" else 3] += 1
        print("idu: refused downlink:", code)
        try:  # unverified: only to name the message in the ack
            m = open_downlink(payload, topic, channel, None)
        except ValueError:
            return
        if isinstance(m, str):
            return
    _, epoch, seq, ts, body = m
    a.sample_heap()  # the decoder and the message are in the heap: a command's peak
    del open_downlink, payload, m
    unload("downlink", "reader", "errors")
    if code is not None:
        result = _R_BAD_TAG if code == "bad_tag" else _R_BAD_ARGS
    else:
        if ts is not None and a.board.unix() is None:
            a.time_off = ts - a.uptime()  # no RTC: learn the time from verified downlink
        if channel == "cmd":
            result = _admit(a, epoch, seq, ts, body)
        elif channel == "cfg":
            result = _R_REPLAY if ts is None or ts < a.cfg_ts else _R_OK
            if result:
                a.refused[2] += 1
        else:
            result = _R_UNKNOWN_OP
        if result and result != _R_UNKNOWN_OP:
            print("idu: refused command:", result)
    return result, epoch, seq, ts, body


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
    if code:
        i = 1 if code == "expired" else 2 if code == "replay" else 3
        a.refused[i] += 1
        return _R_EXPIRED if i == 1 else _R_REPLAY if i == 2 else _R_BAD_ARGS
    a.sample_heap()
    from bootstate import write

    write(path, guard.dumps())
    del guard, CommandGuard, write
    unload("commands", "bootstate")
    return _R_OK
