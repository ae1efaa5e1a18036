"""Fault knobs: which devices misbehave, and how, drawn once from a seed so a run can be repeated
exactly (same seed, same devices, same moments). Pure: no clock, no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class FaultKnobs:
    """Fractions of the fleet (0..1) and their parameters; defaults: a well-behaved fleet.
    Every field can be set from a scenario file's [faults] table (sim/scenario.py)."""

    flap: float = 0.0  # drop the link (no DISCONNECT) every flap_every seconds, +-50 %
    flap_every: float = 30.0
    no_clock: float = 0.0  # no RTC: reports carry uptime only until a downlink gives the time
    power_loss: float = 0.0  # lose power once at a random moment; back after power_off seconds
    power_off: float = 10.0
    malformed: float = 0.0  # send a malformed payload after every bad_every-th report
    forged: float = 0.0  # send a report signed with the wrong key after every bad_every-th
    bad_every: int = 5
    slow_ack: float = 0.0  # answer commands slow_ack_s late
    slow_ack_s: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in FRACTIONS and not 0.0 <= v <= 1.0:
                raise ValueError(f"{f.name} = {v}: a fraction of the fleet, use 0..1")
            if f.name not in FRACTIONS and not v > 0:
                raise ValueError(f"{f.name} = {v}: must be > 0")


FRACTIONS = ("flap", "no_clock", "power_loss", "malformed", "forged", "slow_ack")


@dataclass(frozen=True)
class DeviceFaults:
    """What one device does wrong (None / False / 0: nothing)."""

    flap_every: float | None = None
    no_clock: bool = False
    power_loss_at: float | None = None  # seconds after the run starts
    power_off: float = 0.0
    malformed_every: int | None = None
    forged_every: int | None = None
    slow_ack_s: float = 0.0


NONE = DeviceFaults()


def pick(rng: random.Random, n: int, fraction: float) -> set[int]:
    """round(n * fraction) distinct device indexes."""
    return set(rng.sample(range(n), round(n * fraction))) if fraction else set()


def assign(n: int, knobs: FaultKnobs, seed: int, duration: float) -> list[DeviceFaults]:
    """Per-device faults for a fleet of n, reproducible from seed. Each knob draws its own
    devices, so a device may carry several faults (as in the field)."""
    rng = random.Random(seed)
    flap = pick(rng, n, knobs.flap)
    clock = pick(rng, n, knobs.no_clock)
    power = pick(rng, n, knobs.power_loss)
    bad = pick(rng, n, knobs.malformed)
    forged = pick(rng, n, knobs.forged)
    slow = pick(rng, n, knobs.slow_ack)
    out = []
    for i in range(n):
        if not (i in flap or i in clock or i in power or i in bad or i in forged or i in slow):
            out.append(NONE)
            continue
        out.append(
            DeviceFaults(
                flap_every=knobs.flap_every if i in flap else None,
                no_clock=i in clock,
                power_loss_at=rng.uniform(0, duration) if i in power else None,
                power_off=knobs.power_off,
                malformed_every=knobs.bad_every if i in bad else None,
                forged_every=knobs.bad_every if i in forged else None,
                slow_ack_s=knobs.slow_ack_s if i in slow else 0.0,
            )
        )
    return out
