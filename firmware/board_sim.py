"""The simulated board for the unix port: a clock running `sim.speed` times real time, synthetic
sensors following Porto's day (Wi-Fi clients peaking at lunch and in the evening, traffic noise
and PM2.5 at rush hours, a temperature cycle), a no-op watchdog, the flash directory as its
filesystem. `sim.fault` = "crash" makes the sensor driver raise after `sim.fault_after` samples
(exercises the crash-loop detector)."""

import math
import time

from backoff import Rng
from micropython import const

# Curves, in percent of their peak.
_OCC = const(0)  # Wi-Fi occupancy: lunch and evening peaks
_TRAFFIC = const(1)  # rush hours
_DAY = const(2)  # -100 at night .. 100 mid-afternoon
_SUN = const(3)  # daylight, 0 at night
_FLAT = const(4)

# Rows of 6: id, base, amplitude (percent of the curve), curve, noise, counter (per minute)
# in the fixed-point units of protocol/metrics.py. AP client-like rows (id < 32 on _OCC) scale
# with the site's size (its peak client count). A flat tuple of small ints costs no heap.
_TABLE = (
    16,
    0,
    100,
    _OCC,
    3,
    0,
    17,
    0,
    40,
    _OCC,
    2,
    0,
    18,
    0,
    50,
    _OCC,
    2,
    0,
    19,
    0,
    10,
    _OCC,
    1,
    0,
    20,
    -88,
    0,
    _FLAT,
    3,
    0,
    21,
    -66,
    6,
    _OCC,
    3,
    0,
    22,
    -40,
    0,
    _FLAT,
    3,
    0,
    23,
    0,
    12,
    _OCC,
    1,
    0,
    24,
    0,
    2400000,
    _OCC,
    9000,
    1,
    25,
    0,
    540000,
    _OCC,
    3000,
    1,
    26,
    20,
    60,
    _OCC,
    3,
    0,
    27,
    8,
    40,
    _OCC,
    2,
    0,
    28,
    0,
    20,
    _OCC,
    1,
    1,
    29,
    0,
    0,
    _FLAT,
    1,
    1,
    48,
    480,
    260,
    _TRAFFIC,
    15,
    0,
    49,
    560,
    300,
    _TRAFFIC,
    30,
    0,
    50,
    400,
    180,
    _TRAFFIC,
    10,
    0,
    51,
    60,
    220,
    _TRAFFIC,
    12,
    0,
    52,
    100,
    350,
    _TRAFFIC,
    20,
    0,
    53,
    40,
    150,
    _TRAFFIC,
    8,
    0,
    54,
    15,
    70,
    _TRAFFIC,
    4,
    0,
    55,
    55,
    35,
    _DAY,
    4,
    0,
    56,
    20,
    60,
    _TRAFFIC,
    3,
    0,
    57,
    1650,
    550,
    _DAY,
    20,
    0,
    58,
    720,
    -150,
    _DAY,
    10,
    0,
    59,
    10150,
    0,
    _FLAT,
    8,
    0,
    60,
    2,
    120,
    _OCC,
    2,
    1,
    61,
    1,
    60,
    _TRAFFIC,
    2,
    1,
    62,
    0,
    12,
    _TRAFFIC,
    1,
    1,
    63,
    0,
    50000,
    _SUN,
    0,
    0,
)


def _bump(h, centre, width):
    d = (h - centre) / width
    return math.exp(-d * d)


class Board:
    name = "sim"

    def __init__(self, cfg, flash):
        sim = cfg["sim"]
        self.speed_milli = max(1, int(float(sim.get("speed") or 1) * 1000))
        self.rng = Rng((sim.get("seed") or 1) * 7919 + len(cfg["device"]))
        self.t0 = time.ticks_ms()
        self.unix0 = int(time.time())
        self.size = 40 + self.rng.r16() % 80  # this site's peak client count
        self.fault = sim.get("fault")
        self.fault_after = sim.get("fault_after") or 0
        self.samples = 0
        self.feeds = 0
        self.curves = [0, 0, 0, 0, 0]

    def ms(self):
        """Board milliseconds since boot, sped up: scheduling, uptime, sensor time of day."""
        return time.ticks_diff(time.ticks_ms(), self.t0) * self.speed_milli // 1000

    def real_ms(self, board_ms):
        """Real milliseconds that board_ms of board time take."""
        return board_ms * 1000 // self.speed_milli

    def unix(self):
        """Wall-clock unix seconds (the host clock stands in for NTP). Not sped up: command
        expiry is judged against the controller's clock."""
        return int(time.time())

    def reset_cause(self, prev_end):
        """protocol.messages BOOT_*: soft reset after a reboot command, crash after an unclean
        end, power-on otherwise."""
        return 3 if prev_end == 1 else 5 if prev_end == 0 else 0

    async def net_up(self):
        """The host's network is always up."""
        return

    def rssi(self):
        return -55 - (self.rng.r16() & 7)

    def wdt_feed(self):
        self.feeds += 1

    def sample(self, ids, vals, period_s):
        """Fill vals[i] for each id this board knows (fixed-point ints, protocol/metrics.py);
        counters cover period_s seconds."""
        self.samples += 1
        if self.fault == "crash" and self.samples > self.fault_after:
            raise RuntimeError("sim sensor fault: driver crashed")
        h = ((self.unix0 + self.ms() // 1000) % 86400) / 3600
        c = self.curves
        c[_OCC] = int(100 * min(1.0, 0.12 + 0.88 * (_bump(h, 13, 1.5) + 0.8 * _bump(h, 20.5, 2))))
        c[_TRAFFIC] = int(100 * min(1.0, 0.1 + 0.9 * (_bump(h, 8.5, 1.2) + _bump(h, 18.5, 1.5))))
        c[_DAY] = int(100 * math.sin((h - 9) / 24 * 6.2831853))
        c[_SUN] = c[_DAY] if c[_DAY] > 0 else 0
        r = self.rng
        t = _TABLE
        for i in range(len(ids)):
            m = ids[i]
            j = 0
            while j < len(t) and t[j] != m:
                j += 6
            if j >= len(t):
                continue
            base, amp, curve, noise, counter = t[j + 1], t[j + 2], t[j + 3], t[j + 4], t[j + 5]
            if m < 32 and amp and curve == _OCC:
                amp = amp * self.size // 100
            v = base + amp * c[curve] // 100
            if noise:
                v += r.r16() % (2 * noise + 1) - noise
            if counter:
                v = v * period_s // 60
            vals[i] = v if v > 0 or base < 0 else 0
