"""Boot entry. On the unix port:
    MICROPYPATH=<repo>:<repo>/firmware micropython -X heapsize=64K <repo>/firmware/main.py <flash>
(or IDU_FLASH=<flash>); on an ESP32 it runs from "/" with flash "/". Prefers the precompiled
bytecode in firmware/_mpy/ (`idufleet firmware build`): compiling the sources on the device does
not fit a small heap. Boot code runs and is unloaded before the agent's code is loaded."""

import gc
import sys


def _paths():
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    try:
        import os

        os.stat(here + "/_mpy/agent.mpy")
        sys.path.insert(0, here + "/_mpy")
    except OSError:
        print("idu: no firmware/_mpy (run `idufleet firmware build`): running sources")
    if ".frozen" not in sys.path:
        sys.path.append(".frozen")  # asyncio lives there on the unix port


def _flash():
    if len(sys.argv) > 1:
        return sys.argv[1]
    try:
        import os

        return os.getenv("IDU_FLASH") or "/"
    except (ImportError, AttributeError):
        return "/"


def _needs_claim(flash):
    """A cheap look before importing claim.py (its names would stay in the qstr pool for the
    whole run): claim.ensure() itself decides properly."""
    try:
        with open(flash + "/config.json", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return b'"claim"' in raw and b'"key"' not in raw


def _reset(code):
    if sys.platform == "esp32":
        import machine

        machine.reset()
    sys.exit(code)


def main():
    _paths()
    flash = _flash()
    if _needs_claim(flash):
        import claim  # a board provisioned with a claim bundle fetches its identity first

        try:
            claim.ensure(flash)
        except claim.ClaimFailed as e:
            print("idu: claim failed:", e)
            sys.exit(1)
        del claim
        sys.modules.pop("claim", None)
        gc.collect()
    while True:
        import boot

        try:
            booted = boot.start(flash)
        except boot.ConfigError as e:
            print("idu: refusing to start:", e)
            sys.exit(1)
        del boot
        for name in ("boot", "bootstate", "tunables"):
            sys.modules.pop(name, None)  # boot-only code: freed before the agent loads
        gc.collect()
        import agent

        result = agent.run(flash, booted)
        del booted
        if result == agent.CRASHED:
            _reset(1)
        if result != agent.REBOOT:
            return
        if sys.platform == "esp32":
            _reset(0)
        del agent
        for name in ("agent", "cmds", "link", "mqtt_codec", "ring", "backoff", "board_sim"):
            sys.modules.pop(name, None)  # the agent's code is freed before boot code loads again
        import asyncio

        asyncio.new_event_loop().set_exception_handler(None)  # it held the old agent alive
        gc.collect()
        print("idu: soft reboot")


main()
