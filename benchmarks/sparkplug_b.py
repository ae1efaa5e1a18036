"""A minimal protobuf writer for the public Sparkplug B payload schema (eclipse/tahu,
sparkplug_b/sparkplug_b.proto, proto2, package org.eclipse.tahu.protobuf), enough to size the
messages a tuned Sparkplug deployment sends. Used by benchmarks/wire_size.py only.

Schema subset (field numbers from the .proto):
  Payload { uint64 timestamp = 1; repeated Metric metrics = 2; uint64 seq = 3; }
  Metric  { string name = 1; uint64 alias = 2; uint64 timestamp = 3; uint32 datatype = 4;
            oneof value { uint32 int_value = 10; uint64 long_value = 11; float float_value = 12;
                          double double_value = 13; bool boolean_value = 14; ... } }
DataType enum: Int8 1, Int16 2, Int32 3, Int64 4, UInt8 5, UInt16 6, UInt32 7, UInt64 8, Float 9,
Double 10, Boolean 11.

Signed integer types are written as two's complement in their own width (Int8 -61 -> 195), the
compact choice; sign-extending to 32 bits would make every negative value a 5-byte varint.
"""

from __future__ import annotations

import struct

VARINT, I64, LEN, I32 = 0, 1, 2, 5

INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN = 9, 10, 11
_WIDTH = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}


def varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint of a negative number: convert to two's complement first")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def datatype_for(value: int | float | bool) -> int:
    """The smallest Sparkplug type that holds value (what a careful DBIRTH would declare)."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, float):
        return DOUBLE
    if value >= 0:
        return (
            UINT8
            if value < 1 << 8
            else UINT16
            if value < 1 << 16
            else UINT32
            if value < 1 << 32
            else UINT64
        )
    return (
        INT8
        if value >= -(1 << 7)
        else INT16
        if value >= -(1 << 15)
        else INT32
        if value >= -(1 << 31)
        else INT64
    )


def metric(
    value: int | float | bool,
    datatype: int,
    alias: int | None = None,
    name: str | None = None,
    timestamp_ms: int | None = None,
    with_datatype: bool = False,
) -> bytes:
    out = bytearray()
    if name is not None:
        raw = name.encode()
        out += key(1, LEN) + varint(len(raw)) + raw
    if alias is not None:
        out += key(2, VARINT) + varint(alias)
    if timestamp_ms is not None:
        out += key(3, VARINT) + varint(timestamp_ms)
    if with_datatype:
        out += key(4, VARINT) + varint(datatype)
    if datatype == BOOLEAN:
        out += key(14, VARINT) + varint(int(bool(value)))
    elif datatype == FLOAT:
        out += key(12, I32) + struct.pack("<f", value)
    elif datatype == DOUBLE:
        out += key(13, I64) + struct.pack("<d", value)
    else:
        v = int(value)
        if v < 0:
            v += 1 << _WIDTH[datatype]
        field = 11 if datatype in (INT64, UINT64) else 10
        out += key(field, VARINT) + varint(v)
    return bytes(out)


def payload(metrics: list[bytes], timestamp_ms: int | None = None, seq: int | None = None) -> bytes:
    out = bytearray()
    if timestamp_ms is not None:
        out += key(1, VARINT) + varint(timestamp_ms)
    for m in metrics:
        out += key(2, LEN) + varint(len(m)) + m
    if seq is not None:
        out += key(3, VARINT) + varint(seq)
    return bytes(out)


def ddata(values: list[int | float], timestamp_ms: int, seq: int) -> bytes:
    """Minimal DDATA after a DBIRTH: per metric only its alias (1-based position) and value."""
    return payload(
        [metric(v, datatype_for(v), alias=i + 1) for i, v in enumerate(values)], timestamp_ms, seq
    )


def dbirth(names: list[str], values: list[int | float], timestamp_ms: int, seq: int) -> bytes:
    """The DBIRTH that defines the aliases: name, alias, datatype and value of every metric."""
    ms = [
        metric(v, datatype_for(v), alias=i + 1, name=n, with_datatype=True)
        for i, (n, v) in enumerate(zip(names, values, strict=True))
    ]
    return payload(ms, timestamp_ms, seq)


def _self_check() -> None:
    """Known answers from the protobuf encoding guide, and one hand-decoded metric."""
    assert varint(1) == b"\x01" and varint(150) == b"\x96\x01" and varint(300) == b"\xac\x02"
    assert key(1, VARINT) == b"\x08" and key(2, LEN) == b"\x12"
    # alias 3, Int8 -61: 10 03 (alias) 50 c3 01 (int_value = 195)
    assert metric(-61, INT8, alias=3) == bytes.fromhex("100350c301")


_self_check()
