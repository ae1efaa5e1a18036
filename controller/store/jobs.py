"""Fleet jobs in the store (migration 9): jobs, their executions, and the ACKs that settled
them (read through the `commands` row each execution is bound to). Values in and out are
controller.domain.jobs types; the running logic is the domain's and controller/jobs.py's."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from controller.domain import jobs as J
from controller.store.commands import Commands

_EXEC_COLS = (
    "job_id, device_id, state, attempts, next_at, cmd_epoch, cmd_seq, cmd_expires, result,"
    " created, updated"
)


def _exec_row(ex: J.Execution) -> tuple[Any, ...]:
    e, s = ex.cmd if ex.cmd is not None else (None, None)
    return (ex.state, ex.attempts, ex.next_at, e, s, ex.cmd_expires, ex.result, ex.updated)


def _execution(r: tuple[Any, ...]) -> J.Execution:
    return J.Execution(
        job=int(r[0]),
        device=r[1],
        state=r[2],
        attempts=int(r[3]),
        next_at=float(r[4]),
        cmd=(int(r[5]), int(r[6])) if r[5] is not None else None,
        cmd_expires=int(r[7]) if r[7] is not None else None,
        result=r[8],
        created=float(r[9]),
        updated=float(r[10]),
    )


def _job(r: tuple[Any, ...]) -> J.Job:
    spec = J.JobSpec(
        op=int(r[1]),
        args=J.args_from_json(r[2]),
        selector=J.Selector.from_json(json.loads(r[3])),
        ttl=float(r[4]),
        rate=float(r[5]),
        continuous=bool(r[6]),
        policy=J.Policy(**json.loads(r[7])),
    )
    return J.Job(
        id=int(r[0]),
        spec=spec,
        created=float(r[8]),
        created_by=r[9],
        state=r[10],
        ended=r[11],
    )


_JOB_COLS = (
    "id, op, args, selector, ttl, rate, continuous, policy, created, created_by, state, ended"
)


class Jobs(Commands):
    def create_job(self, spec: J.JobSpec, created: float, created_by: str) -> int:
        with self._tx():
            rows = self._execute(
                "INSERT INTO jobs (op, args, selector, ttl, rate, continuous, policy, created,"
                " created_by, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    spec.op,
                    J.args_to_json(spec.args),
                    json.dumps(spec.selector.to_json()),
                    spec.ttl,
                    spec.rate,
                    int(spec.continuous),
                    json.dumps(asdict(spec.policy)),
                    created,
                    created_by,
                    J.RUNNING,
                ),
            )
        return int(rows[0][0])

    def save_jobs(self, jobs: list[J.Job], execs: list[J.Execution]) -> None:
        """Job states and executions (inserted or updated), in one transaction. The command
        binding (epoch, seq, payload) is written by bind_execution, never here."""
        with self._tx():
            if jobs:
                self._executemany(
                    "UPDATE jobs SET state = ?, ended = ? WHERE id = ?",
                    [(j.state, j.ended, j.id) for j in jobs],
                )
            if execs:
                self._executemany(
                    "INSERT INTO job_executions (job_id, device_id, state, attempts, next_at,"
                    " cmd_epoch, cmd_seq, cmd_expires, result, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (job_id, device_id) DO UPDATE SET state = excluded.state,"
                    " attempts = excluded.attempts, next_at = excluded.next_at,"
                    " cmd_epoch = excluded.cmd_epoch, cmd_seq = excluded.cmd_seq,"
                    " cmd_expires = excluded.cmd_expires, result = excluded.result,"
                    " updated = excluded.updated",
                    [
                        (ex.job, ex.device, *_exec_row(ex)[:7], ex.created, ex.updated)
                        for ex in execs
                    ],
                )

    def bind_executions(
        self, rows: list[tuple[J.Execution, str, bytes, int, dict[str, Any] | None, float]]
    ) -> None:
        """First sends, atomically: each (execution bound to its command, topic, signed bytes,
        op, recorded args, issued) writes the commands row (its ACK settles it) and binds the
        execution to it with the bytes a retry re-sends. Runs before the commands are
        published, so a crash never leaves a published command no execution knows (which a
        restart would replace with a second one)."""
        with self._tx():
            for ex, _topic, _payload, op, args, issued in rows:
                assert ex.cmd is not None and ex.cmd_expires is not None
                self.record_command(
                    ex.cmd[0], ex.cmd[1], ex.device, op, args, issued, ex.cmd_expires
                )
            self._executemany(
                "UPDATE job_executions SET state = ?, attempts = ?, next_at = ?, cmd_epoch = ?,"
                " cmd_seq = ?, cmd_expires = ?, result = ?, updated = ?, topic = ?, payload = ?"
                " WHERE job_id = ? AND device_id = ?",
                [(*_exec_row(ex), t, p, ex.job, ex.device) for ex, t, p, _o, _a, _i in rows],
            )

    def execution_payload(self, job: int, device: str) -> tuple[str, bytes] | None:
        rows = self._execute(
            "SELECT topic, payload FROM job_executions WHERE job_id = ? AND device_id = ?",
            (job, device),
        )
        if not rows or rows[0][1] is None:
            return None
        return rows[0][0], bytes(rows[0][1])

    def settled_executions(self) -> list[tuple[int, str, int]]:
        """(job, device, ACK result) of sent executions whose command an ACK settled."""
        rows = self._execute(
            "SELECT e.job_id, e.device_id, c.result FROM job_executions e JOIN commands c"
            " ON c.epoch = e.cmd_epoch AND c.seq = e.cmd_seq AND c.device_id = e.device_id"
            " WHERE e.state = 'sent' AND c.acked IS NOT NULL"
        )
        return [(int(r[0]), r[1], int(r[2])) for r in rows]

    def running_jobs(self) -> list[tuple[J.Job, list[J.Execution]]]:
        """Every running or canceled-with-work-left job and its executions (a restart loads
        these and carries on)."""
        jobs = [
            _job(r)
            for r in self._execute(
                f"SELECT {_JOB_COLS} FROM jobs WHERE state = ? OR state = ? ORDER BY id",
                (J.RUNNING, J.CANCELED),
            )
        ]
        out = []
        for job in jobs:
            execs = self.job_executions(job.id)
            if job.state == J.CANCELED and all(e.terminal for e in execs):
                continue
            out.append((job, execs))
        return out

    def get_job(self, job_id: int) -> J.Job | None:
        rows = self._execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self, limit: int = 100) -> list[J.Job]:
        return [
            _job(r)
            for r in self._execute(
                f"SELECT {_JOB_COLS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,)
            )
        ]

    def job_executions(self, job_id: int) -> list[J.Execution]:
        return [
            _execution(r)
            for r in self._execute(
                f"SELECT {_EXEC_COLS} FROM job_executions WHERE job_id = ? ORDER BY device_id",
                (job_id,),
            )
        ]

    def job_counts(self, job_ids: list[int]) -> dict[int, list[tuple[str, int | None, int]]]:
        """(state, result, count) per job."""
        out: dict[int, list[tuple[str, int | None, int]]] = {j: [] for j in job_ids}
        if not job_ids:
            return out
        marks = ", ".join("?" * len(job_ids))
        for r in self._execute(
            f"SELECT job_id, state, result, COUNT(*) FROM job_executions WHERE job_id IN ({marks})"
            " GROUP BY job_id, state, result",
            tuple(job_ids),
        ):
            out[int(r[0])].append((r[1], r[2], int(r[3])))
        return out
