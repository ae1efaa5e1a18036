"""Reconnect delays: capped exponential backoff with full jitter (AWS architecture blog,
"Exponential Backoff And Jitter"), so a city-wide broker restart does not bring every device back
in the same second. Pure: the random source is passed in."""


def delay_ms(attempt, base_ms, cap_ms, rand16):
    """Delay before reconnect attempt number `attempt` (0 = first retry after a loss): uniform in
    [0, min(cap, base * 2**attempt)). rand16 is a uniform random integer in 0..65535."""
    window = base_ms << attempt if attempt < 20 else cap_ms
    if window > cap_ms:
        window = cap_ms
    return (window * rand16) >> 16


class Rng:
    """xorshift32: a tiny seeded PRNG, identical on both interpreters (tests, sim sensors)."""

    def __init__(self, seed):
        self.s = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def r16(self):
        """The next state's high 16 bits."""
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x >> 16
