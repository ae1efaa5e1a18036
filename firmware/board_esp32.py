"""The ESP32 board: Wi-Fi station with reconnect, hardware watchdog, reset cause, NTP time, and
I2C sensor drivers behind one small interface (driver.read(ids, vals) fills what it measures).
Loaded only on an ESP32 (boot.py imports the chosen board by name)."""

import time

import machine
import network
from micropython import const

_WDT_MS = const(30000)  # the main loop feeds every 200 ms; 30 s covers a slow TLS handshake
_WIFI_TIMEOUT_MS = const(15000)

# machine.reset_cause() -> protocol.messages BOOT_*
_CAUSES = {
    machine.PWRON_RESET: 0,
    machine.HARD_RESET: 1,
    machine.WDT_RESET: 2,
    machine.SOFT_RESET: 3,
    machine.DEEPSLEEP_RESET: 4,
}


class Sht3x:
    """SHT3x temperature (57, 0.01 C) and humidity (58, 0.1 %RH), single-shot high repeatability."""

    def __init__(self, i2c, addr=0x44):
        self.i2c = i2c
        self.addr = addr
        self.buf = bytearray(6)

    def read(self, ids, vals):
        self.i2c.writeto(self.addr, b"\x24\x00")
        time.sleep_ms(16)
        self.i2c.readfrom_into(self.addr, self.buf)
        b = self.buf
        t = (b[0] << 8) | b[1]
        h = (b[3] << 8) | b[4]
        for i in range(len(ids)):
            if ids[i] == 57:
                vals[i] = -4500 + 17500 * t // 65535
            elif ids[i] == 58:
                vals[i] = 1000 * h // 65535


class Bh1750:
    """BH1750 ambient light (63, lx), one-time high resolution mode."""

    def __init__(self, i2c, addr=0x23):
        self.i2c = i2c
        self.addr = addr
        self.buf = bytearray(2)

    def read(self, ids, vals):
        self.i2c.writeto(self.addr, b"\x20")
        time.sleep_ms(180)
        self.i2c.readfrom_into(self.addr, self.buf)
        lx = ((self.buf[0] << 8) | self.buf[1]) * 10 // 12
        for i in range(len(ids)):
            if ids[i] == 63:
                vals[i] = lx


class Board:
    name = "esp32"

    def __init__(self, cfg, flash):
        self.cfg = cfg
        self.t0 = time.ticks_ms()
        self.wdt = machine.WDT(timeout=_WDT_MS)
        self.sta = network.WLAN(network.STA_IF)
        self.ap = network.WLAN(network.AP_IF) if cfg["kind"] == "ap" else None
        self.synced = False
        self.drivers: list = []
        if cfg["kind"] == "sensor":
            i2c = machine.I2C(0, freq=100000)
            found = i2c.scan()
            if 0x44 in found:
                self.drivers.append(Sht3x(i2c))
            if 0x23 in found:
                self.drivers.append(Bh1750(i2c))

    def ms(self):
        return time.ticks_diff(time.ticks_ms(), self.t0)

    def real_ms(self, board_ms):
        return board_ms

    def unix(self):
        """Unix seconds once NTP has set the RTC, else None (the agent then learns the time
        from verified downlink messages)."""
        if not self.synced:
            return None
        return time.time() + 946684800 if time.gmtime(0)[0] == 2000 else time.time()

    def reset_cause(self, prev_end):
        if prev_end == 0 and machine.reset_cause() != machine.PWRON_RESET:
            return 5  # BOOT_CRASH: the previous run never ended cleanly
        return _CAUSES.get(machine.reset_cause(), 1)

    async def net_up(self):
        """Join the configured Wi-Fi (raises OSError after a timeout: the agent backs off)."""
        import asyncio

        sta = self.sta
        if not sta.isconnected():
            w = self.cfg["wifi"]
            sta.active(True)
            sta.connect(w["ssid"], w["password"])
            t = time.ticks_ms()
            while not sta.isconnected():
                if time.ticks_diff(time.ticks_ms(), t) > _WIFI_TIMEOUT_MS:
                    raise OSError("wifi: no connection to " + w["ssid"])
                await asyncio.sleep(0.2)
        if not self.synced:
            try:
                import ntptime

                ntptime.settime()
                self.synced = True
            except OSError:
                pass

    def rssi(self):
        try:
            return self.sta.status("rssi")
        except (OSError, ValueError):
            return 0

    def wdt_feed(self):
        self.wdt.feed()

    def sample(self, ids, vals, period_s):
        """Read every driver; on an access point also the associated-station count (16)."""
        for d in self.drivers:
            d.read(ids, vals)
        if self.ap is not None:
            n = len(self.ap.status("stations"))  # type: ignore[arg-type]  # a list on an AP
            for i in range(len(ids)):
                if ids[i] == 16:
                    vals[i] = n
