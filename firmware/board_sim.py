"""The simulated board for the unix port: a clock running `sim.speed` times real time, synthetic
sensors following Porto's day (Wi-Fi clients peaking at lunch and in the evening, traffic noise
and PM2.5 at rush hours, a temperature cycle), a no-op watchdog, the flash directory as its
filesystem. `sim.fault` = "crash" makes the sensor driver raise after `sim.fault_after` samples
(exercises the crash-loop detector).

The module is the board (the contract is firmware/board.pyi; startup.py calls start() once,
then hands the module to the agent): no class, no instance, one state list, and both tables in
one bytes constant, so the board costs little heap and sampling allocates nothing."""

import time

from backoff import Rng
from micropython import const

# _st slots
_SPEED = const(0)  # board milliseconds per 1000 real ones
_T0 = const(1)  # ticks_ms() at start
_CLOCK0 = const(2)  # unix seconds at start: the board's time of day runs on from there
_SIZE = const(3)  # this site's peak client count
_FAULT = const(4)  # samples left before the driver "crashes"; -1: never
_RNG = const(5)
# protocol.messages BOOT_* (tests/test_firmware_heap.py checks they match)
_BOOT_POWER_ON = const(0)
_BOOT_SOFT_RESET = const(3)
_BOOT_CRASH = const(5)

# _TABLE: three curves, then one 9-byte row per metric (ids 16-29, then 48-63).
_CURVES = const(0)
_ROWS = const(144)
_ROW = const(9)
# row flags: bits 0-1 the curve (0 occupancy, 1 traffic, 2 day; it starts at curve * 48), then
_COUNTER = const(4)  # a per-minute counter: scaled to the sample period
_SCALED = const(8)  # an AP client-like amplitude: scaled to the site's size

# Curves: percent of their peak + 100, one byte per half hour from 00:00, interpolated between
# (int(100 * f) of the former float curves: f = 0.12 + 0.88 * (bump(13 h, 1.5 h) +
# 0.8 * bump(20.5 h, 2 h)) for occupancy, 0.1 + 0.9 * (bump(8.5, 1.2) + bump(18.5, 1.5)) for
# traffic, both capped at 1, sin((h - 9) / 24 * 2 pi) for the day; bump(c, w) = exp(-((h-c)/w)^2)).
# Rows: flags, base (3 bytes), amplitude (3 bytes, percent of the curve), noise (2 bytes); signed
# big-endian, in the fixed-point units of protocol/metrics.py. Value = base + amplitude * curve,
# plus uniform noise in +-noise, floored at 0 unless base < 0. Illuminance (63) rides the day
# curve: its negative night half is floored to 0. Flat rows have amplitude 0.
# fmt: off
_TABLE = const(
    # occupancy: 12 % at night, 100 % at 13:00, 82 % at 20:30
    b"\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x70\x71\x75\x7e\x90"
    b"\xa8\xbe\xc8\xbe\xa8\x90\x7e\x75\x72\x71\x73\x77\x7e\x89\x98\xa6\xb2\xb6\xb2\xa6\x98\x89\x7e\x77"
    # traffic: 10 % at night, 100 % at 08:30 and 18:30
    b"\x6e\x6e\x6e\x6e\x6e\x6e\x6e\x6e\x6e\x6e\x6e\x6e\x6f\x73\x80\x9a\xb9\xc8\xb9\x9a\x80\x73\x6f\x6e"
    b"\x6e\x6e\x6e\x6e\x6e\x6e\x6e\x6f\x73\x7d\x8f\xa7\xbe\xc8\xbe\xa7\x8f\x7d\x73\x6f\x6e\x6e\x6e\x6e"
    # day: -100 % at 03:00, 100 % at 15:00
    b"\x1e\x15\x0e\x08\x04\x01\x00\x01\x04\x08\x0e\x15\x1e\x28\x33\x3e\x4b\x57\x64\x71\x7d\x8a\x95\xa0"
    b"\xaa\xb3\xba\xc0\xc4\xc7\xc8\xc7\xc4\xc0\xba\xb3\xaa\xa0\x96\x8a\x7d\x71\x64\x57\x4b\x3e\x33\x28"
    # id: curve and flags, base, amplitude, noise
    b"\x08\x00\x00\x00\x00\x00\x64\x00\x03"  # 16: occ scaled, 0, 100, 3
    b"\x08\x00\x00\x00\x00\x00\x28\x00\x02"  # 17: occ scaled, 0, 40, 2
    b"\x08\x00\x00\x00\x00\x00\x32\x00\x02"  # 18: occ scaled, 0, 50, 2
    b"\x08\x00\x00\x00\x00\x00\x0a\x00\x01"  # 19: occ scaled, 0, 10, 1
    b"\x00\xff\xff\xa8\x00\x00\x00\x00\x03"  # 20: flat, -88, 0, 3
    b"\x08\xff\xff\xbe\x00\x00\x06\x00\x03"  # 21: occ scaled, -66, 6, 3
    b"\x00\xff\xff\xd8\x00\x00\x00\x00\x03"  # 22: flat, -40, 0, 3
    b"\x08\x00\x00\x00\x00\x00\x0c\x00\x01"  # 23: occ scaled, 0, 12, 1
    b"\x0c\x00\x00\x00\x24\x9f\x00\x23\x28"  # 24: occ scaled counter, 0, 2400000, 9000
    b"\x0c\x00\x00\x00\x08\x3d\x60\x0b\xb8"  # 25: occ scaled counter, 0, 540000, 3000
    b"\x08\x00\x00\x14\x00\x00\x3c\x00\x03"  # 26: occ scaled, 20, 60, 3
    b"\x08\x00\x00\x08\x00\x00\x28\x00\x02"  # 27: occ scaled, 8, 40, 2
    b"\x0c\x00\x00\x00\x00\x00\x14\x00\x01"  # 28: occ scaled counter, 0, 20, 1
    b"\x04\x00\x00\x00\x00\x00\x00\x00\x01"  # 29: flat counter, 0, 0, 1
    b"\x01\x00\x01\xe0\x00\x01\x04\x00\x0f"  # 48: traffic, 480, 260, 15
    b"\x01\x00\x02\x30\x00\x01\x2c\x00\x1e"  # 49: traffic, 560, 300, 30
    b"\x01\x00\x01\x90\x00\x00\xb4\x00\x0a"  # 50: traffic, 400, 180, 10
    b"\x01\x00\x00\x3c\x00\x00\xdc\x00\x0c"  # 51: traffic, 60, 220, 12
    b"\x01\x00\x00\x64\x00\x01\x5e\x00\x14"  # 52: traffic, 100, 350, 20
    b"\x01\x00\x00\x28\x00\x00\x96\x00\x08"  # 53: traffic, 40, 150, 8
    b"\x01\x00\x00\x0f\x00\x00\x46\x00\x04"  # 54: traffic, 15, 70, 4
    b"\x02\x00\x00\x37\x00\x00\x23\x00\x04"  # 55: day, 55, 35, 4
    b"\x01\x00\x00\x14\x00\x00\x3c\x00\x03"  # 56: traffic, 20, 60, 3
    b"\x02\x00\x06\x72\x00\x02\x26\x00\x14"  # 57: day, 1650, 550, 20
    b"\x02\x00\x02\xd0\xff\xff\x6a\x00\x0a"  # 58: day, 720, -150, 10
    b"\x00\x00\x27\xa6\x00\x00\x00\x00\x08"  # 59: flat, 10150, 0, 8
    b"\x04\x00\x00\x02\x00\x00\x78\x00\x02"  # 60: occ counter, 2, 120, 2
    b"\x05\x00\x00\x01\x00\x00\x3c\x00\x02"  # 61: traffic counter, 1, 60, 2
    b"\x05\x00\x00\x00\x00\x00\x0c\x00\x01"  # 62: traffic counter, 0, 12, 1
    b"\x02\x00\x00\x00\x00\xc3\x50\x00\x00"  # 63: day, 0, 50000, 0
)
# fmt: on

name = ""  # startup.py sets it: the row name in firmware/boards.py
measures: tuple | range = ()  # set by start(): the kind's metric ids
_st: list = [1000, 0, 0, 40, -1, None]


def start(cfg, flash):
    """Set the board up from cfg["sim"]; deterministic for a seed and device id. Measures every
    metric of its kind: access point 16-29, urban sensor 48-63 (the rows of _TABLE)."""
    global measures
    measures = range(16, 30) if cfg["kind"] == "ap" else range(48, 64)
    sim = cfg["sim"]
    rng = Rng((sim.get("seed") or 1) * 7919 + len(cfg["device"]))
    _st[_SPEED] = max(1, int(float(sim.get("speed") or 1) * 1000))
    _st[_T0] = time.ticks_ms()
    _st[_CLOCK0] = int(time.time())
    _st[_SIZE] = 40 + rng.r16() % 80
    _st[_FAULT] = (sim.get("fault_after") or 0) if sim.get("fault") == "crash" else -1
    _st[_RNG] = rng


def ms():
    """Board milliseconds since start, sped up: scheduling, uptime, sensor time of day."""
    return time.ticks_diff(time.ticks_ms(), _st[_T0]) * _st[_SPEED] // 1000


def real_ms(ms):
    """Real milliseconds that ms of board time take."""
    return ms * 1000 // _st[_SPEED]


def unix():
    """Wall-clock unix seconds (the host clock stands in for NTP). Not sped up: command
    expiry is judged against the controller's clock."""
    return int(time.time())


def reset_cause(end):
    """protocol.messages BOOT_*: soft reset after a reboot command, crash after an unclean
    end, power-on otherwise."""
    return _BOOT_SOFT_RESET if end == 1 else _BOOT_CRASH if end == 0 else _BOOT_POWER_ON


async def net_up():
    """The host's network is always up."""
    return


def rssi():
    return -55 - (_st[_RNG].r16() & 7)


def wdt_feed():
    pass


reset = wdt_feed  # nothing to do: main.py boots again in this process (or exits after a crash)


def sample(ids, vals, period_s):
    """Fill vals[i] for each id this board knows (fixed-point ints, protocol/metrics.py);
    counters cover period_s seconds."""
    st = _st
    left = st[_FAULT]
    if left == 0:
        raise RuntimeError("sim sensor fault: driver crashed")
    if left > 0:
        st[_FAULT] = left - 1
    t = _TABLE
    s = (st[_CLOCK0] + ms() // 1000) % 86400  # board time of day
    half, frac = s // 1800, s % 1800
    after = (half + 1) % 48
    r = st[_RNG]
    for i in range(len(ids)):
        m = ids[i]
        if 16 <= m < 30:
            k = _ROWS + (m - 16) * _ROW
        elif 48 <= m < 64:
            k = _ROWS + (m - 34) * _ROW
        else:
            continue  # health metrics are the agent's
        f = t[k]
        base = ((t[k + 1] ^ 0x80) << 16 | t[k + 2] << 8 | t[k + 3]) - 0x800000
        amp = ((t[k + 4] ^ 0x80) << 16 | t[k + 5] << 8 | t[k + 6]) - 0x800000
        noise = t[k + 7] << 8 | t[k + 8]
        if f & _SCALED:
            amp = amp * st[_SIZE] // 100
        c = _CURVES + (f & 3) * 48
        a = t[c + half]
        v = base + amp * (a - 100 + (t[c + after] - a) * frac // 1800) // 100
        if noise:
            v += r.r16() % (2 * noise + 1) - noise
        if f & _COUNTER:
            v = v * period_s // 60
        vals[i] = v if v > 0 or base < 0 else 0
