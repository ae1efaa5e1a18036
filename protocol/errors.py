"""The protocol's one error type and its reason codes.

Every way a packet can be wrong raises ProtocolError with one of the codes below, never anything
else (decoding is total). Imports nothing, so it loads first on a device.
"""

TRUNCATED = "truncated"  # the bytes end before a declared item does
BAD_TYPE = "bad_type"  # a msgpack type the protocol does not use (ext, 0xc1), or the wrong type
TOO_BIG = "too_big"  # packet, string, binary or collection over its limit
TOO_DEEP = "too_deep"  # nesting beyond MAX_DEPTH
TRAILING_BYTES = "trailing_bytes"  # bytes after the envelope
BAD_TAG = "bad_tag"  # authentication tag missing, misplaced or wrong
REPLAY = "replay"  # (epoch, seq) already seen or older than the replay window
UNKNOWN_VERSION = "unknown_version"  # envelope or topic version this code does not speak
BAD_FIELD = "bad_field"  # envelope/body field missing, repeated, or of the wrong type
UNKNOWN_TYPE = "unknown_type"  # message type unknown, or not allowed on this channel
BAD_TOPIC = "bad_topic"  # topic outside the idu namespace or malformed
EXPIRED = "expired"  # a command whose expiry has passed
BAD_KEY = "bad_key"  # a signing key that is not 32 bytes

CODES = (
    TRUNCATED,
    BAD_TYPE,
    TOO_BIG,
    TOO_DEEP,
    TRAILING_BYTES,
    BAD_TAG,
    REPLAY,
    UNKNOWN_VERSION,
    BAD_FIELD,
    UNKNOWN_TYPE,
    BAD_TOPIC,
    EXPIRED,
    BAD_KEY,
)


class ProtocolError(ValueError):
    """A packet (or key) the protocol refuses. `code` is one of CODES; `detail` is for humans."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code + (": " + detail if detail else ""))
        self.code = code
        self.detail = detail
