"""Mosquitto 2.0's shared subscriptions and a member that dies: what happens to its share after a
SIGKILL, for several session expiries. Two members of $share/g/t/# are real subprocesses (paho,
MQTT 5, clean_start=False with the expiry); one is SIGKILLed while a publisher sends QoS 1 at
~50 msg/s for 8 s more. Prints one JSON line per expiry and a summary last.

    .venv/bin/python benchmarks/share_failover.py [--expiries 0,3,86400]

The baseline in the same run is expiry 86400 (what a persistent controller session used): its
losses are the stranded share. docs/CONTROLLER.md, "Failover", records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.broker import Broker

MEMBER = r"""
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, cid, exp, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
f = open(out, "a", buffering=1)
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5)
c.on_connect = lambda cl, u, fl, rc, p: cl.subscribe("$share/g/t/#", qos=1)
c.on_message = lambda cl, u, m: f.write(m.payload.decode() + "\n")
p = Properties(PacketTypes.CONNECT)
p.SessionExpiryInterval = exp
c.connect("127.0.0.1", port, properties=p, clean_start=False)
c.loop_forever()
"""


def trial(expiry: int, root: Path) -> dict[str, Any]:
    b = Broker(root / f"b{expiry}", extra=["user root"] if os.geteuid() == 0 else []).start()
    script = root / "member.py"
    script.write_text(MEMBER)
    outs = [root / f"m{i}-{expiry}.txt" for i in range(2)]
    members = [
        subprocess.Popen([sys.executable, str(script), str(b.port), f"m{i}", str(expiry), str(o)])
        for i, o in enumerate(outs)
    ]
    try:
        deadline = time.monotonic() + 10
        while not all(o.exists() for o in outs) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # both subscribed
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, "pub", protocol=MQTTProtocolVersion.MQTTv5)
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        n = 0
        sent_at: dict[int, float] = {}
        for _ in range(100):
            n += 1
            pub.publish("t/x", str(n), qos=1).wait_for_publish(5)
            time.sleep(0.01)
        os.kill(members[0].pid, signal.SIGKILL)
        members[0].wait()
        t_kill = time.monotonic()
        while time.monotonic() - t_kill < 8:
            n += 1
            pub.publish("t/x", str(n), qos=1).wait_for_publish(5)
            sent_at[n] = time.monotonic() - t_kill
            time.sleep(0.02)
        time.sleep(1.0)
        pub.disconnect()
        pub.loop_stop()
    finally:
        for m in members:
            if m.poll() is None:
                m.kill()
                m.wait()
        b.stop()
    got = [set(int(x) for x in o.read_text().split()) for o in outs]
    missing = [k for k in range(1, n + 1) if k not in got[0] and k not in got[1]]
    after = [sent_at[k] for k in missing if k in sent_at]
    return {
        "session_expiry_s": expiry,
        "sent": n,
        "to_killed": len(got[0]),
        "to_survivor": len(got[1]),
        "lost_after_kill": len(after),
        "stranded_until_s": round(max(after), 2) if after else 0.0,
        "lost_before_kill": len(missing) - len(after),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expiries", default="0,3,86400")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as t:
        for e in (int(x) for x in args.expiries.split(",")):
            rows.append(trial(e, Path(t)))
            print(json.dumps(rows[-1]))
    print(
        json.dumps({"trials": rows, "zero_expiry_strands_nothing": rows[0]["lost_after_kill"] == 0})
    )


if __name__ == "__main__":
    main()
