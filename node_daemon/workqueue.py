"""A rate-limited work queue with client-go's semantics, for the repair controller.

An item is queued at most once, is never handed to two workers at once (re-adds while it is
processed are kept and handed out after `done`), and a failed item comes back after a per-item
exponential backoff (5 ms doubling up to 1000 s) combined with an overall token bucket
(10 per second, burst 100): client-go's `DefaultControllerRateLimiter`, as upstream's queue.
The clock is injectable so the backoff is tested without waiting.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any


class RateLimiter:
    """`when(item)` is the delay before retrying `item`; `forget(item)` resets its backoff."""

    def __init__(self, base: float = 0.005, cap: float = 1000.0, qps: float = 10.0,
                 burst: int = 100, clock: Callable[[], float] = time.monotonic) -> None:
        self.base, self.cap, self.qps, self.burst = base, cap, qps, burst
        self._clock = clock
        self._failures: dict[Hashable, int] = {}
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def when(self, item: Hashable) -> float:
        with self._lock:
            n = self._failures.get(item, 0)
            self._failures[item] = n + 1
            backoff = min(self.cap, self.base * (2 ** n))
            return max(backoff, self._bucket_delay())

    def _bucket_delay(self) -> float:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def failures(self, item: Hashable) -> int:
        with self._lock:
            return self._failures.get(item, 0)

    def forget(self, item: Hashable) -> None:
        with self._lock:
            self._failures.pop(item, None)


class WorkQueue:
    def __init__(self, limiter: RateLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = limiter or RateLimiter(clock=clock)
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: list[Hashable] = []
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._waiting: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._shutdown = False

    def add(self, item: Hashable) -> None:
        with self._cond:
            if self._shutdown or item in self._dirty:
                return
            self._dirty.add(item)
            if item not in self._processing:
                self._ready.append(item)
                self._cond.notify()

    def add_after(self, item: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(item)
            return
        with self._cond:
            if self._shutdown:
                return
            heapq.heappush(self._waiting, (self._clock() + delay, next(self._seq), item))
            self._cond.notify()

    def add_rate_limited(self, item: Hashable) -> None:
        self.add_after(item, self.limiter.when(item))

    def forget(self, item: Hashable) -> None:
        self.limiter.forget(item)

    def get(self) -> Any | None:
        """The next ready item, blocking; None once the queue is shut down."""
        with self._cond:
            while True:
                self._promote()
                if self._shutdown:
                    return None
                if self._ready:
                    item = self._ready.pop(0)
                    self._dirty.discard(item)
                    self._processing.add(item)
                    return item
                timeout = self._waiting[0][0] - self._clock() if self._waiting else None
                self._cond.wait(timeout)

    def done(self, item: Hashable) -> None:
        with self._cond:
            self._processing.discard(item)
            if item in self._dirty:
                self._ready.append(item)
                self._cond.notify()

    def _promote(self) -> None:
        now = self._clock()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, item = heapq.heappop(self._waiting)
            if item not in self._dirty:
                self._dirty.add(item)
                if item not in self._processing:
                    self._ready.append(item)

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._waiting)

    def idle(self) -> bool:
        """Nothing ready, waiting or in progress (tests wait on this)."""
        with self._cond:
            return not (self._ready or self._waiting or self._processing)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
