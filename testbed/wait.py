"""Waiting on a condition with a deadline: the harness's only way to synchronise.

Nothing in the harness sleeps to let something happen; it polls what it waits for, and the
deadline only turns a hang into a failure that names what never came.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (an AssertionError: a test fails)."""


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "",
             interval: float = 0.01) -> T:
    """Poll `predicate` every `interval` s until it returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)
