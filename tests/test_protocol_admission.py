"""The admission invariant (issue 10 item 4), fuzzed: every payload either decodes to a message
the store can hold, or is refused with a ProtocolError whose code the spec names; and a message
that decodes is stored exactly as sent. The oracle below is written from docs/PROTOCOL.md
(sections 4, 5, 7), not from protocol/envelope.py, and payloads are biased to the edges a loose
reading let through (2**53+1, 2**63, -1 in uint fields, NaN, U+0000, nil optional fields, no time).
The long soak (10**6 payloads against a live controller) is benchmarks' job, not this test's."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller import registry
from controller.config import StoreConfig
from controller.devices import DeviceCache
from controller.domain.ingest import IngestCore, Rejected
from controller.domain.records import Batch
from controller.domain.timeline import window_start
from controller.keys import MasterKey
from controller.store import Store, open_store
from protocol import messages as M
from protocol.envelope import decode, seal, write_head
from protocol.errors import CODES, ProtocolError
from protocol.metrics import REGISTRY
from protocol.sign import Signer
from protocol.vectors import value_to_json
from protocol.writer import Writer

SAFE = 2**53 - 1
NAN, INF = float("nan"), float("inf")

# --- the oracle: docs/PROTOCOL.md read on its own ------------------------------------------------

U8, U16, U32 = 2**8 - 1, 2**16 - 1, 2**32 - 1
# section 7 tables: key -> (kind, required); kinds: a uint maximum, a type, or ("bin", n)
SPEC: dict[int, dict[int, tuple[object, bool]]] = {
    M.BIRTH: {
        0: (str, True),
        1: (str, True),
        2: (U8, True),
        3: (("bin", 8), False),
        4: (bool, False),
        5: (str, False),
        6: (U32, False),
        7: (U32, False),
        8: (U8, False),
    },
    M.DEATH: {0: (U8, True)},
    M.EVENT: {0: (U16, True), 1: (U8, False), 2: (str, False), 3: (dict, False)},
    M.ACK: {0: (U32, True), 1: (U32, True), 2: (U8, True), 3: (dict, False)},
    M.COMMAND: {0: (U32, True), 1: (U32, True)},  # downlink: required fields only
    M.CONFIG: {},
    M.OTA: {0: (U32, True)},
}


def values_ok(v: object) -> bool:
    """Section 4's value rules, everywhere: finite floats, text without U+0000."""
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, str):
        return "\x00" not in v
    if isinstance(v, dict):
        return all(values_ok(x) for x in v.values())
    if isinstance(v, list):
        return all(values_ok(x) for x in v)
    return True


def is_uint(v: object, top: int) -> bool:
    return type(v) is int and 0 <= v <= top


def field_ok(v: object, kind: object) -> bool:
    if isinstance(kind, tuple):
        return type(v) is bytes and len(v) == kind[1]
    if isinstance(kind, int):
        return is_uint(v, kind)
    return type(v) is kind


def metrics_ok(m: object) -> bool:
    return type(m) is dict and all(
        is_uint(k, 0xFFFF)
        and (v is None or type(v) is float or (type(v) is int and -SAFE <= v <= SAFE))
        for k, v in m.items()
    )


def confirm_ok(body: object) -> bool:
    """Section 16: {0: [epoch, first, count, ...]}, 1..21 triples of uint32 (count >= 1, the
    range inside uint32), each starting after the previous one ends."""
    if type(body) is not dict or type(body.get(0)) is not list:
        return False
    flat = body[0]
    if not 1 <= len(flat) <= 3 * M.MAX_CONFIRM_RANGES or len(flat) % 3:
        return False
    end = (-1, -1)
    for e, f, n in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
        if not (is_uint(e, U32) and is_uint(f, U32) and type(n) is int and n >= 1):
            return False
        if f + n - 1 > U32 or (e, f) <= end:
            return False
        end = (e, f + n - 1)
    return True


def expected(mtype: int, ts: object, up: object, body: object) -> str | None:
    """The code the spec names for a sealed, well-formed envelope of these fields (None: valid).
    Only for what the generator varies: values, field types and ranges, time fields."""
    if not values_ok(body):
        return "bad_type"
    if not (is_uint(ts, U32) or ts is None) or not (is_uint(up, U32) or up is None):
        return "bad_field"
    if ts is None and (up is None or mtype >= M.COMMAND):
        return "bad_field"
    if mtype == M.REPORT:
        return None if metrics_ok(body) else "bad_field"
    if mtype == M.BATCH:
        ok = (
            type(body) is list
            and 1 <= len(body) <= 64
            and all(
                type(s) is list and len(s) == 2 and is_uint(s[0], U32) and metrics_ok(s[1])
                for s in body
            )
        )
        return None if ok else "bad_field"
    if mtype == M.CONFIRM:
        return None if confirm_ok(body) else "bad_field"
    if type(body) is not dict:
        return "bad_field"
    for key, (kind, required) in SPEC[mtype].items():
        if key in body:
            if not field_ok(body[key], kind):
                return "bad_field"
        elif required:
            return "bad_field"
    return None


# --- payloads ------------------------------------------------------------------------------------

KEY = bytes(range(32))
SIGNER = Signer(KEY)
DEVICE = "fz-1"
EDGE_INTS = [0, 1, -1, 255, 256, 65535, 65536, U32, U32 + 1, SAFE, SAFE + 1, -SAFE, -SAFE - 1]
EDGE_INTS += [2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
ints = st.sampled_from(EDGE_INTS) | st.integers(-(2**63), 2**64 - 1) | st.integers(0, 300)
floats = st.sampled_from([NAN, INF, -INF, -0.0, 1e308, 2.5]) | st.floats()
texts = st.sampled_from(["a\x00b", "\x00", "0.1.0", "Praça ✗"]) | st.text(max_size=6)
scalars = st.none() | st.booleans() | ints | floats | texts | st.binary(max_size=9)
nested = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(ints, c, max_size=3), max_leaves=5
)
edges = st.sampled_from([*EDGE_INTS, NAN, -INF, "a\x00b", None, True, 1.5, b"x", [], {}])
faulty = edges | scalars | nested  # what replaces one good value

# Good values, from the spec: each body is built valid, then (usually) one thing is broken, so
# the one fault decides the outcome instead of drowning among several.
good_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
good_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | good_text
    | st.binary(max_size=9)
)
good_nested = st.recursive(
    good_scalar,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(ints, c, max_size=3),
    max_leaves=5,
)
GOOD: dict[object, st.SearchStrategy[Any]] = {
    str: good_text,
    bool: st.booleans(),
    dict: st.dictionaries(ints, good_nested, max_size=3),
    U8: st.integers(0, U8),
    U16: st.integers(0, U16),
    U32: st.integers(0, U32),
}
good_metric = (
    st.none() | st.integers(-SAFE, SAFE) | st.floats(allow_nan=False, allow_infinity=False)
)
good_metrics = st.dictionaries(st.integers(0, 0xFFFF), good_metric, max_size=5)


def good(kind: object) -> st.SearchStrategy[Any]:
    if isinstance(kind, tuple):
        return st.binary(min_size=kind[1], max_size=kind[1])  # type: ignore[call-overload,no-any-return]
    return GOOD[kind]


@st.composite
def broken_metrics(draw: st.DrawFn) -> dict[int, Any]:
    m = draw(good_metrics)
    fault = draw(st.integers(0, 2))
    if fault == 1:
        m[draw(st.integers(0, 0xFFFF))] = draw(faulty)  # a wrong value
    elif fault == 2:
        m[draw(st.sampled_from([-1, 65536, 2**64 - 1]))] = 1  # a wrong id
    return m


@st.composite
def confirm_bodies(draw: st.DrawFn) -> object:
    """Ascending disjoint ranges, then (usually) one thing broken: a value, the order, the count."""
    flat: list[Any] = []
    e, f = draw(st.integers(0, 5)), 0
    for _ in range(draw(st.integers(1, M.MAX_CONFIRM_RANGES + 1))):
        if draw(st.booleans()):
            e, f = e + draw(st.integers(1, 3)), 0
        n = draw(st.integers(1, 50))
        flat += [e, f, n]
        f += n + draw(st.integers(0, 5))
    fault = draw(st.integers(0, 5))
    if fault == 1:
        flat[draw(st.integers(0, len(flat) - 1))] = draw(faulty)
    elif fault == 2 and len(flat) > 3:
        flat[3], flat[4] = flat[0], flat[1]  # the second range starts inside the first
    elif fault == 3:
        flat = flat[:-1]  # not whole triples
    elif fault == 4:
        return draw(nested)
    return {0: flat}


@st.composite
def bodies_of(draw: st.DrawFn, mtype: int) -> object:
    if mtype == M.REPORT:
        return draw(broken_metrics()) if draw(st.integers(0, 9)) else draw(nested)
    if mtype == M.BATCH:
        n = draw(st.integers(0, 4))
        samples: list[Any] = [[draw(st.integers(0, U32)), draw(good_metrics)] for _ in range(n)]
        if samples and draw(st.booleans()):
            i = draw(st.integers(0, n - 1))
            samples[i] = draw(
                st.sampled_from([[-1, {}], [2**32, {}], [0], [0, {}, 1]])
                | st.tuples(st.integers(0, U32), broken_metrics()).map(list)
            )
        return samples if draw(st.integers(0, 9)) else draw(nested)
    if mtype == M.CONFIRM:
        return draw(confirm_bodies())
    spec = SPEC[mtype]
    body: dict[int, Any] = {
        k: draw(good(kind)) for k, (kind, req) in spec.items() if req or draw(st.booleans())
    }
    if draw(st.booleans()):
        body[9] = draw(good_nested)  # an unknown key: any value of section 4
    fault = draw(st.integers(0, 4))
    if fault == 1 and spec:
        body[draw(st.sampled_from(sorted(spec)))] = draw(faulty)
    elif fault == 2 and any(req for _, req in spec.values()):
        del body[draw(st.sampled_from(sorted(k for k, (_, r) in spec.items() if r)))]
    elif fault == 3:
        body[draw(st.integers(9, 40))] = draw(faulty)  # unknown keys are checked for values only
    elif fault == 4 and not draw(st.integers(0, 4)):
        return draw(nested)
    return body


def bodies(mtype: int) -> st.SearchStrategy[Any]:
    return bodies_of(mtype)


_u32 = st.integers(0, U32)
_bad_u32 = st.sampled_from([-1, U32 + 1, 2**64 - 1])
times = st.tuples(st.one_of(_u32, _u32, _u32, st.none(), _bad_u32), st.one_of(_u32, st.none()))


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[int, int | None, int | None, object]:
    mtype = draw(st.sampled_from(sorted(M.NAMES)))
    ts, up = draw(times)
    return mtype, ts, up, draw(bodies(mtype))


def topic_of(mtype: int) -> str:
    return f"idu/1/porto/{DEVICE}/{M.CHANNEL[mtype]}"


def sealed(mtype: int, seq: int, ts: int | None, up: int | None, body: object) -> bytes:
    """The signed payload; the example is dropped when even the encoder refuses the value (too
    deep or too large to write: not what this test is about)."""
    w = Writer(bytearray(8192))
    try:
        write_head(w, mtype, 7, seq, ts, up)
        w.value(body, 1)
    except ProtocolError:
        assume(False)
    return bytes(w.mv[: seal(w, SIGNER, topic_of(mtype).encode())])


FUZZ = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(envelopes(), st.integers(0, 10**6))
def test_every_payload_decodes_to_storable_or_is_refused_by_a_spec_name(
    env: tuple[int, int | None, int | None, object], seq: int
) -> None:
    mtype, ts, up, body = env
    payload = sealed(mtype, seq, ts, up, body)
    want = "too_big" if len(payload) > M.MAX_PACKET[M.CHANNEL[mtype]] else None
    want = want or expected(mtype, ts, up, body)
    try:
        msg = decode(payload, topic_of(mtype), SIGNER)
    except ProtocolError as e:
        assert e.code in CODES
        assert e.code == want, (e.code, want)
        return
    assert want is None, f"decoded what the spec refuses ({want})"
    assert expected(msg.type, msg.ts, msg.up, msg.body) is None


@FUZZ
@given(envelopes(), st.integers(0, 4000), st.integers(0, 255))
def test_a_mutated_payload_is_storable_or_refused_by_a_spec_name(
    env: tuple[int, int | None, int | None, object], at: int, byte: int
) -> None:
    """One byte of the unsigned part replaced, then sealed again: the parser, not the MAC,
    decides. Whatever decodes must still be something the store can hold."""
    mtype, ts, up, body = env
    raw = sealed(mtype, 1, ts, up, body)[:-19]
    if raw:
        raw = raw[: at % len(raw)] + bytes([byte]) + raw[at % len(raw) + 1 :]
    tpc = topic_of(mtype)
    payload = raw + b"\x07\xc4\x10" + SIGNER.tag(tpc.encode(), raw)
    try:
        msg = decode(payload, tpc, SIGNER)
    except ProtocolError as e:
        assert e.code in CODES
        return
    assert expected(msg.type, msg.ts, msg.up, msg.body) is None


# --- never stored wrongly: what decodes comes back from the store as it was sent ----------------


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, IngestCore]]:
    path = tmp_path_factory.mktemp("fuzz") / "idu.db"
    store = open_store(StoreConfig(backend="sqlite", path=str(path)))
    master = MasterKey(bytes(32))
    registry.create_device(store, master, DEVICE, "porto", "foz", "sensor")
    rec = store.get_device(DEVICE)
    assert rec is not None
    core = IngestCore()
    DeviceCache(core, master).load(rec)
    core.devices[DEVICE].signer = SIGNER  # the fuzz payloads are signed with KEY
    yield store, core
    store.close()


_seq = iter(range(1, 10**9))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from([M.REPORT, M.BATCH, M.EVENT]).flatmap(
        lambda t: st.tuples(st.just(t), bodies(t))
    )
)
def test_what_decodes_is_stored_exactly(
    sqlite_store: tuple[Store, IngestCore], tb: tuple[int, object]
) -> None:
    store, core = sqlite_store
    mtype, body = tb
    seq = next(_seq)
    tpc = topic_of(mtype)
    provisioned = store.get_device(DEVICE).created_at  # type: ignore[union-attr]
    now = float(int(provisioned) + 1000)
    payload = sealed(mtype, seq, int(now), None, body)
    try:
        msg = decode(payload, tpc, SIGNER)
    except ProtocolError:
        return
    try:
        acc, _ = core.ingest(tpc, payload, now)
    except Rejected as e:  # only the spec's names, and nothing decode accepted
        raise AssertionError(f"decoded but the controller refused it: {e.reason}") from None
    result = store.write_batch(Batch([acc], core.take_updates()))
    assert result.messages == 1
    if mtype == M.EVENT:
        [ev] = [e for e in store.device_events(DEVICE, limit=10**6) if e["seq"] == seq]
        b: dict[int, Any] = msg.body  # type: ignore[assignment]
        assert (ev["code"], ev["severity"], ev["text"]) == (b[0], b.get(1, 0), b.get(2))
        data = b.get(3)
        assert ev["data"] == (
            json.loads(json.dumps(value_to_json(data))) if data is not None else None
        )
        return
    samples = msg.body if mtype == M.BATCH else [[0, msg.body]]
    for age, metrics in samples:  # type: ignore[misc, union-attr]
        t = max(now - age, window_start(provisioned))  # section 5: clamped to the window
        for mid, wire in metrics.items():
            if wire is None:
                continue
            scale = REGISTRY[mid][3] if mid in REGISTRY else 0
            got = [v for ts, v, _ in store.raw_series(DEVICE, mid, t, t + 1e-3) if ts == t]
            assert wire / 10.0**scale in got, (mid, wire, got)
            if scale == 0 and type(wire) is int:
                assert any(int(v) == wire for v in got)  # exact, not rounded
