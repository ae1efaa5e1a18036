"""Scenario files (TOML): fault knobs and a timeline of actions, validated once with one-line
errors that name the file, the line, the field, and what is allowed. Pure: parsing only.

    seed = 7                      # optional: the run's seed (faults, jitter)
    [faults]                      # optional: sim/faults.py FaultKnobs fields
    flap = 0.05
    [[at]]
    t = 60                        # seconds after all devices started
    action = "restart-broker"     # down = seconds the broker stays down (default 1)
    [[at]]
    t = 120
    action = "kill"               # power loss of `fraction` of the devices
    off = 30                      # seconds powered off (default: the rest of the run)
    fraction = 0.1
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sim.faults import FaultKnobs

ACTIONS = {
    "restart-broker": {"down"},
    "kill": {"fraction", "off"},
    "flap": {"fraction"},
    "command": {"fraction", "op"},
}
COMMAND_OPS = ("ping", "diagnostics", "reboot")
NOT_YET = {"rollout": "OTA is not in the firmware yet, so there is nothing to roll out"}


class ScenarioError(ValueError):
    """One line: where, which field, what is allowed."""


@dataclass(frozen=True)
class Action:
    t: float
    action: str
    fraction: float = 1.0
    down: float = 1.0
    off: float | None = None
    op: str = "ping"
    line: int = 0
    index: int = 0  # its place in the file: at[index]


@dataclass(frozen=True)
class Scenario:
    faults: FaultKnobs = field(default_factory=FaultKnobs)
    timeline: tuple[Action, ...] = ()
    seed: int | None = None
    path: str = ""

    def check_duration(self, duration: float) -> None:
        """Every action must fall inside the run; raises ScenarioError naming the first that
        does not."""
        for a in self.timeline:
            if a.t >= duration:
                raise ScenarioError(
                    f"{self.path}:{a.line}: at[{a.index}].t = {a.t:g} is not before the end of "
                    f"the run (--duration {duration:g}); use a smaller t or a longer --duration"
                )


def _line_of(text: str, table: str, index: int, key: str | None) -> int:
    """The 1-based line of `key` inside the index-th `[[table]]` (or `[table]` when index is 0
    and it is not an array), or of the table header when key is absent; 1 if not found."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\[?\s*" + re.escape(table) + r"\s*\]\]?\s*(#.*)?$")
    any_header = re.compile(r"^\s*\[")
    seen = 0
    start = None
    for n, ln in enumerate(lines):
        if header.match(ln):
            seen += 1
            if seen == index or (index == 0 and seen == 1):
                start = n
                break
    if start is None:
        if key is None:
            return 1
        start = -1  # top-level key
    if key is None:
        return start + 1
    want = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for n in range(start + 1, len(lines)):
        if any_header.match(lines[n]):
            break
        if want.match(lines[n]):
            return n + 1
    return start + 1 if start >= 0 else 1


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse(text: str, path: str = "scenario.toml") -> Scenario:
    """The scenario in text; raises ScenarioError with `path:line: field: problem; fix`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ScenarioError(
            f"{path}:{m.group(1) if m else 1}: not valid TOML ({str(e).split(' (at')[0]}); "
            "see docs/SIMULATOR.md for the format"
        ) from None

    def err(line: int, what: str) -> ScenarioError:
        return ScenarioError(f"{path}:{line}: {what}")

    for k in doc:
        if k not in ("seed", "faults", "at"):
            raise err(
                _line_of(text, k, 0, None)
                if isinstance(doc[k], dict)
                else _line_of(text, "", 0, k),
                f"unknown key {k!r}; allowed at the top: seed, [faults], [[at]]",
            )
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise err(_line_of(text, "", 0, "seed"), f"seed = {seed!r}: use a whole number >= 0")

    raw_faults = doc.get("faults", {})
    if not isinstance(raw_faults, dict):
        raise err(_line_of(text, "", 0, "faults"), "faults must be a table: [faults]")
    known = {f.name: f for f in fields(FaultKnobs)}
    kw: dict[str, Any] = {}
    for k, v in raw_faults.items():
        line = _line_of(text, "faults", 0, k)
        if k not in known:
            raise err(line, f"faults.{k}: unknown knob; allowed: {', '.join(known)}")
        if not _number(v):
            raise err(line, f"faults.{k} = {v!r}: use a number")
        kw[k] = int(v) if k == "bad_every" else float(v)
    try:
        knobs = FaultKnobs(**kw)
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        raise err(_line_of(text, "faults", 0, name), f"faults.{e}") from None

    raw_at = doc.get("at", [])
    if not isinstance(raw_at, list):
        raise err(_line_of(text, "", 0, "at"), "at must be an array of tables: [[at]]")
    timeline = []
    for i, a in enumerate(raw_at, 1):
        where = f"at[{i}]"

        def where_is(key: str | None, i: int = i) -> int:
            return _line_of(text, "at", i, key)

        if "t" not in a:
            raise err(
                where_is(None), f"{where}: t is missing; give seconds after the start, t = 60"
            )
        if "action" not in a:
            raise err(
                where_is(None), f"{where}: action is missing; use one of {', '.join(ACTIONS)}"
            )
        act = a["action"]
        if act in NOT_YET:
            raise err(where_is("action"), f"{where}.action = {act!r}: {NOT_YET[act]}")
        if act not in ACTIONS:
            raise err(
                where_is("action"), f"{where}.action = {act!r}: use one of {', '.join(ACTIONS)}"
            )
        for k in a:
            if k not in ("t", "action") and k not in ACTIONS[act]:
                allowed = ", ".join(sorted(ACTIONS[act])) or "nothing"
                raise err(where_is(k), f"{where}.{k}: not a field of {act!r}; it takes {allowed}")
        t = a["t"]
        if not _number(t) or t < 0:
            raise err(where_is("t"), f"{where}.t = {t!r}: use seconds >= 0")
        fr = a.get("fraction", 1.0)
        if not _number(fr) or not 0 < fr <= 1:
            raise err(where_is("fraction"), f"{where}.fraction = {fr!r}: use a number in (0, 1]")
        for k in ("down", "off"):
            v = a.get(k)
            if v is not None and (not _number(v) or v < 0):
                raise err(where_is(k), f"{where}.{k} = {v!r}: use seconds >= 0")
        op = a.get("op", "ping")
        if op not in COMMAND_OPS:
            raise err(where_is("op"), f"{where}.op = {op!r}: use one of {', '.join(COMMAND_OPS)}")
        timeline.append(
            Action(
                float(t),
                act,
                float(fr),
                float(a.get("down", 1.0)),
                None if a.get("off") is None else float(a["off"]),
                op,
                where_is(None),
                i,
            )
        )
    timeline.sort(key=lambda x: x.t)
    return Scenario(knobs, tuple(timeline), seed, path)


def load(path: Path) -> Scenario:
    """parse() the file; an unreadable file is a ScenarioError too."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the scenario file ({e.strerror})") from None
    return parse(text, str(path))
