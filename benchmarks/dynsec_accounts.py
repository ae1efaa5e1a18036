"""Broker account management cost with the dynamic security plugin (Mosquitto 2.0.11 here).

Measures, against a private broker started with the generated config:
- revoke latency: disableClient sent -> the connected device sees its link drop (the time a
  revoked device keeps talking), against the baseline of one control round trip (listClients);
- provisioning: N devices (role with 11 ACLs + client each) in one control message, against
  the baseline of N bare clients without roles.
Last line: one JSON object. Run: .venv/bin/python benchmarks/dynsec_accounts.py [N]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.security import dynsec  # noqa: E402
from controller.security.broker_config import BrokerSettings  # noqa: E402
from tests.support.secure_broker import GeneratedBroker, Peer  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    trials = 30
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        dyn = dynsec.write_initial_file(d / "dynsec.json", "admin", "bench-admin")
        b = GeneratedBroker(d / "b", settings=BrokerSettings(data_dir=d, dynsec_file=dyn)).start()
        try:
            with dynsec.DynsecClient("127.0.0.1", b.port, "admin", "bench-admin") as admin:
                rtt = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    admin.list_clients()
                    rtt.append((time.perf_counter() - t0) * 1000)

                admin.create_device("porto", "kick-me", "pw")
                kick = []
                for _ in range(trials):
                    p = Peer(b.port, "kick-me", "pw")
                    assert p.connect() == 0
                    t0 = time.monotonic()
                    admin.disable_client("kick-me")
                    deadline = t0 + 5
                    while p.disconnected_at is None and time.monotonic() < deadline:
                        time.sleep(0.0002)
                    assert p.disconnected_at is not None, "not disconnected within 5 s"
                    kick.append((p.disconnected_at - t0) * 1000)
                    p.close()
                    admin.enable_client("kick-me")

                t0 = time.perf_counter()
                admin.run(
                    [
                        {"command": "createClient", "username": f"bare-{i}", "password": "pw"}
                        for i in range(n)
                    ]
                )
                bare_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                admin.create_devices([("porto", f"dev-{i}", "pw") for i in range(n)])
                full_s = time.perf_counter() - t0
        finally:
            b.stop()
    result = {
        "bench": "dynsec_accounts",
        "control_rtt_ms_median": round(statistics.median(rtt), 3),
        "revoke_to_disconnect_ms_median": round(statistics.median(kick), 3),
        "revoke_to_disconnect_ms_p95": round(pct(kick, 0.95), 3),
        "revoke_trials": trials,
        "devices": n,
        "create_devices_with_roles_s": round(full_s, 3),
        "create_bare_clients_s_baseline": round(bare_s, 3),
        "role_overhead_x": round(full_s / bare_s, 2) if bare_s else None,
    }
    print(
        f"revoke: median {result['revoke_to_disconnect_ms_median']} ms "
        f"(control round trip {result['control_rtt_ms_median']} ms)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
