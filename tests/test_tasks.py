"""run_per_shard: every shard's work within its limiter, by as many tasks as the limiter has
tokens (not one waiting task per shard), one error for the failures, no token kept."""

from __future__ import annotations

import anyio
import pytest

from atdata_async._backends.tasks import run_per_shard
from atdata_async._errors import ShardTransferError
from atdata_async._model.progress import ProgressTracker

pytestmark = pytest.mark.anyio


class Watch:
    """Work that records how many items of each kind run at once, and in which tasks."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.tasks: dict[str, set[int]] = {}
        self.started: list[int] = []

    async def work(self, item: tuple[int, str]) -> int:
        i, kind = item
        self.started.append(i)
        self.tasks.setdefault(kind, set()).add(anyio.get_current_task().id)
        self.running[kind] = self.running.get(kind, 0) + 1
        self.peak[kind] = max(self.peak.get(kind, 0), self.running[kind])
        await anyio.sleep(0)  # let the others in: each item waits once
        await anyio.sleep(0)
        self.running[kind] -= 1
        return i * 10


async def test_each_limiter_runs_its_shards_with_as_many_tasks_as_tokens():
    watch = Watch()
    wide = anyio.CapacityLimiter(5)
    items = [(i, "wide" if i % 3 else "narrow") for i in range(60)]
    tracker = ProgressTracker(None, len(items), 0)
    results = await run_per_shard([f"s{i}" for i, _ in items], items, watch.work, 2,
                                  tracker, lambda item: wide if item[1] == "wide" else None)
    assert results == [i * 10 for i, _ in items]
    assert tracker.state.shards_done == 60
    assert watch.peak == {"wide": 5, "narrow": 2}
    assert len(watch.tasks["wide"]) <= 5 and len(watch.tasks["narrow"]) <= 2
    for kind in ("wide", "narrow"):  # each lane starts its shards in order
        mine = [i for i in watch.started if items[i][1] == kind]
        assert mine == sorted(mine)
    assert wide.borrowed_tokens == 0


async def test_a_shared_limiter_bounds_two_calls_together():
    watch = Watch()
    shared = anyio.CapacityLimiter(3)
    results: dict[str, list[int]] = {}

    async def call(name: str) -> None:
        items = [(i, "all") for i in range(20)]
        results[name] = await run_per_shard([str(i) for i in range(20)], items, watch.work,
                                            shared)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "a")
        tg.start_soon(call, "b")
    assert watch.peak["all"] == 3
    assert results["a"] == results["b"] == [i * 10 for i in range(20)]
    assert shared.borrowed_tokens == 0


async def test_the_first_failure_stops_the_rest_and_gives_every_token_back():
    shared = anyio.CapacityLimiter(4)
    started: list[int] = []

    async def work(i: int) -> int:
        started.append(i)
        if i == 5:
            raise ValueError("shard 5 broke")
        await anyio.sleep(0.5 if i > 5 else 0)  # still running when 5 fails: cancelled
        return i

    with pytest.raises(ShardTransferError) as caught:
        await run_per_shard([f"s{i}" for i in range(200)], list(range(200)), work, shared)
    assert list(caught.value.failures) == ["s5"]
    assert isinstance(caught.value.failures["s5"], ValueError)
    assert len(started) < 200  # the rest never started
    assert shared.borrowed_tokens == 0


async def test_an_unbounded_limiter_and_no_items():
    assert await run_per_shard([], [], Watch().work, 4) == []
    watch = Watch()
    endless = anyio.CapacityLimiter(float("inf"))
    items = [(i, "x") for i in range(10)]
    assert await run_per_shard([str(i) for i in range(10)], items, watch.work, endless) == \
        [i * 10 for i in range(10)]
    assert watch.peak["x"] == 10
