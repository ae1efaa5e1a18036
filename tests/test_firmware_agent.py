"""The agent on the real micropython binary against a real Mosquitto: reports verify on a CPython
observer, commands are acked, bad/expired/replayed commands are refused and counted, a killed
agent's broker publishes its DEATH, config survives a reboot, a bad config is refused."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocol import messages as M
from protocol.envelope import decode
from protocol.replay import ReplayWindow
from tests.firmware.harness import Agent, Observer, key_for, make_flash
from tests.support.broker import Broker
from tests.support.upy import debian_hosts

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def obs(broker: Broker) -> Iterator[Observer]:
    o = Observer(broker.port).start()
    yield o
    o.stop()


@pytest.fixture
def agents() -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def start(flash: Path, **kw: Any) -> Agent:
        a = Agent(flash, **kw).start()
        started.append(a)
        return a

    yield start
    for a in started:
        a.kill()


def test_reports_verify_and_decode(
    broker: Broker, obs: Observer, agents: Any, tmp_path: Path
) -> None:
    a = agents(make_flash(tmp_path, "ap-1", broker.port))
    agents(make_flash(tmp_path, "sn-1", broker.port, kind="sensor"))
    obs.wait(
        lambda: len(obs.reports("ap-1")) >= 5 and len(obs.reports("sn-1")) >= 5,
        20,
        "5 reports from each agent",
    )
    assert not obs.bad, obs.bad
    birth = obs.items("ap-1", "birth")[0].msg
    body = birth.body
    assert isinstance(body, dict)
    assert body[M.B_BOARD] == "sim" and body[M.B_KIND] == "ap"
    assert body[M.B_SAFE_MODE] is False and len(body[M.B_CONFIG_HASH]) == 8
    assert body[M.B_BOOT_REASON] == M.BOOT_POWER_ON and birth.epoch == 1
    window = ReplayWindow()
    for s in obs.reports("ap-1"):
        window.accept(s.msg.epoch, s.msg.seq)  # each (epoch, seq) once
        metrics = s.msg.body
        assert isinstance(metrics, dict) and s.msg.type == M.REPORT
        assert len(metrics) >= 10 and set(range(16, 30)) <= set(metrics)
        assert s.msg.ts is not None and abs(s.msg.ts - time.time()) < 30
    sm = obs.reports("sn-1")[-1].msg.body
    assert isinstance(sm, dict) and set(range(48, 64)) <= set(sm)
    assert 300 < sm[48] < 900  # noise LAeq in 0.1 dBA
    seqs = [s.msg.seq for s in obs.reports("ap-1")]
    assert seqs == sorted(seqs)
    # DEATH is reserved as BIRTH - 1: the first birth of boot 1 is seq 2
    assert birth.seq == 2
    assert a.proc is not None and a.proc.poll() is None


def test_commands_acked_and_refusals_counted(
    broker: Broker, obs: Observer, agents: Any, tmp_path: Path
) -> None:
    agents(make_flash(tmp_path, "ap-2", broker.port))
    # the agent subscribes before it publishes birth, on one connection the broker reads in
    # order: once birth is seen, a command reaches it
    obs.wait(lambda: obs.items("ap-2", "birth"), 20, "birth")
    _, seq, _ = obs.command("ap-2", M.OP_PING)
    assert obs.ack_for("ap-2", seq).body[M.A_RESULT] == M.R_OK  # type: ignore[index]
    # replay the very same signed bytes: refused, counted
    _, seq2, payload = obs.command("ap-2", M.OP_PING)
    obs.ack_for("ap-2", seq2)
    obs.publish_raw("idu/1/porto/ap-2/cmd", payload)
    # expired: issued 100 s ago with a 60 s lifetime
    _, seq3, _ = obs.command("ap-2", M.OP_PING, ttl=60, ts=int(time.time()) - 100)
    # bad tag: signed with another key
    _, seq4, _ = obs.command("ap-2", M.OP_PING, key=key_for("intruder"))
    assert obs.ack_for("ap-2", seq3).body[M.A_RESULT] == M.R_EXPIRED  # type: ignore[index]
    assert obs.ack_for("ap-2", seq4).body[M.A_RESULT] == M.R_BAD_TAG  # type: ignore[index]
    replay_acks = obs.wait(
        lambda: (
            [s for s in obs.items("ap-2", "ack") if s.msg.body[M.A_CMD_SEQ] == seq2]
            if len([s for s in obs.items("ap-2", "ack") if s.msg.body[M.A_CMD_SEQ] == seq2]) >= 2
            else None
        ),
        10,
        "ack of the replayed command",
    )
    assert replay_acks[1].msg.body[M.A_RESULT] == M.R_REPLAY
    _, seq5, _ = obs.command("ap-2", M.OP_DIAGNOSTICS)
    diag = obs.ack_for("ap-2", seq5).body[M.A_DATA]  # type: ignore[index]
    assert diag[M.DG_REFUSED_BAD_TAG] == 1
    assert diag[M.DG_REFUSED_EXPIRED] == 1
    assert diag[M.DG_REFUSED_REPLAY] == 1
    assert 0 < diag[M.DG_HEAP_HIGH_WATER] <= diag[M.DG_HEAP_SIZE]
    _, seq6, _ = obs.command("ap-2", 99)
    assert obs.ack_for("ap-2", seq6).body[M.A_RESULT] == M.R_UNKNOWN_OP  # type: ignore[index]


def test_set_config_persists_across_reboot(
    broker: Broker, obs: Observer, agents: Any, tmp_path: Path
) -> None:
    a = agents(make_flash(tmp_path, "ap-3", broker.port))
    obs.wait(lambda: obs.items("ap-3", "birth"), 20, "birth")  # and so subscribed
    hash1 = obs.items("ap-3", "birth")[0].msg.body[M.B_CONFIG_HASH]  # type: ignore[index]
    _, seq, _ = obs.command("ap-3", M.OP_SET_CONFIG, {M.G_INTERVAL: 2, M.G_METRICS: [1, 16, 17]})
    assert obs.ack_for("ap-3", seq).body[M.A_RESULT] == M.R_OK  # type: ignore[index]
    obs.wait(lambda: set(obs.reports("ap-3")[-1].msg.body) == {1, 16, 17}, 10, "new metric set")
    _, bad, _ = obs.command("ap-3", M.OP_SET_CONFIG, {M.G_INTERVAL: "fast"})
    assert obs.ack_for("ap-3", bad).body[M.A_RESULT] == M.R_BAD_ARGS  # type: ignore[index]
    _, seq, _ = obs.command("ap-3", M.OP_REBOOT)
    assert obs.ack_for("ap-3", seq).body[M.A_RESULT] == M.R_OK  # type: ignore[index]
    births = obs.wait(
        lambda: len(obs.items("ap-3", "birth")) >= 2 and obs.items("ap-3", "birth"),
        20,
        "birth after reboot",
    )
    b2 = births[1].msg
    assert b2.epoch == 2 and b2.body[M.B_BOOT_REASON] == M.BOOT_SOFT_RESET
    assert b2.body[M.B_INTERVAL] == 2 and b2.body[M.B_CONFIG_HASH] != hash1
    deaths = [s.msg for s in obs.items("ap-3", "death")]
    assert deaths and deaths[0].body[M.D_REASON] == M.DEATH_REBOOT
    assert deaths[0].seq == births[0].msg.seq - 1
    obs.wait(lambda: [s for s in obs.reports("ap-3") if s.msg.epoch == 2], 10, "reports")
    assert set(obs.reports("ap-3")[-1].msg.body) == {1, 16, 17}
    assert a.proc is not None and a.proc.poll() is None


def test_sigkill_publishes_death(
    broker: Broker, obs: Observer, agents: Any, tmp_path: Path
) -> None:
    a = agents(make_flash(tmp_path, "ap-4", broker.port, keepalive=2))
    obs.wait(lambda: obs.items("ap-4", "birth"), 20, "birth")
    birth = obs.items("ap-4", "birth")[0].msg
    a.kill(signal.SIGKILL)
    death = obs.wait(lambda: obs.items("ap-4", "death"), 15, "death will")[0].msg
    assert death.body[M.D_REASON] == M.DEATH_LOST  # type: ignore[index]
    assert (death.epoch, death.seq) == (birth.epoch, birth.seq - 1)
    # the will is retained: whoever subscribes while the device is gone learns it is dead ...
    retained = _retained(broker.port, "idu/1/porto/ap-4/death")
    assert len(retained) == 1 and decode(retained[0], "idu/1/porto/ap-4/death").seq == death.seq
    # ... and the device, back, clears it after its birth
    a.start()
    obs.wait(lambda: len(obs.items("ap-4", "birth")) >= 2, 20, "birth after restart")
    obs.wait(lambda: obs.cleared, 10, "the retained DEATH deleted")
    assert _retained(broker.port, "idu/1/porto/ap-4/death") == []


def _retained(port: int, topic: str) -> list[bytes]:
    """Payloads a fresh subscriber to topic receives as retained. The broker sends them right
    after the SUBACK, before anything published later on the same connection: so they have all
    arrived once an echo published after the SUBACK comes back."""
    got: list[bytes] = []
    echo = f"test/retained-echo/{time.monotonic_ns()}"
    done = threading.Event()

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        if m.topic == echo:
            done.set()
        elif m.retain:
            got.append(bytes(m.payload))

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"retained-{time.monotonic_ns()}")
    c.on_message = on_message
    c.on_subscribe = lambda cl, *_: cl.publish(echo, b"", qos=1)  # after both SUBACKs
    c.connect("127.0.0.1", port)
    c.subscribe([(topic, 1), (echo, 1)])
    c.loop_start()
    try:
        assert done.wait(10), "no echo from the broker"
    finally:
        c.loop_stop()
        c.disconnect()
    return got


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": "abcd"}, "key"),
        ({"broker": {"host": "127.0.0.1"}}, "broker.port"),
        ({"kind": "lamp"}, "kind"),
        ({"device": "Bad_Id"}, "device"),
        ({"interval": "60"}, "interval"),
    ],
)
def test_bad_config_is_refused_naming_the_field(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    flash = make_flash(tmp_path, "ap-9", 1, **change)
    a = Agent(flash).start()
    assert a.wait_exit(30) == 1
    out = a.console()
    assert "refusing to start" in out and f"'{field}'" in out, out


def test_missing_config_is_refused(tmp_path: Path) -> None:
    flash = tmp_path / "empty"
    flash.mkdir()
    a = Agent(flash).start()
    assert a.wait_exit(30) == 1
    assert "config.json not found" in a.console()


def test_agent_reaches_an_ipv4_broker_named_localhost_that_resolves_to_ipv6_first(
    tmp_path: Path, broker: Broker, obs: Observer, agents: Callable[..., Agent]
) -> None:
    """On Debian's default /etc/hosts "localhost" is ::1 first; the broker listens on 127.0.0.1
    only. The link must try the next address (with its own family) and come up."""
    flash = make_flash(tmp_path, "ap-6", broker.port)
    cfg = json.loads((flash / "config.json").read_text())
    cfg["broker"]["host"] = "localhost"
    (flash / "config.json").write_text(json.dumps(cfg))
    a = agents(flash, prefix=debian_hosts(tmp_path))
    obs.wait(lambda: obs.items("ap-6", "birth"), 30, "BIRTH over 127.0.0.1 after ::1 refused")
    assert a.proc is not None and a.proc.poll() is None, a.console()
