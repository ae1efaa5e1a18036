"""Fleet scale: N simulated devices (each its own MQTT connection, key and dynsec account)
against one private Mosquitto and one `idufleet serve` on SQLite, all on this machine.

Phases, in one run: provisioning (API + dynsec), power-on from cold over `devices / 1000` s with
the firmware's backoff, steady reporting once every `interval` s, one broker restart (SIGTERM,
1 s down, start), recovery, drain, then sent vs stored. Baseline measured in the same run: the
device model alone (sample + encode + sign one report, no I/O), so `sim_cpu_us_per_report` can
be read as model cost + I/O cost.

    .venv/bin/python benchmarks/fleet_scale.py --quick     # 1,000 devices, 60 s, < 3 minutes
    .venv/bin/python benchmarks/fleet_scale.py             # 10,000 devices, 30 s interval, 400 s
    .venv/bin/python benchmarks/fleet_scale.py --accounts 10000   # broker accounts only
    .venv/bin/python benchmarks/fleet_scale.py --max-fleet 12000,15000,19700   # bounded ramp

`--accounts N` measures only the broker accounts: N written into the initial dynsec document
(write, file size, cold broker start, one login), then what one more device costs through
control messages on a broker that already holds N (what a staging run against a remote broker
pays per device as its accounts grow; 0 -> N costs about half of N times that).

Last line: JSON with devices, connected, connect_s, sent, stored, duplicates, p99_ms
(receive -> commit, steady state), sim_cpu_us_per_report, broker_restart_recovered_s, and the
broker's and controller's CPU seconds and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


class LoadAvg:
    """The 1-minute load average, sampled: the machine is shared, so figures come with it."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def on_frame(self, s: Any) -> None:
        if int(s.t) % 10 == 0:
            self.sample()

    def summary(self) -> dict[str, float]:
        xs = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(xs) / len(xs), 2), "max": round(max(xs), 2)}


def accounts_cost(n: int, extra: int = 20) -> dict[str, Any]:
    """Broker accounts only: N in the initial document, then `extra` more through control
    messages (adaptive batches, as against a remote broker)."""
    import tempfile

    from controller.security import dynsec
    from sim import provision as P
    from sim.model import DeviceSpec as Spec
    from sim.stack import OwnStack

    def spec(i: int, pw: str) -> Spec:
        return Spec(f"acct-ap-{i:05d}", "porto", "foz", "ap", bytes(32), pw, i)

    with tempfile.TemporaryDirectory() as tmp:
        pre = [spec(i, dynsec.new_password()) for i in range(n)]
        st = OwnStack(Path(tmp), accounts=[(s.site, s.id, s.password or "") for s in pre])
        st.workdir.mkdir(parents=True, exist_ok=True)
        st._broker_files()
        st.start_broker()
        try:
            from tests.support.secure_broker import Peer

            probe = pre[-1] if pre else None
            ok = None
            if probe is not None:
                p = Peer(st.mqtt_port, probe.id, probe.password, client_id=probe.id)
                ok = p.connect() == 0
                p.close()
            more = [spec(n + i, dynsec.new_password()) for i in range(extra)]
            admin = P.Admin("127.0.0.1", st.mqtt_port, *st.admin)
            c0 = time.monotonic()
            rep = P.create_accounts(admin, more)
            per = (time.monotonic() - c0) / extra
        finally:
            st.stop()
    return {
        "bench": "fleet_scale_accounts",
        "accounts": n,
        "initial_document_write_s": round(st.timings["accounts_write_s"], 2),
        "dynsec_file_mb": round(st.timings["dynsec_file_mb"], 1),
        "broker_cold_start_s": round(st.timings["broker_start_s"], 2),
        "login_ok": ok,
        "control_api_s_per_device_at_n": round(per, 3),
        "control_api_messages": rep.messages,
        "staging_0_to_n_estimate_s": round(per * n / 2, 0),
    }


MAX_FLEET_KEEP = (
    "devices", "connected", "connected_at_end", "connect_s", "connect_errors", "sent",
    "stored", "duplicates", "sim_cpu_s", "sim_peak_rss_mb", "broker_peak_rss_mb",
    "broker_cpu_s", "controller_peak_rss_mb", "controller_cpu_s", "provision_s", "wall_s",
)  # fmt: skip


def max_fleet(steps: list[int], hold: float, interval: int) -> None:
    """Bounded ramp: one run per fleet size (own stack, no restart, `hold` seconds), one JSON
    line each, then the limits of this machine: file descriptors, ephemeral ports, memory.
    The steps share one process: sim_peak_rss_mb is the high-water mark so far (ascending
    steps: the largest's), sim_cpu_s the step's own."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for n in steps:
        load = LoadAvg()
        t0, cpu0 = time.monotonic(), time.process_time()
        rc = RunConfig(
            devices=n,
            kind="mix",
            zones=("ribeira", "baixa", "boavista", "campanha", "foz"),
            interval=interval,
            duration=hold,
            behaviour=Behaviour(interval=interval),
        )

        try:
            out = asyncio.run(simulate(rc, load.on_frame))
        except Exception as e:  # the refusal (or failure) is the measurement at this size
            out = {"devices": n, "error": str(e)[:300]}
        out["wall_s"] = round(time.monotonic() - t0, 1)
        out["sim_cpu_s"] = round(time.process_time() - cpu0, 2)  # this step only
        line = {k: out.get(k) for k in MAX_FLEET_KEEP if k in out}
        if "error" in out:
            line["error"] = out["error"]
        line["mem_available_mb"] = _mem_available_mb()
        line["load_1m"] = load.summary()
        print(json.dumps({"bench": "fleet_scale_max_step", **line}), flush=True)
    print(
        json.dumps(
            {
                "bench": "fleet_scale_max",
                "steps": steps,
                "hold_s": hold,
                "interval": interval,
                "nofile_soft_hard": [soft, hard],
                "fd_bound_devices": hard - 256,
                "ephemeral_ports": hi - lo + 1,
                "mem_total_mb": _mem_available_mb("MemTotal"),
                "cores": os.cpu_count(),
            }
        )
    )


def _mem_available_mb(key: str = "MemAvailable") -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 devices, 60 s, one restart")
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--interval", type=int, default=30)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--restart-at", type=float, default=None, help="seconds after start")
    ap.add_argument("--accounts", type=int, default=None, help="broker accounts only (N)")
    ap.add_argument(
        "--max-fleet",
        default=None,
        help="bounded ramp, e.g. 12000,15000,19700: one short run per size (--duration, "
        "default 60 s, no restart)",
    )
    a = ap.parse_args()
    if a.max_fleet is not None:
        max_fleet([int(x) for x in a.max_fleet.split(",")], a.duration or 60.0, a.interval)
        return
    if a.accounts is not None:
        print(json.dumps(accounts_cost(a.accounts)))
        return
    load = LoadAvg()
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
            load.sample()
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
    s["load_1m"] = load.summary()
    s["cores"] = os.cpu_count()
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
        "register_s",
        "accounts_write_s",
        "dynsec_file_mb",
        "broker_start_s",
        "broker_cpu_s",
        "broker_rss_mb",
        "broker_peak_rss_mb",
        "controller_cpu_s",
        "controller_rss_mb",
        "controller_peak_rss_mb",
        "sim_cpu_s",
        "sim_peak_rss_mb",
        "controller_rejected_by_reason",
        "controller_duplicates_suppressed",
        "interval",
        "wall_s",
        "drained",
        "stored_caught_up",
        "load_1m",
        "cores",
    ]
    print(json.dumps({"bench": "fleet_scale", **{k: s.get(k) for k in keep}}))


if __name__ == "__main__":
    main()
