"""Structured-concurrency helpers shared by the store and the promotion pipeline."""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from .._errors import ShardTransferError
from .._model.progress import ProgressTracker


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextlib.contextmanager
def single_error() -> Iterator[None]:
    """Re-raise a task group's first real error instead of an ExceptionGroup."""
    try:
        yield
    except BaseExceptionGroup as group:
        cancelled = anyio.get_cancelled_exc_class()
        leaves = list(_leaves(group))
        real = [e for e in leaves if not isinstance(e, cancelled)]
        raise (real or leaves)[0] from None


START_WAVE = 16  # workers run_per_shard starts before it lets them run


async def run_per_shard(
    names: Sequence[str],
    items: Sequence[Any],
    work: Callable[[Any], Awaitable[Any]],
    concurrency: int | anyio.CapacityLimiter,
    tracker: ProgressTracker | None = None,
    limiter_for: Callable[[Any], anyio.CapacityLimiter | None] | None = None,
) -> list[Any]:
    """Run ``work(item)`` for every shard, at most ``concurrency`` at once (a limiter
    shared with other calls bounds them all together: promote_many's one limit).
    ``limiter_for(item)`` may name another limiter for an item (server-side copies hold
    no buffer and get their own, higher, limit); None keeps ``concurrency``'s.

    The first failure cancels the rest; then one ShardTransferError lists each failed
    shard. Cancellation from outside propagates unchanged.

    Each limiter's shards are worked through, in order, by as many tasks as it has
    tokens (not one task per shard waiting on it): 1,024 small server-side copies
    started 1,024 tasks that each waited before the first request could go out.
    """
    results: list[Any] = [None] * len(items)
    failures: dict[str, BaseException] = {}
    limiter = (concurrency if isinstance(concurrency, anyio.CapacityLimiter)
               else anyio.CapacityLimiter(max(1, concurrency)))
    lanes: dict[int, tuple[anyio.CapacityLimiter, list[int]]] = {}
    for i, item in enumerate(items):
        lane = (limiter_for(item) if limiter_for is not None else None) or limiter
        lanes.setdefault(id(lane), (lane, []))[1].append(i)

    async def worker(lane: anyio.CapacityLimiter, queue: Iterator[int]) -> None:
        for i in queue:  # shared by the lane's workers: each takes the next shard
            async with lane:
                try:
                    results[i] = await work(items[i])
                except Exception as exc:
                    failures[names[i]] = exc
                    tg.cancel_scope.cancel()
                    return
                if tracker:  # at once: a shard that counted itself is known by this
                    tracker.returned()

    async with anyio.create_task_group() as tg:
        for lane, indices in lanes.values():
            queue = iter(indices)
            tokens = lane.total_tokens
            workers = len(indices) if tokens == math.inf else min(len(indices),
                                                                  max(1, int(tokens)))
            for n in range(workers):
                tg.start_soon(worker, lane, queue)
                if n % START_WAVE == START_WAVE - 1:
                    # let the first ones open their connections and send (256 first
                    # steps before the loop polls again held the first request ~40 ms)
                    await anyio.lowlevel.checkpoint()
    if failures:
        raise ShardTransferError(failures, len(items))
    return results


async def backoff(log: logging.Logger, what: str, attempt: int, base: float, why: str) -> None:
    """Sleep before retry ``attempt`` (1, 2, ...): full jitter, up to base * 2**(attempt-1)."""
    delay = random.uniform(0, base * 2 ** (attempt - 1))
    log.info("%s failed (%s); retry %d in %.2fs", what, why, attempt, delay)
    await anyio.sleep(delay)
