"""Boot entry. On the unix port:
    MICROPYPATH=<repo>:<repo>/firmware micropython -X heapsize=64K <repo>/firmware/main.py <flash>
(or IDU_FLASH=<flash>); on an ESP32 it runs from "/" with flash "/". Prefers the precompiled
bytecode in firmware/_mpy/ (`idufleet firmware build`): compiling the sources on the device does
not fit a small heap. Boot code (startup.py; not boot.py, which an ESP32 runs by itself at
power-on) runs and is unloaded before the agent's code is loaded.

This file is compiled from source and its code stays in the heap for the whole run: everything
that runs once (flash path, config, board, the _mpy check) is startup.run()'s, which is unloaded."""

import sys

sys.path.insert(0, (__file__.rsplit("/", 1)[0] if "/" in __file__ else ".") + "/_mpy")
if ".frozen" not in sys.path:
    sys.path.append(".frozen")  # asyncio lives there on the unix port
import heap  # noqa: E402  (after the path: the compiled module)


def main():
    """Boot, then run the agent until it stops; a reboot command boots again in this process
    on the unix port (agent.run resets an ESP32, and exits 1 after a crash). Each phase ends
    with heap.unload() of what it loaded (firmware/heap.py)."""
    while True:
        import startup

        flash, booted = startup.run()
        del startup
        heap.unload("BOOT")  # boot-only code: freed before the agent loads
        if booted is None:  # provisioned with a claim bundle: fetch the identity, boot again
            __import__("claim").boot(flash)  # unloads heap.py CLAIM itself
        elif not __import__("agent").run(flash, booted):
            return
        del booted


main()
