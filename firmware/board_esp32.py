"""The ESP32 board: Wi-Fi station with reconnect, hardware watchdog, reset cause, NTP time, and
the I2C sensors found at start (SHT3x temperature/humidity, BH1750 light). Loaded only on an
ESP32 (startup.py imports the chosen board by name).

The module is the board, like board_sim, to the contract in firmware/board.pyi: startup.py calls
start(cfg, flash) once, then hands the module to the agent. No classes and one state list: every
name a module introduces stays interned for the whole run."""

import time

import machine
import network
from micropython import const

_WDT_MS = const(30000)  # the main loop feeds every 100 ms; 30 s covers a slow TLS handshake
_WIFI_TIMEOUT_MS = const(15000)
_SHT3X = const(0x44)  # I2C addresses
_BH1750 = const(0x23)
# protocol.messages BOOT_* (tests/test_firmware_heap.py checks they match)
_BOOT_POWER_ON = const(0)
_BOOT_HARD_RESET = const(1)
_BOOT_WATCHDOG = const(2)
_BOOT_SOFT_RESET = const(3)
_BOOT_DEEP_SLEEP = const(4)
_BOOT_CRASH = const(5)

# _st slots
_T0 = const(0)  # ticks_ms() at start
_WDT = const(1)
_STA = const(2)  # the station interface
_AP = const(3)  # the access point interface on an "ap" board, else None
_SYNCED = const(4)  # NTP has set the RTC
_WIFI = const(5)  # cfg["wifi"]
_I2C = const(6)  # the sensor bus on a "sensor" board, else None
_FOUND = const(7)  # sensors on the bus: 1 SHT3x, 2 BH1750
_BUF = const(8)  # SHT3x reading

name = ""  # startup.py sets it: the row name in firmware/boards.py
measures: tuple = ()  # set by start(): what the board found to measure
_st: list = [0, None, None, None, False, None, None, 0, None]


def start(cfg, flash):
    """Start the watchdog and the radio interfaces, and look for sensors on a "sensor" board.
    measures: the associated-station count (16) on an "ap"; on a "sensor", temperature and
    humidity (57, 58) when an SHT3x answers and illuminance (63) when a BH1750 does."""
    global measures
    if not cfg.get("wifi"):
        from tunables import bad  # loaded at boot already: startup prints it and stops

        raise bad("wifi", "is missing: an esp32 joins Wi-Fi; provision with --wifi-ssid")
    _st[_T0] = time.ticks_ms()
    _st[_WDT] = machine.WDT(timeout=_WDT_MS)
    _st[_STA] = network.WLAN(network.STA_IF)
    _st[_AP] = network.WLAN(network.AP_IF) if cfg["kind"] == "ap" else None
    _st[_WIFI] = cfg.get("wifi")
    _st[_FOUND] = 0
    if cfg["kind"] == "sensor":
        i2c = machine.I2C(0, freq=100000)
        found = i2c.scan()
        _st[_I2C] = i2c
        _st[_FOUND] = (1 if _SHT3X in found else 0) | (2 if _BH1750 in found else 0)
        _st[_BUF] = bytearray(6)
        measures = ((57, 58) if _SHT3X in found else ()) + ((63,) if _BH1750 in found else ())
    else:
        measures = (16,)


def ms():
    return time.ticks_diff(time.ticks_ms(), _st[_T0])


def real_ms(ms):
    return ms


def unix():
    """Unix seconds once NTP has set the RTC, else None (the agent then learns the time
    from verified downlink messages)."""
    if not _st[_SYNCED]:
        return None
    return time.time() + 946684800 if time.gmtime(0)[0] == 2000 else time.time()


def reset_cause(end):
    """protocol.messages BOOT_* from machine.reset_cause(); end is how the previous run ended."""
    cause = machine.reset_cause()
    if end == 0 and cause != machine.PWRON_RESET:
        return _BOOT_CRASH  # the previous run never ended cleanly
    return {
        machine.PWRON_RESET: _BOOT_POWER_ON,
        machine.HARD_RESET: _BOOT_HARD_RESET,
        machine.WDT_RESET: _BOOT_WATCHDOG,
        machine.SOFT_RESET: _BOOT_SOFT_RESET,
        machine.DEEPSLEEP_RESET: _BOOT_DEEP_SLEEP,
    }.get(cause, _BOOT_HARD_RESET)


async def net_up():
    """Join the configured Wi-Fi (raises OSError after a timeout: the agent backs off)."""
    import asyncio

    sta = _st[_STA]
    if not sta.isconnected():
        w = _st[_WIFI]
        sta.active(True)
        sta.connect(w["ssid"], w["password"])
        t = time.ticks_ms()
        while not sta.isconnected():
            if time.ticks_diff(time.ticks_ms(), t) > _WIFI_TIMEOUT_MS:
                raise OSError("wifi: no connection to " + w["ssid"])
            await asyncio.sleep(0.2)
    if not _st[_SYNCED]:
        try:
            import ntptime

            ntptime.settime()
            _st[_SYNCED] = True
        except OSError:
            pass


def rssi():
    try:
        return _st[_STA].status("rssi")
    except (OSError, ValueError):
        return 0


def wdt_feed():
    _st[_WDT].feed()


def reset():
    machine.reset()


def sample(ids, vals, period_s):
    """Read the sensors found at start: SHT3x temperature (57, 0.01 C) and humidity (58,
    0.1 %RH), single-shot high repeatability; BH1750 illuminance (63, lx), one-time high
    resolution. On an access point also the associated-station count (16)."""
    i2c, found, b = _st[_I2C], _st[_FOUND], _st[_BUF]
    t = h = lx = n = None
    if found & 1:
        i2c.writeto(_SHT3X, b"\x24\x00")
        time.sleep_ms(16)
        i2c.readfrom_into(_SHT3X, b)
        t = -4500 + 17500 * ((b[0] << 8) | b[1]) // 65535
        h = 1000 * ((b[3] << 8) | b[4]) // 65535
    if found & 2:
        i2c.writeto(_BH1750, b"\x20")
        time.sleep_ms(180)
        raw = i2c.readfrom(_BH1750, 2)
        lx = ((raw[0] << 8) | raw[1]) * 10 // 12
    if _st[_AP] is not None:
        n = len(_st[_AP].status("stations"))  # a list on an AP
    for i in range(len(ids)):
        m = ids[i]
        v = t if m == 57 else h if m == 58 else lx if m == 63 else n if m == 16 else None
        if v is not None:
            vals[i] = v
