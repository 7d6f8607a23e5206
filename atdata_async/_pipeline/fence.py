"""Fencing a run's multipart uploads: a store that completes or aborts an upload only
while the run still owns the journal, and only if the request will have ended before
the lease that keeps a newer run out could expire (see docs/scale-out.md, Fencing).

A newer run draws its epoch only once the lease is expired or released (or its holder's
process is dead). So one Lua call returns the epoch and the lease's remaining time; the
request is sent only if ``timeout`` (its own bound, on the monotonic clock counted from
before the check) plus ``margin`` fits in it, and it is cancelled when that ends.
"""

from __future__ import annotations

import contextvars
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from .._backends.s3_store import S3DataStore
from .._errors import AtdataError
from .journal import FenceState, check_fence, holds_epoch, stale_run

if TYPE_CHECKING:
    from .._backends.redis_index import LocalIndex
    from .journal import PromotionJournal
    from .promote import ShardPlan

log = logging.getLogger("atdata_async.executor")

ACTION_TIMEOUT = 10.0  # seconds a fenced CompleteMultipartUpload/Abort may take at most
MARGIN = 1.0  # seconds kept between its end and the lease's (Redis vs local clock, jitter)


@dataclass(frozen=True)
class Fence:
    """The run an upload action belongs to: its journal and epoch; ``holder`` when this
    process holds the lease (its check renews it), ``keys`` dest key -> shard index (to
    ask whether the journal names an upload)."""

    index: LocalIndex
    promotion: str
    epoch: int
    holder: str = ""
    keys: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
    timeout: float = ACTION_TIMEOUT
    margin: float = MARGIN
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, hash=False)

    async def holds(self) -> bool:
        """Whether the epoch is still the journal's (a task about to start: one GET)."""
        return await holds_epoch(self.index, self.promotion, self.epoch)

    async def _check(self, key: str, upload_id: str) -> tuple[FenceState, float, float]:
        """The check's answer, the seconds of lease left after it, and the seconds of
        budget the request has: both counted from before the check was sent (a slow round
        trip shortens them). The holder's budget is what is left of the lease (its check
        renewed it); a worker's is ``timeout`` from then, the in-flight mark the check set
        (from a moment after that start): a rerun that takes over from a dead coordinator
        waits for that mark only, not for the lease."""
        start = self.clock()
        i = self.keys.get(key)
        state = await check_fence(self.index, self.promotion, self.epoch, holder=self.holder,
                                  upload_field=f"u:{i}" if i is not None else "",
                                  upload_id=upload_id, runs_for=self.timeout + self.margin)
        if i is None:  # cannot ask: count it as named (a rerun may continue it)
            state = replace(state, named=True)
        now = self.clock()
        left = start + state.lease_ms / 1000 - self.margin - now
        return state, left, left if self.holder else start + self.timeout - now

    def _refusal(self, state: FenceState, left: float, budget: float,
                 what: str) -> AtdataError | None:
        if not state.ours:
            return stale_run(self.promotion, self.epoch, what)
        if state.lease_ms <= 0:
            return stale_run(self.promotion, self.epoch, what,
                             "its lease expired or was released")
        if left < self.timeout:
            return stale_run(self.promotion, self.epoch, what,
                             f"its lease ends in {max(left, 0.0):.1f}s, too soon for the "
                             f"{self.timeout:g}s the request may take")
        if budget <= 0:
            return stale_run(self.promotion, self.epoch, what,
                             f"its epoch check took the whole {self.timeout:g}s the request "
                             "may run for")
        return None

    async def admit(self, what: str, key: str, upload_id: str = "") -> float:
        """Seconds the action may take (then it is cancelled), or PromotionBusyError:
        the epoch is gone, or the lease ends too soon for ``timeout`` + ``margin``. The
        lease's holder may use all of it (its check just renewed it: ~29 s); a worker
        what is left of ``timeout`` after its check, the time its in-flight mark makes a
        rerun wait."""
        state, left, budget = await self._check(key, upload_id)
        refusal = self._refusal(state, left, budget, what)
        if refusal is not None:
            raise refusal
        return budget

    async def may_abort(self, key: str, upload_id: str) -> float | None:
        """Seconds an abort may take, or None: not this run's to abort. An upload the
        journal does not name is nobody's to continue (a stale run's own, never
        journaled): even a stale run aborts it, so that it does not stay open."""
        state, left, budget = await self._check(key, upload_id)
        refusal = self._refusal(state, left, budget, "aborting the upload")
        if refusal is None:
            return budget
        if not state.named:
            return self.timeout
        log.info("not aborting upload %s of %s: %s", upload_id, key, refusal)
        return None


current_fence: contextvars.ContextVar[Fence | None] = contextvars.ContextVar(
    "atdata_async_fence", default=None)
_fences: weakref.WeakKeyDictionary[Any, Fence] = weakref.WeakKeyDictionary()


class FencedStore(S3DataStore):
    """A store that completes or aborts a multipart upload only under its fence: a
    worker's (shared by its tasks; the task's fence is in ``current_fence``), or a local
    run's view of the caller's store (``fenced``)."""

    def _fence(self) -> Fence | None:
        return _fences.get(self) or current_fence.get()

    async def complete_multipart(self, key: str, upload_id: str, etags: dict[int, str]) -> str:
        fence = self._fence()
        if fence is None:
            return await super().complete_multipart(key, upload_id, etags)
        what = f"completing the upload of {key}"
        budget = await fence.admit(what, key, upload_id)
        with anyio.move_on_after(budget):
            return await super().complete_multipart(key, upload_id, etags)
        # cancelled: a rerun finds the upload completed, still open, or gone (all handled)
        raise stale_run(fence.promotion, fence.epoch, what,
                        f"the request took longer than {budget:.1f}s, so its lease may have "
                        "ended under it")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        fence = self._fence()
        if fence is None:
            return await super().abort_multipart(key, upload_id)
        with anyio.CancelScope(shield=True):  # cleanup: runs after a cancellation too,
            try:  # so bounded here (a hung Redis would hold the cancelled run for good)
                with anyio.fail_after(fence.timeout):
                    budget = await fence.may_abort(key, upload_id)
            except (AtdataError, TimeoutError) as exc:
                log.warning("not aborting upload %s of %s: cannot check the epoch: %s",
                            upload_id, key, str(exc) or f"no answer in {fence.timeout:g}s")
                return
            if budget is None:
                return
            with anyio.move_on_after(budget):
                await super().abort_multipart(key, upload_id)


_views: dict[type, type] = {}


def fenced(store: S3DataStore, fence: Fence) -> S3DataStore:
    """``store`` itself (the same clients, limits and counters: one ``__dict__``), seen
    through ``fence``: for a local run, whose store the caller owns and may share."""
    cls = type(store)
    view_cls = cls if issubclass(cls, FencedStore) else _views.get(cls)
    if view_cls is None:
        view_cls = _views[cls] = type(f"Fenced{cls.__name__}", (FencedStore, cls), {})
    view = object.__new__(view_cls)
    view.__dict__ = store.__dict__
    _fences[view] = fence
    return view


def run_fence(journal: PromotionJournal, shards: Sequence[ShardPlan]) -> Fence:
    """The fence of the run holding ``journal``'s lease (its checks renew the lease)."""
    assert journal.epoch is not None
    return Fence(journal.index, journal.promotion, journal.epoch, holder=journal.holder,
                 keys={s.dest_key: i for i, s in enumerate(shards) if s.dest_key})
