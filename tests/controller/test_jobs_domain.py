"""The job state machine, without a broker: transitions, timers, per-device order, rate, cancel,
continuous jobs, and the end-to-end at-most-once property against the device's CommandGuard."""

from __future__ import annotations

import pytest

from controller.domain import jobs as J
from controller.domain.commands import CommandIssuer
from protocol import messages as M
from protocol.commands import CommandGuard
from protocol.envelope import decode
from protocol.sign import Signer

POLICY = J.Policy(ack_timeout=5.0, max_attempts=3, backoff=2.0, cmd_ttl=600)


def dev(i: str, zone: str = "z1", online: bool = True, **kw: object) -> J.DeviceView:
    return J.DeviceView(id=i, site="s", zone=zone, kind="ap", online=online, **kw)  # type: ignore[arg-type]


def spec(**kw: object) -> J.JobSpec:
    base: dict[str, object] = {
        "op": M.OP_PING,
        "args": None,
        "selector": J.Selector(zone="z1"),
        "ttl": 3600.0,
        "rate": 1000.0,
        "policy": POLICY,
    }
    base.update(kw)
    return J.JobSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (J.QUEUED, "send", J.SENT),
        (J.QUEUED, "deadline", J.EXPIRED),
        (J.QUEUED, "cancel", J.CANCELED),
        (J.SENT, "resend", J.SENT),
        (J.SENT, "ack_ok", J.SUCCEEDED),
        (J.SENT, "ack_failed", J.FAILED),
        (J.SENT, "timeout", J.TIMED_OUT),
        (J.SENT, "cancel", J.SENT),
        (J.QUEUED, "ack_ok", None),
        (J.QUEUED, "resend", None),
        (J.SENT, "send", None),
        (J.SENT, "deadline", None),
    ]
    + [(t, e, None) for t in sorted(J.TERMINAL) for e in ("send", "resend", "ack_ok", "cancel")],
)
def test_transition_table(state: str, event: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(J.InvalidTransition):
            J.transition(state, event)
    else:
        assert J.transition(state, event) == expected


def _sent(now: float = 100.0) -> J.Execution:
    return J.on_send(J.Execution(1, "d1"), (7, 1), int(now) + 600, POLICY, now)


@pytest.mark.parametrize(
    ("ex", "deadline", "canceled", "online", "now", "state", "action"),
    [
        # queued: sent when online, waits while offline, expires at the job's deadline
        (J.Execution(1, "d1"), 1000.0, False, True, 100.0, J.QUEUED, "send"),
        (J.Execution(1, "d1"), 1000.0, False, False, 100.0, J.QUEUED, None),
        (J.Execution(1, "d1"), 1000.0, False, False, 1000.0, J.EXPIRED, None),
        (J.Execution(1, "d1"), 1000.0, True, True, 100.0, J.CANCELED, None),
        # sent: nothing before the ack timeout, a resend after it (online only)
        (_sent(), 1000.0, False, True, 104.0, J.SENT, None),
        (_sent(), 1000.0, False, True, 105.0, J.SENT, "resend"),
        (_sent(), 1000.0, False, False, 105.0, J.SENT, None),
        # the command expired on the device: timed out, never a new command
        (_sent(), 1e9, False, True, 700.0, J.TIMED_OUT, None),
        # canceled: no more retries, times out at its timer
        (_sent(), 1000.0, True, True, 105.0, J.TIMED_OUT, None),
        # terminal: nothing happens
        (J.Execution(1, "d1", state=J.SUCCEEDED), 0.0, True, True, 1e9, J.SUCCEEDED, None),
    ],
)
def test_every_non_terminal_state_has_a_timer(
    ex: J.Execution,
    deadline: float,
    canceled: bool,
    online: bool,
    now: float,
    state: str,
    action: str | None,
) -> None:
    new, act = J.due(ex, POLICY, deadline, canceled, online, now)
    assert (new.state, act) == (state, action)


def test_retries_back_off_and_are_bounded() -> None:
    ex = _sent(100.0)
    assert ex.next_at == 105.0
    ex = J.on_resend(ex, POLICY, 105.0)
    assert (ex.attempts, ex.next_at) == (2, 115.0)
    ex = J.on_resend(ex, POLICY, 115.0)
    assert (ex.attempts, ex.next_at) == (3, 135.0)
    new, act = J.due(ex, POLICY, 1e9, False, True, 135.0)
    assert (new.state, act) == (J.TIMED_OUT, None)


def test_an_execution_is_bound_to_one_command_forever() -> None:
    ex = _sent()
    with pytest.raises(J.InvalidTransition):
        J.on_send(ex, (7, 2), 999, POLICY, 101.0)
    assert J.on_resend(ex, POLICY, 105.0).cmd == (7, 1)


@pytest.mark.parametrize(
    ("result", "state"), [(M.R_OK, J.SUCCEEDED), (M.R_BUSY, J.FAILED), (M.R_REPLAY, J.FAILED)]
)
def test_ack_settles_with_the_device_result_code(result: int, state: str) -> None:
    ex = J.on_ack(_sent(), result, 101.0)
    assert (ex.state, ex.result) == (state, result)
    assert J.on_ack(ex, M.R_OK, 102.0) is ex  # a redelivered ACK changes nothing


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "empty selector"),
        ({"kind": "toaster"}, "unknown kind"),
        ({"zone": "", "kind": "ap"}, "zone must be non-empty"),
        ({"tags": (("k", ""),)}, "tag is key=value"),
        ({"devices": ("",)}, "device ids"),
    ],
)
def test_bad_selectors_say_the_fix(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        J.Selector(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"op": M.OP_ROTATE_KEY}, "cannot be a job"),
        ({"op": 99}, "cannot be a job"),
        ({"ttl": 0}, "ttl"),
        ({"rate": 0}, "rate"),
    ],
)
def test_bad_job_specs_say_the_fix(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**kw)


def test_selector_criteria_are_anded_and_round_trip_json() -> None:
    sel = J.Selector(zone="z1", kind="ap", tags=(("floor", "2"),), version="1.2")
    good = dev("a", tags={"floor": "2"}, firmware="1.2")
    assert sel.matches(good)
    assert not sel.matches(dev("b", tags={"floor": "3"}, firmware="1.2"))
    assert not sel.matches(dev("c", zone="z2", tags={"floor": "2"}, firmware="1.2"))
    assert not sel.matches(dev("d", tags={"floor": "2"}, firmware="1.1"))
    assert not sel.matches(J.DeviceView("e", "s", "z1", "ap", {"floor": "2"}, "1.2", active=False))
    assert J.Selector.from_json(sel.to_json()) == sel
    with pytest.raises(ValueError, match="unknown selector field"):
        J.Selector.from_json({"zoen": "z1"})


def test_a_job_reaches_exactly_its_zone_and_offline_devices_wait_until_online() -> None:
    book = J.JobBook()
    job = J.Job(1, spec(), created=0.0)
    added = book.add_job(job, [dev("a"), dev("b", online=False), dev("c", zone="z2")], 0.0)
    assert sorted(e.device for e in added) == ["a", "b"]
    online = {"a"}
    acts = book.tick(0.0, lambda d: d in online)
    assert acts == [J.Action("send", 1, "a")]
    book.sent(1, "a", (5, 1), 600, 0.0)
    book.acked(1, "a", M.R_OK, 0.5)
    assert book.tick(1.0, lambda d: d in online) == []
    online.add("b")  # its BIRTH arrives
    assert book.tick(2.0, lambda d: d in online) == [J.Action("send", 1, "b")]
    book.sent(1, "b", (5, 2), 602, 2.0)
    book.acked(1, "b", M.R_OK, 2.1)
    book.tick(2.2, lambda d: True)
    assert job.state == J.DONE
    assert J.summary(book.execs.values())["states"][J.SUCCEEDED] == 2


def test_past_its_ttl_a_job_expires_for_devices_that_never_came_back() -> None:
    book = J.JobBook()
    job = J.Job(1, spec(ttl=60.0), created=0.0)
    book.add_job(job, [dev("gone", online=False)], 0.0)
    assert book.tick(59.0, lambda d: False) == []
    book.tick(60.0, lambda d: False)
    assert book.execs[(1, "gone")].state == J.EXPIRED
    assert job.state == J.DONE


def test_queued_jobs_reach_a_device_one_at_a_time_in_job_order() -> None:
    book = J.JobBook()
    book.add_job(J.Job(1, spec(), created=0.0), [dev("a", online=False)], 0.0)
    book.add_job(J.Job(2, spec(op=M.OP_DIAGNOSTICS), created=0.0), [dev("a", online=False)], 0.0)
    assert book.tick(1.0, lambda d: True) == [J.Action("send", 1, "a")]
    book.sent(1, "a", (5, 1), 600, 1.0)
    assert book.tick(1.1, lambda d: True) == []  # job 2 waits for job 1's ACK
    book.acked(1, "a", M.R_OK, 1.2)
    assert book.tick(1.3, lambda d: True) == [J.Action("send", 2, "a")]


def test_rate_limits_sends_per_job() -> None:
    book = J.JobBook()
    devices = [dev(f"d{i:02}") for i in range(20)]
    book.add_job(J.Job(1, spec(rate=5.0), created=0.0), devices, 0.0)
    first = book.tick(0.0, lambda d: True)
    assert len(first) == 1  # starts with one token
    for a in first:
        book.sent(1, a.device, (5, 1), 600, 0.0)
    second = book.tick(1.0, lambda d: True)
    assert len(second) == 5


def test_cancel_stops_queued_executions_and_retries() -> None:
    book = J.JobBook()
    job = J.Job(1, spec(), created=0.0)
    book.add_job(job, [dev("a"), dev("b", online=False)], 0.0)
    [act] = book.tick(0.0, lambda d: d == "a")
    book.sent(1, act.device, (5, 1), 600, 0.0)
    book.cancel(1, 1.0)
    assert book.execs[(1, "b")].state == J.CANCELED
    assert book.tick(10.0, lambda d: True) == []  # no resend after cancel
    assert book.execs[(1, "a")].state == J.TIMED_OUT


def test_a_continuous_job_picks_up_devices_that_match_later() -> None:
    book = J.JobBook()
    book.add_job(J.Job(1, spec(continuous=True), created=0.0), [dev("a")], 0.0)
    book.add_job(J.Job(2, spec(), created=0.0), [dev("a")], 0.0)
    added = book.discover([dev("a"), dev("new"), dev("elsewhere", zone="z9")], 5.0)
    assert [(e.job, e.device) for e in added] == [(1, "new")]


def test_changes_are_reported_once_for_persistence() -> None:
    book = J.JobBook()
    book.add_job(J.Job(1, spec(), created=0.0), [dev("a")], 0.0)
    jobs, execs = book.take_changed()
    assert [j.id for j in jobs] == [1] and [e.device for e in execs] == ["a"]
    assert book.take_changed() == ([], [])


def test_a_retried_or_redelivered_command_executes_at_most_once_on_the_device() -> None:
    """End to end without a broker: the controller's book, its issuer and signer, and the
    device's CommandGuard. The first ACK is lost, the book re-sends the SAME bytes, the broker
    also redelivers them: the device executes once and answers the copies with replay."""
    key = bytes(range(32))
    signer = Signer(key)
    issuer = CommandIssuer(epoch=9)
    guard = CommandGuard()
    executed = 0
    book = J.JobBook()
    book.add_job(J.Job(1, spec(), created=1000.0), [dev("d1")], 1000.0)
    payload = b""

    def deliver(now: int) -> int:
        nonlocal executed
        msg = decode(payload, cmd.topic, signer)
        code = guard.admit(msg.epoch, msg.seq, msg.ts, msg.body, now)
        if code is None:
            executed += 1
            return M.R_OK
        assert code == "replay"
        return M.R_REPLAY

    [act] = book.tick(1000.0, lambda d: True)
    assert act.kind == "send"
    cmd = issuer.build(signer, "s", "d1", M.OP_PING, None, 1000, POLICY.cmd_ttl)
    payload = cmd.payload
    book.sent(1, "d1", (cmd.epoch, cmd.seq), cmd.expires, 1000.0)
    deliver(1000)  # executed; its ACK is lost
    t = 1000.0
    for _ in range(POLICY.max_attempts - 1):
        t = book.execs[(1, "d1")].next_at
        [act] = book.tick(t, lambda d: True)
        assert act.kind == "resend"
        book.resent(1, "d1", t)
        assert deliver(int(t)) == M.R_REPLAY  # the same bytes: refused
        assert deliver(int(t)) == M.R_REPLAY  # a broker redelivery too
    assert executed == 1
    assert issuer.seq == 1  # no second command was ever built
    book.acked(1, "d1", M.R_REPLAY, t)
    assert book.execs[(1, "d1")].cmd == (cmd.epoch, cmd.seq)
