"""CPython only: decoding through the msgpack C extension when it is installed. Never imported
on a device (protocol.compat imports it only on CPython; the firmware build leaves it out)."""


def _fast_unpacker() -> object:
    """On CPython with the msgpack C extension: a parser ~15x faster than protocol.codec's, used
    for the success path only. It returns a value only when that value is exactly what the pure
    codec returns; on any doubt it returns None and the caller runs the pure codec, which then
    names the error. So both interpreters accept, reject and name errors identically."""
    try:
        import msgpack  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    from protocol.codec import MAX_BIN, MAX_DEPTH, MAX_ITEMS, MAX_STR

    def pairs(p: list) -> object:  # type: ignore[type-arg]
        d = dict(p)
        if len(d) != len(p):
            raise ValueError("repeated key")
        return d

    plain = {int, bytes, bool, type(None)}  # every value of these types is in the subset

    def ok(v: object, depth: int) -> bool:
        """Containers within depth, integer map keys, no ext/Timestamp values, finite floats,
        text without U+0000 (the pure codec refuses those as bad_type)."""
        if depth >= MAX_DEPTH:
            return False
        t = type(v)
        if (t is dict or t is list) and v and depth + 1 >= MAX_DEPTH:
            return False  # its items would sit at MAX_DEPTH: the pure codec says too_deep
        if t is dict:
            for k, x in v.items():  # type: ignore[attr-defined]  # noqa: SIM110
                if type(k) is not int or (type(x) not in plain and not ok(x, depth + 1)):
                    return False
            return True
        if t is list:
            for x in v:  # type: ignore[attr-defined]  # noqa: SIM110
                if type(x) not in plain and not ok(x, depth + 1):
                    return False
            return True
        if t is float:
            return bool(v - v == 0.0)  # type: ignore[operator]  # NaN and infinities are not
        if t is str:
            return "\x00" not in v  # type: ignore[operator]  # U+0000
        return t in plain

    def unpack(data: bytes) -> object:
        try:
            v = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=False,
                object_pairs_hook=pairs,
                max_str_len=MAX_STR,
                max_bin_len=MAX_BIN,
                max_array_len=MAX_ITEMS,
                max_map_len=MAX_ITEMS,
            )
        except Exception:
            return None
        return v if ok(v, 0) else None

    return unpack


fast_unpack = _fast_unpacker()
