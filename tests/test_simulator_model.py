"""The simulator's pure parts: the device model (driven with a fake clock, every message
verified with the shared protocol package), the fault assignment and the scenario format."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import messages as M
from protocol.envelope import Message, decode, encode
from protocol.sign import Signer
from sim import faults as F
from sim.firmware import FIRMWARE, backoff, ring
from sim.model import Behaviour, DeviceModel, DeviceSpec
from sim.scenario import ScenarioError, parse

KEY = bytes(range(32))
T0 = 1_763_900_000.0


def model(kind: str = "ap", **kw: object) -> DeviceModel:
    spec = DeviceSpec("sim-ap-00001", "porto", "foz", kind, KEY, None, 7)
    return DeviceModel(spec, Behaviour(interval=10, jitter=0.0, **kw), T0)  # type: ignore[arg-type]


def run_until_report(m: DeviceModel, start: float) -> float:
    t = start
    for _ in range(100):
        t = max(t, m.next_due())
        if m.tick(t):
            return t
    raise AssertionError("no report in 100 ticks")


def test_firmware_modules_are_the_devices_own_files() -> None:
    assert Path(backoff.__file__) == FIRMWARE / "backoff.py"
    assert Path(ring.__file__) == FIRMWARE / "ring.py"
    # the firmware's full-jitter window: attempt 3 with base 1 s is uniform in [0, 8 s)
    assert backoff.delay_ms(3, 1000, 60000, 0xFFFF) == 7999


def test_connect_reserves_death_then_birth_and_reports_verify() -> None:
    m = model()
    topic, will = m.will(T0)
    death = decode(will, topic.decode(), Signer(KEY))
    assert death.type == M.DEATH and death.seq == 1
    birth, clear = m.connected(T0)[:2]
    b = decode(birth.payload, birth.topic.decode(), Signer(KEY))
    assert (b.type, b.seq, b.epoch) == (M.BIRTH, 2, 1)
    assert clear.payload == b"" and clear.retain
    t = run_until_report(m, T0)
    head = m.head()
    assert head is not None
    rep = decode(head, m.t_rep.decode(), Signer(KEY))
    assert rep.type == M.REPORT and rep.seq == 3 and rep.ts == int(t)
    assert isinstance(rep.body, dict)
    assert sorted(rep.body) == [1, 2, 3, 5, 6, *range(16, 30)]


def test_offline_ring_replays_oldest_first_and_counts_what_overflow_drops() -> None:
    m = model(buffer=4)
    t = T0
    seqs = []
    for _ in range(6):
        t = run_until_report(m, t)
        seqs.append(m.seq)
    out = []
    while (p := m.head()) is not None:
        out.append(decode(p, m.t_rep.decode(), Signer(KEY)).seq)
        m.pop()
    assert out == seqs[2:] and m.ring.dropped == 2


def test_no_clock_reports_uptime_only_until_a_downlink_gives_the_time() -> None:
    m = model(clock=False)
    run_until_report(m, T0)
    rep = decode(m.head() or b"", m.t_rep.decode(), Signer(KEY))
    assert rep.ts is None and rep.up is not None


def command(op: int, seq: int, now: float, args: dict[int, object] | None = None) -> bytes:
    body: dict[int, object] = {M.C_OP: op, M.C_EXPIRES: int(now) + 60}
    if args:
        body[M.C_ARGS] = args
    topic = "idu/1/porto/sim-ap-00001/cmd"
    return encode(Signer(KEY), topic, Message(M.COMMAND, 9, seq, body, ts=int(now)))


def test_commands_are_acked_once_replays_refused_and_reboot_is_a_new_epoch() -> None:
    m = model()
    m.will(T0)
    m.connected(T0)
    topic = m.base + b"cmd"
    outs, reboot = m.downlink(topic, command(M.OP_PING, 1, T0), T0)
    ack = decode(outs[0].payload, outs[0].topic.decode(), Signer(KEY))
    assert ack.body == {0: 9, 1: 1, 2: M.R_OK, 3: {0: 0}} and not reboot
    outs, _ = m.downlink(topic, command(M.OP_PING, 1, T0), T0)
    assert decode(outs[0].payload, outs[0].topic.decode(), Signer(KEY)).body[2] == M.R_REPLAY  # type: ignore[index]
    forged = bytearray(command(M.OP_PING, 2, T0))
    forged[-1] ^= 1
    outs, _ = m.downlink(topic, bytes(forged), T0)
    assert decode(outs[0].payload, outs[0].topic.decode(), Signer(KEY)).body[2] == M.R_BAD_TAG  # type: ignore[index]
    outs, _ = m.downlink(topic, command(M.OP_SET_CONFIG, 3, T0, {M.G_INTERVAL: 5}), T0)
    assert [o.kind for o in outs] == ["ack", "event"] and m.cfg["interval"] == 5
    outs, reboot = m.downlink(topic, command(M.OP_REBOOT, 4, T0), T0)
    assert reboot
    goodbye = m.goodbye(T0)
    d = decode(goodbye.payload, goodbye.topic.decode(), Signer(KEY))
    assert d.body == {0: M.DEATH_REBOOT} and d.seq == 1 and goodbye.retain
    m.boot(T0 + 1, M.BOOT_SOFT_RESET)
    assert m.epoch == 2 and m.seq == 0 and m.cfg["interval"] == 5
    outs, _ = m.downlink(topic, command(M.OP_PING, 1, T0 + 1), T0 + 1)  # guard is on flash
    assert decode(outs[0].payload, outs[0].topic.decode(), Signer(KEY)).body[2] == M.R_REPLAY  # type: ignore[index]


def test_faults_are_reproducible_from_the_seed() -> None:
    knobs = F.FaultKnobs(flap=0.1, no_clock=0.2, power_loss=0.05)
    a = F.assign(1000, knobs, 42, 300)
    assert a == F.assign(1000, knobs, 42, 300) and a != F.assign(1000, knobs, 43, 300)
    assert sum(f.no_clock for f in a) == 200 and sum(f.flap_every is not None for f in a) == 100


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[faults]\nflap = 2\n", "x.toml:2: faults.flap = 2.0: a fraction of the fleet, use 0..1"),
        ("[faults]\nwobble = 1\n", "x.toml:2: faults.wobble: unknown knob; allowed: flap,"),
        ('[[at]]\nt = 5\naction = "explode"\n', "x.toml:3: at[1].action = 'explode': use one of"),
        ('[[at]]\nt = 5\naction = "rollout"\n', "x.toml:3: at[1].action = 'rollout': OTA is not"),
        ('[[at]]\naction = "kill"\n', "x.toml:1: at[1]: t is missing"),
        (
            '[[at]]\nt = 1\naction = "kill"\n\n[[at]]\nt = -3\naction = "kill"\n',
            "x.toml:6: at[2].t",
        ),
        ('[[at]]\nt = 1\naction = "kill"\nfraction = 0\n', "x.toml:4: at[1].fraction = 0: use"),
        ('[[at]]\nt = 1\naction = "flap"\noff = 3\n', "x.toml:4: at[1].off: not a field of 'flap'"),
        ('[[at]]\nt = 1\naction = "command"\nop = "format"\n', "x.toml:4: at[1].op = 'format'"),
        ("seed = -1\n", "x.toml:1: seed = -1: use a whole number >= 0"),
        ("[run]\ndevices = 3\n", "x.toml:1: unknown key 'run'"),
        ("[[at]\n", "x.toml:1: not valid TOML"),
    ],
)
def test_scenario_errors_name_the_line_the_field_and_the_fix(text: str, error: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(text, "x.toml")
    assert str(e.value).startswith(error), str(e.value)
    assert "\n" not in str(e.value)


def test_a_valid_scenario_sorts_its_timeline_and_checks_the_duration() -> None:
    s = parse(
        'seed = 4\n[faults]\nflap = 0.1\n[[at]]\nt = 120\naction = "kill"\nfraction = 0.1\n'
        '[[at]]\nt = 60\naction = "restart-broker"\ndown = 2\n',
        "ok.toml",
    )
    assert [a.action for a in s.timeline] == ["restart-broker", "kill"] and s.seed == 4
    assert s.faults.flap == 0.1
    s.check_duration(200)
    with pytest.raises(ScenarioError) as e:
        s.check_duration(100)
    assert str(e.value).startswith("ok.toml:4: at[1].t = 120 is not before the end of the run")
