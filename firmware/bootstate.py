"""The boot record on flash (<flash>/boot.state: epoch, crash count, crash-window start, how the
last run ended). Tiny, so the running agent can mark its end without loading boot.py."""

import struct

from micropython import const

END_UNCLEAN = const(0)  # killed, crashed, lost power: the next boot counts it as a crash
END_REBOOT = const(1)  # reboot command: not a crash
END_STABLE = const(2)  # ran crash.stable seconds: the counter was cleared
_FMT = const("<IIIII")  # epoch, crashes, window start (unix s), end marker, magic
_MAGIC = const(0x49445553)


def write(path, data):
    """Write-then-rename, so a power cut leaves the old file or the new one, never half."""
    import os

    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)


def read_state(flash):
    """(epoch, crashes, window_start, end) from <flash>/boot.state, or None on first boot."""
    try:
        with open(flash + "/boot.state", "rb") as f:
            e, c, w, end, magic = struct.unpack(_FMT, f.read())
        return (e, c, w, end) if magic == _MAGIC else None
    except (OSError, ValueError):
        return None


def write_state(flash, epoch, count, start, end):
    """count crashes since the window's start (unix s); end: how this run ends (END_*)."""
    write(flash + "/boot.state", struct.pack(_FMT, epoch, count, start, end, _MAGIC))


def mark(flash, end):
    """Record how this run ends: END_STABLE or END_REBOOT clear the crash counter."""
    st = read_state(flash)
    if st:
        write_state(flash, st[0], 0, st[2], end)
