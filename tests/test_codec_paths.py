"""The CPython fast path (msgpack C extension) must accept exactly what the pure codec accepts,
with the same value, and defer every rejection to the pure codec, so error names match the
MicroPython device byte for byte."""

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import MAX_DEPTH, packb, unpackb
from protocol.compat import fast_unpack
from protocol.errors import ProtocolError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)  # PROTOCOL.md section 4: finite
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(min_value=-5, max_value=300), inner, max_size=5)
    ),
    max_leaves=20,
)


def pure(data: bytes) -> object:
    try:
        return ("ok", unpackb(data))
    except ProtocolError as e:
        return ("error", e.code)


def agree(data: bytes) -> None:
    assert fast_unpack is not None
    fast = fast_unpack(data)  # type: ignore[operator]
    if fast is not None:
        assert pure(data) == ("ok", fast)


@settings(max_examples=300, deadline=None)
@given(values)
def test_valid_values_decode_the_same_on_both_paths(v: object) -> None:
    try:
        data = packb(v)
    except ProtocolError:
        return  # deeper than MAX_DEPTH or over a limit: not a valid value
    assert fast_unpack(data) == v  # type: ignore[operator]
    assert unpackb(data) == v


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_fast_path_never_accepts_what_pure_refuses(data: bytes) -> None:
    agree(data)


def test_fast_path_declines_what_pure_refuses() -> None:
    cases = {
        b"\x82\x01\x01\x01\x02": "bad_field",  # repeated key
        b"\x81\xa1a\x01": "bad_type",  # string key
        b"\xd6\xff\x00\x00\x00\x01": "bad_type",  # timestamp ext
        b"\x91" * (MAX_DEPTH + 1) + b"\x01": "too_deep",
        b"\x81\xc3\x01": "bad_type",  # boolean key
        b"\x91\xa3a\x00b": "bad_type",  # text holding U+0000
        b"\x81\x01\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00": "bad_type",  # NaN
        b"\x91\xca\xff\x80\x00\x00": "bad_type",  # float32 -infinity
    }
    for data, code in cases.items():
        assert fast_unpack(data) is None  # type: ignore[operator]
        assert pure(data) == ("error", code)
    # msgpack-C agrees on the canonical bytes of an ordinary value
    assert msgpack.packb({1: [1, -1, 300]}) == packb({1: [1, -1, 300]})


def test_refuse_literals_are_error_codes() -> None:
    """writer.refuse() takes its code as a literal (so the device's report path need not load
    protocol.errors): every literal passed to it must be one of errors.CODES."""
    import re
    from pathlib import Path

    from protocol.errors import CODES
    from protocol.writer import refuse

    found = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "protocol").glob("*.py")):
        for code in re.findall(r"\brefuse\(\s*\"([^\"]*)\"", path.read_text()):
            assert code in CODES, f"{path.name}: refuse({code!r})"
            found.add(code)
    assert {"too_big", "too_deep", "bad_type", "truncated", "trailing_bytes"} <= found
    try:
        refuse("too_big", "x")
    except ProtocolError as e:
        assert (e.code, e.detail) == ("too_big", "x")
    else:
        raise AssertionError("refuse() returned")
