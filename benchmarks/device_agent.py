"""One agent on the real micropython binary against a private Mosquitto: a fixed number of reports
with one broker outage in the middle (the backlog is buffered on flash and replayed), observed and
verified on CPython. Prints one JSON line last.

    .venv/bin/python benchmarks/device_agent.py [--reports 2000] [--heap 64K] [--outage 2] [--tls]

With --tls the agent connects to the broker's TLS listener (a fresh project CA, the PEM bundle
converted on the device), as a deployed device does; the observer stays on plain MQTT.

Baselines measured in the same run: the agent's heap right after boot (idle) next to its high
water, and the compact-JSON size of the very same reports next to the signed msgpack on the wire.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.provisioning.bundles import broker_block
from controller.security import ca
from protocol import messages as M
from protocol.replay import ReplayWindow
from tests.firmware.harness import Agent, Observer, check_stream, make_flash, ring_count
from tests.support.broker import Broker, free_port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=2000)
    ap.add_argument("--heap", default=os.environ.get("IDU_TEST_HEAP", "64K"))
    ap.add_argument("--outage", type=float, default=2.0, help="seconds the broker is down")
    ap.add_argument("--speed", type=int, default=100, help="sim speed (reports per second)")
    ap.add_argument("--tls", action="store_true", help="the agent connects over TLS")
    ap.add_argument(
        "--confirm-ms",
        type=int,
        default=30000,
        help="delivery confirmation re-send timeout (0: a v1 device that forgets at PUBACK)",
    )
    ap.add_argument(
        "--confirm-every", type=float, default=2.0, help="seconds between CONFIRMs per device"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extra = ["user root"] if os.geteuid() == 0 else []
        link: dict[str, object] = {}
        if args.tls:
            cadir = root / "ca"
            ca.init_ca(cadir)
            ca.issue_server(cadir, ["localhost", "127.0.0.1"])
            tls_port = free_port()
            extra += [
                f"listener {tls_port} 127.0.0.1",
                f"cafile {cadir / 'ca.crt'}",
                f"certfile {cadir / 'server.crt'}",
                f"keyfile {cadir / 'server.key'}",
            ]
            ca_file = str(cadir / "ca.crt")
            link = {"broker": broker_block("127.0.0.1", tls_port, "ap-bench", None, True, ca_file)}
        broker = Broker(root / "broker", extra=extra)
        broker.start()
        every = args.confirm_every if args.confirm_ms else 0.0
        obs = Observer(broker.port, persistent=True, confirm_every=every).start()
        dev = "ap-bench"
        flash = make_flash(
            root,
            dev,
            broker.port,
            sim={"speed": args.speed, "seed": 5},
            buffer=512,
            confirm_ms=args.confirm_ms,
            **link,
        )
        agent = Agent(flash, heap=args.heap).start()
        t0 = time.monotonic()
        try:
            obs.wait(lambda: obs.items(dev, "birth"), 30, "birth")
            _, seq, _ = obs.command(dev, M.OP_DIAGNOSTICS)
            idle = obs.ack_for(dev, seq).body[M.A_DATA]  # type: ignore[index]
            obs.wait(lambda: len(check_stream(obs, dev)[0]) >= args.reports // 2, 120, "half")
            broker.stop()
            time.sleep(args.outage)
            broker.start()
            births = obs.wait(
                lambda: len(obs.items(dev, "birth")) >= 2 and obs.items(dev, "birth"),
                60,
                "reconnect",
            )
            buffered = births[1].msg.body[M.B_BUFFERED]  # type: ignore[index]
            obs.wait(lambda: len(check_stream(obs, dev)[0]) >= args.reports, 120, "all reports")
            # stop reporting (interval one hour), then read the agent's own counters
            _, seq, _ = obs.command(dev, M.OP_SET_CONFIG, {M.G_INTERVAL: 3600})
            obs.ack_for(dev, seq)
            _, seq, _ = obs.command(dev, M.OP_DIAGNOSTICS)
            diag = obs.ack_for(dev, seq).body[M.A_DATA]  # type: ignore[index]
            made = diag[M.DG_REPORTS]
            obs.wait(lambda: len(check_stream(obs, dev)[0]) >= made, 60, "the last reports")
            if args.confirm_ms:  # and every one confirmed: the ring empties
                obs.wait(lambda: ring_count(flash) == 0, 60, "the ring emptied by CONFIRMs")
            elapsed = time.monotonic() - t0
        except AssertionError:
            print(agent.console()[-3000:], file=sys.stderr)
            raise
        finally:
            agent.kill()
            obs.stop()
            broker.stop()
        memory_errors = agent.console().count("MemoryError")

    order, wire_dups = check_stream(obs, dev)
    # What the IDU store would take twice: the stream in arrival order through the protocol's
    # replay window, as the controller runs it. A QoS 1 redelivery (the one report in flight
    # when the broker went away, sent again with DUP on the next connection) shows up in
    # wire_dups, and the window absorbs it; anything it lets through twice is a real duplicate.
    window = ReplayWindow()
    accepted: set[tuple[int, int]] = set()
    dups = 0
    for s in obs.reports(dev):
        if window.seen(s.msg.epoch, s.msg.seq):
            continue
        window.accept(s.msg.epoch, s.msg.seq)
        k = (s.msg.epoch, s.msg.seq)
        dups += k in accepted
        accepted.add(k)
    reps = obs.reports(dev)
    payload = sum(s.size for s in reps) / len(reps)
    topic_len = len(f"idu/1/porto/{dev}/rep")
    remaining = 2 + topic_len + 2 + payload  # topic, packet id, payload
    wire = 1 + (1 if remaining < 128 else 2) + remaining
    as_json = sum(
        len(
            json.dumps(
                {str(k): v for k, v in s.msg.body.items()},  # type: ignore[union-attr]
                separators=(",", ":"),
            )
        )
        for s in reps
    ) / len(reps)
    heap = diag[M.DG_HEAP_SIZE]
    confirm_bytes = sum(n for d, n in obs.confirms)
    cmd_topic = len(f"idu/1/porto/{dev}/cmd")
    confirm_wire = sum(1 + 1 + 2 + cmd_topic + 2 + n for _, n in obs.confirms)
    print(
        json.dumps(
            {
                "reports": made,
                "received": len(order),
                "duplicates": dups,
                "qos1_redeliveries_on_wire": wire_dups,
                "lost": made - len({q for e, q in order if e == 1}),
                "memory_errors": memory_errors,
                "heap_high_water_bytes": diag[M.DG_HEAP_HIGH_WATER],
                "heap_peak_alloc_bytes": diag[M.DG_HEAP_PEAK],
                "heap_idle_bytes": idle[1],
                "heapsize_bytes": heap,
                "heap_headroom_bytes": heap - diag[M.DG_HEAP_HIGH_WATER],
                "bytes_on_wire_per_report": round(wire, 1),
                "payload_bytes_per_report": round(payload, 1),
                "json_metrics_bytes_per_report_baseline": round(as_json, 1),
                "confirm_ms": args.confirm_ms,
                "confirms": len(obs.confirms),
                "confirm_payload_bytes_per_report": round(confirm_bytes / max(1, made), 2),
                "confirm_wire_bytes_per_report": round(confirm_wire / max(1, made), 2),
                "resent_on_wire": len(reps) - len(order),
                "outage_s": args.outage,
                "tls": args.tls,
                "buffered_at_reconnect": buffered,
                "reconnects": diag[M.DG_RECONNECTS],
                "elapsed_s": round(elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
