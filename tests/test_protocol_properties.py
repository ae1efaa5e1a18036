"""Property tests (hypothesis) for protocol/: round trips for every message type, a total decoder
(only ProtocolError, whatever the bytes), and the CPython fast parse path naming exactly the same
outcome as the pure codec that MicroPython runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codec, envelope, topics
from protocol import messages as M
from protocol.envelope import TRAILER, Message, decode, encode
from protocol.errors import CODES, ProtocolError
from protocol.sign import Signer

KEY = bytes(range(32))
SIGNER = Signer(KEY)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u32 = st.integers(0, 0xFFFFFFFF)
ints = st.integers(-(2**63), 2**64 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)  # section 4: finite only
short_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
ids = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,31}\Z")
scalars = st.none() | st.booleans() | ints | floats | short_text | st.binary(max_size=100)


def level(v: object) -> int:
    """Depth index of the deepest item when v itself is at 0 (the codec allows up to 4)."""
    if isinstance(v, dict):
        return max((1 + max(level(k), level(x)) for k, x in v.items()), default=0)
    if isinstance(v, list):
        return max((1 + level(x) for x in v), default=0)
    return 0


values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=6) | st.dictionaries(ints, c, max_size=6),
    max_leaves=20,
)


def same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _sorted(v: object) -> object:
    if isinstance(v, dict):
        return {k: _sorted(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [_sorted(x) for x in v]
    return v


@FAST
@given(values.filter(lambda v: level(v) <= 4))
def test_codec_round_trip_and_matches_msgpack(v: object) -> None:
    packed = codec.packb(v, limit=1 << 16)
    back = codec.unpackb(packed)
    assert same(back, _sorted(v))
    assert packed == msgpack.packb(_sorted(v), use_bin_type=True)


@FAST
@given(values, st.integers(5, 8))
def test_codec_refuses_to_build_too_deep_values(v: object, wraps: int) -> None:
    for _ in range(wraps):
        v = [v]
    with pytest.raises(ProtocolError) as e:
        codec.packb(v, limit=1 << 16)
    assert e.value.code == "too_deep"


safe_ints = st.integers(-(2**53 - 1), 2**53 - 1)  # section 7: what a double holds exactly
metric_map = st.dictionaries(st.integers(0, 65535), st.none() | safe_ints | floats, max_size=12)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
extra = st.dictionaries(st.integers(10, 40), scalars, max_size=3)


def _ranges(steps: list[tuple[int, int, int]]) -> list[int]:
    """Flat CONFIRM ranges from (epoch step, seq gap, count) steps: ascending and disjoint."""
    flat: list[int] = []
    epoch, nxt = 0, 0
    for de, gap, count in steps:
        if de:
            epoch, nxt = epoch + de, 0
        flat += [epoch, nxt + gap, count]
        nxt += gap + count + 1
    return flat


confirm_ranges = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 70000), st.integers(1, 70000)),
    min_size=1,
    max_size=M.MAX_CONFIRM_RANGES,
).map(_ranges)


def body_for(mtype: int) -> st.SearchStrategy[Any]:
    if mtype == M.REPORT:
        return metric_map
    if mtype == M.CONFIRM:
        return st.tuples(confirm_ranges, extra).map(lambda t: {**t[1], M.F_RANGES: t[0]})
    if mtype == M.BATCH:
        return st.lists(st.tuples(u32, metric_map).map(list), min_size=1, max_size=4)
    required = {
        M.BIRTH: {0: short_text, 1: short_text, 2: u8},
        M.DEATH: {0: u8},
        M.EVENT: {0: u16},
        M.ACK: {0: u32, 1: u32, 2: u8},
        M.COMMAND: {0: u32, 1: u32},
        M.CONFIG: {},
        M.OTA: {0: u32},
    }[mtype]
    return st.tuples(st.fixed_dictionaries(required), extra).map(lambda t: {**t[1], **t[0]})


def times(mtype: int) -> st.SearchStrategy[tuple[int | None, int | None]]:
    """(ts, up) as section 5 requires: ts on downlink, at least one of them on uplink."""
    if mtype >= M.COMMAND:
        return st.tuples(u32, st.none() | u32)
    return st.tuples(st.none() | u32, st.none() | u32).filter(lambda t: t != (None, None))


messages = st.sampled_from(sorted(M.NAMES)).flatmap(
    lambda t: st.builds(
        lambda e, s, b, tu: Message(t, e, s, b, tu[0], tu[1]), u32, u32, body_for(t), times(t)
    )
)


@FAST
@given(messages, ids, ids)
def test_decode_encode_round_trip_every_type(m: Message, site: str, device: str) -> None:
    tpc = topics.topic(site, device, M.CHANNEL[m.type])
    payload = encode(SIGNER, tpc, m)
    if len(payload) > M.MAX_PACKET[M.CHANNEL[m.type]]:
        with pytest.raises(ProtocolError) as e:
            decode(payload, tpc, SIGNER)
        assert e.value.code == "too_big"
        return
    got = decode(payload, tpc, SIGNER)
    assert got == m
    assert same(got.body, _sorted(m.body))
    assert encode(SIGNER, tpc, got) == payload
    with pytest.raises(ProtocolError) as e:
        decode(payload, tpc, Signer(bytes(32)))
    assert e.value.code == "bad_tag"


@contextmanager
def pure_codec() -> Iterator[None]:
    """The decode path MicroPython takes: protocol.codec only, no msgpack C fast path."""
    saved = envelope.fast_unpack
    envelope.fast_unpack = None
    try:
        yield
    finally:
        envelope.fast_unpack = saved


def outcome(payload: bytes, tpc: str, signer: Signer | None) -> object:
    """("ok", message key) or the error code; anything but ProtocolError propagates and fails."""
    try:
        m = decode(payload, tpc, signer)
    except ProtocolError as e:
        assert e.code in CODES
        return e.code
    return ("ok", repr(m.key()))


def both_paths(payload: bytes, tpc: str, signer: Signer | None) -> object:
    fast = outcome(payload, tpc, signer)
    with pure_codec():
        pure = outcome(payload, tpc, signer)
    assert fast == pure, "CPython fast path and pure codec disagree"
    return fast


channel_topics = st.sampled_from([topics.topic("porto", "ap-0001", c) for c in topics.CHANNELS])


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=3000), channel_topics)
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes, tpc: str) -> None:
    both_paths(data, tpc, SIGNER)
    both_paths(data, tpc, None)


def sealed(tpc: str, unsigned: bytes) -> bytes:
    return unsigned + TRAILER + SIGNER.tag(tpc.encode(), unsigned)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=600), channel_topics)
def test_arbitrary_bytes_with_a_valid_tag(data: bytes, tpc: str) -> None:
    both_paths(sealed(tpc, data), tpc, SIGNER)


heads = st.tuples(st.integers(0, 12), u32, u32, st.none() | u32, st.none() | u32)


def with_head(h: tuple[int, int, int, int | None, int | None], body: bytes) -> bytes:
    w = codec.Writer(bytearray(4096))
    envelope.write_head(w, *h)
    w.extend(body)
    return bytes(w.mv[: w.pos])


@settings(max_examples=600, deadline=None)
@given(heads, st.binary(max_size=400), channel_topics)
def test_valid_head_then_arbitrary_body_bytes(h: Any, body: bytes, tpc: str) -> None:
    both_paths(sealed(tpc, with_head(h, body)), tpc, SIGNER)


@settings(max_examples=400, deadline=None)
@given(heads, values, channel_topics)
def test_valid_head_then_any_msgpack_body(h: Any, body: object, tpc: str) -> None:
    """A well-formed body of any shape: decoded to exactly that body, or refused by name."""
    raw = msgpack.packb(body, use_bin_type=True)
    res = both_paths(sealed(tpc, with_head(h, raw)), tpc, SIGNER)
    if isinstance(res, tuple):
        assert same(decode(sealed(tpc, with_head(h, raw)), tpc, SIGNER).body, body)


# --- replay window and command guard: model-based ---------------------------------------------

from protocol.commands import CommandGuard  # noqa: E402
from protocol.replay import EPOCHS, WINDOW, ReplayWindow  # noqa: E402


class WindowModel:
    """docs/PROTOCOL.md section 9 written with plain sets: the reference for the bitmap code."""

    def __init__(self) -> None:
        self.floor = -1
        self.accepted: dict[int, set[int]] = {}
        self.high: dict[int, int] = {}

    def accept(self, epoch: int, seq: int) -> bool:
        if epoch <= self.floor:
            return False
        if epoch not in self.high:
            if len(self.high) >= EPOCHS and epoch < min(self.high):
                return False
            self.high[epoch] = seq
            self.accepted[epoch] = {seq}
            while len(self.high) > EPOCHS:
                old = min(self.high)
                del self.high[old], self.accepted[old]
                self.floor = max(self.floor, old)
            return True
        high = self.high[epoch]
        if seq > high:
            self.high[epoch] = seq
        elif seq <= high - WINDOW or seq in self.accepted[epoch]:
            return False
        self.accepted[epoch].add(seq)
        return True


near = st.tuples(st.integers(1, 6), st.integers(0, 40))
far = st.tuples(st.integers(0, 8), st.integers(0, 5000))
ops = st.lists(st.one_of(near, far, st.just(("persist", 0))), max_size=200)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_replay_window_matches_the_spec_model(steps: list[tuple[Any, int]]) -> None:
    win, model = ReplayWindow(), WindowModel()
    for epoch, seq in steps:
        if epoch == "persist":  # the controller restarts from its stored window
            win = ReplayWindow.loads(win.dumps())
            continue
        want = model.accept(epoch, seq)
        try:
            win.accept(epoch, seq)
            got = True
        except ProtocolError as e:
            assert e.code == "replay"
            got = False
        assert got == want, (epoch, seq)


@settings(max_examples=200, deadline=None)
@given(st.permutations(range(1, 301)), st.lists(st.integers(1, 300), max_size=50))
def test_backlog_out_of_order_accepted_exactly_once(order: list[int], dups: list[int]) -> None:
    win = ReplayWindow()
    for s in order:
        win.accept(7, s)
    for s in dups:
        with pytest.raises(ProtocolError):
            win.accept(7, s)
    again = ReplayWindow.loads(win.dumps())
    for s in dups:
        with pytest.raises(ProtocolError):
            again.accept(7, s)


commands = st.lists(
    st.tuples(
        st.integers(1, 3),  # epoch
        st.integers(1, 40),  # seq
        st.integers(0, 200),  # issued at (ts offset)
        st.integers(0, 3700),  # ttl
        st.integers(0, 400),  # device clock offset
        st.booleans(),  # persist first
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_command_guard_never_runs_a_command_twice(cmds: list[tuple[int, ...]]) -> None:
    guard = CommandGuard()
    ran: set[tuple[int, int]] = set()
    sent: dict[tuple[int, int], tuple[int, int]] = {}
    for epoch, seq, issued, ttl, clock, persist in cmds:
        # The controller signs one message per (epoch, seq): a repeat is a replay of that message.
        issued, ttl = sent.setdefault((epoch, seq), (issued, ttl))
        if persist:
            guard = CommandGuard.loads(guard.dumps())
        ts = T + issued
        msg = Message(M.COMMAND, epoch, seq, {0: 1, 1: ts + ttl}, ts=ts)
        try:
            guard.accept(msg, T + clock)
        except ProtocolError as e:
            assert e.code in ("replay", "expired", "bad_field")
            if e.code == "bad_field":
                assert ttl > 3600
            continue
        assert ttl <= 3600 and ts + ttl >= max(ts, T + clock)
        assert (epoch, seq) not in ran, "a command ran twice"
        ran.add((epoch, seq))


T = 1763900000


def test_command_guard_clockless_device_refuses_a_replay_after_pruning() -> None:
    """A device without a clock judges expiry by each command's own ts. Once a newer command has
    pruned an older one from the remembered set, a captured copy of the older one must still be
    refused (its ts is old, so by its own clock it never looks expired)."""
    guard = CommandGuard()
    old = Message(M.COMMAND, 1, 2, {0: M.OP_REBOOT, 1: T + 60}, ts=T)
    newer = Message(M.COMMAND, 1, 3, {0: M.OP_PING, 1: T + 160}, ts=T + 100)
    guard.accept(old, None)
    guard.accept(newer, None)
    with pytest.raises(ProtocolError) as e:
        guard.accept(old, None)
    assert e.value.code == "replay"
