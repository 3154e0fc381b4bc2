"""The sliding window's arithmetic in Python, step for step as the admission script does it (both
in IEEE doubles), for tests to predict the script's answers; and exact (rational) for tests to
check those answers against."""

import math
import time
from fractions import Fraction

WINDOW = 60_000


def fits(cur, prev, elapsed, amount, limit) -> bool:
    return cur + prev * (1 - elapsed / WINDOW) + amount <= limit


def earliest(cur: int, prev: int, amount: int, limit: int) -> int:
    """The first whole millisecond into a window at which ``amount`` fits, as the script finds it."""
    if prev <= 0:
        return 0
    e = max(0, min(WINDOW - math.floor(WINDOW * (limit - amount - cur) / prev), WINDOW))
    while e > 0 and fits(cur, prev, e - 1, amount, limit):
        e -= 1
    while e < WINDOW and not fits(cur, prev, e, amount, limit):
        e += 1
    return e


def wait_ms(cur: int, prev: int, elapsed: int, amount: int, limit: int) -> int:
    """The script's wait for a refused request (1 ms to spare), or -1 when it can never fit."""
    if amount > limit:
        return -1
    if cur + amount <= limit:
        return earliest(cur, prev, amount, limit) - elapsed + 1
    return WINDOW - elapsed + earliest(0, cur, amount, limit) + 1


def exact_wait_ms(cur: int, prev: int, elapsed: int, amount: int, limit: int) -> int:
    """The true wait in whole milliseconds, in rational arithmetic: the first moment the request
    fits, rounded up to a millisecond."""

    def fits_exactly(cur, prev, e):
        return cur + prev * (1 - Fraction(e, WINDOW)) + amount <= limit

    if cur + amount <= limit:
        first = WINDOW - math.floor(Fraction(WINDOW * (limit - amount - cur), prev)) if prev else 0
        assert fits_exactly(cur, prev, first) and (first == 0 or not fits_exactly(cur, prev, first - 1))
        return first - elapsed
    first = WINDOW - math.floor(Fraction(WINDOW * (limit - amount), cur))
    assert fits_exactly(0, cur, first) and not fits_exactly(0, cur, first - 1)
    return WINDOW - elapsed + first


def redis_ms(client) -> int:
    """Redis's clock (the one the admission script reads), in Unix milliseconds."""
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def sleep_until(client, at_ms: int) -> None:
    """Sleep until Redis's clock reads ``at_ms`` or later."""
    while (now := redis_ms(client)) < at_ms:
        time.sleep(min((at_ms - now) / 1000, 0.5) + 0.0005)


def fresh_window(client, margin_ms: int) -> int:
    """Return the current minute window, first waiting for the next one when it ends within ``margin_ms``."""
    now = redis_ms(client)
    if WINDOW - now % WINDOW < margin_ms:
        sleep_until(client, (now // WINDOW + 1) * WINDOW + 20)
        now = redis_ms(client)
    return now // WINDOW


def retry_afters(cur: int, prev: int, amount: int, limit: int, before_ms: int, after_ms: int) -> set[str]:
    """The Retry-After values a refusal made between two instants of Redis's clock can state."""
    return {
        str(math.ceil(wait_ms(cur, prev, now % WINDOW, amount, limit) / 1000))
        for now in range(before_ms, after_ms + 1)
    }
