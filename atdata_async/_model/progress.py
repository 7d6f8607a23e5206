"""Progress of a multi-shard transfer, reported through a caller's callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TransferProgress:
    """A snapshot: shards and bytes done out of the totals known so far."""

    shards_done: int = 0
    shards_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[TransferProgress], None]


class ProgressTracker:
    """Accumulates progress from concurrent tasks on one event loop; never raises."""

    def __init__(self, callback: ProgressCallback | None, shards: int, total_bytes: int) -> None:
        self._callback = callback
        self.state = TransferProgress(shards_total=shards, bytes_total=total_bytes)

    # (each snapshot built directly: dataclasses.replace cost ~10 us, twice per shard)
    def learn_size(self, n: int) -> None:
        """A shard the totals did not count turned out to have ``n`` bytes."""
        s = self.state
        self._emit(TransferProgress(s.shards_done, s.shards_total, s.bytes_done,
                                    s.bytes_total + n))

    def add_bytes(self, n: int) -> None:
        s = self.state
        self._emit(TransferProgress(s.shards_done, s.shards_total, s.bytes_done + n,
                                    s.bytes_total))

    def shard_done(self) -> None:
        s = self.state
        self._emit(TransferProgress(s.shards_done + 1, s.shards_total, s.bytes_done,
                                    s.bytes_total))

    def _emit(self, state: TransferProgress) -> None:
        self.state = state
        if self._callback is not None:
            self._callback(state)
