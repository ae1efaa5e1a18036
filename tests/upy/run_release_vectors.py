"""Check every release vector of the given files (tests/vectors/release/*.json) with
protocol.release_vectors.check and print one JSON line per vector, as run_vectors.py does for
the envelope vectors. Runs under MicroPython and CPython.

    micropython tests/upy/run_release_vectors.py tests/vectors/release/manifest.json
    micropython -X heapsize=64K tests/upy/run_release_vectors.py --flash DIR STRIPPED.json

With --flash DIR, manifest vectors come without their bytes: each is read from DIR/<name>.bin
with manifest.verify_file, in pieces, as a device reads a manifest it stored on flash (a JSON
line holding a realistic manifest and its expected fields does not fit a 64 KiB heap, and a
device never holds one either).
"""

import gc
import json
import sys

from common import vectors

from protocol.release_vectors import check


def main(args):
    flash = None
    if args and args[0] == "--flash":
        flash = args[1]
        args = args[2:]
    for path in args:
        for vec in vectors(path):
            gc.collect()
            where = None
            if flash is not None and "key_hex" in vec:
                where = flash + "/" + vec["name"] + ".bin"
            try:
                res = check(vec, where)
            except Exception as e:  # a bug, not an outcome: report it and keep going
                res = {"exception": f"{type(e).__name__}: {e}"}
            res["name"] = vec["name"]
            vec = None
            gc.collect()
            json.dump(res, sys.stdout)  # streamed: the string of 40 files' fields is not built
            print()
            vec = res = None
            gc.collect()


main(sys.argv[1:])
