"""A fake of micropython-lib's ntptime: settime() sets the RTC (here: counts), or raises OSError
like a query that times out when `REACHABLE` is false."""

REACHABLE = True
SET = []


def settime():
    if not REACHABLE:
        raise OSError(110)  # ETIMEDOUT
    SET.append(1)
