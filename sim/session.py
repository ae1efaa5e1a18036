"""One simulation run from start to summary: bring a stack (or use the given broker and API),
provision the fleet, run it for the duration while the timeline plays, drain, compare what was
sent with what the controller stored, clean up. The CLI, the benchmark and the tests all call
`simulate`; `on_frame` receives a Snapshot about once a second (the live view).

Every phase is bounded in time; the summary says which bound was hit, if any."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sim import faults as F
from sim import provision as P
from sim.model import Behaviour, DeviceSpec
from sim.runner import Fleet, Hooks, Target
from sim.scenario import Scenario
from sim.stack import OwnStack, raise_fd_limit

DRAIN_S = 60.0  # after the run: rings empty (devices) and everything stored (controller)


@dataclass(frozen=True)
class RunConfig:
    devices: int
    kind: str = "mix"
    zones: tuple[str, ...] = ()
    interval: int = 30
    duration: float = 60.0
    ramp: float | None = None  # seconds over which devices power on (None: devices / 1000)
    seed: int = 1
    scenario: Scenario = field(default_factory=Scenario)
    keep: bool = False
    broker: tuple[str, int] | None = None  # None: bring our own stack
    api: str = ""
    token: str = ""
    broker_dir: Path | None = None  # remote broker's dynsec admin (credentials.json)
    prefix: str = ""
    workdir: Path | None = None
    site: str = "porto"
    behaviour: Behaviour = field(default_factory=Behaviour)


@dataclass
class Snapshot:
    t: float
    devices: int
    connected: int
    reports_per_s: float
    sent: int
    acks: int
    reconnects: int
    errors: int
    buffered: int
    phase: str
    log: list[str]


def stored_counts(db: Path, like: str) -> tuple[int, int, int]:
    """(reports stored, samples stored, distinct samples) of the devices whose id matches the SQL
    LIKE pattern (`prefix-%`, or one id), read-only from a SQLite store: what a run (and the
    delivery tests) compare with what was sent."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        (reports,) = con.execute(
            "SELECT count(*) FROM messages WHERE mtype IN (3, 4) AND device_id LIKE ?", (like,)
        ).fetchone()
        samples, distinct = con.execute(
            "SELECT count(*), count(DISTINCT device_id || ':' || epoch || ':' || seq || ':' || "
            "sample) FROM raw_samples WHERE device_id LIKE ?",
            (like,),
        ).fetchone()
        return int(reports), int(samples), int(distinct)
    finally:
        con.close()


async def simulate(
    rc: RunConfig, on_frame: Callable[[Snapshot], None] | None = None
) -> dict[str, Any]:
    soft, need = raise_fd_limit(rc.devices)
    if soft < need:
        raise P.ProvisionError(
            f"{rc.devices} devices need {need} file descriptors and the hard limit is {soft}: "
            f"raise it (root: `ulimit -Hn {need}`, systemd LimitNOFILE) or run fewer devices"
        )
    prefix = rc.prefix or ("sim" if rc.broker is None else f"sim{secrets.token_hex(2)}")
    own: OwnStack | None = None
    tmp = rc.workdir is None and rc.broker is None  # only our own stack needs a directory
    workdir = rc.workdir or (Path(tempfile.mkdtemp(prefix="idufleet-sim-")) if tmp else Path())
    summary: dict[str, Any] = {"devices": rc.devices, "kind": rc.kind, "interval": rc.interval}
    loop = asyncio.get_running_loop()
    passwords: dict[str, str] | None = None
    try:
        if rc.broker is None:
            # Device ids do not depend on zones: their broker accounts go into the broker's
            # initial dynsec document, written once before it starts (one file write, not a
            # control command per account: docs/SIMULATOR.md, bulk provisioning).
            passwords = P.new_passwords(P.plan(rc.devices, rc.kind, ("-",), prefix))
            accounts = [(rc.site, d, pw) for d, pw in passwords.items()]
            own = OwnStack(workdir, offline_after=max(180, 4 * rc.interval), accounts=accounts)
            await asyncio.to_thread(own.start)
            host, port, api_url, token = "127.0.0.1", own.mqtt_port, own.api, own.token
            admin: P.Admin | None = None  # accounts exist already
            for k in ("accounts_write_s", "broker_start_s", "dynsec_file_mb"):
                if k in own.timings:
                    summary[k] = round(own.timings[k], 2)
        else:
            host, port = rc.broker
            api_url, token = rc.api, rc.token
            admin = P.Admin.from_dir(rc.broker_dir, host, port) if rc.broker_dir else None
        async with P.Api(api_url, token) as api:
            zones = rc.zones or tuple((await api.zones())[:5]) or ("ribeira",)
            planned = P.plan(rc.devices, rc.kind, zones, prefix)
            if admin is not None:
                passwords = P.new_passwords(planned)
            t0 = time.monotonic()
            specs = await P.register(api, planned, rc.site, passwords)
            summary["register_s"] = round(time.monotonic() - t0, 2)
            if admin is not None:
                rep = await asyncio.to_thread(P.create_accounts, admin, specs)
                summary["accounts"] = {
                    "created": rep.created,
                    "existed": rep.existed,
                    "messages": rep.messages,
                    "timeouts": rep.timeouts,
                    "seconds": round(rep.seconds, 2),
                }
            summary["provision_s"] = round(time.monotonic() - t0, 2)
            try:
                await _run(rc, own, api, specs, host, port, prefix, summary, on_frame)
            finally:
                if not rc.keep and rc.broker is not None:
                    if admin is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.to_thread(P.delete_accounts, admin, specs)
                    summary["disable_failed"] = await P.disable(api, [s.id for s in specs])
        if own is not None:
            await asyncio.to_thread(own.stop)
            reports, samples, distinct = stored_counts(own.db_path, prefix + "-%")
            summary["stored"], summary["samples"] = reports, samples
            summary["duplicates"] = samples - distinct
    finally:
        if own is not None:
            await loop.run_in_executor(None, own.stop)  # idempotent: after an error too
        if rc.keep and rc.broker is None:
            summary["workdir"] = str(workdir)
        elif tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    return summary


async def _run(
    rc: RunConfig,
    own: OwnStack | None,
    api: P.Api,
    specs: list[DeviceSpec],
    host: str,
    port: int,
    prefix: str,
    summary: dict[str, Any],
    on_frame: Callable[[Snapshot], None] | None,
) -> None:
    seed = rc.scenario.seed if rc.scenario.seed is not None else rc.seed
    knobs = rc.scenario.faults
    per_device = F.assign(len(specs), knobs, seed, rc.duration)

    async def restart(down: float) -> None:
        assert own is not None
        t = time.monotonic()
        await asyncio.to_thread(own.restart_broker, down)
        restarts.append(t)

    restarts: list[float] = []
    watchers: list[asyncio.Task[None]] = []
    hooks = Hooks(restart_broker=restart if own is not None else None, command=api.command)
    b = replace(rc.behaviour, interval=rc.interval)
    fleet = Fleet(specs, b, Target(host, port), per_device, seed, hooks)
    ramp = rc.ramp if rc.ramp is not None else len(specs) / 1000.0
    m0 = await _controller_counts(api)
    t_start = time.monotonic()
    fleet.start(ramp)
    fleet.schedule_power_losses()
    pending = list(rc.scenario.timeline)
    sim_cpu0 = time.process_time()
    sent0 = 0
    last_t, last_sent = t_start, 0
    recover: dict[str, float] = {}
    p99s: list[float] = []
    phase = "running"
    steady_end: tuple[float, int] | None = None
    end = t_start + rc.duration
    while (now := time.monotonic()) < end:
        st = fleet.stats
        while pending and now - t_start >= pending[0].t:
            a = pending.pop(0)
            if a.action == "restart-broker":
                if steady_end is None and sent0:  # the steady window ends at the first restart
                    steady_end = (time.process_time(), st.sent)
                # measured from the restart: time until 99 % are connected again
                loop_task = asyncio.create_task(fleet.act(a, end - now))
                await loop_task
                recover_from = time.monotonic()
                recover["at"] = recover_from - t_start
                recover["lost_links"] = float(st.links_lost)
                watchers.append(asyncio.create_task(_watch_recovery(fleet, recover, restarts[-1])))
            else:
                await fleet.act(a, end - now)
        if st.all_connected_at is not None and sent0 == 0:
            sent0 = st.sent  # steady state starts once everyone is connected
            sim_cpu0 = time.process_time()
            summary["connect_s"] = round(st.all_connected_at - t_start, 2)
        if on_frame is not None:
            dt = max(1e-6, now - last_t)
            on_frame(
                Snapshot(
                    now - t_start,
                    len(specs),
                    st.connected,
                    (st.sent - last_sent) / dt,
                    st.sent,
                    st.acks,
                    st.reconnects,
                    st.connect_errors,
                    fleet.buffered(),
                    phase,
                    fleet.log[-3:],
                )
            )
            last_t, last_sent = now, st.sent
        with contextlib.suppress(Exception):
            h = await api.health()
            if h.get("ingest_p99_ms") is not None and not restarts:
                p99s.append(float(h["ingest_p99_ms"]))
        await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
    st = fleet.stats
    cpu_end, sent_end = steady_end or (time.process_time(), st.sent)
    steady_sent = sent_end - sent0
    sim_cpu = cpu_end - sim_cpu0
    drained = await fleet.drain(DRAIN_S)
    ours = st.sent + st.births + st.acks + st.events  # every message the broker acked for us
    stored_ok = await _wait_stored(own, api, st.sent, ours, prefix, m0)
    usage = own.usage() if own else {}
    connected_at_end = st.connected
    await fleet.stop()
    summary.update(
        connected=fleet.first_connects,
        connected_at_end=connected_at_end,
        made=st.made,
        sent=st.sent,
        dropped=st.dropped,
        drained=drained,
        stored_caught_up=stored_ok,
        p99_ms=max(p99s) if p99s else None,
        sim_cpu_us_per_report=round(sim_cpu / steady_sent * 1e6, 1) if steady_sent else None,
        reconnects=st.reconnects,
        connect_errors=st.connect_errors,
        acks=st.acks,
        downlinks=st.commands,  # every message received on cmd: commands and CONFIRMs
        confirms=st.confirms,
        confirmed=st.confirmed,
        resent=st.resent,
        births=st.births,
        bad_sent=st.bad_sent,
        power_losses=st.power_losses,
        flaps=st.flaps,
        reboots=st.reboots,
        timeline=fleet.log,
        faults={k: v for k, v in asdict(knobs).items() if v != getattr(F.FaultKnobs(), k)},
    )
    summary.setdefault("connect_s", None)
    if "recovered_s" in recover:
        summary["broker_restart_recovered_s"] = round(recover["recovered_s"], 2)
        summary["broker_restart_spread_s"] = round(recover.get("spread_s", 0.0), 2)
    elif restarts:
        summary["broker_restart_recovered_s"] = None
    m1 = await _controller_counts(api)
    summary["controller_stored_delta"] = m1.get("stored", 0) - m0.get("stored", 0)
    summary["controller_rejected_delta"] = m1.get("rejected", 0) - m0.get("rejected", 0)
    summary["controller_rejected_by_reason"] = {
        k.split('reason="')[1].rstrip('"}'): v - m0.get(k, 0.0)
        for k, v in m1.items()
        if k.startswith("idufleet_messages_rejected_total{") and v - m0.get(k, 0.0)
    }
    summary["controller_duplicates_suppressed"] = m1.get("duplicates", 0) - m0.get("duplicates", 0)
    for k, (cpu, rss, hwm) in usage.items():
        summary[f"{k}_cpu_s"] = round(cpu, 2)
        summary[f"{k}_rss_mb"] = round(rss / 2**20, 1)
        summary[f"{k}_peak_rss_mb"] = round(hwm / 2**20, 1)
    summary["sim_peak_rss_mb"] = round(_self_hwm() / 2**20, 1)
    summary["sim_cpu_s"] = round(time.process_time(), 2)


def _self_hwm() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _watch_recovery(fleet: Fleet, out: dict[str, float], restarted_at: float) -> None:
    """Seconds from the broker's restart until 99 % of the devices that were powered are
    connected again; bounded by the run (the task dies with the loop)."""
    first: float | None = None
    while not fleet.stopping:
        on = sum(1 for d in fleet.devices if d.on)
        if fleet.stats.connected and first is None:
            first = time.monotonic()
        if on and fleet.stats.connected >= 0.99 * on:
            now = time.monotonic()
            out["recovered_s"] = now - restarted_at
            out["spread_s"] = now - (first or now)
            return
        await asyncio.sleep(0.05)


async def _controller_counts(api: P.Api) -> dict[str, float]:
    try:
        m = await api.metrics()
    except Exception:
        return {}
    rejected = sum(v for k, v in m.items() if k.startswith("idufleet_messages_rejected_total"))
    return {
        **{k: v for k, v in m.items() if k.startswith("idufleet_messages_rejected_total{")},
        "stored": m.get("idufleet_messages_stored_total", 0.0),
        "rejected": rejected,
        "duplicates": m.get("idufleet_messages_duplicate_total", 0.0),
    }


async def _wait_stored(
    own: OwnStack | None, api: P.Api, sent: int, ours: int, prefix: str, m0: dict[str, float]
) -> bool:
    """Wait (bounded) until the controller stored every report the broker acknowledged: with
    our own stack, counted in the store; otherwise until its stored counter grew by at least
    `ours` (the messages we sent; other devices may add to it) or stopped moving."""
    deadline = time.monotonic() + DRAIN_S
    last = -1.0
    while time.monotonic() < deadline:
        if own is not None:
            reports, _, _ = await asyncio.to_thread(stored_counts, own.db_path, prefix + "-%")
            if reports >= sent:
                return True
        else:
            m = await _controller_counts(api)
            now = m.get("stored", 0.0)
            if now == last or now - m0.get("stored", 0.0) >= ours:
                return True
            last = now
        await asyncio.sleep(0.5 if own is not None else 2.0)
    return False
