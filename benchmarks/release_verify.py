"""What checking a release costs a device: Ed25519 verify time and manifest verify time on the
MicroPython unix port in a 64 KiB heap with protocol/ compiled by mpy-cross -O3 (as the firmware
build ships it), the heap the modules hold, and the smallest heap in which a fresh interpreter
imports them and verifies the manifest of a real release (this agent, board sim, built and
signed as `idufleet release build` does). Baseline in the same run: hashlib's SHA-256 over the
same manifest bytes (the part a device gets from C).

    .venv/bin/python benchmarks/release_verify.py [--runs 9]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from tools import binaries  # noqa: E402
from tools.release import Spec, agent_files, build_manifest, raw_public  # noqa: E402

# Both device scripts are compiled with mpy-cross too: compiling source would cost the heap
# being measured. ARGS is replaced by (manifest path, public key hex, runs).
DEVICE = r"""
import gc, time
path, keyhex, runs = ARGS
runs = int(runs)
import hashlib
gc.collect(); a0 = gc.mem_alloc()
from protocol import manifest as MF
from protocol import ed25519
gc.collect(); a1 = gc.mem_alloc()
key = bytes.fromhex(keyhex)
f = open(path, "rb"); size = f.seek(0, 2)
def best(fn):
    b = 1 << 30
    for _ in range(runs):
        gc.collect(); t = time.ticks_us(); fn(); b = min(b, time.ticks_diff(time.ticks_us(), t))
    return b / 1000
m = MF.verify_file(f, size, key, "sim", 0)
gc.collect(); a2 = gc.mem_alloc()
f.seek(m.signed_len); sig = f.read(64); f.seek(0); signed = f.read(m.signed_len)
msg = MF.CONTEXT + hashlib.sha256(signed).digest()
out = {
    "ed25519_verify_ms": best(lambda: ed25519.verify(key, msg, sig)),
    "manifest_verify_ms": best(lambda: MF.verify_file(f, size, key, "sim", 0)),
    "sha256_manifest_ms": best(lambda: hashlib.sha256(signed).digest()),
    "modules_heap_bytes": a1 - a0,
    "manifest_held_bytes": a2 - a1,
    "manifest_files": m.nfiles,
    "manifest_bytes": m.size,
}
print(out)
"""

MINIMAL = r"""
from protocol import manifest as MF
path, keyhex, runs = ARGS
f = open(path, "rb"); size = f.seek(0, 2)
MF.verify_file(f, size, bytes.fromhex(keyhex), "sim", 0)
print("ok")
"""


def compile_protocol(dest: Path) -> None:
    out = dest / "protocol"
    out.mkdir(parents=True)
    for src in sorted((ROOT / "protocol").glob("*.py")):
        subprocess.run(
            [binaries.mpy_cross(), "-O3", "-o", str(out / (src.stem + ".mpy")), str(src)],
            check=True,
        )


def upy(lib: Path, script: str, heap: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run script, compiled to lib/bench_script.mpy with ARGS bound to args, in a heap of heap."""
    src = lib / "bench_script.py"
    src.write_text(script.replace("ARGS", repr(args), 1))
    subprocess.run([binaries.mpy_cross(), "-O3", str(src)], check=True)
    src.unlink()
    env = {"MICROPYPATH": str(lib)}
    return subprocess.run(
        [binaries.micropython(), "-X", f"heapsize={heap}", "-c", "import bench_script"],
        capture_output=True,
        text=True,
        env=env,
        cwd=lib,  # sys.path starts with the cwd: the repository's protocol/ source must not win
        timeout=120,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = raw_public(key)
    now = int(time.time())
    spec = Spec(1, "0.0.1", "sim", now + 86400 * 30, created=now)
    manifest, payload = build_manifest(spec, agent_files("sim"), None, key)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        compile_protocol(lib)
        mf = Path(tmp) / "manifest.bin"
        mf.write_bytes(manifest)
        r = upy(lib, DEVICE, "64K", str(mf), pub.hex(), str(a.runs))
        if r.returncode:
            sys.exit(f"device run failed: {r.stderr or r.stdout}")
        out = eval(r.stdout.strip().splitlines()[-1])  # a dict literal printed by MicroPython
        lo, hi = 8, 64  # KiB: the smallest heap in which import + verify_file succeeds
        while lo < hi:
            mid = (lo + hi) // 2
            if upy(lib, MINIMAL, f"{mid}K", str(mf), pub.hex(), "1").stdout.strip() == "ok":
                hi = mid
            else:
                lo = mid + 1
        out["min_heap_kib"] = lo
        out["heapsize_bytes"] = 64 * 1024
        out["release_bytes"] = len(manifest) + len(payload)
        print(f"release of {out['manifest_files']} files, manifest {len(manifest)} B")
        for k, v in out.items():
            print(f"  {k:22} {v}")
        print(json.dumps(out))


if __name__ == "__main__":
    main()
