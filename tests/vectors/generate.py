"""Writes the protocol test vectors tests/vectors/{valid,noncanonical,invalid,device,confirm}.json.

The JSON files are committed and are the source of truth; this script is how they were made, so a
reviewer can see the intent of every vector. Expected `fields` come from the Message each vector
was built from and expected `error`s are written by hand: nothing here is taken from the decoder
under test. Invalid payloads are hand-crafted with protocol.codec.Writer and carry a correct tag
(unless the point is the tag), so a vector proves the parser rejects it, not the MAC.

    .venv/bin/python tests/vectors/generate.py          # rewrite the files
    .venv/bin/python tests/vectors/generate.py --check  # exit 1 if the files differ from this

Files hold one vector per line, so a 64 KiB MicroPython heap can read them line by line.
"""

# ruff: noqa: RUF005, UP031
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

from protocol import messages as M
from protocol.codec import Writer
from protocol.envelope import TRAILER, Message, encode
from protocol.sign import Signer
from protocol.vectors import check, to_json

HERE = Path(__file__).resolve().parent

KEY = bytes(range(32))  # the key of the worked example in docs/PROTOCOL.md
KEY_B = bytes.fromhex("5e2f8a41c07d93b6e18f2a4c6d0b97e3a1f45c28d6e07b19c3a8f52e4d61b09a")
SITE = "porto"
T0 = 1763900000  # 2025-11-23T12:13:20Z


def topic(device: str, channel: str, site: str = SITE) -> str:
    return "idu/1/%s/%s/%s" % (site, device, channel)


AP = "ap-0001"
SENSOR = "aq-0042"
REP = topic(AP, "rep")


class Raw:
    """Bytes written as they are: hand-made (often non-canonical or invalid) msgpack."""

    def __init__(self, b: bytes | str) -> None:
        self.b = bytes.fromhex(b) if isinstance(b, str) else b


def put(w: Writer, v: object) -> None:
    if isinstance(v, Raw):
        w.extend(v.b)
    else:
        w.value(v, 1)


def envelope(
    entries: list[tuple[int | Raw, object]],
    tpc: str,
    key: bytes = KEY,
    count: int | Raw | None = None,
    tag: bytes | None = None,
    tail: bytes = b"",
    trailer: bytes = TRAILER,
) -> bytes:
    """Envelope map with `entries` in the given order, then the tag entry. The map header counts
    the tag entry unless `count` says otherwise. The tag is computed over the bytes as written."""
    w = Writer(bytearray(8192))
    n = len(entries) + 1 if count is None else count
    if isinstance(n, Raw):
        w.extend(n.b)
    else:
        w.map_head(n)
    for k, v in entries:
        if isinstance(k, Raw):
            w.extend(k.b)
        else:
            w.integer(k)
        put(w, v)
    signed = bytes(w.mv[: w.pos])
    t = Signer(key).tag(tpc.encode(), signed) if tag is None else tag
    return signed + trailer + t + tail


def head(
    mtype: int | Raw,
    epoch: int | Raw = 5,
    seq: int | Raw = 10,
    ts: int | Raw | None = T0,
    up: int | Raw | None = None,
    v: int | Raw | bool = 1,
) -> list[tuple[int | Raw, object]]:
    e: list[tuple[int | Raw, object]] = [(0, v), (1, mtype), (2, epoch), (3, seq)]
    if ts is not None:
        e.append((4, ts))
    if up is not None:
        e.append((5, up))
    return e


FILES: dict[str, list[dict[str, Any]]] = {
    "valid": [],
    "noncanonical": [],
    "invalid": [],
    "device": [],
    "admission": [],
    "precedence": [],
    "confirm": [],
}


def _base(
    name: str, tpc: str, payload: bytes, key: bytes | str, seen: Any, now: Any
) -> dict[str, Any]:
    vec: dict[str, Any] = {
        "name": name,
        "key_hex": key if isinstance(key, str) else key.hex(),
        "topic": tpc,
        "payload_hex": payload.hex(),
    }
    if seen is not None:
        vec["seen"] = seen
    if now is not None:
        vec["now"] = now
    return vec


def valid(
    file: str,
    name: str,
    tpc: str,
    msg: Message,
    key: bytes = KEY,
    seen: list[list[int]] | None = None,
    now: int | None = None,
) -> None:
    """A canonical valid vector: the payload is encode(msg); the fields are msg itself."""
    vec = _base(name, tpc, encode(Signer(key), tpc, msg), key, seen, now)
    vec["fields"] = to_json(msg)
    FILES[file].append(vec)


def noncanonical(name: str, tpc: str, payload: bytes, msg: Message) -> None:
    """Valid bytes a canonical encoder would not produce: decodes to msg, re-encodes differently."""
    vec = _base(name, tpc, payload, KEY, None, None)
    vec["fields"] = to_json(msg)
    vec["reencode"] = "differs"
    FILES["noncanonical"].append(vec)


def invalid(
    file: str,
    name: str,
    tpc: str,
    payload: bytes,
    error: str,
    key: bytes | str = KEY,
    seen: list[list[int]] | None = None,
    now: int | None = None,
) -> None:
    vec = _base(name, tpc, payload, key, seen, now)
    vec["error"] = error
    FILES[file].append(vec)


AP_METRICS = {
    1: 86400,
    2: 41232,
    3: -61,
    16: 37,
    17: 12,
    18: 23,
    19: 2,
    20: -88,
    21: -64,
    22: -38,
    23: 4,
    24: 1234567,
    25: 98765432,
    26: 41,
    27: 17,
}
SENSOR_METRICS = {
    1: 7200,
    4: 3712,
    7: 81,
    48: 634,
    49: 812,
    50: 521,
    51: 123,
    52: 287,
    54: 38,
    55: 61,
    56: 42,
    57: 2153,
    58: 645,
    59: 10132,
    60: 312,
    61: 87,
}


def batch_body(n: int, extra: int, last: int) -> list[list[object]]:
    """n full samples and a last one sized so the payload lands on an exact byte count."""
    body: list[list[object]] = [
        [60 * i, {1: 2**40, 2: 2**40, 3: 2**40, 4: 2**40}] for i in range(n)
    ]
    body.append([0, {**{10 + j: 2**40 for j in range(extra)}, 9: last}])
    return body


def build_valid() -> None:
    f = "valid"
    R = M.REPORT
    valid(
        f,
        "spec_worked_example",
        REP,
        Message(R, 7, 42, {16: 37, 17: 12, 21: -64, 24: 1234567}, ts=T0),
    )
    valid(f, "report_access_point", REP, Message(R, 12, 1001, AP_METRICS, ts=T0, up=86400))
    valid(
        f,
        "report_air_quality_noise",
        topic(SENSOR, "rep"),
        Message(R, 3, 77, SENSOR_METRICS, up=7200),
    )
    valid(f, "report_empty_body", REP, Message(R, 5, 10, {}, ts=T0))
    valid(f, "report_up_only_no_clock", REP, Message(R, 1, 1, {1: 30}, up=30))
    valid(f, "report_ts_and_up", REP, Message(R, 1, 2, {1: 31}, ts=T0, up=31))
    valid(f, "report_epoch_seq_zero", REP, Message(R, 0, 0, {1: 0}, up=0))
    u32 = 0xFFFFFFFF
    valid(f, "report_uint32_max_fields", REP, Message(R, u32, u32, {1: u32}, ts=u32, up=u32))
    valid(
        f,
        "report_unknown_metric_ids_kept",
        REP,
        Message(R, 5, 11, {128: 1, 200: 2, 4000: 3, 65535: 4}, ts=T0),
    )
    # Metric integers stop at +-(2**53 - 1), what a double holds exactly (section 7); the codec's
    # full range (-2**63 .. 2**64-1) is in admission.json's event_data_full_integer_range.
    pos = {
        100: 0,
        101: 127,
        102: 128,
        103: 255,
        104: 256,
        105: 65535,
        106: 65536,
        107: u32,
        108: u32 + 1,
        109: 2**53 - 1,
    }
    valid(f, "report_int_boundaries_positive", REP, Message(R, 5, 12, pos, ts=T0))
    neg = {
        100: -1,
        101: -32,
        102: -33,
        103: -128,
        104: -129,
        105: -32768,
        106: -32769,
        107: -(2**31),
        108: -(2**31) - 1,
        109: -(2**53 - 1),
    }
    valid(f, "report_int_boundaries_negative", REP, Message(R, 5, 13, neg, ts=T0))
    valid(
        f,
        "report_float64_and_nil",
        REP,
        Message(R, 5, 14, {57: 21.5, 58: -0.25, 59: None, 60: 1e300, 61: 0.1, 62: -0.0}, ts=T0),
    )
    valid(f, "report_map16_16_metrics", REP, Message(R, 5, 15, {i: i for i in range(16)}, ts=T0))
    valid(
        f,
        "report_map_64_metrics_max",
        REP,
        Message(R, 5, 16, {i: -i * 1000 for i in range(64)}, ts=T0),
    )
    valid(
        f,
        "report_out_of_order_in_window",
        REP,
        Message(R, 5, 11, {1: 11}, ts=T0),
        seen=[[5, 10], [5, 12], [5, 1034]],
    )
    valid(f, "report_new_epoch_after_old", REP, Message(R, 6, 1, {1: 1}, up=1), seen=[[5, 900]])
    valid(f, "batch_one_sample", REP, Message(M.BATCH, 5, 20, [[0, {16: 3}]], ts=T0))
    valid(
        f,
        "batch_backlog_three_samples",
        REP,
        Message(
            M.BATCH,
            5,
            21,
            [[120, {16: 3, 21: -70}], [60, {16: 4, 21: -69}], [0, {16: 5, 21: -66}]],
            up=600,
        ),
    )
    valid(
        f,
        "batch_array16_16_samples",
        REP,
        Message(M.BATCH, 5, 22, [[60 * (15 - i), {1: i}] for i in range(16)], ts=T0),
    )
    valid(
        f,
        "batch_64_samples_max",
        REP,
        Message(M.BATCH, 5, 23, [[64 - i, {}] for i in range(64)], ts=T0),
    )
    birth = topic(AP, "birth")
    valid(
        f,
        "birth_minimal",
        birth,
        Message(M.BIRTH, 5, 2, {0: "0.1.0", 1: "esp32", 2: M.BOOT_POWER_ON}, ts=T0, up=3),
    )
    valid(
        f,
        "birth_full",
        birth,
        Message(
            M.BIRTH,
            5,
            2,
            {
                0: "0.1.0",
                1: "esp32",
                2: M.BOOT_WATCHDOG,
                3: bytes.fromhex("0011223344556677"),
                4: False,
                5: "ap",
                6: 60,
                7: 0,
            },
            up=4,
        ),
    )
    valid(
        f,
        "birth_safe_mode_unknown_key_kept",
        birth,
        Message(M.BIRTH, 5, 2, {0: "0.1.0", 1: "sim", 2: M.BOOT_CRASH, 4: True, 9: "future"}, up=5),
    )
    valid(
        f,
        "birth_str8_firmware_32_bytes",
        birth,
        Message(M.BIRTH, 5, 2, {0: "0.1.0+" + "g" * 26, 1: "esp32", 2: 1}, up=5),
    )
    death = topic(AP, "death")
    valid(f, "death_last_will_no_clock", death, Message(M.DEATH, 5, 1, {0: M.DEATH_LOST}, up=2))
    valid(f, "death_clean_shutdown", death, Message(M.DEATH, 5, 300, {0: M.DEATH_SHUTDOWN}, ts=T0))
    evt = topic(AP, "evt")
    valid(f, "event_minimal", evt, Message(M.EVENT, 5, 30, {0: M.EV_SAFE_MODE}, ts=T0))
    valid(
        f,
        "event_buffer_dropped",
        evt,
        Message(M.EVENT, 5, 31, {0: M.EV_BUFFER_DROPPED, 1: 1, 2: "ring full", 3: {0: 17}}, ts=T0),
    )
    valid(
        f,
        "event_utf8_text",
        evt,
        Message(
            M.EVENT, 5, 32, {0: M.EV_SENSOR_FAULT, 1: 2, 2: "Praça da Ribeira: sensor NO₂ ✗"}, up=99
        ),
    )
    valid(
        f,
        "event_text_255_bytes_max",
        evt,
        Message(M.EVENT, 5, 33, {0: M.EV_SENSOR_FAULT, 2: "x" * 255}, ts=T0),
    )
    valid(f, "event_depth_5_max", evt, Message(M.EVENT, 5, 34, {0: 6, 3: {0: [1, 2]}}, ts=T0))
    ack = topic(AP, "ack")
    valid(f, "ack_ok", ack, Message(M.ACK, 5, 40, {0: 9, 1: 3, 2: M.R_OK}, ts=T0))
    valid(
        f,
        "ack_diagnostics_data",
        ack,
        Message(
            M.ACK,
            5,
            41,
            {
                0: 9,
                1: 4,
                2: M.R_OK,
                3: {0: 31000, 1: 52000, 2: 86400, 3: -61, 4: 0, 5: 2, 6: 0, 7: 1, 8: 65536},
            },
            ts=T0,
        ),
    )
    valid(f, "ack_failed", ack, Message(M.ACK, 5, 42, {0: 9, 1: 5, 2: M.R_FAILED}, up=100))
    cmd = topic(AP, "cmd")
    valid(
        f,
        "command_ping",
        cmd,
        Message(M.COMMAND, 9, 3, {0: M.OP_PING, 1: T0 + 60}, ts=T0),
        now=T0 + 5,
    )
    valid(
        f,
        "command_ping_device_without_clock",
        cmd,
        Message(M.COMMAND, 9, 4, {0: M.OP_PING, 1: T0 + 60}, ts=T0),
    )
    valid(
        f,
        "command_expiry_exactly_3600s",
        cmd,
        Message(M.COMMAND, 9, 5, {0: M.OP_REBOOT, 1: T0 + 3600}, ts=T0),
        now=T0 + 3600,
    )
    valid(
        f,
        "command_set_config",
        cmd,
        Message(
            M.COMMAND, 9, 6, {0: M.OP_SET_CONFIG, 1: T0 + 300, 2: {0: 30, 1: {48: 5}, 3: 1}}, ts=T0
        ),
        now=T0,
        seen=[[9, 3], [9, 5]],
    )
    valid(
        f,
        "command_rotate_key",
        cmd,
        Message(M.COMMAND, 9, 7, {0: M.OP_ROTATE_KEY, 1: T0 + 60, 2: {0: KEY_B}}, ts=T0),
        now=T0 + 1,
    )
    cfg = topic(AP, "cfg")
    valid(
        f,
        "config_full",
        cfg,
        Message(
            M.CONFIG,
            9,
            8,
            {0: 60, 1: {21: 3, 16: 2, 57: 25}, 2: [1, 2, 16, 17, 18, 21, 24, 25], 3: 5},
            ts=T0,
        ),
    )
    valid(f, "config_empty", cfg, Message(M.CONFIG, 9, 9, {}, ts=T0))
    ota = topic(AP, "ota")
    offer = {0: 1, 1: "0.2.0", 2: 183040, 3: bytes(range(32)), 4: bytes(range(64, 128))}
    valid(f, "ota_offer", ota, Message(M.OTA, 9, 10, offer, ts=T0))
    chunk = bytes((i * 7 + 3) & 0xFF for i in range(2048))
    valid(
        f,
        "ota_chunk_2048_bytes_max_bin16",
        ota,
        Message(M.OTA, 9, 11, {0: 2, 5: 4096, 6: chunk}, ts=T0),
    )
    valid(
        f,
        "ota_chunk_bin8_255_bytes",
        ota,
        Message(M.OTA, 9, 12, {0: 2, 5: 0, 6: chunk[:255]}, ts=T0),
    )
    valid(f, "ota_commit", ota, Message(M.OTA, 9, 13, {0: 3}, ts=T0))
    valid(f, "ota_abort", ota, Message(M.OTA, 9, 14, {0: 4}, ts=T0))
    valid(f, "report_key_b", topic("ap-0002", "rep"), Message(R, 1, 1, {16: 0}, ts=T0), key=KEY_B)
    # payloads exactly at their channel's limit (the one byte more is in invalid.json)
    valid(f, "death_exactly_128_bytes", death, Message(M.DEATH, 5, 2, {0: 1, 9: "z" * 87}, ts=T0))
    valid(
        f, "batch_exactly_1024_bytes", REP, Message(M.BATCH, 5, 3, batch_body(19, 13, 2**31), ts=T0)
    )
    valid(
        f,
        "report_fifth_epoch_evicts_oldest",
        REP,
        Message(R, 9, 1, {1: 1}, up=1),
        seen=[[5, 3], [6, 1], [7, 1], [8, 1]],
    )
    valid(f, "config_after_earlier_config", cfg, Message(M.CONFIG, 9, 30, {0: 120}, ts=T0))


def build_noncanonical() -> None:
    R = M.REPORT
    msg = Message(R, 5, 10, {16: 5}, ts=T0)
    noncanonical(
        "uint16_for_small_metric_value", REP, envelope(head(R) + [(6, Raw("8110cd0005"))], REP), msg
    )
    noncanonical(
        "uint32_for_small_seq",
        REP,
        envelope(head(R, seq=Raw("ce0000000a")) + [(6, {16: 5})], REP),
        msg,
    )
    noncanonical(
        "map16_header_for_envelope",
        REP,
        envelope(head(R) + [(6, {16: 5})], REP, count=Raw("de0007")),
        Message(R, 5, 10, {16: 5}, ts=T0),
    )
    f32 = Message(R, 5, 10, {57: 21.5}, ts=T0)
    noncanonical(
        "float32_metric_value", REP, envelope(head(R) + [(6, Raw("8139ca41ac0000"))], REP), f32
    )
    noncanonical(
        "metric_keys_descending",
        REP,
        envelope(head(R) + [(6, Raw("82110c1025"))], REP),
        Message(R, 5, 10, {16: 37, 17: 12}, ts=T0),
    )
    swapped = [(1, R), (0, 1), (3, 10), (2, 5), (4, T0), (6, {16: 5})]
    noncanonical("envelope_keys_out_of_order_tag_last", REP, envelope(swapped, REP), msg)
    evt = topic(AP, "evt")
    ev = Message(M.EVENT, 5, 10, {0: 6, 2: "fan"}, ts=T0)
    noncanonical(
        "str8_for_short_text",
        evt,
        envelope(head(M.EVENT) + [(6, Raw("820006" + "02d903" + b"fan".hex()))], evt),
        ev,
    )
    noncanonical(
        "str16_for_short_text",
        evt,
        envelope(head(M.EVENT) + [(6, Raw("820006" + "02da0003" + b"fan".hex()))], evt),
        ev,
    )
    birth = topic(AP, "birth")
    bm = Message(M.BIRTH, 5, 10, {0: "0.1.0", 1: "esp32", 2: 0, 3: bytes(8)}, ts=T0)
    body = Raw(
        "84" + "00a5" + b"0.1.0".hex() + "01a5" + b"esp32".hex() + "0200" + "03c50008" + "00" * 8
    )
    noncanonical("bin16_for_8_byte_hash", birth, envelope(head(M.BIRTH) + [(6, body)], birth), bm)
    bt = Message(M.BATCH, 5, 10, [[0, {1: 1}]], ts=T0)
    noncanonical(
        "array16_for_one_sample_batch",
        REP,
        envelope(head(M.BATCH) + [(6, Raw("dc0001920081" + "0101"))], REP),
        bt,
    )
    noncanonical(
        "int8_for_positive_fixint", REP, envelope(head(R) + [(6, Raw("8110d005"))], REP), msg
    )
    noncanonical(
        "int64_for_negative_rssi",
        REP,
        envelope(head(R) + [(6, Raw("8115d3" + "ff" * 7 + "c0"))], REP),
        Message(R, 5, 10, {21: -64}, ts=T0),
    )


def build_invalid() -> None:
    f = "invalid"
    R = M.REPORT
    good = head(R) + [(6, {16: 5})]
    ok = envelope(good, REP)
    # truncated
    invalid(f, "truncated_empty_payload", REP, b"", "truncated")
    invalid(f, "truncated_last_tag_byte_missing", REP, ok[:-1], "truncated")
    invalid(
        f, "truncated_map_claims_one_more_entry", REP, envelope(good, REP, count=8), "truncated"
    )
    invalid(
        f,
        "truncated_str_length_beyond_end",
        topic(AP, "evt"),
        envelope(head(M.EVENT) + [(6, Raw("820006" + "02d9ff" + b"fan".hex()))], topic(AP, "evt")),
        "truncated",
    )
    invalid(f, "truncated_uint32_cut", REP, bytes.fromhex("8700010103020503ce0000"), "truncated")
    invalid(
        f,
        "truncated_array32_huge_count",
        REP,
        envelope(head(M.BATCH) + [(6, Raw("dd00000040"))], REP),
        "truncated",
    )
    # bad_type
    invalid(
        f,
        "bad_type_ext_in_body",
        REP,
        envelope(head(R) + [(6, Raw("8110d40105"))], REP),
        "bad_type",
    )
    invalid(
        f, "bad_type_reserved_c1", REP, envelope(head(R) + [(6, Raw("8110c1"))], REP), "bad_type"
    )
    invalid(
        f,
        "bad_type_string_map_key",
        REP,
        envelope(head(R) + [(6, Raw("81a17805"))], REP),
        "bad_type",
    )
    invalid(
        f, "bad_type_nil_map_key", REP, envelope(head(R) + [(6, Raw("81c005"))], REP), "bad_type"
    )
    evt = topic(AP, "evt")
    for name, bad in (
        ("bad_type_invalid_utf8_lone_continuation", "80"),
        ("bad_type_invalid_utf8_overlong_nul", "c080"),
        ("bad_type_invalid_utf8_surrogate", "eda080"),
        ("bad_type_invalid_utf8_above_u10ffff", "f4908080"),
    ):
        text = "02" + "%02x" % (0xA0 + len(bad) // 2) + bad
        invalid(
            f, name, evt, envelope(head(M.EVENT) + [(6, Raw("820006" + text))], evt), "bad_type"
        )
    # too_big
    death = topic(AP, "death")
    invalid(
        f,
        "too_big_death_over_128_bytes",
        death,
        envelope(head(M.DEATH) + [(6, {0: 0, 9: "z" * 100})], death),
        "too_big",
    )
    big = Raw("de0041" + "".join("%02xcf%016x" % (i, 2**40) for i in range(65)))
    invalid(f, "too_big_map_65_entries", REP, envelope(head(R) + [(6, big)], REP), "too_big")
    invalid(
        f,
        "too_big_array_65_items",
        REP,
        envelope(head(M.BATCH) + [(6, Raw("dc0041" + "920080" * 65))], REP),
        "too_big",
    )
    invalid(
        f,
        "too_big_string_256_bytes",
        evt,
        envelope(head(M.EVENT) + [(6, Raw("820006" + "02da0100" + "78" * 256))], evt),
        "too_big",
    )
    ota = topic(AP, "ota")
    invalid(
        f,
        "too_big_bin_2049_bytes",
        ota,
        envelope(head(M.OTA) + [(6, Raw("830002" + "0500" + "06c50801" + "ab" * 2049))], ota),
        "too_big",
    )
    invalid(
        f,
        "too_big_death_129_bytes",
        death,
        envelope(head(M.DEATH, seq=2) + [(6, {0: 1, 9: "z" * 88})], death),
        "too_big",
    )
    invalid(
        f,
        "too_big_batch_1025_bytes",
        REP,
        envelope(head(M.BATCH, seq=3) + [(6, batch_body(20, 9, 0))], REP),
        "too_big",
    )
    invalid(
        f,
        "too_big_report_over_1024_bytes",
        REP,
        envelope(head(R) + [(6, {0: bytes(1000)})], REP),
        "too_big",
    )
    # too_deep: envelope(1) > body(2) > data(3) > list(4) > list(5) > item(6)
    deep = Raw("820006" + "03810091" + "9101")  # {0: 6, 3: {0: [[1]]}}
    invalid(f, "too_deep_event_data", evt, envelope(head(M.EVENT) + [(6, deep)], evt), "too_deep")
    # trailing_bytes
    invalid(f, "trailing_byte_after_envelope", REP, ok + b"\x00", "trailing_bytes")
    invalid(f, "trailing_second_envelope", REP, ok + ok, "trailing_bytes")
    # bad_tag
    invalid(f, "bad_tag_flipped_bit", REP, ok[:-1] + bytes([ok[-1] ^ 1]), "bad_tag")
    invalid(f, "bad_tag_other_devices_key", REP, envelope(good, REP, key=KEY_B), "bad_tag")
    invalid(
        f, "bad_tag_signed_for_other_topic", REP, envelope(good, topic("ap-0002", "rep")), "bad_tag"
    )
    invalid(
        f,
        "bad_tag_signed_for_other_channel",
        topic(AP, "evt"),
        envelope(head(M.EVENT) + [(6, {0: 1})], topic(AP, "ack")),
        "bad_tag",
    )
    no_tag = Writer(bytearray(256))
    no_tag.map_head(6)
    for k, v in good:
        no_tag.integer(k)
        no_tag.value(v, 1)
    invalid(f, "bad_tag_missing", REP, bytes(no_tag.mv[: no_tag.pos]), "bad_tag")
    invalid(
        f,
        "bad_tag_15_bytes",
        REP,
        envelope(good, REP, trailer=b"\x07\xc4\x0f", tag=bytes(15)),
        "bad_tag",
    )
    tag_first = Writer(bytearray(256))
    tag_first.map_head(7)
    tag_first.extend(b"\x07\xc4\x10" + bytes(16))
    for k, v in good:
        tag_first.integer(k)
        tag_first.value(v, 1)
    invalid(f, "bad_tag_not_last_entry", REP, bytes(tag_first.mv[: tag_first.pos]), "bad_tag")
    invalid(
        f,
        "bad_tag_is_a_string",
        REP,
        envelope(good, REP, trailer=b"\x07\xb0", tag=b"0123456789abcdef"),
        "bad_tag",
    )
    # replay
    invalid(f, "replay_same_epoch_seq", REP, ok, "replay", seen=[[5, 10]])
    invalid(f, "replay_older_than_window", REP, ok, "replay", seen=[[5, 10 + 1024]])
    invalid(f, "replay_evicted_epoch", REP, ok, "replay", seen=[[6, 1], [7, 1], [8, 1], [9, 1]])
    cmd = topic(AP, "cmd")
    ping = envelope(head(M.COMMAND, epoch=9, seq=3) + [(6, {0: 1, 1: T0 + 60})], cmd)
    invalid(f, "replay_command_already_executed", cmd, ping, "replay", seen=[[9, 3]], now=T0 + 1)
    # unknown_version
    invalid(
        f,
        "unknown_version_envelope_v2",
        REP,
        envelope(head(R, v=2) + [(6, {16: 5})], REP),
        "unknown_version",
    )
    invalid(
        f,
        "unknown_version_topic_v2",
        "idu/2/porto/ap-0001/rep",
        envelope(good, "idu/2/porto/ap-0001/rep"),
        "unknown_version",
    )
    # bad_field
    invalid(f, "bad_field_envelope_is_array", REP, bytes.fromhex("9401030510"), "bad_field")
    invalid(
        f,
        "bad_field_version_missing",
        REP,
        envelope(head(R)[1:] + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_version_true",
        REP,
        envelope(head(R, v=True) + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_version_float",
        REP,
        envelope(head(R, v=Raw("cb3ff0000000000000")) + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f, "bad_field_seq_missing", REP, envelope([e for e in good if e[0] != 3], REP), "bad_field"
    )
    invalid(f, "bad_field_body_missing", REP, envelope(head(R), REP), "bad_field")
    invalid(
        f,
        "bad_field_epoch_above_uint32",
        REP,
        envelope(head(R, epoch=2**32) + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_seq_negative",
        REP,
        envelope(head(R, seq=-1) + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_type_is_string",
        REP,
        envelope(head(Raw("a3726570")) + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_ts_is_float",
        REP,
        envelope(head(R, ts=Raw(b"\xcb" + struct.pack(">d", T0))) + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(f, "bad_field_unknown_envelope_key_8", REP, envelope(good + [(8, 0)], REP), "bad_field")
    invalid(
        f,
        "bad_field_repeated_envelope_key",
        REP,
        envelope(head(R) + [(3, 11), (6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_repeated_metric_id",
        REP,
        envelope(head(R) + [(6, Raw("8210051006"))], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_metric_value_string",
        REP,
        envelope(head(R) + [(6, {16: "5"})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_metric_value_bool",
        REP,
        envelope(head(R) + [(6, {16: True})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_metric_id_above_65535",
        REP,
        envelope(head(R) + [(6, {65536: 1})], REP),
        "bad_field",
    )
    invalid(
        f, "bad_field_metric_id_negative", REP, envelope(head(R) + [(6, {-1: 1})], REP), "bad_field"
    )
    invalid(
        f,
        "bad_field_report_body_is_array",
        REP,
        envelope(head(R) + [(6, [16, 5])], REP),
        "bad_field",
    )
    invalid(f, "bad_field_batch_empty", REP, envelope(head(M.BATCH) + [(6, [])], REP), "bad_field")
    invalid(
        f,
        "bad_field_batch_sample_shape",
        REP,
        envelope(head(M.BATCH) + [(6, [[0, {1: 1}, 2]])], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_batch_negative_age",
        REP,
        envelope(head(M.BATCH) + [(6, [[-5, {1: 1}]])], REP),
        "bad_field",
    )
    birth = topic(AP, "birth")
    invalid(
        f,
        "bad_field_birth_firmware_missing",
        birth,
        envelope(head(M.BIRTH) + [(6, {1: "esp32", 2: 0})], birth),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_birth_boot_reason_bool",
        birth,
        envelope(head(M.BIRTH) + [(6, {0: "0.1.0", 1: "esp32", 2: False})], birth),
        "bad_field",
    )
    ack = topic(AP, "ack")
    invalid(
        f,
        "bad_field_ack_result_missing",
        ack,
        envelope(head(M.ACK) + [(6, {0: 9, 1: 3})], ack),
        "bad_field",
    )
    invalid(f, "bad_field_ota_body_nil", ota, envelope(head(M.OTA) + [(6, None)], ota), "bad_field")
    invalid(
        f,
        "bad_field_command_expiry_beyond_3600s",
        cmd,
        envelope(head(M.COMMAND, epoch=9, seq=4) + [(6, {0: 1, 1: T0 + 3601})], cmd),
        "bad_field",
        now=T0,
    )
    invalid(
        f,
        "bad_field_command_without_ts",
        cmd,
        envelope(head(M.COMMAND, epoch=9, seq=4, ts=None, up=5) + [(6, {0: 1, 1: T0 + 60})], cmd),
        "bad_field",
        now=T0,
    )
    # unknown_type
    invalid(f, "unknown_type_10", REP, envelope(head(10) + [(6, {16: 5})], REP), "unknown_type")
    invalid(f, "unknown_type_0", REP, envelope(head(0) + [(6, {16: 5})], REP), "unknown_type")
    invalid(f, "unknown_type_report_on_cmd_channel", cmd, envelope(good, cmd), "unknown_type")
    invalid(
        f,
        "unknown_type_command_on_rep_channel",
        REP,
        envelope(head(M.COMMAND) + [(6, {0: 1, 1: T0 + 60})], REP),
        "unknown_type",
    )
    # bad_topic
    for name, t in (
        ("bad_topic_uppercase_site", "idu/1/Porto/ap-0001/rep"),
        ("bad_topic_unknown_channel", "idu/1/porto/ap-0001/rep2"),
        ("bad_topic_wrong_root", "iot/1/porto/ap-0001/rep"),
        ("bad_topic_too_many_levels", "idu/1/porto/ap-0001/rep/x"),
        ("bad_topic_device_starts_with_dash", "idu/1/porto/-ap/rep"),
    ):
        invalid(f, name, t, envelope(good, t), "bad_topic")
    # expired
    invalid(f, "expired_command", cmd, ping, "expired", now=T0 + 61)
    invalid(
        f,
        "expired_command_no_clock_ts_after_expiry",
        cmd,
        envelope(head(M.COMMAND, epoch=9, seq=8, ts=T0) + [(6, {0: 1, 1: T0 - 1})], cmd),
        "expired",
    )
    # bad_key
    invalid(f, "bad_key_31_bytes", REP, ok, "bad_key", key=KEY[:31].hex())
    invalid(f, "bad_key_33_bytes", REP, ok, "bad_key", key=(KEY + b"\x00").hex())


def build_device() -> None:
    """A small mixed subset, loaded by the test under a 64 KiB MicroPython heap and used as the
    seeds of the mutation corpus: one of each type, plus the errors a device itself raises."""
    f = "device"
    R = M.REPORT
    valid(f, "dev_report_ap", REP, Message(R, 12, 1001, AP_METRICS, ts=T0, up=86400))
    valid(
        f,
        "dev_report_sensor_up_only",
        topic(SENSOR, "rep"),
        Message(R, 3, 78, SENSOR_METRICS, up=7260),
    )
    valid(
        f,
        "dev_batch",
        REP,
        Message(M.BATCH, 12, 1002, [[60, {1: 86340, 16: 36}], [0, {1: 86400, 16: 37}]], ts=T0),
    )
    valid(
        f,
        "dev_birth",
        topic(AP, "birth"),
        Message(M.BIRTH, 12, 2, {0: "0.1.0", 1: "esp32", 2: 0, 5: "ap", 6: 60}, up=3),
    )
    valid(f, "dev_death", topic(AP, "death"), Message(M.DEATH, 12, 1, {0: 0}, up=2))
    valid(
        f, "dev_event", topic(AP, "evt"), Message(M.EVENT, 12, 1003, {0: 1, 1: 1, 3: {0: 4}}, ts=T0)
    )
    valid(f, "dev_ack", topic(AP, "ack"), Message(M.ACK, 12, 1004, {0: 9, 1: 21, 2: 0}, ts=T0))
    cmd = topic(AP, "cmd")
    reboot = Message(M.COMMAND, 9, 21, {0: M.OP_REBOOT, 1: T0 + 120}, ts=T0)
    valid(f, "dev_command_reboot", cmd, reboot, now=T0 + 2)
    valid(
        f,
        "dev_config",
        topic(AP, "cfg"),
        Message(M.CONFIG, 9, 22, {0: 60, 1: {21: 3}, 3: 1}, ts=T0),
    )
    valid(f, "dev_ota_commit", topic(AP, "ota"), Message(M.OTA, 9, 23, {0: 3}, ts=T0))
    pay = encode(Signer(KEY), cmd, reboot)
    invalid(f, "dev_command_replayed", cmd, pay, "replay", seen=[[9, 21]], now=T0 + 3)
    invalid(f, "dev_command_expired", cmd, pay, "expired", now=T0 + 121)
    invalid(f, "dev_command_bad_tag", cmd, pay[:-1] + bytes([pay[-1] ^ 0x80]), "bad_tag", now=T0)
    invalid(
        f, "dev_command_uplink_key_b", cmd, encode(Signer(KEY_B), cmd, reboot), "bad_tag", now=T0
    )
    invalid(f, "dev_command_truncated", cmd, pay[:-5], "truncated", now=T0)
    invalid(
        f,
        "dev_report_on_cmd",
        cmd,
        encode(Signer(KEY), cmd, Message(R, 9, 24, {1: 1}, ts=T0)),
        "unknown_type",
    )


def build_admission() -> None:
    """Issue 10 item 4 and 7: what the store can hold, decided per field (docs/PROTOCOL.md
    sections 4, 5 and 7), and the time fields. Every refusal here is a message an earlier,
    looser reading stored (or stored wrongly)."""
    f = "admission"
    R = M.REPORT
    evt = topic(AP, "evt")
    birth = topic(AP, "birth")
    ack = topic(AP, "ack")
    death = topic(AP, "death")
    cmd = topic(AP, "cmd")
    cfg = topic(AP, "cfg")
    ota = topic(AP, "ota")

    def rep(name: str, body: object, error: str, mtype: int = R) -> None:
        invalid(f, name, REP, envelope(head(mtype) + [(6, body)], REP), error)

    # Metric values: nil, a finite float, or an integer a double holds exactly.
    safe = 2**53 - 1
    valid(
        f, "report_metric_safe_integer_limits", REP, Message(R, 5, 40, {1: safe, 2: -safe}, ts=T0)
    )
    rep("bad_field_metric_2_pow_53", {16: 2**53}, "bad_field")
    rep("bad_field_metric_minus_2_pow_53", {16: -(2**53)}, "bad_field")
    rep("bad_field_metric_uint64_max", {16: 2**64 - 1}, "bad_field")
    rep("bad_field_metric_int64_min", {16: -(2**63)}, "bad_field")
    rep("bad_field_batch_metric_2_pow_53", [[0, {16: 1}], [60, {16: 2**53}]], "bad_field", M.BATCH)
    # The codec's integer range is unchanged: maps kept as JSON text hold it exactly.
    valid(
        f,
        "event_data_full_integer_range",
        evt,
        Message(M.EVENT, 5, 41, {0: M.EV_SENSOR_FAULT, 3: {0: 2**64 - 1, 1: -(2**63)}}, ts=T0),
    )
    # Floats are finite (a codec rule: bad_type wherever they appear).
    for name, raw in (
        ("bad_type_float64_nan", "cb7ff8000000000000"),
        ("bad_type_float64_infinity", "cb7ff0000000000000"),
        ("bad_type_float32_minus_infinity", "caff800000"),
        ("bad_type_float32_nan", "ca7fc00000"),
    ):
        rep(name, Raw("8139" + raw), "bad_type")
    nan_data = Raw("820006" + "0381" + "00cb7ff8000000000000")
    invalid(
        f,
        "bad_type_nan_inside_event_data",
        evt,
        envelope(head(M.EVENT) + [(6, nan_data)], evt),
        "bad_type",
    )
    valid(
        f,
        "report_float_extremes_finite",
        REP,
        Message(R, 5, 42, {57: 1.7976931348623157e308, 58: -5e-324, 59: 0.0}, ts=T0),
    )
    # Text is UTF-8 without U+0000 (a codec rule: bad_type wherever it appears).
    invalid(
        f,
        "bad_type_event_text_with_nul",
        evt,
        envelope(head(M.EVENT) + [(6, Raw("820006" + "02a3610062"))], evt),
        "bad_type",
    )
    invalid(
        f,
        "bad_type_birth_firmware_only_nul",
        birth,
        envelope(
            head(M.BIRTH) + [(6, Raw("83" + "00a100" + "01a5" + b"esp32".hex() + "0200"))], birth
        ),
        "bad_type",
    )
    invalid(
        f,
        "bad_type_nul_in_string_inside_data",
        evt,
        envelope(head(M.EVENT) + [(6, Raw("820006" + "038100a200ff"))], evt),
        "bad_type",
    )
    # uint fields refuse negatives, and each has the width its stored column holds.
    for name, tpc, mtype, body in (
        ("bad_field_event_code_negative", evt, M.EVENT, {0: -1}),
        ("bad_field_event_code_2_pow_63", evt, M.EVENT, {0: 2**63}),
        ("bad_field_event_code_above_uint16", evt, M.EVENT, {0: 65536}),
        ("bad_field_event_severity_above_uint8", evt, M.EVENT, {0: 1, 1: 256}),
        ("bad_field_death_reason_negative", death, M.DEATH, {0: -1}),
        (
            "bad_field_birth_boot_reason_above_uint8",
            birth,
            M.BIRTH,
            {0: "0.1.0", 1: "esp32", 2: 256},
        ),
        ("bad_field_ack_result_negative", ack, M.ACK, {0: 9, 1: 3, 2: -4}),
        ("bad_field_ack_cmd_seq_above_uint32", ack, M.ACK, {0: 9, 1: 2**32, 2: 0}),
        ("bad_field_ack_cmd_epoch_float", ack, M.ACK, {0: 9.0, 1: 3, 2: 0}),
        ("bad_field_batch_age_above_uint32", REP, M.BATCH, [[2**32, {1: 1}]]),
        ("bad_field_command_op_negative", cmd, M.COMMAND, {0: -1, 1: T0 + 60}),
        ("bad_field_ota_phase_negative", ota, M.OTA, {0: -3}),
    ):
        hd = head(mtype, epoch=9) if mtype >= M.COMMAND else head(mtype)
        invalid(f, name, tpc, envelope(hd + [(6, body)], tpc), "bad_field")
    valid(f, "event_code_uint16_max", evt, Message(M.EVENT, 5, 43, {0: 65535, 1: 255}, ts=T0))
    valid(
        f,
        "ack_cmd_fields_uint32_max",
        ack,
        Message(M.ACK, 5, 44, {0: 2**32 - 1, 1: 2**32 - 1, 2: 255}, ts=T0),
    )
    # Optional uplink fields: absent, or of their type (nil is not absence).
    b0: dict[int, object] = {0: "0.1.0", 1: "esp32", 2: 0}
    for name, tpc, mtype, body in (
        ("bad_field_birth_config_hash_7_bytes", birth, M.BIRTH, {**b0, 3: bytes(7)}),
        ("bad_field_birth_config_hash_string", birth, M.BIRTH, {**b0, 3: "00112233"}),
        ("bad_field_birth_safe_mode_integer", birth, M.BIRTH, {**b0, 4: 1}),
        ("bad_field_birth_kind_binary", birth, M.BIRTH, {**b0, 5: b"ap"}),
        ("bad_field_birth_interval_negative", birth, M.BIRTH, {**b0, 6: -60}),
        ("bad_field_birth_buffered_float", birth, M.BIRTH, {**b0, 7: 3.0}),
        ("bad_field_event_severity_string", evt, M.EVENT, {0: 1, 1: "warning"}),
        ("bad_field_event_text_integer", evt, M.EVENT, {0: 1, 2: 42}),
        ("bad_field_event_text_nil", evt, M.EVENT, {0: 1, 2: None}),
        ("bad_field_event_data_array", evt, M.EVENT, {0: 1, 3: [17]}),
        ("bad_field_ack_data_nil", ack, M.ACK, {0: 9, 1: 3, 2: 0, 3: None}),
    ):
        invalid(f, name, tpc, envelope(head(mtype) + [(6, body)], tpc), "bad_field")
    valid(
        f,
        "event_unknown_key_any_value_kept",
        evt,
        Message(M.EVENT, 5, 45, {0: 1, 9: [None, 2**64 - 1, b"\x00"]}, ts=T0),
    )
    # Downlink bodies: the envelope checks the fields it needs; arguments are the operation's
    # (a device answers ACK result 1 bad args), so these decode.
    valid(
        f,
        "command_args_not_a_map_decodes",
        cmd,
        Message(M.COMMAND, 9, 40, {0: M.OP_SET_CONFIG, 1: T0 + 60, 2: 5}, ts=T0),
        now=T0,
    )
    valid(f, "config_interval_string_decodes", cfg, Message(M.CONFIG, 9, 41, {0: "60"}, ts=T0))
    # Time: uplink carries ts or up; downlink carries ts; plausibility is the receiver's rule.
    invalid(
        f,
        "bad_field_report_neither_ts_nor_up",
        REP,
        envelope(head(R, ts=None) + [(6, {16: 5})], REP),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_death_neither_ts_nor_up",
        death,
        envelope(head(M.DEATH, ts=None) + [(6, {0: 0})], death),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_config_up_only",
        cfg,
        envelope(head(M.CONFIG, epoch=9, ts=None, up=50) + [(6, {0: 60})], cfg),
        "bad_field",
    )
    invalid(
        f,
        "bad_field_ota_without_ts",
        ota,
        envelope(head(M.OTA, epoch=9, ts=None) + [(6, {0: 3})], ota),
        "bad_field",
    )
    valid(f, "report_ts_1_decodes", REP, Message(R, 5, 46, {16: 5}, ts=1))
    valid(f, "report_ts_uint32_max_decodes", REP, Message(R, 5, 47, {16: 5}, ts=2**32 - 1))


def build_device_strict() -> None:
    """The downlink side of the strict reading, in the device subset (64 KiB, .mpy): the codec's
    value rules and the downlink time and field rules, as a device meets them."""
    f = "device"
    cmd = topic(AP, "cmd")
    cfg = topic(AP, "cfg")
    invalid(
        f,
        "dev_config_without_ts",
        cfg,
        envelope(head(M.CONFIG, epoch=9, seq=30, ts=None, up=7) + [(6, {0: 60})], cfg),
        "bad_field",
    )
    invalid(
        f,
        "dev_command_op_negative",
        cmd,
        envelope(head(M.COMMAND, epoch=9, seq=31) + [(6, {0: -2, 1: T0 + 60})], cmd),
        "bad_field",
        now=T0,
    )
    nan = Raw("81" + "01" + "81" + "30cb7ff8000000000000")  # {1: {48: NaN}}
    invalid(
        f,
        "dev_config_nan_deadband",
        cfg,
        envelope(head(M.CONFIG, epoch=9, seq=32) + [(6, nan)], cfg),
        "bad_type",
    )


def build_precedence() -> None:
    """Issue 10 item 3: one vector per case where two errors apply, named by the rule that
    decides (docs/PROTOCOL.md section 4 "Reading a value" and section 10 "Check order")."""
    f = "precedence"
    R = M.REPORT
    evt = topic(AP, "evt")
    ota = topic(AP, "ota")
    cmd = topic(AP, "cmd")

    def body(name: str, raw: str, error: str, mtype: int = R, tpc: str = REP) -> None:
        invalid(f, name, tpc, envelope(head(mtype) + [(6, Raw(raw))], tpc), error)

    # A length over its limit and past the end: the limit is checked first (too_big).
    body(
        "too_big_str16_over_limit_and_past_end",
        "820006" + "02da0100" + "7878",
        "too_big",
        M.EVENT,
        evt,
    )
    body("too_big_str32_huge_and_past_end", "820006" + "02dbffffffff", "too_big", M.EVENT, evt)
    body("too_big_bin32_huge_and_past_end", "820002" + "06c6ffffffff", "too_big", M.OTA, ota)
    body("too_big_map32_huge_count_and_past_end", "dfffffffff", "too_big")
    body("too_big_array16_65_items_and_past_end", "dc0041", "too_big", M.BATCH)
    # Within its limit but past the end: truncated.
    body("truncated_str8_within_limit_past_end", "820006" + "02d9c87878", "truncated", M.EVENT, evt)
    body("truncated_bin16_within_limit_past_end", "820002" + "06c50800ab", "truncated", M.OTA, ota)
    # A collection that cannot fit (1 byte per item, 2 per map entry) is truncated before any
    # of its items is read, even one that is itself wrong.
    body("truncated_map_count_before_its_first_key", "8fc1", "truncated")
    body("truncated_array_count_before_its_first_item", "dc0030c1", "truncated", M.BATCH)
    # Repeated map key: refused at the key, before its value is read.
    body("bad_field_repeated_key_before_a_reserved_value", "821001" + "10c1", "bad_field")
    body("bad_field_repeated_key_before_a_truncated_value", "821001" + "10da00ff", "bad_field")
    body("bad_field_repeated_key_before_a_too_big_value", "821001" + "10dbffffffff", "bad_field")
    # The first error in byte order wins, across nested values.
    body("bad_field_repeated_key_before_a_later_ext", "831001" + "1001" + "11d40105", "bad_field")
    body("bad_type_ext_before_a_later_repeated_key", "8311d40105" + "10011001", "bad_type")
    body("bad_type_string_key_before_its_value", "81a178c1", "bad_type")
    # Depth is checked before the item's bytes are read: too_deep, whatever the item.
    deep = "820006" + "03810091" + "91c1"  # {0: 6, 3: {0: [[<c1>]]}}: c1 at the 6th level
    body("too_deep_before_reading_a_reserved_byte", deep, "too_deep", M.EVENT, evt)
    # Envelope order: v before the key set, the tag before types and bodies, field ranges
    # (time included) before the channel, then the body.
    invalid(
        f,
        "unknown_version_before_unknown_key",
        REP,
        envelope(head(R, v=2) + [(6, {16: 5}), (9, 0)], REP),
        "unknown_version",
    )
    invalid(
        f,
        "bad_field_unknown_key_before_missing_seq",
        REP,
        envelope([e for e in head(R) if e[0] != 3] + [(6, {16: 5}), (8, 0)], REP),
        "bad_field",
    )
    flipped = envelope(head(R) + [(6, {16: "x"})], REP)
    invalid(f, "bad_tag_before_body_shape", REP, flipped[:-1] + bytes([flipped[-1] ^ 1]), "bad_tag")
    bad_u = envelope(head(12, ts=None) + [(6, {16: 5})], REP)
    invalid(f, "bad_tag_before_unknown_type", REP, bad_u[:-1] + bytes([bad_u[-1] ^ 1]), "bad_tag")
    invalid(
        f,
        "unknown_type_before_missing_time",
        REP,
        envelope(head(12, ts=None) + [(6, {16: 5})], REP),
        "unknown_type",
    )
    invalid(
        f,
        "bad_field_missing_time_before_wrong_channel",
        evt,
        envelope(head(R, ts=None) + [(6, {16: 5})], evt),
        "bad_field",
    )
    invalid(
        f,
        "unknown_type_wrong_channel_before_body_shape",
        evt,
        envelope(head(R) + [(6, [1])], evt),
        "unknown_type",
    )
    invalid(
        f,
        "bad_field_body_before_replay",
        REP,
        envelope(head(R) + [(6, {16: 2**53})], REP),
        "bad_field",
        seen=[[5, 10]],
    )
    # Commands: expiry before the replay check.
    ping = envelope(head(M.COMMAND, epoch=9, seq=3) + [(6, {0: 1, 1: T0 + 60})], cmd)
    invalid(f, "expired_before_replay", cmd, ping, "expired", seen=[[9, 3]], now=T0 + 61)
    invalid(
        f,
        "too_big_payload_before_parsing",
        topic(AP, "death"),
        bytes([0xC1]) * 129,
        "too_big",
    )
    invalid(f, "truncated_before_trailing_check", REP, bytes.fromhex("8700"), "truncated")
    # The tag is key 7's value and the payload's last 16 bytes: a body whose last bytes only look
    # like the tag entry (`07 c4 10` + 16) while key 7 came earlier is bad_tag, on either reading.
    mimic = [*head(R), (7, bytes(16)), (6, Raw("92" + "07c410" + "00" * 16))]
    invalid(
        f,
        "bad_tag_body_ends_like_the_tag_entry",
        REP,
        envelope(mimic, REP, count=len(mimic), trailer=b"", tag=b""),
        "bad_tag",
    )


def build_confirm() -> None:
    """Delivery confirmed by the store (docs/PROTOCOL.md section 16): the BIRTH opt-in, CONFIRM
    on cmd with its ranges (the limits, the order rule), and the ways a CONFIRM is refused. Kept
    small: the device subset of the file is read in a 64 KiB heap too."""
    f = "confirm"
    cmd = topic(AP, "cmd")
    C = M.CONFIRM
    valid(
        f,
        "confirm_birth_opts_in",
        topic(AP, "birth"),
        Message(M.BIRTH, 12, 2, {0: "0.2.0", 1: "esp32", 2: 0, 7: 3, 8: M.CONFIRM_V1}, up=3),
    )
    valid(f, "confirm_one_range", cmd, Message(C, 9, 30, {0: [12, 1001, 5]}, ts=T0))
    valid(
        f,
        "confirm_ranges_over_two_epochs",
        cmd,
        Message(C, 9, 31, {0: [11, 250, 3, 12, 1, 40, 12, 42, 7]}, ts=T0),
    )
    valid(
        f,
        "confirm_largest_seq",
        cmd,
        Message(C, 9, 32, {0: [0xFFFFFFFF, 0xFFFFFFFE, 2]}, ts=T0),
    )
    most = [x for i in range(M.MAX_CONFIRM_RANGES) for x in (12, 1000 + 3 * i, 2)]
    valid(f, "confirm_21_ranges", cmd, Message(C, 9, 33, {0: most}, ts=T0))
    valid(f, "confirm_extra_body_key_kept", cmd, Message(C, 9, 34, {0: [12, 7, 1], 9: "x"}, ts=T0))

    def bad(name: str, body: object, error: str = "bad_field", tpc: str = cmd) -> None:
        invalid(f, name, tpc, encode(Signer(KEY), tpc, Message(C, 9, 40, body, ts=T0)), error)

    bad("confirm_no_ranges", {})
    bad("confirm_empty_ranges", {0: []})
    bad("confirm_ranges_not_array", {0: {12: 5}})
    bad("confirm_ranges_not_triples", {0: [12, 1001]})
    bad("confirm_count_zero", {0: [12, 1001, 0]})
    bad("confirm_count_bool", {0: [12, 1001, True]})
    bad("confirm_negative_seq", {0: [12, -1, 2]})
    bad("confirm_past_u32", {0: [12, 0xFFFFFFFF, 2]})
    bad("confirm_overlapping", {0: [12, 10, 5, 12, 14, 1]})
    bad("confirm_descending_epochs", {0: [12, 10, 1, 11, 20, 1]})
    bad("confirm_64_items", {0: most + [13]})  # 22 triples would pass the 64-item array limit
    bad("confirm_body_array", [12, 10, 1])
    bad("confirm_on_cfg", {0: [12, 1001, 5]}, "unknown_type", topic(AP, "cfg"))
    pay = encode(Signer(KEY), cmd, Message(C, 9, 41, {0: [12, 1001, 5]}, ts=T0))
    invalid(f, "confirm_bad_tag", cmd, pay[:-1] + bytes([pay[-1] ^ 0x01]), "bad_tag")
    invalid(
        f,
        "confirm_other_devices_key",
        cmd,
        encode(Signer(KEY_B), cmd, Message(C, 9, 41, {0: [12, 1001, 5]}, ts=T0)),
        "bad_tag",
    )
    rep = topic(AP, "rep")
    invalid(
        f,
        "confirm_on_uplink_rep",
        rep,
        encode(Signer(KEY), rep, Message(C, 9, 42, {0: [12, 1001, 5]}, ts=T0)),
        "unknown_type",
    )


def render(vectors: list[dict[str, Any]]) -> str:
    return "[\n" + ",\n".join(json.dumps(v, ensure_ascii=False) for v in vectors) + "\n]\n"


DOC = HERE.parents[1] / "docs" / "PROTOCOL.md"
COUNTS_OPEN = "<!-- vector-counts: generated by tests/vectors/generate.py, do not edit -->"
COUNTS_CLOSE = "<!-- /vector-counts -->"
ABOUT = {
    "valid": "canonical valid messages, one or more of every type",
    "noncanonical": "valid bytes a canonical encoder would not write",
    "invalid": "one or more per error name",
    "device": "the device subset: run in a 64 KiB heap from .mpy, and the mutation seeds",
    "admission": "what the store can hold, per field, and the time fields (sections 4, 5, 7)",
    "precedence": "which error is reported when two apply (sections 4 and 10)",
}


def counts_table(files: dict[str, list[dict[str, Any]]]) -> str:
    """The table docs/PROTOCOL.md section 12 shows between its vector-counts markers."""
    rows = ["| file | valid | invalid | total | what |", "|---|---|---|---|---|"]
    tv = ti = 0
    for name in sorted(files):
        v = sum("fields" in x for x in files[name])
        i = len(files[name]) - v
        tv, ti = tv + v, ti + i
        rows.append("| `%s.json` | %d | %d | %d | %s |" % (name, v, i, v + i, ABOUT.get(name, "")))
    rows.append("| all | %d | %d | **%d** | |" % (tv, ti, tv + ti))
    return "\n".join(rows)


def with_counts(doc: str, files: dict[str, list[dict[str, Any]]]) -> str:
    a = doc.index(COUNTS_OPEN) + len(COUNTS_OPEN)
    b = doc.index(COUNTS_CLOSE)
    return doc[:a] + "\n" + counts_table(files) + "\n" + doc[b:]


def main(argv: list[str]) -> int:
    build_valid()
    build_noncanonical()
    build_invalid()
    build_device()
    build_device_strict()
    build_admission()
    build_precedence()
    build_confirm()
    status = 0
    for name, vecs in FILES.items():
        names = [v["name"] for v in vecs]
        assert len(names) == len(set(names)), "duplicate vector names in " + name
        for v in vecs:
            want = {k: v[k] for k in ("fields", "error", "reencode") if k in v}
            try:
                got = check(v)
            except Exception as e:  # a protocol bug: report it, the vector still says the truth
                got = {"exception": repr(e)}
            if got != want:
                print(
                    "NOTE %s/%s: protocol gives %s, vector says %s" % (name, v["name"], got, want),
                    file=sys.stderr,
                )
        path = HERE / (name + ".json")
        text = render(vecs)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                print("%s differs from the generator" % path, file=sys.stderr)
                status = 1
        else:
            path.write_text(text)
            print("wrote %s: %d vectors" % (path.name, len(vecs)))
    doc = DOC.read_text()
    want = with_counts(doc, FILES)
    if "--check" in argv:
        if doc != want:
            print(
                "%s: vector counts differ from the files (rerun generate.py)" % DOC, file=sys.stderr
            )
            status = 1
    elif doc != want:
        DOC.write_text(want)
        print("wrote the vector counts in %s" % DOC.name)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
