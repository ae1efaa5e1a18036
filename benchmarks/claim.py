"""Cost of a claim: the board's side (X25519 key pair, request, opening the answer) on the real
MicroPython unix port, against the same pure-Python code on CPython and `cryptography`'s X25519
(the baseline), all measured in this run; plus one full claim round trip through a private
Mosquitto with dynsec and the real claim responder (SQLite registry).

    .venv/bin/python benchmarks/claim.py

Last line: JSON {upy_x25519_ms, upy_board_claim_ms, cpython_pure_x25519_ms,
cryptography_x25519_ms, round_trip_ms}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: E402
    X25519PrivateKey,
    X25519PublicKey,
)

from protocol import claim  # noqa: E402
from tests.support.claimkit import device_bytecode  # noqa: E402
from tests.support.upy import run_upy  # noqa: E402

N = 20

UPY = """
import time, os, gc
from protocol import claim as wire
priv = os.urandom(32)
pub = wire.public_key(priv)
t = time.ticks_us()
for _ in range(%d):
    wire.x25519(priv, pub)
x = time.ticks_diff(time.ticks_us(), t) / %d
sec = bytes(16); nonce = os.urandom(16)
t = time.ticks_us()
p2, pb2 = wire.keypair(os.urandom(32))
tp, req = wire.encode_request("0011223344556677", sec, nonce, pb2)
shared = wire.x25519(p2, pub)
keys = wire.box_keys(shared, sec, "0011223344556677", pb2, pub, nonce)
wire.open_box(keys, nonce, wire.seal_box(keys, nonce, bytes(120)))
b = time.ticks_diff(time.ticks_us(), t)
print(x / 1000, b / 1000)
""".replace("%d", str(N))


def cpython() -> tuple[float, float]:
    priv, pub = os.urandom(32), claim.public_key(os.urandom(32))
    t = time.perf_counter()
    for _ in range(N):
        claim.x25519(priv, pub)
    pure = (time.perf_counter() - t) / N * 1000
    k = X25519PrivateKey.from_private_bytes(priv)
    peer = X25519PublicKey.from_public_bytes(pub)
    t = time.perf_counter()
    for _ in range(N * 50):
        k.exchange(peer)
    lib = (time.perf_counter() - t) / (N * 50) * 1000
    return pure, lib


def round_trip(tmp: Path, mpy: Path) -> float:
    """One board claim (MicroPython process start excluded) through broker + responder."""
    from controller.keys import MasterKey
    from controller.provisioning import tokens as T
    from controller.provisioning.bundles import broker_block, claim_bundle, write_bundle
    from controller.provisioning.claim_service import (
        CLAIM_USER,
        ClaimResponder,
        ClaimService,
        bootstrap_commands,
    )
    from controller.security import dynsec
    from controller.security.broker_config import BrokerSettings
    from controller.store.sqlite import SqliteStore
    from tests.support.secure_broker import GeneratedBroker

    dyn = dynsec.write_initial_file(tmp / "dynsec.json", "admin", "admin-pw")
    b = GeneratedBroker(tmp / "b", settings=BrokerSettings(data_dir=tmp, dynsec_file=dyn)).start()
    try:
        with dynsec.DynsecClient("127.0.0.1", b.port, "admin", "admin-pw") as admin:
            admin.create_controller("controller", "ctl-pw")
            admin.run(bootstrap_commands("claim-pw", "controller"))
            store = SqliteStore(tmp / "idu.sqlite")
            store.migrate()
            master = MasterKey(os.urandom(32))
            (tok,) = T.TokenStore(store, master).issue("porto", "ribeira", "ap", 1, 3600)
            svc = ClaimService(
                ClaimResponder(store, master, admin), "127.0.0.1", b.port, "controller", "ctl-pw"
            ).start()
            flash = tmp / "board"
            flash.mkdir()
            bundle = claim_bundle(tok, broker_block("127.0.0.1", b.port, CLAIM_USER, "claim-pw"))
            write_bundle(flash / "config.json", bundle)
            script = tmp / "rt.py"
            script.write_text(
                "import time\nimport claim\nt = time.ticks_ms()\n"
                f"claim.ensure({str(flash)!r}, 1, 100)\n"
                "print(time.ticks_diff(time.ticks_ms(), t))\n"
            )
            res = run_upy(script, heap="96K", path=[mpy]).check()
            svc.stop()
            store.close()
            return float(res.stdout.strip().splitlines()[-1])
    finally:
        b.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="idufleet-claim-bench-") as d:
        tmp = Path(d)
        mpy = device_bytecode(tmp / "mpy")
        script = tmp / "upy_claim.py"
        script.write_text(UPY)
        out = run_upy(script, heap="96K", path=[mpy]).check().stdout.split()
        upy_x, upy_board = float(out[-2]), float(out[-1])
        pure, lib = cpython()
        rt = round_trip(tmp, mpy)
    result = {
        "upy_x25519_ms": round(upy_x, 2),
        "upy_board_claim_ms": round(upy_board, 2),
        "cpython_pure_x25519_ms": round(pure, 3),
        "cryptography_x25519_ms": round(lib, 4),
        "round_trip_ms": rt,
    }
    print(
        f"X25519: MicroPython unix {upy_x:.2f} ms, CPython pure {pure:.3f} ms, "
        f"cryptography {lib:.4f} ms; board-side claim crypto {upy_board:.1f} ms; "
        f"claim round trip {rt:.0f} ms"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
