"""Progress of a multi-shard transfer, reported through a caller's callback."""

from __future__ import annotations

from collections.abc import Callable, Hashable
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
    """Accumulates progress from concurrent tasks on one event loop; never raises.

    A shard counts once. Most are counted by ``run_per_shard`` when their coroutine
    returns (``returned``), their bytes having been added on the way. A shard copied
    elsewhere (on a Dask cluster) is counted with its bytes under a key (``shard_done``
    with a key: the first report counts, later ones do nothing). The coordinator may
    report it early, when it sees the shard settled in the journal; its coroutine
    reports it again when its group answers (``returning``), and run_per_shard's
    ``returned`` then counts nothing."""

    def __init__(self, callback: ProgressCallback | None, shards: int, total_bytes: int) -> None:
        self._callback = callback
        self.state = TransferProgress(shards_total=shards, bytes_total=total_bytes)
        self._counted: set[Hashable] = set()  # keys of the shards counted by key
        self._returning = 0  # returning() calls whose returned() has not come yet

    @property
    def watched(self) -> bool:
        """Whether someone listens (a callback): reporting early is worth its cost."""
        return self._callback is not None

    def counted(self, key: Hashable) -> bool:
        return key in self._counted

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

    def shard_done(self, key: Hashable | None = None, nbytes: int = 0, *,
                   unplanned: bool = False) -> bool:
        """A shard is done: shards_done + 1 and bytes_done + ``nbytes`` (its bytes not
        added on the way), in one snapshot; ``unplanned``: the totals did not count its
        bytes, so they grow too. Under a ``key`` it counts only the first time; returns
        whether it counted."""
        if key is not None:
            if key in self._counted:
                return False
            self._counted.add(key)
        s = self.state
        self._emit(TransferProgress(s.shards_done + 1, s.shards_total, s.bytes_done + nbytes,
                                    s.bytes_total + (nbytes if unplanned else 0)))
        return True

    def returning(self, key: Hashable, nbytes: int = 0, *, unplanned: bool = False) -> None:
        """Shard ``key``'s own coroutine is about to return it settled: it counts (once,
        as ``shard_done(key, ...)``), and run_per_shard's ``returned`` for it counts
        nothing. No await may come between this call and the coroutine's return."""
        self.shard_done(key, nbytes, unplanned=unplanned)
        self._returning += 1

    def returned(self) -> None:
        """A shard's coroutine returned (run_per_shard): it counts, unless it counted
        itself (``returning``)."""
        if self._returning:
            self._returning -= 1
            return
        self.shard_done()

    def _emit(self, state: TransferProgress) -> None:
        self.state = state
        if self._callback is not None:
            self._callback(state)
