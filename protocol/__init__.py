"""idufleet wire protocol v1: topics, msgpack envelope, signing, replay window.

Runs unchanged on MicroPython and CPython; no I/O, no typing/dataclasses/logging/asyncio/socket.
docs/PROTOCOL.md is the specification this package implements. The convenience re-exports below
are CPython-only: on a device every module costs heap (its code is loaded into RAM), so the
firmware imports exactly the submodules it uses and `import protocol` loads nothing more (and
defines nothing: no __all__ either).
"""

import sys

if sys.implementation.name != "micropython":
    from protocol.envelope import Message as Message
    from protocol.envelope import decode as decode
    from protocol.envelope import encode as encode
    from protocol.errors import ProtocolError as ProtocolError
    from protocol.sign import Signer as Signer
