"""Wire size of two realistic reports in three encodings, measured in the same run:

- ours: the signed msgpack envelope (protocol.envelope.encode), 16-byte HMAC tag included;
- JSON with readable keys and physical values, compact separators, no signature;
- Sparkplug B minimal DDATA (benchmarks/sparkplug_b.py): after a DBIRTH, each metric is only its
  alias and value; payload timestamp (ms) and seq; no signature.

All three carry the same sample (every metric value, the sample time and the sequence number;
ours and JSON also the boot epoch and uptime). None carries the device id: in all three the MQTT
topic names the device, and topics are not counted.

    .venv/bin/python benchmarks/wire_size.py

Last line: JSON with report_bytes, json_bytes, sparkplug_bytes, ratio_vs_json, ratio_vs_sparkplug
for the larger report, plus per-report detail. Targets: <= 0.35 x JSON, <= 0.8 x Sparkplug B.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sparkplug_b

from protocol import messages as M
from protocol.envelope import Message, encode
from protocol.metrics import REGISTRY, real
from protocol.sign import Signer
from protocol.topics import topic

TS = 1763900000
# Raw wire values in each metric's fixed-point unit (protocol/metrics.py): an access point at
# lunchtime in Ribeira, and an air-quality / noise / traffic sensor on Avenida dos Aliados.
REPORTS: dict[str, dict[str, Any]] = {
    "access_point": {
        "device": "ap-0412",
        "epoch": 12,
        "seq": 1001,
        "up": 86400,
        "metrics": {
            "uptime": 86400,
            "heap_free": 41232,
            "uplink_rssi": -61,
            "clients": 37,
            "clients_2g4": 12,
            "clients_5g": 23,
            "clients_6g": 2,
            "client_rssi_min": -88,
            "client_rssi_mean": -64,
            "client_rssi_max": -38,
            "clients_weak": 4,
            "tx_bytes": 1234567,
            "rx_bytes": 98765432,
            "channel_util_2g4": 41,
            "channel_util_5g": 17,
            "sessions_new": 9,
        },
    },
    "air_quality_noise": {
        "device": "aq-0042",
        "epoch": 3,
        "seq": 77,
        "up": 7200,
        "metrics": {
            "uptime": 7200,
            "battery_voltage": 3712,
            "battery_level": 81,
            "noise_laeq": 634,
            "noise_lamax": 812,
            "noise_la90": 521,
            "pm2_5": 123,
            "pm10": 287,
            "pm1": 74,
            "no2": 38,
            "o3": 61,
            "co": 42,
            "temperature": 2153,
            "humidity": 645,
            "pressure": 10132,
            "people_count": 312,
            "vehicle_count": 87,
            "bicycle_count": 14,
        },
    },
}
KEY = bytes(range(32))


def ours(r: dict[str, Any]) -> bytes:
    from protocol.metrics import BY_NAME

    body = {BY_NAME[n]: v for n, v in r["metrics"].items()}
    msg = Message(M.REPORT, r["epoch"], r["seq"], body, ts=TS, up=r["up"])
    return encode(Signer(KEY), topic("porto", r["device"], "rep"), msg)


def as_json(r: dict[str, Any]) -> bytes:
    from protocol.metrics import BY_NAME

    metrics = {}
    for n, v in r["metrics"].items():
        mid = BY_NAME[n]
        metrics[n] = v if REGISTRY[mid][3] == 0 else real(mid, v)  # physical value, e.g. 21.53
    doc = {
        "v": 1,
        "type": "report",
        "epoch": r["epoch"],
        "seq": r["seq"],
        "ts": TS,
        "up": r["up"],
        "metrics": metrics,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def sizes(name: str, r: dict[str, Any]) -> dict[str, Any]:
    names = list(r["metrics"])
    values = list(r["metrics"].values())
    ours_b = ours(r)
    json_b = as_json(r)
    sp = sparkplug_b.ddata(values, TS * 1000, r["seq"] % 256)
    birth = sparkplug_b.dbirth(names, values, TS * 1000, 0)
    return {
        "metrics": len(values),
        "report_bytes": len(ours_b),
        "report_unsigned_bytes": len(ours_b) - 19,
        "json_bytes": len(json_b),
        "sparkplug_bytes": len(sp),
        "sparkplug_dbirth_bytes": len(birth),
        "ratio_vs_json": round(len(ours_b) / len(json_b), 3),
        "ratio_vs_sparkplug": round(len(ours_b) / len(sp), 3),
    }


def mqtt_publish_bytes(topic: str, payload: int) -> int:
    """A QoS 1 PUBLISH on the wire: fixed header, remaining length, topic, packet id, payload."""
    remaining = 2 + len(topic) + 2 + payload
    return 1 + (1 if remaining < 128 else 2) + remaining


def confirm_cost(report_wire: int) -> dict[str, Any]:
    """Delivery confirmation's downlink (docs/PROTOCOL.md section 16): real CONFIRMs built by the
    controller's issuer (controller epoch 37, seq past 2^16; device epoch 12, seqs past 2^16, so
    every integer is its realistic width), per report, in the cases that set how many reports one
    CONFIRM covers (at most one CONFIRM per device per confirm.interval_ms = 2 s). Each CONFIRM also
    costs the device a 4-byte PUBACK uplink, counted in `uplink_puback_bytes_per_report`."""
    from controller.domain.commands import CommandIssuer
    from protocol.sign import Signer

    issuer = CommandIssuer(37)
    issuer.seq = 70000
    signer = Signer(bytes(range(32)))
    topic = "idu/1/porto/ap-0412/cmd"

    def wire(flat: list[int]) -> int:
        t, payload = issuer.build_confirm(signer, "porto", "ap-0412", flat, TS)
        return mqtt_publish_bytes(t, len(payload))

    one = wire([12, 70001, 1])
    cases = {  # name: (bytes of the CONFIRM, reports it confirms)
        "report every 60 s (one report per CONFIRM)": (one, 1),
        "report every 1 s (two per CONFIRM)": (wire([12, 70001, 2]), 2),
        "backlog replay at 20/s (40 per CONFIRM)": (wire([12, 70001, 40]), 40),
        "two controllers, every 1 s (one each)": (one, 1),
        "worst: 21 single reports, one range each": (
            wire([x for i in range(21) for x in (12, 70001 + 2 * i, 1)]),
            21,
        ),
    }
    out = {}
    for name, (n, reports) in cases.items():
        out[name] = {
            "confirm_bytes": n,
            "reports_confirmed": reports,
            "downlink_bytes_per_report": round(n / reports, 1),
            "vs_report_on_wire": round(n / reports / report_wire, 3),
            "uplink_puback_bytes_per_report": round(4 / reports, 2),
        }
    assert len(topic) == len("idu/1/porto/ap-0412/cmd")
    return out


def main() -> None:
    detail = {name: sizes(name, r) for name, r in REPORTS.items()}
    for name, d in detail.items():
        print(
            f"{name:<18} {d['metrics']:>2} metrics: ours {d['report_bytes']} B signed "
            f"({d['report_unsigned_bytes']} B before the tag), JSON {d['json_bytes']} B, "
            f"Sparkplug B DDATA {d['sparkplug_bytes']} B (DBIRTH {d['sparkplug_dbirth_bytes']} B)"
        )
    larger = max(detail, key=lambda n: detail[n]["report_bytes"])
    d = detail[larger]
    report_wire = mqtt_publish_bytes("idu/1/porto/ap-0412/rep", d["report_bytes"])
    confirm = confirm_cost(report_wire)
    for name, c in confirm.items():
        print(
            f"confirm, {name}: {c['confirm_bytes']} B per CONFIRM, "
            f"{c['downlink_bytes_per_report']} B per report ({c['vs_report_on_wire']}x the "
            f"{report_wire} B report on the wire)"
        )
    out = {
        "report": larger,
        "report_bytes": d["report_bytes"],
        "json_bytes": d["json_bytes"],
        "sparkplug_bytes": d["sparkplug_bytes"],
        "ratio_vs_json": d["ratio_vs_json"],
        "ratio_vs_sparkplug": d["ratio_vs_sparkplug"],
        "meets_targets": d["ratio_vs_json"] <= 0.35 and d["ratio_vs_sparkplug"] <= 0.8,
        "targets": {"ratio_vs_json": 0.35, "ratio_vs_sparkplug": 0.8},
        "reports": detail,
        "report_wire_bytes": report_wire,
        "confirm_downlink_bytes_per_report": confirm,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
