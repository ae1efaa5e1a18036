"""The board contract: what a board module (a row of firmware/boards.py) provides. startup.py
imports the chosen module, sets `name`, calls start() once and hands the module to the agent,
which reaches hardware only through the names below. A board is a module, not a class: no
instance, module-level state, so it costs little heap (see board_sim.py).

Units: board time in milliseconds (`ms`, may run faster than real time on the simulator),
wall-clock time in unix seconds, signal strength in dBm, metric values as integers in the
fixed-point units of protocol/metrics.py. tests/test_firmware_units.py checks that every board
in the table defines every name here with the same parameters."""

name: str
"""The board's row name in firmware/boards.py (set by startup.py; birth reports it)."""

measures: tuple[int, ...] | range
"""The metric ids (protocol/metrics.py) sample() fills in, known once start() has run. The
agent reports these plus the health metrics it measures itself (1, 2, 3, 5, 6)."""

def start(cfg: dict, flash: str) -> None:
    """Set the board up from the validated config (docs/DEVICE-CONFIG.md: kind, wifi, sim...)
    and its flash directory; sets `measures`. Called once per boot, before anything else."""

def ms() -> int:
    """Board milliseconds since start: the agent's schedule and uptime."""

def real_ms(ms: int) -> int:
    """The real milliseconds that ms of board time take (what asyncio sleeps)."""

def unix() -> int | None:
    """Wall-clock unix seconds, or None until the board has a clock (the agent then learns
    the time from verified downlink messages)."""

def reset_cause(end: int) -> int:
    """Why this boot happened, as protocol.messages BOOT_*; end is how the previous run ended
    (bootstate END_*)."""

async def net_up() -> None:
    """Bring the network up (Wi-Fi on a board); raises OSError if it cannot (the agent backs
    off and calls again)."""

def rssi() -> int:
    """Uplink signal strength in dBm (0 when unknown)."""

def wdt_feed() -> None:
    """Feed the hardware watchdog (the agent's main loop calls it every 100 ms)."""

def sample(ids: list[int], vals: list[int], period_s: int) -> None:
    """Write vals[i] for each ids[i] in `measures`, leaving the agent's health ids (the only
    others it passes) alone; counters cover the last period_s seconds. May raise: a sensor
    driver that fails ends the run (the crash-loop rule)."""

def reset() -> None:
    """Restart the device after a reboot command or a crash. Does not return on hardware; the
    unix port returns (main.py boots again in the same process, or exits after a crash)."""
