"""The firmware's pure modules, loaded from firmware/ so the simulator runs the device's own code
for reconnect backoff (backoff.py), the offline ring's order (ring.RingState), the MQTT packet
codec (mqtt_codec.py), the settable config (tunables.py) and the sim board's daily curves
(board_sim.py). They are loaded by path under private names: firmware/ is a flat device
filesystem, and putting it on sys.path would shadow names like `link` or `ring` process-wide.

The only stand-in is MicroPython's `micropython.const` (identity), the same shim the firmware
unit tests use. Must not import anything of the simulator."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"


def _shim() -> None:
    if "micropython" not in sys.modules:
        m = types.ModuleType("micropython")
        m.const = lambda x: x  # type: ignore[attr-defined]
        sys.modules["micropython"] = m


def _load(name: str, deps: dict[str, types.ModuleType] | None = None) -> Any:
    """firmware/<name>.py as module `idufleet_fw_<name>`. deps: bare names it imports (the
    device's flat namespace), bound only while it executes."""
    path = FIRMWARE / f"{name}.py"
    if not path.exists():
        raise ImportError(f"{path} not found: the simulator runs the firmware's own modules")
    _shim()
    full = f"idufleet_fw_{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    saved = {k: sys.modules.get(k) for k in deps or {}}
    sys.modules.update(deps or {})
    try:
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    sys.modules[full] = mod
    return mod


backoff: Any = _load("backoff")
ring: Any = _load("ring")
mqtt_codec: Any = _load("mqtt_codec")
tunables: Any = _load("tunables")
board_sim: Any = _load("board_sim", {"backoff": backoff})
