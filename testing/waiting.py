"""Waiting for observable state: one bounded poll for every test and benchmark that waits on another process.

A fixed sleep guesses how long something takes and is either slow or flaky; a poll with a deadline returns as soon
as the state holds and, when it never does, fails saying what it was waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
    details: Callable[[], str] | None = None,
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``predicate`` until it returns a true value, and return that value.

    After ``timeout`` seconds without one, raise ``AssertionError`` naming ``what`` was awaited, with the last value
    (or the last exception of ``retry_on``, which count as "not yet") and ``details()`` (a log tail, say). Any other
    exception of ``predicate`` propagates at once: a process that died will not come back. ``pause`` waits between
    calls (Playwright's sync API wants its own ``page.wait_for_timeout``).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except retry_on as error:
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            message = f"not within {timeout} s: {what} (last: {last!r})"
            if details is not None:
                message += f"\n{details()}"
            raise AssertionError(message)
        pause(interval)
