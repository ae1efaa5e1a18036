"""Boot firmware/board_esp32.py through the real startup path on the unix port, against the fakes
beside this file, and print what the board did as one JSON line (tests/test_firmware_esp32.py).

    micropython drive.py FLASH WORLD_JSON

WORLD_JSON: {"cause", "i2c": {addr: hex}, "networks": {ssid: key}, "stations": n}."""

import json
import sys
from binascii import hexlify, unhexlify

import fake_machine
import fake_network
import fake_ntptime

sys.modules["machine"] = fake_machine  # machine is a built-in on the unix port: shadow it here
sys.modules["network"] = fake_network
sys.modules["ntptime"] = fake_ntptime

world = json.loads(sys.argv[2])
fake_machine.WORLD["cause"] = world.get("cause", 1)
fake_machine.WORLD["i2c"] = {int(a): unhexlify(h) for a, h in world.get("i2c", {}).items()}
fake_network.NETWORKS.update(world.get("networks", {}))
fake_network.STATIONS.extend(range(world.get("stations", 0)))

import asyncio  # noqa: E402

import startup  # noqa: E402

flash, booted = startup.run()  # exits 1 with the console line when the config is refused
cfg, board, epoch, safe, reason, _ = booted
before = board.unix()
asyncio.run(board.net_up())
ids = list(board.measures)
vals = [None] * len(ids)
board.sample(ids, vals, 60)
board.wdt_feed()
try:
    board.reset()
    reset = "returned"
except fake_machine.Reset:
    reset = "reset"
print(
    json.dumps(
        {
            "board": board.name,
            "measures": ids,
            "values": vals,
            "boot_reason": reason,
            "joins": fake_network.JOINS,
            "rssi": board.rssi(),
            "clock_before_ntp": before,
            "clock_after_ntp": board.unix() is not None,
            "wdt_ms": fake_machine.WORLD["wdt_ms"],
            "feeds": fake_machine.WORLD["feeds"],
            "i2c_writes": [[a, hexlify(w).decode()] for a, w in fake_machine.WORLD["writes"]],
            "reset": reset,
            "wifi_left_in_cfg": "wifi" in cfg,
        }
    )
)
