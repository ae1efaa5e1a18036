"""A downlink message's first step, loaded when one arrives and unloaded with the decoder
(heap.py DECODER: protocol.downlink, protocol.reader) before cmds.py admits, executes and acks it
(agent.py), so the heap never holds the decoder and the command code together. A bad tag or a
malformed message is counted here and acked as refused by cmds.run. A CONFIRM (delivery
confirmation, docs/PROTOCOL.md section 16) is applied to the ring here and goes no further."""

import heap
from micropython import const

# protocol.messages R_* and RF_* (tests/test_firmware_heap.py checks they match)
_CONFIRM = const(10)
_R_BAD_ARGS = const(1)
_R_BAD_TAG = const(5)
_RF_BAD_TAG = const(0)
_RF_MALFORMED = const(3)


def handle(a, topic, payload):
    """Open one downlink message for agent a: (refusal, epoch, seq, ts, body) for cmds.run,
    which admits and executes it when refusal is 0 and acks it either way; None when it cannot
    even be named in an ack, and for a CONFIRM, which is applied here and never acked."""
    from protocol.downlink import open_downlink  # local: unloaded with DECODER after return

    channel = bytes(topic[-3:]).decode()  # cmd, cfg or ota: the agent subscribes to no other
    try:
        m = open_downlink(payload, topic, channel, a.signer)
    except ValueError as e:  # ProtocolError from the decoder: not msgpack the protocol allows
        m = e.code  # type: ignore[attr-defined]
    code = None
    if isinstance(m, str):
        code = m
        a.refused[_RF_BAD_TAG if code == "bad_tag" else _RF_MALFORMED] += 1
        print("idu: refused downlink:", code)
        try:  # unverified: only to name the message in the ack
            m = open_downlink(payload, topic, channel, None)
        except ValueError:
            return
        if isinstance(m, str):
            return
    mtype, epoch, seq, ts, body = m
    a.sample_heap()  # the decoder and the message are in the heap: a command's peak
    if mtype == _CONFIRM:  # never acked
        if not code:
            del m, payload, open_downlink  # the function holds the decoder's modules alive
            heap.unload("DECODER")  # the decoder (and this module, running on) before the ranges
            from protocol.confirm import check

            if check(body):  # the decoder's last check for a CONFIRM (protocol.downlink)
                a.refused[_RF_MALFORMED] += 1
                return
            if ts is not None and a.board.unix() is None:
                a.time_off = ts - a.uptime()  # no RTC: learn the time from verified downlink
            del check
            from settle import settle  # unloaded with DECODER (agent.py)

            settle(a, body[0])
        return
    return (_R_BAD_TAG if code == "bad_tag" else _R_BAD_ARGS) if code else 0, epoch, seq, ts, body
