"""firmware/main.py with heap.unload() watched: after every unload, one console line
`idu-phase <groups> <sorted sys.modules>`, so tests/test_firmware_heap.py can check what each
phase of the real agent leaves loaded. MicroPython only; run as the agent's entry script."""

import sys

_root = __file__.rsplit("/", 3)[0]
sys.path.insert(0, _root + "/firmware/_mpy")  # as main.py does: the compiled heap module
import heap  # noqa: E402

_unload = heap.unload


def _watched(*names):
    _unload(*names)
    print("idu-phase", ",".join(names), sorted(sys.modules))


heap.unload = _watched
import main  # noqa: E402, F401  (runs the agent)
