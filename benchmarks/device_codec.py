"""Device cost of one signed report: time and heap to encode + sign an access-point report into a
buffer allocated once (protocol.codec.Writer + envelope.write_head/seal, the device hot path),
against json.dumps of the same report with readable keys (MicroPython's json is C), same run.

    .venv/bin/idufleet firmware build
    .venv/bin/micropython -X heapsize=64K benchmarks/device_codec.py

Last line: JSON with encode_sign_us, json_us, ratio_vs_json, heap_bytes_per_report (targets:
ratio <= 3, heap <= 512 B) and a per-step breakdown. Heap is gc.mem_alloc() growth over a loop
with the collector disabled; times are the best of several loops, collector enabled.
"""

import gc
import sys

# Run from anywhere: the repository root (above this script's folder) goes first on the path,
# and the compiled device modules (`idufleet firmware build`) before it: a device runs .mpy.
_root = sys.path[0].rsplit("/", 1)[0]
sys.path.insert(0, _root)
sys.path.insert(0, _root + "/firmware/_mpy")
gc.collect()
import protocol.envelope  # noqa: E402, F401  # before compiling anything else (heap is tight)

gc.collect()
import device_codec_body  # noqa: E402

device_codec_body.main()
