"""A fake of MicroPython's ESP32 `machine` module, for running firmware/board_esp32.py on the unix
port (tests/test_firmware_esp32.py). Names, constants and signatures follow the esp32 port
(ports/esp32/modmachine.c, machine_wdt.c, machine_i2c.c): reset causes 1-5, WDT(id=0, timeout),
I2C(id, *, scl, sda, freq) with scan/writeto/readfrom/readfrom_into raising OSError(ENODEV) for
an address nobody answers. `WORLD` is what the test puts on the board."""

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

# the test's board: reset cause, devices on the I2C bus (address -> bytes they answer), counters
WORLD = {"cause": PWRON_RESET, "i2c": {}, "feeds": 0, "resets": 0, "writes": []}


class Reset(Exception):
    """machine.reset() never returns on a board; here it raises so the test sees it."""


def reset_cause():
    return WORLD["cause"]


def reset():
    WORLD["resets"] += 1
    raise Reset()


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("timeout")
        WORLD["wdt_ms"] = timeout

    def feed(self):
        WORLD["feeds"] += 1


class I2C:
    def __init__(self, id, *, scl=None, sda=None, freq=400000, timeout=50000):
        if id not in (0, 1):
            raise ValueError("I2C(" + str(id) + ") doesn't exist")
        self.freq = freq

    def scan(self):
        return sorted(WORLD["i2c"])

    def _dev(self, addr):
        if addr not in WORLD["i2c"]:
            raise OSError(19)  # ENODEV: no ACK, as the esp32 port raises
        return WORLD["i2c"][addr]

    def writeto(self, addr, buf, stop=True):
        self._dev(addr)
        WORLD["writes"].append((addr, bytes(buf)))
        return len(buf)  # the number of ACKs

    def readfrom_into(self, addr, buf, stop=True):
        data = self._dev(addr)
        for i in range(len(buf)):
            buf[i] = data[i]

    def readfrom(self, addr, nbytes, stop=True):
        return bytes(self._dev(addr)[:nbytes])
