"""Failed logins per client address: a token bucket each, so guessing the token is slow.

An address may fail `burst` times at once, then once every `60 / per_minute` seconds; a
success costs nothing. The table is bounded (a flood of addresses evicts the least recently
failed ones): memory never grows without end.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict


class LoginThrottle:
    def __init__(
        self, burst: int = 5, per_minute: float = 5.0, max_addresses: int = 10_000
    ) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.max_addresses = max_addresses
        # address -> (tokens left, monotonic time they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, address: str, now: float) -> float:
        tokens, then = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - then) * self.rate)

    def retry_after(self, address: str) -> int:
        """Seconds before `address` may try again; 0 when it may try now."""
        now = time.monotonic()
        tokens = self._tokens(address, now)
        if tokens >= 1:
            return 0
        return max(1, math.ceil((1 - tokens) / self.rate))

    def failed(self, address: str) -> int:
        """Count a failure of `address`; returns the attempts it has left right now."""
        now = time.monotonic()
        tokens = max(0.0, self._tokens(address, now) - 1)
        self._buckets[address] = (tokens, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return int(tokens)
