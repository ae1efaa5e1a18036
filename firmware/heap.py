"""Which modules each phase of the firmware loads, and unload(), which frees them when the phase
ends. A module stays in sys.modules (and its code in the heap) until it is popped, so every
phase that imports something ends with unload(GROUP): one list per phase, here, instead of a
list at every call site. tests/test_firmware_heap.py runs the real agent and checks sys.modules
after every unload(), so a module a phase forgets fails a test instead of costing heap.

Imports only gc and sys: every phase imports this module, and it imports no phase back.

Protocol submodules are named without "protocol.": unload() drops both forms. A constant of 10+
characters is a heap object on a device; these names are short enough to be interned instead.
"""

import gc
import sys

# Boot (main.py, after startup.run): config validation, the boot record, the board table.
BOOT = ("startup", "bootstate", "tunables", "boards")
# Opening a downlink message (inbox.py), and boot's reading of config.over (the codec).
DECODER = ("inbox", "downlink", "codec", "reader", "errors")
# Admitting a command: the replay guard and its file (cmds.py, before executing).
ADMIT = ("commands", "bootstate")
# Applying set_config / a CONFIG message: the tunables and the overrides file (cmds.py).
SETTINGS = ("tunables", "bootstate")
# A whole command, after its ack (agent.py): whatever a failed or finished command left.
COMMAND = ("cmds", "commands", "tunables", "bootstate")
# Marking how this run ends (agent.py): the boot record alone.
RECORD = ("bootstate",)
# The running agent and what it imported (asyncio, the signing path), unloaded before boot runs
# again after a reboot command (unix port), so the second boot starts from the same heap as the
# first. The board module goes with it (agent.run names it: the board table knows boards).
AGENT = (
    "agent",
    "link",
    "mqtt_codec",
    "ring",
    "backoff",
    "sealing",
    "sign",
    "compat",
    "writer",
    "asyncio",
    "asyncio.core",
)
# The claim step (claim.py), done before the agent's first boot, which then starts from the
# same modules as a board that never claimed.
CLAIM = ("claim", "mqtt_codec", "codec", "reader", "errors", "compat", "writer")


def unload(*groups):
    """Drop every module named in groups (tuples of names, usually the ones above) from
    sys.modules and from the protocol package, then collect: they are imported again when
    next needed. Names not loaded are skipped."""
    p = sys.modules.get("protocol")
    for g in groups:
        for n in g:
            sys.modules.pop(n, None)
            sys.modules.pop("protocol." + n, None)
            if p is not None and hasattr(p, n):
                delattr(p, n)  # the package holds its submodules as attributes too
    gc.collect()
