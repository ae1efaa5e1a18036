"""Outages: reports made while the broker is down are buffered on flash and all arrive, once
each and in order, after it comes back; the buffer survives the agent being killed mid-outage."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol import messages as M
from tests.firmware.harness import (
    Agent,
    Observer,
    check_stream,
    make_flash,
    missing_seqs,
    persistent_broker,
    ring_count,
    ring_entries,
)
from tests.support.broker import Broker

pytestmark = pytest.mark.timeout(120)


def test_broker_outage_every_report_once_in_order(
    broker_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = persistent_broker(broker_factory)
    obs = Observer(broker.port, persistent=True).start()
    flash = make_flash(tmp_path, "ap-o1", broker.port, keepalive=5)
    agent = Agent(flash).start()
    try:
        obs.wait(lambda: len(obs.reports("ap-o1")) >= 10, 20, "10 reports")
        broker.stop()
        before = len(obs.reports("ap-o1"))
        # about 40 reports made offline (20 per second), waiting on flash
        obs.wait(lambda: ring_count(flash) >= 40, 20, "40 reports buffered")
        broker.start()
        obs.wait(lambda: len(obs.items("ap-o1", "birth")) >= 2, 20, "birth after the outage")
        birth2 = obs.items("ap-o1", "birth")[1].msg
        buffered = birth2.body[M.B_BUFFERED]  # type: ignore[index]
        assert buffered >= 20
        # live reports follow the replayed backlog: wait until well past the outage
        obs.wait(
            lambda: len(check_stream(obs, "ap-o1")[0]) >= before + buffered + 20,
            20,
            "the backlog and live reports after it",
        )
    finally:
        agent.kill(signal.SIGKILL)
        obs.stop()
    order, dups = check_stream(obs, "ap-o1")
    last = order[-1][1]
    assert all(e == 1 for e, _ in order)
    assert [q for _, q in order] == sorted(q for _, q in order), "reports out of order"
    assert missing_seqs(obs, "ap-o1", 1, last) == []
    assert dups <= 1  # only the QoS 1 redelivery of the one report in flight at the cut
    assert len(order) >= before + buffered + 20


def test_buffer_survives_kill_mid_outage(
    broker_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = persistent_broker(broker_factory)
    obs = Observer(broker.port, persistent=True).start()
    flash = make_flash(tmp_path, "ap-o2", broker.port, keepalive=5)
    agent = Agent(flash).start()
    try:
        obs.wait(lambda: len(obs.reports("ap-o2")) >= 5, 20, "5 reports")
        broker.stop()
        obs.wait(lambda: ring_count(flash) >= 15, 20, "15 reports buffered")
        agent.kill(signal.SIGKILL)
        buffered = ring_entries(flash)
        assert len(buffered) >= 10
        assert all(m.epoch == 1 and m.type == M.REPORT for m in buffered)
        agent.start()  # reboots into epoch 2 with the broker still down
        obs.wait(lambda: "boot epoch 2" in agent.console(), 20, "the agent's second boot")
        broker.start()
        obs.wait(
            lambda: [s for s in obs.items("ap-o2", "birth") if s.msg.epoch == 2],
            20,
            "birth of epoch 2",
        )
        want = {(m.epoch, m.seq) for m in buffered}
        obs.wait(
            lambda: want <= {(s.msg.epoch, s.msg.seq) for s in obs.reports("ap-o2")},
            20,
            "every buffered report of epoch 1",
        )
        birth = next(s.msg for s in obs.items("ap-o2", "birth") if s.msg.epoch == 2)
        assert birth.body[M.B_BUFFERED] >= len(buffered)  # type: ignore[index]
        assert birth.body[M.B_BOOT_REASON] == M.BOOT_CRASH  # type: ignore[index]
        obs.wait(
            lambda: [s for s in obs.reports("ap-o2") if s.msg.epoch == 2 and s.msg.seq > birth.seq],
            20,
            "live reports of epoch 2",
        )
    finally:
        agent.kill()
        obs.stop()
    order, dups = check_stream(obs, "ap-o2")
    e1 = max(q for e, q in order if e == 1)
    assert e1 == max(m.seq for m in buffered)
    # epoch 1 = what arrived before the cut + what was on flash at the kill, nothing lost
    # (the only other gap is the DEATH/BIRTH pair reserved for a reconnect that never happened)
    gaps = missing_seqs(obs, "ap-o2", 1, e1)
    assert gaps == [] or (len(gaps) == 2 and gaps[1] == gaps[0] + 1), gaps
    e2 = [q for e, q in order if e == 2]
    assert e2 == sorted(e2) and missing_seqs(obs, "ap-o2", 2, max(e2)) == []
    # epoch 1's backlog (older) is sent before epoch 2's reports
    assert order.index((1, e1)) < order.index((2, min(e2)))
    assert dups <= 1
