"""Message authentication: HMAC-SHA256 with a 32-byte per-device key over the topic and the
unsigned payload, truncated to TAG_LEN bytes (docs/PROTOCOL.md, "Signing"). Pure logic.
protocol.errors is imported where a key or tag is refused: a device's report path never loads it."""

from protocol.compat import Mac, compare_digest

KEY_LEN = 32
TAG_LEN = 16
_SEP = b"\x00"  # MQTT topics cannot contain U+0000, so topic || 0x00 || payload is unambiguous


class Signer:
    """Signs and verifies for one key. Build one per key and keep it: the key schedule is the
    expensive part. verify() raises rather than returning a bool, so a forgotten check fails
    closed."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
            from protocol.errors import BAD_KEY, ProtocolError

            raise ProtocolError(BAD_KEY, "signing keys are %d bytes" % KEY_LEN)
        self._mac = Mac(bytes(key))

    def digest(self, topic: bytes, unsigned: bytes | memoryview) -> bytes:
        """The full 32-byte HMAC; the tag is its first TAG_LEN bytes."""
        return self._mac.digest(topic, _SEP, unsigned)

    def tag(self, topic: bytes, unsigned: bytes | memoryview) -> bytes:
        return self._mac.digest(topic, _SEP, unsigned)[:TAG_LEN]

    def verify(self, topic: bytes, unsigned: bytes | memoryview, tag: bytes) -> None:
        if not compare_digest(self.tag(topic, unsigned), bytes(tag)):
            from protocol.errors import BAD_TAG, ProtocolError

            raise ProtocolError(BAD_TAG)
