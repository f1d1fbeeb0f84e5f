"""A token bucket: `rate` messages a second on average, up to `burst` at once.

A client sending at its steady rate never notices it; a flood is cut down to the rate, and what is over it
is refused or, for frames, dropped, so one connection cannot monopolise the event loop or the engine.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; `now` is a monotonic time in seconds."""
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
