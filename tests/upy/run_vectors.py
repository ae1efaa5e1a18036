"""Check every vector of the given files with protocol.vectors.check and print one JSON line per
vector: {"name": ..., then check()'s result}, floats as exact bits (common.canon). Runs under
MicroPython (tests/test_protocol_vectors.py) and CPython.

    micropython -X heapsize=64K tests/upy/run_vectors.py tests/vectors/device.json
"""

import gc
import json
import sys

from common import canon, vectors

from protocol.vectors import check


def main(paths):
    for path in paths:
        for vec in vectors(path):
            # what check() reads, nothing else: the expected fields are the CPython side's to
            # compare, and a device never holds a vector's JSON (a 21-range CONFIRM's line is
            # larger than the message itself)
            for k in ("fields", "error", "note", "description"):
                if k in vec:
                    del vec[k]
            gc.collect()
            try:
                res = check(vec)
            except Exception as e:  # a bug, not an outcome: report it and keep going
                res = {"exception": f"{type(e).__name__}: {e}"}
            res["name"] = vec["name"]
            print(json.dumps(canon(res)))
            vec = res = None
            gc.collect()


main(sys.argv[1:])
