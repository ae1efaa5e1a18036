"""Which modules each phase of the firmware loads, and unload(), which frees them when the phase
ends. A module stays in sys.modules (and its code in the heap) until it is popped, so every
phase that imports something ends with unload("GROUP"): one list per phase, here, instead of a
list at every call site. tests/test_firmware_heap.py runs the real agent and checks sys.modules
after every unload(), so a module a phase forgets fails a test instead of costing heap.

Imports only gc and sys: every phase imports this module, and it imports no phase back.

The groups are one string, not a tuple per group: this module stays loaded for the whole run,
and tuples, their names of 10+ characters and a global per group measured ~700 B more of the
64 KiB heap. Protocol submodules are named without "protocol.": unload() drops both forms."""

import gc
import sys

# GROUP module module ...: a line per phase, read by unload() (and by the tests on CPython).
_GROUPS = """
BOOT startup bootstate tunables boards
DECODER inbox downlink confirm settle codec reader errors
ADMIT commands bootstate
SETTINGS tunables bootstate
COMMAND cmds commands tunables bootstate
RECORD bootstate
AGENT agent link mqtt_codec ring backoff sealing sign compat writer asyncio asyncio.core
CLAIM claim mqtt_codec codec reader errors compat writer
"""
# BOOT: boot (main.py, after startup.run): config validation, the boot record, the board table.
# DECODER: opening a downlink message (inbox.py; a CONFIRM: protocol.confirm, settle.py), and boot's
#   reading of config.over (the codec).
# ADMIT: admitting a command: the replay guard and its file (cmds.py, before executing).
# SETTINGS: applying set_config / a CONFIG message: the tunables and the overrides file.
# COMMAND: a whole command, after its ack (agent.py): whatever a finished or failed one left.
# RECORD: marking how this run ends (agent.py): the boot record alone.
# AGENT: the running agent and what it imported (asyncio, the signing path), unloaded before boot
#   runs again after a reboot command (unix port), so the second boot starts from the same
#   modules as the first; agent.run adds the board module (the board table knows boards).
# CLAIM: the claim step (claim.py) before the first boot, which then starts as on any board.


def unload(*names):
    """Drop the modules of each GROUP named (upper case, a line of _GROUPS; an unknown one
    raises ValueError) or the module named (lower case) from sys.modules and from the protocol
    package, then collect: they are imported again when next needed. Names not loaded are
    skipped."""
    p = sys.modules.get("protocol")
    for name in names:
        t = _GROUPS
        if name.isupper():
            i = t.index("\n" + name + " ") + len(name) + 2
            end = t.index("\n", i)
        else:
            t, i, end = name, 0, len(name)
        while i < end:
            j = t.find(" ", i, end)
            if j < 0:
                j = end
            n = t[i:j]
            sys.modules.pop(n, None)
            sys.modules.pop("protocol." + n, None)
            if p is not None and hasattr(p, n):
                delattr(p, n)  # the package holds its submodules as attributes too
            i = j + 1
    gc.collect()
