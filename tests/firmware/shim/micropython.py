"""CPython stand-in for MicroPython's `micropython` module, so firmware's sans-I/O modules
(mqtt_codec, ring, backoff, boot.decide) import unchanged in CPython tests."""


def const(x: int) -> int:
    return x
