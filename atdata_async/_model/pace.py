"""Adaptive concurrency for one S3 endpoint (pure: no I/O, the clock is passed in).

Start at the configured concurrency. A SlowDown or 503 answer halves it (at most once
per ``cooldown`` seconds: one burst of throttled answers is one signal). Then it climbs
back one step per ``window`` of measured throughput, and keeps a step only if the
throughput did not fall (by more than ``tolerance``) after it; it never exceeds the
configured concurrency, which is the caller's bound on memory and connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

THROTTLE_CODES = frozenset({"SlowDown", "SlowDownRead", "SlowDownWrite", "Throttling",
                            "ThrottlingException", "RequestLimitExceeded",
                            "TooManyRequests", "ServiceUnavailable", "503"})


def is_throttle(status: int | None, code: str | None) -> bool:
    return status == 503 or (code or "") in THROTTLE_CODES


@dataclass
class Pace:
    ceiling: int
    window: float = 1.0
    cooldown: float = 2.0
    tolerance: float = 0.1
    limit: int = field(init=False)
    throttles: int = field(default=0, init=False)
    _last_throttle: float = field(default=float("-inf"), init=False)
    _window_start: float | None = field(default=None, init=False)
    _window_bytes: int = field(default=0, init=False)
    _previous_rate: float | None = field(default=None, init=False)
    _stepped_up: bool = field(default=False, init=False)
    _hold_until: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self.limit = self.ceiling

    def throttled(self, now: float) -> int:
        """A SlowDown/503 answer: halve, once per cooldown."""
        self.throttles += 1
        if now - self._last_throttle >= self.cooldown:
            self._last_throttle = now
            self.limit = max(1, self.limit // 2)
            self._reset_window(now)
            self._previous_rate, self._stepped_up = None, False
        return self.limit

    def transferred(self, nbytes: int, now: float) -> int:
        """Bytes that went through: at each window's end, climb (or undo a step)."""
        if self._window_start is None:
            self._reset_window(now)
        self._window_bytes += nbytes
        elapsed = now - (self._window_start or now)
        if elapsed < self.window:
            return self.limit
        rate = self._window_bytes / elapsed
        previous, self._previous_rate = self._previous_rate, rate
        self._reset_window(now)
        if now - self._last_throttle < self.cooldown or now < self._hold_until:
            return self.limit
        if self._stepped_up and previous is not None and rate < previous * (1 - self.tolerance):
            self.limit = max(1, self.limit - 1)  # the last step did not pay: take it back
            self._stepped_up = False
            self._hold_until = now + 5 * self.window  # and stay there a while
        elif self.limit < self.ceiling:
            self.limit += 1
            self._stepped_up = True
        else:
            self._stepped_up = False
        return self.limit

    def _reset_window(self, now: float) -> None:
        self._window_start, self._window_bytes = now, 0
