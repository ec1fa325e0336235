"""Rate budgets of named keys: requests and tokens per minute (`[auth.keys.NAME]`
`requests_per_minute`, `tokens_per_minute`), as token buckets that refill continuously.

A request takes one request and, up front, its `max_tokens` (what it may cost); once its
usage is known the charge is settled to the real prompt plus completion tokens, which may
take the bucket below zero (it refills from there). Past either budget: 429 with Retry-After,
the time until the request would fit. Every answer to a budgeted key carries OpenAI's
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from core.errors import BadRequest, Overloaded


class RateLimited(Overloaded):
    code = "rate_limit_exceeded"


def duration(seconds: float) -> str:
    """OpenAI's form for a reset time: "250ms", "12s", "1m30s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


class Bucket:
    """Holds up to `per_minute`, refilled at per_minute / 60 a second."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = per_minute
        self._clock = clock
        self._level = float(per_minute)
        self._at = clock()

    @property
    def level(self) -> float:
        now = self._clock()
        self._level = min(self.limit, self._level + (now - self._at) * self.limit / 60)
        self._at = now
        return self._level

    def wait_for(self, n: int) -> float:
        """Seconds until `n` fit (0: now)."""
        return max(0.0, (n - self.level) * 60 / self.limit)

    def take(self, n: int) -> None:
        self._level = self.level - n

    def headers(self, kind: str) -> list[tuple[str, str]]:
        level = self.level
        return [
            (f"x-ratelimit-limit-{kind}", str(self.limit)),
            (f"x-ratelimit-remaining-{kind}", str(max(0, math.floor(level)))),
            (f"x-ratelimit-reset-{kind}", duration((self.limit - level) * 60 / self.limit)),
        ]


class Budget:
    """One key's buckets (either may be absent)."""

    def __init__(self, requests: Bucket | None, tokens: Bucket | None) -> None:
        self.requests = requests
        self.tokens = tokens

    def charge(self, tokens: int) -> None:
        """Take one request and `tokens`, or raise RateLimited (taking nothing)."""
        if self.tokens is not None and tokens > self.tokens.limit:
            raise BadRequest(
                f"max_tokens {tokens} is more than this key's tokens_per_minute "
                f"({self.tokens.limit}): it could never be served",
                param="max_tokens",
            )
        waits = [
            (bucket.wait_for(n), kind)
            for bucket, n, kind in ((self.requests, 1, "requests"), (self.tokens, tokens, "tokens"))
            if bucket is not None
        ]
        wait, kind = max(waits, default=(0.0, ""))
        if wait > 0:
            raise RateLimited(
                f"this key's {kind} per minute are spent; try again in {duration(wait)}",
                retry_after=wait,
            )
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)

    def settle(self, charged: int, used: int) -> None:
        """The real token count, for a request charged `charged` up front."""
        if self.tokens is not None:
            self.tokens.take(used - charged)

    def headers(self) -> list[tuple[str, str]]:
        found = []
        for bucket, kind in ((self.requests, "requests"), (self.tokens, "tokens")):
            if bucket is not None:
                found += bucket.headers(kind)
        return found
