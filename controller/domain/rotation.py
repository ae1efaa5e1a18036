"""Key rotation, the pure part: while a new key travels to the device, messages signed with
either key verify. A new key is sent in a COMMAND signed with the old one (OP_ROTATE_KEY,
args {ARG_KEY: new key}); the device stores it, ACKs with the old key, then signs with the new
one. controller.fleet drives the exchange; this module only decides which key verifies."""

from __future__ import annotations

import time
from collections.abc import Callable

from protocol.errors import ProtocolError
from protocol.sign import Signer

GRACE_S = 60.0  # the old key keeps verifying this long after the switch (messages in flight)
ACK_TIMEOUT_S = 30.0
ARG_KEY = 0  # OP_ROTATE_KEY args: {0: new key, 32 bytes}


class DualSigner(Signer):
    """Signs with `primary`; verifies with primary, or with `alt` until `until` (unix s)."""

    def __init__(
        self, primary: Signer, alt: Signer, until: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.primary = primary
        self.alt = alt
        self.until = until
        self.clock = clock
        self.alt_seen = False  # a message verified with alt: its sender holds that key

    def digest(self, topic: bytes, unsigned: bytes | memoryview) -> bytes:
        return self.primary.digest(topic, unsigned)

    def tag(self, topic: bytes, unsigned: bytes | memoryview) -> bytes:
        return self.primary.tag(topic, unsigned)

    def verify(self, topic: bytes, unsigned: bytes | memoryview, tag: bytes) -> None:
        try:
            self.primary.verify(topic, unsigned, tag)
        except ProtocolError:
            if self.clock() >= self.until:
                raise
            self.alt.verify(topic, unsigned, tag)
            self.alt_seen = True


def current(signer: Signer) -> Signer:
    """The key a device is known to hold now (a finished grace collapses to its primary)."""
    return signer.primary if isinstance(signer, DualSigner) else signer
