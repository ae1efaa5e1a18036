"""Helpers shared by the scripts in tests/upy/ and the pytest side: plain Python that runs on
MicroPython and CPython alike (no typing, no pathlib)."""

import json
import struct


def canon(v):
    """The value with every float replaced by its exact IEEE-754 bits and every non-ASCII string
    by its UTF-8 bytes, so that differences in how the two interpreters print or parse floats and
    text can neither hide nor fake a protocol mismatch, and the output stays ASCII."""
    if isinstance(v, float):
        return {"$f64": struct.pack(">d", v).hex()}
    if isinstance(v, str):
        b = v.encode()
        return v if len(b) == len(v) else {"$utf8": b.hex()}
    if isinstance(v, dict):
        return {k: canon(x) for k, x in v.items()}
    if isinstance(v, list):
        return [canon(x) for x in v]
    return v


def vectors(path):
    """Yield the vectors of one file, read a line at a time (files hold one vector per line), so
    a 64 KiB heap never holds more than one vector."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line[:-1] if line.endswith(",") else line)
