"""A Dask worker's side of the engine, on a real LocalCluster with one worker process
(2 task slots) against redis-server and moto behind the fault proxy: the shards a worker
copies at once across groups, and the quieting of its periodic callbacks while it copies
(restored after, on failure too)."""

from __future__ import annotations

import anyio
import pytest
from distributed import Client, LocalCluster

from atdata_async import AtdataError
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.promote import DaskExecutor, promote_to_atmosphere
from tests.conftest import make_bucket, make_credentials, store_for
from tests.faultproxy import Fault, FaultProxy
from tests.test_dask import ON_WORKERS, WORKER_ENV, assert_copied, datasets, until
from tests.test_promote import insert

pytestmark = [pytest.mark.anyio, pytest.mark.pds]

SLOTS = 2  # the worker's --nthreads


@pytest.fixture(scope="module")
def lone_worker():
    with LocalCluster(n_workers=1, processes=True, threads_per_worker=SLOTS,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      env=WORKER_ENV) as cluster:
        yield cluster


@pytest.fixture
async def dc(lone_worker):
    async with Client(lone_worker.scheduler_address, asynchronous=True) as dc:
        yield dc


def _callbacks(dask_worker) -> tuple[bool, float]:
    """(is the statistical profiler running, the event-loop watchdog's interval in ms)"""
    pcs = dask_worker.periodic_callbacks
    return pcs["profile"].is_running(), float(pcs["tick"].callback_time)


async def callbacks(dc) -> tuple[bool, float]:
    return next(iter((await dc.run(_callbacks)).values()))


async def restored(dc) -> bool:
    return await callbacks(dc) == (True, 20.0)


async def test_a_worker_copies_at_most_its_slots_across_groups_and_is_quiet_meanwhile(
        index, client, tmp_path, second_moto_server, dc):
    """12 single-PUT shards in groups of 3, all 4 groups at the worker at once (the
    coordinator's limit is 8 x 1 worker x 2): the worker runs 2 groups (its 2 slots) and
    copies at most 2 shards at once across them, each PUT held 1 s by the proxy (its
    peak counter counts PUTs in flight). While it copies, its profiler is paused and its
    watchdog slowed; afterwards both are back."""
    assert await restored(dc)  # Dask's defaults: profiler on, tick every 20 ms
    entry = await insert(index, tmp_path, "slots", shards=12, per_shard=3, stem="slots")
    dest_bucket = make_bucket(second_moto_server.url)
    executor = DaskExecutor(dc, credentials=ON_WORKERS, group_size=3)
    assert await executor.in_flight(8) == 16
    during: list[tuple[bool, float]] = []
    with FaultProxy(second_moto_server.url) as proxy:
        held = proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/",
                               seconds=1.0, times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket,
                             max_concurrency=8) as dest:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    await until(lambda: held.active > 0, "a PUT held at the proxy")
                    during.append(await callbacks(dc))

                tg.start_soon(watch)
                uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                  executor=executor, max_concurrency=8)
            assert await dest.list_multipart_uploads() == []
    assert held.fired == 12
    # two groups ran at once (6 shards between them), their shards took the worker's 2
    # slots in turn
    assert 1 < held.peak <= SLOTS
    assert during == [(False, 1000.0)]
    await until(lambda: restored(dc), "the worker's callbacks restored")
    assert_copied(entry, await AtmosphereIndex(client).get_dataset(uri),
                  second_moto_server.url)
    assert len(await datasets(client)) == 1


async def test_a_failed_promotion_restores_the_workers_callbacks(
        index, client, tmp_path, second_moto_server, dc):
    entry = await insert(index, tmp_path, "fails", shards=4, per_shard=3, stem="fails")
    dest_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        proxy.add(Fault("status", method="PUT", path=rf"^/{dest_bucket}/", status=403,
                        times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            with pytest.raises(AtdataError):
                await promote_to_atmosphere(entry, index, client, data_store=dest,
                                            executor=DaskExecutor(dc, credentials=ON_WORKERS))
        # the shards still copying when the promotion failed end on the worker (their
        # PUTs refused too), and it restores its callbacks
        await until(lambda: restored(dc), "the worker's callbacks restored")
    assert await datasets(client) == []


async def test_quiet_workers_false_leaves_the_callbacks_alone(
        index, client, tmp_path, second_moto_server, dc):
    entry = await insert(index, tmp_path, "loud", shards=4, per_shard=3, stem="loud")
    dest_bucket = make_bucket(second_moto_server.url)
    during: list[tuple[bool, float]] = []
    with FaultProxy(second_moto_server.url) as proxy:
        held = proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/",
                               seconds=1.0, times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest, \
                anyio.create_task_group() as tg:

            async def watch() -> None:
                await until(lambda: held.active > 0, "a PUT held at the proxy")
                during.append(await callbacks(dc))

            tg.start_soon(watch)
            await promote_to_atmosphere(
                entry, index, client, data_store=dest,
                executor=DaskExecutor(dc, credentials=ON_WORKERS, quiet_workers=False))
    assert during == [(True, 20.0)]


class _Fence:
    """What _EpochProbe uses of a Fence: a clock and the epoch's GET (counted)."""

    def __init__(self, answers: list[bool]) -> None:
        self.now, self.answers, self.gets = 100.0, answers, 0

    def clock(self) -> float:
        return self.now

    async def holds(self) -> bool:
        self.gets += 1
        return self.answers.pop(0)


async def test_the_epoch_probe_reuses_a_fresh_answer_and_never_a_refusal():
    from atdata_async._pipeline.executor import PROBE_FRESH, _EpochProbe

    fence = _Fence([True, True, False, False])
    probe = _EpochProbe(fence)  # type: ignore[arg-type]
    assert await probe.holds() and await probe.holds()  # shards one after another
    assert fence.gets == 1
    fence.now += PROBE_FRESH - 0.01
    assert await probe.holds() and fence.gets == 1
    fence.now += 0.02  # the answer is older than PROBE_FRESH (from before its GET)
    assert await probe.holds() and fence.gets == 2
    fence.now += PROBE_FRESH
    assert not await probe.holds()  # taken over
    assert not await probe.holds() and fence.gets == 4  # a refusal is asked again


async def test_a_cancelled_promotion_restores_the_workers_callbacks(
        index, client, tmp_path, second_moto_server, dc):
    """The promotion cancelled while its shards copy (PUTs held at the proxy): the
    worker was quiet, and once its groups end (cancelled or run out) its callbacks are
    back as they were."""
    entry = await insert(index, tmp_path, "cancelled", shards=4, per_shard=3,
                         stem="cancelled")
    dest_bucket = make_bucket(second_moto_server.url)
    during: list[tuple[bool, float]] = []
    with FaultProxy(second_moto_server.url) as proxy:
        held = proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/",
                               seconds=2.0, times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest, \
                anyio.create_task_group() as tg:

            async def promote() -> None:
                await promote_to_atmosphere(entry, index, client, data_store=dest,
                                            executor=DaskExecutor(dc, credentials=ON_WORKERS))

            tg.start_soon(promote)
            await until(lambda: held.active > 0, "a PUT held at the proxy")
            during.append(await callbacks(dc))
            tg.cancel_scope.cancel()
        await until(lambda: restored(dc), "the worker's callbacks restored")
    assert during == [(False, 1000.0)]
    assert await datasets(client) == []
