"""Fleet scale: N simulated devices (each its own MQTT connection, key and dynsec account)
against one private Mosquitto and one `idufleet serve` on SQLite, all on this machine.

Phases, in one run: provisioning (API + dynsec), power-on from cold over `devices / 1000` s with
the firmware's backoff, steady reporting once every `interval` s, one broker restart (SIGTERM,
1 s down, start), recovery, drain, then sent vs stored. Baseline measured in the same run: the
device model alone (sample + encode + sign one report, no I/O), so `sim_cpu_us_per_report` can
be read as model cost + I/O cost.

    .venv/bin/python benchmarks/fleet_scale.py --quick     # 1,000 devices, 60 s, < 3 minutes
    .venv/bin/python benchmarks/fleet_scale.py             # 10,000 devices, 30 s interval, 400 s

Last line: JSON with devices, connected, connect_s, sent, stored, duplicates, p99_ms
(receive -> commit, steady state), sim_cpu_us_per_report, broker_restart_recovered_s, and the
broker's and controller's CPU seconds and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.model import Behaviour, DeviceModel, DeviceSpec  # noqa: E402
from sim.scenario import parse  # noqa: E402
from sim.session import RunConfig, simulate  # noqa: E402


def model_cost_us(n: int = 2000) -> float:
    """CPU per report of the model alone: sample the board, encode, sign, push to the ring."""
    spec = DeviceSpec("bench-ap-00001", "porto", "foz", "ap", bytes(32), None, 1)
    m = DeviceModel(spec, Behaviour(interval=30), 1_763_900_000.0)
    t = 1_763_900_000.0
    c0 = time.process_time()
    for _ in range(n):
        t += 30
        m.tick(t)
        m.pop()
    return (time.process_time() - c0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 devices, 60 s, one restart")
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--interval", type=int, default=30)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--restart-at", type=float, default=None, help="seconds after start")
    a = ap.parse_args()
    n = a.devices or (1000 if a.quick else 10_000)
    duration = a.duration or (60.0 if a.quick else 400.0)
    restart_at = a.restart_at or (duration * 0.55 if a.quick else 310.0)
    scenario = parse(
        f'[[at]]\nt = {restart_at}\naction = "restart-broker"\ndown = 1\n', "fleet_scale"
    )
    base = model_cost_us()
    print(f"model alone: {base:.1f} us per report", file=sys.stderr)
    t0 = time.monotonic()

    def frame(s: Any) -> None:
        if int(s.t) % 10 == 0:
            print(
                f"{s.t:6.0f}s connected {s.connected}/{s.devices} {s.reports_per_s:6.0f}/s "
                f"sent {s.sent} reconnects {s.reconnects} errors {s.errors} buffered {s.buffered}",
                file=sys.stderr,
                flush=True,
            )

    rc = RunConfig(
        devices=n,
        kind="mix",
        zones=("ribeira", "baixa", "boavista", "campanha", "foz"),
        interval=a.interval,
        duration=duration,
        scenario=scenario,
        behaviour=Behaviour(interval=a.interval),
    )
    s = asyncio.run(simulate(rc, frame))
    s["wall_s"] = round(time.monotonic() - t0, 1)
    s["model_cpu_us_per_report_baseline"] = round(base, 1)
    s["lost"] = max(0, s["sent"] - s.get("stored", 0))
    keep = [
        "devices",
        "connected",
        "connect_s",
        "sent",
        "stored",
        "duplicates",
        "lost",
        "p99_ms",
        "sim_cpu_us_per_report",
        "model_cpu_us_per_report_baseline",
        "broker_restart_recovered_s",
        "broker_restart_spread_s",
        "reconnects",
        "connect_errors",
        "provision_s",
        "broker_cpu_s",
        "broker_rss_mb",
        "broker_peak_rss_mb",
        "controller_cpu_s",
        "controller_rss_mb",
        "controller_peak_rss_mb",
        "sim_peak_rss_mb",
        "controller_rejected_by_reason",
        "controller_duplicates_suppressed",
        "interval",
        "wall_s",
        "drained",
        "stored_caught_up",
    ]
    print(json.dumps({"bench": "fleet_scale", **{k: s.get(k) for k in keep}}))


if __name__ == "__main__":
    main()
