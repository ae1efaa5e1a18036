"""Fleet jobs, pure: a job is one operation sent to every device a selector names, and each
device's execution walks queued -> sent -> succeeded | failed | expired | timed_out | canceled.
The clock is passed in; the shell (controller/jobs.py) sends, persists and reports ACKs.
Imports the protocol's names only: no store, transport or API.

At most once on the device: an execution is bound to ONE signed command (its idempotency key,
job:device, maps to one (epoch, seq)) from its first send on. A retry re-publishes those same
bytes, never a new command, so the device's CommandGuard refuses a second copy as a replay."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from controller.domain.commands import RESULTS
from protocol import messages as M

QUEUED, SENT = "queued", "sent"
SUCCEEDED, FAILED, EXPIRED, TIMED_OUT, CANCELED = (
    "succeeded",
    "failed",
    "expired",
    "timed_out",
    "canceled",
)
STATES = (QUEUED, SENT, SUCCEEDED, FAILED, EXPIRED, TIMED_OUT, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, EXPIRED, TIMED_OUT, CANCELED})
RUNNING, DONE = "running", "done"  # job states (and CANCELED)

MAX_JOB_TTL = 30 * 86400  # a job (not its commands) may wait this long for offline devices
MAX_RATE = 10_000.0  # devices per second
JOB_OPS = frozenset({M.OP_PING, M.OP_REBOOT, M.OP_SET_CONFIG, M.OP_DIAGNOSTICS})  # not rotate-key
KINDS = ("ap", "sensor")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class DeviceView:
    """What a selector can see of one device (registry row plus live presence)."""

    id: str
    site: str
    zone: str
    kind: str
    tags: dict[str, str] = field(default_factory=dict)
    firmware: str | None = None
    online: bool = False
    active: bool = True


@dataclass(frozen=True)
class Selector:
    """Which devices a job is for: every criterion given must hold (an AND); `devices` is a set
    of ids. At least one criterion, or all=True for the whole fleet. online_only: the devices
    online when the job is created (or, for a continuous job, when they are seen online).
    Raises ValueError with the fix for an empty or malformed selector."""

    devices: tuple[str, ...] = ()
    zone: str | None = None
    site: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    kind: str | None = None
    version: str | None = None
    online_only: bool = False
    all: bool = False

    def __post_init__(self) -> None:
        narrowing = self.devices or self.zone or self.site or self.tags or self.kind
        _check(
            bool(narrowing or self.version or self.all),
            "empty selector: name devices, a zone, a site, a tag, a kind or a firmware version"
            " (or all for the whole fleet)",
        )
        _check(all(isinstance(d, str) and d for d in self.devices), "device ids must be non-empty")
        for name in ("zone", "site", "kind", "version"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, str) and v != ""), f"{name} must be non-empty")
        _check(
            self.kind is None or self.kind in KINDS,
            f"unknown kind {self.kind!r}; kinds: {', '.join(KINDS)}",
        )
        for kv in self.tags:
            _check(
                len(kv) == 2 and all(isinstance(x, str) and x for x in kv),
                "a tag is key=value, both non-empty",
            )

    def matches(self, d: DeviceView) -> bool:
        if not d.active:
            return False
        if self.devices and d.id not in self.devices:
            return False
        if self.zone is not None and d.zone != self.zone:
            return False
        if self.site is not None and d.site != self.site:
            return False
        if self.kind is not None and d.kind != self.kind:
            return False
        if self.version is not None and d.firmware != self.version:
            return False
        if any(d.tags.get(k) != v for k, v in self.tags):
            return False
        return not self.online_only or d.online

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.devices:
            out["devices"] = list(self.devices)
        for name in ("zone", "site", "kind", "version"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.tags:
            out["tags"] = dict(self.tags)
        if self.online_only:
            out["online_only"] = True
        if self.all:
            out["all"] = True
        return out

    @classmethod
    def from_json(cls, d: Any) -> Selector:
        """From the API's JSON ({"zone": "z", "tags": {"k": "v"}, ...}). Raises ValueError."""
        _check(isinstance(d, dict), "selector must be an object")
        known = {"devices", "zone", "site", "tags", "kind", "version", "online_only", "all"}
        extra = set(d) - known
        _check(not extra, f"unknown selector field(s) {sorted(extra)}; known: {sorted(known)}")
        devices = d.get("devices") or []
        tags = d.get("tags") or {}
        _check(isinstance(devices, list), "devices must be a list of ids")
        _check(isinstance(tags, dict), "tags must be an object {key: value}")
        return cls(
            devices=tuple(devices),
            zone=d.get("zone"),
            site=d.get("site"),
            tags=tuple(sorted((str(k), v) for k, v in tags.items())),
            kind=d.get("kind"),
            version=d.get("version"),
            online_only=bool(d.get("online_only", False)),
            all=bool(d.get("all", False)),
        )


@dataclass(frozen=True)
class Policy:
    """Timeouts and retries of every execution. An unanswered command is re-sent (the same
    bytes) after ack_timeout, then ack_timeout * backoff, ... up to max_attempts sends in all,
    and never after the command's own expiry (cmd_ttl, at most protocol.commands.MAX_TTL)."""

    ack_timeout: float = 10.0
    max_attempts: int = 3
    backoff: float = 2.0
    cmd_ttl: int = 600

    def __post_init__(self) -> None:
        _check(self.ack_timeout > 0, "ack_timeout must be > 0 seconds")
        _check(1 <= self.max_attempts <= 20, "max_attempts must be 1..20")
        _check(self.backoff >= 1.0, "backoff must be >= 1")
        _check(1 <= self.cmd_ttl <= 3600, "cmd_ttl must be 1..3600 seconds")

    def retry_delay(self, attempts: int) -> float:
        """Wait after the attempts-th send before the next one."""
        return float(self.ack_timeout * self.backoff ** max(0, attempts - 1))


@dataclass(frozen=True)
class JobSpec:
    """What an operator asks for. Raises ValueError for an op jobs do not send (rotate-key has
    its own two-key flow), a ttl or rate out of range."""

    op: int
    args: dict[int, Any] | None
    selector: Selector
    ttl: float = 86400.0
    rate: float = 100.0
    continuous: bool = False
    policy: Policy = field(default_factory=Policy)

    def __post_init__(self) -> None:
        names = ", ".join(M.OP_NAMES[o].replace("_", "-") for o in sorted(JOB_OPS))
        _check(self.op in JOB_OPS, f"operation {self.op} cannot be a job; jobs send: {names}")
        _check(0 < self.ttl <= MAX_JOB_TTL, f"ttl must be 1s..{MAX_JOB_TTL // 86400}d")
        _check(0 < self.rate <= MAX_RATE, f"rate must be > 0 and <= {MAX_RATE:g} devices/s")
        _check(self.args is None or isinstance(self.args, dict), "args must be an object")


@dataclass(frozen=True)
class Execution:
    """One device's part of a job. cmd: the (epoch, seq) of its one signed command, set at the
    first send and never changed (the idempotency key's binding)."""

    job: int
    device: str
    state: str = QUEUED
    attempts: int = 0
    next_at: float = 0.0  # sent: when the next resend (or the timeout) is due
    cmd: tuple[int, int] | None = None
    cmd_expires: int | None = None
    result: int | None = None
    created: float = 0.0
    updated: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.job}:{self.device}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


# --- the execution state machine: (state, event) -> next state ---------------------------
# Events: send (first publish), resend (same bytes again), ack, deadline (job ttl passed),
# timeout (no ack by next_at and no retry left), cancel. Terminal states take no event.
TRANSITIONS: dict[tuple[str, str], str] = {
    (QUEUED, "send"): SENT,
    (QUEUED, "deadline"): EXPIRED,
    (QUEUED, "cancel"): CANCELED,
    (SENT, "resend"): SENT,
    (SENT, "ack_ok"): SUCCEEDED,
    (SENT, "ack_failed"): FAILED,
    (SENT, "timeout"): TIMED_OUT,
    # A sent command cannot be called back: cancel stops its retries, its ACK is still kept.
    (SENT, "cancel"): SENT,
}


class InvalidTransition(ValueError):
    pass


def transition(state: str, event: str) -> str:
    """The next state; raises InvalidTransition for an event the state does not take."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        raise InvalidTransition(f"execution in state {state} cannot take {event}")
    return nxt


def on_send(
    ex: Execution, cmd: tuple[int, int], expires: int, policy: Policy, now: float
) -> Execution:
    """The first send: binds the execution to its one command. Raises InvalidTransition when it
    already has one (a retry must be on_resend, with the same bytes)."""
    if ex.cmd is not None:
        raise InvalidTransition(f"execution {ex.key} is already bound to command {ex.cmd}")
    return replace(
        ex,
        state=transition(ex.state, "send"),
        attempts=1,
        cmd=cmd,
        cmd_expires=expires,
        next_at=min(now + policy.retry_delay(1), float(expires)),
        updated=now,
    )


def on_resend(ex: Execution, policy: Policy, now: float) -> Execution:
    assert ex.cmd is not None and ex.cmd_expires is not None
    attempts = ex.attempts + 1
    return replace(
        ex,
        state=transition(ex.state, "resend"),
        attempts=attempts,
        next_at=min(now + policy.retry_delay(attempts), float(ex.cmd_expires)),
        updated=now,
    )


def on_ack(ex: Execution, result: int, now: float) -> Execution:
    """The device's answer to the execution's command. An ACK for a terminal execution (a
    redelivered answer) changes nothing."""
    if ex.state != SENT:
        return ex
    event = "ack_ok" if result == M.R_OK else "ack_failed"
    return replace(ex, state=transition(ex.state, event), result=result, updated=now)


def on_cancel(ex: Execution, now: float) -> Execution:
    if ex.terminal:
        return ex
    return replace(ex, state=transition(ex.state, "cancel"), updated=now)


def due(
    ex: Execution, policy: Policy, deadline: float, canceled: bool, online: bool, now: float
) -> tuple[Execution, str | None]:
    """The timer of every non-terminal state. Returns (execution, action) where action is
    "send" (queued, device online: the shell builds and publishes its command), "resend"
    (sent, unanswered, device online, a retry left before the command expires) or None.
    Timeouts: queued past the job's deadline -> expired; sent and unanswered with no retry
    left (attempts used up, or the command expired on the device) -> timed_out."""
    if ex.terminal:
        return ex, None
    if ex.state == QUEUED:
        if now >= deadline:
            return replace(ex, state=transition(QUEUED, "deadline"), updated=now), None
        if canceled:
            return replace(ex, state=transition(QUEUED, "cancel"), updated=now), None
        return ex, ("send" if online else None)
    assert ex.cmd_expires is not None
    if now < ex.next_at:
        return ex, None
    out_of_retries = ex.attempts >= policy.max_attempts or canceled
    if now >= ex.cmd_expires or (out_of_retries and now >= ex.next_at):
        return replace(ex, state=transition(SENT, "timeout"), updated=now), None
    return ex, ("resend" if online else None)


# --- a job and its executions ----------------------------------------------------------------
@dataclass
class Job:
    id: int
    spec: JobSpec
    created: float
    state: str = RUNNING
    created_by: str = ""
    ended: float | None = None
    tokens: float = 1.0  # rate limiter (not persisted: a restart starts with one token)
    refilled: float = 0.0

    @property
    def deadline(self) -> float:
        return self.created + self.spec.ttl

    def take_token(self, now: float) -> bool:
        rate = self.spec.rate
        burst = max(1.0, rate)
        self.tokens = min(burst, self.tokens + max(0.0, now - self.refilled) * rate)
        self.refilled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class Action:
    kind: str  # "send" | "resend"
    job: int
    device: str


class JobBook:
    """Every running job and its executions, in memory; the shell loads it from the store at
    start and persists what `take_changed()` returns. Per device, executions run one at a time
    in job order (a later job's command waits until the earlier one is settled), and each job
    sends at most `rate` commands (first sends and resends) per second."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.execs: dict[tuple[int, str], Execution] = {}
        self.by_device: dict[str, list[int]] = {}  # device -> job ids, ascending
        self._changed: set[tuple[int, str]] = set()
        self._jobs_changed: set[int] = set()

    # --- loading and creating
    def load(self, job: Job, execs: Iterable[Execution]) -> None:
        self.jobs[job.id] = job
        for ex in execs:
            self._put(ex, changed=False)

    def _put(self, ex: Execution, changed: bool = True) -> None:
        k = (ex.job, ex.device)
        if k not in self.execs:
            ids = self.by_device.setdefault(ex.device, [])
            ids.append(ex.job)
            ids.sort()
        self.execs[k] = ex
        if changed:
            self._changed.add(k)

    def add_job(self, job: Job, devices: Iterable[DeviceView], now: float) -> list[Execution]:
        """A new job and the executions of the devices its selector matches now."""
        job.refilled = now
        self.jobs[job.id] = job
        self._jobs_changed.add(job.id)
        return self.discover(devices, now, only=job.id)

    def discover(
        self, devices: Iterable[DeviceView], now: float, only: int | None = None
    ) -> list[Execution]:
        """Executions for matching devices that have none yet: at creation (only=job id) and,
        for running continuous jobs, for devices that match later."""
        added = []
        devs = list(devices)
        for job in self.jobs.values():
            if job.state != RUNNING or now >= job.deadline:
                continue
            if only is None and not job.spec.continuous:
                continue
            if only is not None and job.id != only:
                continue
            for d in devs:
                if (job.id, d.id) not in self.execs and job.spec.selector.matches(d):
                    ex = Execution(job.id, d.id, created=now, updated=now)
                    self._put(ex)
                    added.append(ex)
        return added

    # --- events
    def sent(self, job: int, device: str, cmd: tuple[int, int], expires: int, now: float) -> None:
        k = (job, device)
        self._put(on_send(self.execs[k], cmd, expires, self.jobs[job].spec.policy, now))

    def resent(self, job: int, device: str, now: float) -> None:
        k = (job, device)
        self._put(on_resend(self.execs[k], self.jobs[job].spec.policy, now))

    def acked(self, job: int, device: str, result: int, now: float) -> None:
        ex = self.execs.get((job, device))
        if ex is not None:
            new = on_ack(ex, result, now)
            if new is not ex:
                self._put(new)

    def cancel(self, job_id: int, now: float) -> None:
        job = self.jobs[job_id]
        if job.state != RUNNING:
            return
        job.state, job.ended = CANCELED, now
        self._jobs_changed.add(job_id)
        for (j, _d), ex in list(self.execs.items()):
            if j == job_id and ex.state == QUEUED:
                self._put(on_cancel(ex, now))

    def tick(self, now: float, online: Callable[[str], bool]) -> list[Action]:
        """Timeouts, then what to (re)send now: per device the first unsettled execution in job
        order, each job within its rate. Ends jobs: a non-continuous job whose executions are
        all terminal, any job past its deadline once nothing of it is in flight."""
        actions: list[Action] = []
        for device, ids in self.by_device.items():
            is_on = online(device)
            for jid in ids:
                ex = self.execs[(jid, device)]
                if ex.terminal:
                    continue
                job = self.jobs[jid]
                new, act = due(ex, job.spec.policy, job.deadline, job.state == CANCELED, is_on, now)
                if new is not ex:
                    self._put(new)
                if new.terminal:
                    continue  # the next job's execution may go now
                if act is not None and job.take_token(now):
                    actions.append(Action(act, jid, device))
                break  # one unsettled execution per device at a time
        self._end_jobs(now)
        return actions

    def _end_jobs(self, now: float) -> None:
        for job in self.jobs.values():
            if job.state == DONE:
                continue
            execs = [e for (j, _), e in self.execs.items() if j == job.id]
            settled = all(e.terminal for e in execs)
            if job.state == CANCELED:
                continue
            if (settled and not job.spec.continuous) or (now >= job.deadline and settled):
                job.state, job.ended = DONE, now
                self._jobs_changed.add(job.id)

    def take_changed(self) -> tuple[list[Job], list[Execution]]:
        jobs = [self.jobs[j] for j in sorted(self._jobs_changed)]
        execs = [self.execs[k] for k in sorted(self._changed)]
        self._jobs_changed.clear()
        self._changed.clear()
        return jobs, execs

    def in_flight(self) -> list[Execution]:
        return [e for e in self.execs.values() if e.state == SENT]


def summary(execs: Iterable[Execution | dict[str, Any]]) -> dict[str, Any]:
    """Counts by state and by result name (ok, bad_args, ... from the ACK result code)."""
    states = dict.fromkeys(STATES, 0)
    results: dict[str, int] = {}
    total = 0
    for e in execs:
        state = e.state if isinstance(e, Execution) else e["state"]
        result = e.result if isinstance(e, Execution) else e["result"]
        total += 1
        states[state] += 1
        if result is not None:
            name = RESULTS.get(result, str(result))
            results[name] = results.get(name, 0) + 1
    return {"total": total, "states": states, "results": results}


def parse_duration(text: str | float | int) -> float:
    """Seconds from 90, "90s", "15m", "6h", "7d", "2w". Raises ValueError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if isinstance(text, int | float):
        return float(text)
    t = text.strip()
    try:
        if t[-1:] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise ValueError(f"bad duration {text!r}: use seconds or 90s, 15m, 6h, 7d, 2w") from None


def args_to_json(args: dict[int, Any] | None) -> str | None:
    return None if not args else json.dumps({str(k): v for k, v in args.items()})


def args_from_json(text: str | None) -> dict[int, Any] | None:
    return None if not text else {int(k): v for k, v in json.loads(text).items()}
