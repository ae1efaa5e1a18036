"""The jobs shell: runs controller/domain/jobs.py's JobBook against the store and the Fleet.
Creates and cancels jobs, and on every tick (its own task, woken early by a device coming
online) settles executions whose commands an ACK answered, lets the book time out and pick
what to send, sends through Fleet's one downlink path and persists every change. At start it
loads the running jobs from the store, so a restarted controller carries on where it stopped.
Imports the domain, the Fleet and the store thread; never the HTTP layer or paho."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from controller.devices import DeviceCache
from controller.domain import jobs as J
from controller.domain.commands import OutgoingCommand
from controller.domain.records import PresenceEvent
from controller.errors import JobError, StoreError
from controller.fleet import Fleet
from controller.store.thread import StoreThread

log = logging.getLogger("idufleet.controller")

WAIT_POLL_S = 0.05
TICK_S = 0.1  # how often settled ACKs and timers are looked at (a BIRTH wakes it at once)
DISCOVER_EVERY_S = 2.0  # how often continuous jobs look for devices that match now


class JobRunner:
    def __init__(
        self,
        db: StoreThread,
        fleet: Fleet,
        devices: DeviceCache,
        tick: float = TICK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.fleet = fleet
        self.devices = devices
        self.book = J.JobBook()
        self.period = tick
        self.clock = clock
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_discover = 0.0
        self.loaded = False

    # --- hooks ---------------------------------------------------------------------------
    def on_presence(self, ev: PresenceEvent) -> None:
        """The pipeline's presence hook: a device came online, its queued work can go now."""
        if ev.state == "online":
            self._wake.set()

    def _online(self, device: str) -> bool:
        d = self.devices.get(device)
        return d is not None and d.active and d.presence.online

    # --- operator actions ----------------------------------------------------------------
    async def _views(self) -> list[J.DeviceView]:
        recs = await self.db.call(lambda s: s.list_devices())
        return [
            J.DeviceView(
                id=r.id,
                site=r.site,
                zone=r.zone,
                kind=r.kind,
                tags=dict(r.tags),
                firmware=r.firmware,
                online=self._online(r.id),
                active=r.status == "active",
            )
            for r in recs
        ]

    async def create(self, spec: J.JobSpec, created_by: str = "") -> dict[str, Any]:
        """Create a job; its executions are the devices its selector matches now (and, for a
        continuous job, later). Raises CommandError when nothing matches a non-continuous job."""
        now = self.clock()
        views = await self._views()
        if not spec.continuous and not any(spec.selector.matches(v) for v in views):
            raise JobError(
                f"no device matches {spec.selector.to_json()}; list them with `idufleet devices`",
                "no_match",
            )
        async with self._lock:
            job_id = await self.db.call(lambda s: s.create_job(spec, now, created_by))
            job = J.Job(job_id, spec, created=now, created_by=created_by)
            added = self.book.add_job(job, views, now)
            await self._persist()
        log.info(
            "job created",
            extra={"job": job_id, "op": spec.op, "devices": len(added), "by": created_by},
        )
        self._wake.set()
        return await self.get(job_id)

    async def cancel(self, job_id: int) -> dict[str, Any]:
        async with self._lock:
            if job_id not in self.book.jobs:
                if await self.db.call(lambda s: s.get_job(job_id)) is None:
                    raise JobError(
                        f"no job {job_id}; list them with `idufleet job list`", "not_found"
                    )
                return await self.get(job_id)  # already over: nothing to cancel
            self.book.cancel(job_id, self.clock())
            await self._persist()
        log.info("job canceled", extra={"job": job_id})
        return await self.get(job_id)

    async def get(self, job_id: int, executions: bool = True) -> dict[str, Any]:
        job = await self.db.call(lambda s: s.get_job(job_id))
        if job is None:
            raise JobError(f"no job {job_id}; list them with `idufleet job list`", "not_found")
        execs = await self.db.call(lambda s: s.job_executions(job_id))
        out = job_view(job, J.summary(execs))
        if executions:
            out["executions"] = [exec_view(e) for e in execs]
        return out

    async def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        jobs = await self.db.call(lambda s: s.list_jobs(limit))
        counts = await self.db.call(lambda s: s.job_counts([j.id for j in jobs]))
        out = []
        for j in jobs:
            rows = [
                {"state": st, "result": res}
                for st, res, n in counts.get(j.id, [])
                for _ in range(n)
            ]
            out.append(job_view(j, J.summary(rows)))
        return out

    async def one_command(self, job_id: int, device: str, wait: float) -> dict[str, Any]:
        """A job of one device (`idufleet command`): waits up to `wait` s for its execution to
        settle and answers its command row ({epoch, seq, device, op, status, result, data...},
        the shape commands always had) with the job id, or {job, device, status: queued}."""
        deadline = time.monotonic() + wait
        while True:
            ex = next((e for e in await self.db.call(lambda s: s.job_executions(job_id))), None)
            cmd = None
            if ex is not None and ex.cmd is not None:
                cmd = await self._command(*ex.cmd)
            settled = cmd is not None and cmd["status"] != "sent"
            if settled or time.monotonic() >= deadline or (ex is not None and ex.terminal):
                break
            await asyncio.sleep(WAIT_POLL_S)
        if cmd is None:
            state = ex.state if ex is not None else J.QUEUED
            return {"job": job_id, "device": device, "status": state}
        return {"job": job_id, **cmd}

    async def _command(self, epoch: int, seq: int) -> dict[str, Any] | None:
        return await self.db.call(lambda s: s.get_command(epoch, seq))

    # --- the loop ------------------------------------------------------------------------
    async def load(self) -> None:
        running = await self.db.call(lambda s: s.running_jobs())
        for job, execs in running:
            job.refilled = self.clock()
            self.book.load(job, execs)
        self.loaded = True
        if running:
            log.info("jobs resumed", extra={"jobs": [j.id for j, _ in running]})

    async def run(self) -> None:
        await self.load()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.period)
            self._wake.clear()
            try:
                await self.step()
            except StoreError as e:  # the store is away: the book is kept, the next tick retries
                log.error("job tick failed", extra={"error": str(e)})

    async def step(self) -> None:
        async with self._lock:
            now = self.clock()
            if not any(
                j.state == J.RUNNING or j.state == J.CANCELED for j in self.book.jobs.values()
            ):
                return
            if self.book.in_flight():
                for job, device, result in await self.db.call(lambda s: s.settled_executions()):
                    self.book.acked(job, device, result, now)
            continuous = any(
                j.spec.continuous and j.state == J.RUNNING for j in self.book.jobs.values()
            )
            if continuous and now - self._last_discover >= DISCOVER_EVERY_S:
                self._last_discover = now
                self.book.discover(await self._views(), now)
            actions = self.book.tick(now, self._online)
            await self._persist()  # new executions exist before a send binds them
            if actions:
                await self._send(actions, now)
            self._forget_done()

    async def _send(self, actions: list[J.Action], now: float) -> None:
        sends = []
        for a in actions:
            if a.kind != "send":
                continue
            job = self.book.jobs[a.job]
            left = max(1, int(job.deadline - now))
            sends.append((a.device, job.spec.op, job.spec.args, min(job.spec.policy.cmd_ttl, left)))
        jobs_of = {a.device: a.job for a in actions if a.kind == "send"}
        resend_acts = [a for a in actions if a.kind == "resend"]
        resends = []
        if resend_acts:
            keys = [(a.job, a.device) for a in resend_acts]
            stored = await self.db.call(lambda s: [s.execution_payload(j, d) for j, d in keys])
            for a, got in zip(resend_acts, stored, strict=True):
                ex = self.book.execs[(a.job, a.device)]
                if got is None or ex.cmd is None or ex.cmd_expires is None:
                    continue
                topic, payload = got
                op = self.book.jobs[a.job].spec.op
                resends.append(
                    OutgoingCommand(
                        ex.cmd[0], ex.cmd[1], a.device, topic, op, None, 0, ex.cmd_expires, payload
                    )
                )
        book = self.book

        def record(s: Any, cmds: list[tuple[OutgoingCommand, dict[str, Any] | None]]) -> None:
            rows = []
            for cmd, args in cmds:
                jid = jobs_of[cmd.device]
                ex = J.on_send(
                    book.execs[(jid, cmd.device)],
                    (cmd.epoch, cmd.seq),
                    cmd.expires,
                    book.jobs[jid].spec.policy,
                    now,
                )
                rows.append((ex, cmd.topic, cmd.payload, cmd.op, args, float(cmd.issued)))
            s.bind_executions(rows)

        sent = await self.fleet.issue_for_jobs(sends, resends, record)
        for cmd in sent:
            self.book.sent(jobs_of[cmd.device], cmd.device, (cmd.epoch, cmd.seq), cmd.expires, now)
        for r in resends:
            self.book.resent(self._job_of(r), r.device, now)
        await self._persist()

    def _job_of(self, cmd: OutgoingCommand) -> int:
        for jid in self.book.by_device.get(cmd.device, []):
            if self.book.execs[(jid, cmd.device)].cmd == (cmd.epoch, cmd.seq):
                return jid
        raise KeyError(cmd.device)

    async def _persist(self) -> None:
        jobs, execs = self.book.take_changed()
        if jobs or execs:
            await self.db.call(lambda s: s.save_jobs(jobs, execs))
            for j in jobs:
                if j.state != J.RUNNING:
                    log.info("job ended", extra={"job": j.id, "state": j.state})

    def _forget_done(self) -> None:
        """Jobs that are over leave memory (the store keeps them for status and list)."""
        over = [
            j.id
            for j in self.book.jobs.values()
            if j.state == J.DONE
            or (
                j.state == J.CANCELED
                and all(e.terminal for (k, _), e in self.book.execs.items() if k == j.id)
            )
        ]
        for jid in over:
            del self.book.jobs[jid]
            for device in [d for (j, d) in self.book.execs if j == jid]:
                del self.book.execs[(jid, device)]
                ids = self.book.by_device[device]
                ids.remove(jid)
                if not ids:
                    del self.book.by_device[device]


def job_view(job: J.Job, summary: dict[str, Any]) -> dict[str, Any]:
    from controller.domain.commands import OPS

    names = {v: k for k, v in OPS.items()}
    return {
        "id": job.id,
        "op": names.get(job.spec.op, str(job.spec.op)),
        "args": {str(k): v for k, v in job.spec.args.items()} if job.spec.args else None,
        "selector": job.spec.selector.to_json(),
        "ttl_s": job.spec.ttl,
        "rate_per_s": job.spec.rate,
        "continuous": job.spec.continuous,
        "created": job.created,
        "created_by": job.created_by,
        "state": job.state,
        "ended": job.ended,
        "summary": summary,
    }


def exec_view(e: J.Execution) -> dict[str, Any]:
    from controller.domain.commands import RESULTS

    return {
        "device": e.device,
        "state": e.state,
        "attempts": e.attempts,
        "command": None if e.cmd is None else {"epoch": e.cmd[0], "seq": e.cmd[1]},
        "result": None if e.result is None else RESULTS.get(e.result, str(e.result)),
        "result_code": e.result,
        "updated": e.updated,
    }
