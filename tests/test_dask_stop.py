"""A failed or cancelled promotion stops its work on a real Dask LocalCluster (worker
processes) against redis-server, moto behind the fault proxy and the PDS: no shard keeps
copying after promote_to_atmosphere raised, no upload is left open, and a rerun
completes; and the quieting of a worker's callbacks follows each executor's choice."""

from __future__ import annotations

import time

import anyio
import boto3
import pytest
from distributed import Client

from atdata_async import AtdataError
from atdata_async._pipeline.executor import (
    STOP_WAIT,
    RedisSpec,
    ShardGroup,
    ShardTask,
    StoreSpec,
    _state,
    _stop_run,
    settle_group,
)
from atdata_async._pipeline.promote import ShardPlan
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.promote import DaskExecutor, promote_to_atmosphere
from tests.conftest import make_bucket, make_credentials, store_for
from tests.faultproxy import Fault, FaultProxy
from tests.test_dask import ON_WORKERS, assert_copied, datasets, new_cluster, until
from tests.test_dask_workers import callbacks, restored
from tests.test_promote import insert

pytestmark = [pytest.mark.anyio, pytest.mark.pds]


def _busy(dask_worker) -> tuple[int, int]:
    """(the engine's groups running in this worker, as the engine counts them; the shard
    tasks Dask still runs here, executing or cancelled-but-running)"""
    ours = sum(len(v) for v in _state().running.values())
    dask = sum(1 for k, ts in dask_worker.state.tasks.items()
               if str(k).startswith("atdata-shard-")
               and ts.state in ("executing", "cancelled", "resumed", "long-running"))
    return ours, dask


async def busy(dc) -> list[tuple[int, int]]:
    return list((await dc.run(_busy)).values())


def open_uploads(endpoint: str, bucket: str) -> list[dict]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def objects(endpoint: str, bucket: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


async def rerun_completes(entry, index, client, dc, dest_bucket, endpoint) -> None:
    """A rerun straight at moto: it publishes, every object once, bytes identical, no
    upload left open."""
    async with store_for(make_credentials(endpoint), dest_bucket) as dest:
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                          executor=DaskExecutor(dc, credentials=ON_WORKERS))
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(entry, got, endpoint)
    assert sorted(objects(endpoint, dest_bucket)) == sorted(
        u.removeprefix(f"s3://{dest_bucket}/") for u in got.data_urls)
    assert len(set(got.data_urls)) == len(entry.data_urls)
    assert open_uploads(endpoint, dest_bucket) == []
    assert len(await datasets(client)) == 1


async def quiet_after(proxy: FaultProxy, seconds: float) -> int:
    """The PUTs that reached the proxy during the next ``seconds``."""
    before = proxy.count("PUT")
    await anyio.sleep(seconds)
    return proxy.count("PUT") - before


async def test_a_failed_promotion_stops_its_groups_on_the_workers(
        index, client, tmp_path, second_moto_server, dc):
    """24 multipart shards (3 parts each) in 2 groups of 12 on 2 workers (4 slots each),
    every PUT held 1 s; the 7th part sent is refused (403), failing its shard and so the
    promotion. Before the fix the failing group copied its other shards to the end before
    it answered (the promotion raised ~2 s after the 403), and the other group went on
    copying after the exception (~30 PUTs over ~2 s, 11 uploads left open: their
    completes and aborts refused once the lease was released). Now the failure cancels
    its group's other shards at once, promote_to_atmosphere raises well within a second
    of the 403 with no group running on any worker, no PUT reaches the proxy afterwards,
    and no upload is open; a rerun completes (every object once, bytes identical)."""
    entry = await insert(index, tmp_path, "failfast", shards=24, per_shard=300,
                         stem="failfast")
    dest_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        fired: list[float] = []
        refused = proxy.add(Fault("status", method="PUT", path=r"partNumber=", status=403,
                                  skip=6, times=1,
                                  on_fire=lambda: fired.append(time.monotonic())))
        proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/", seconds=1.0,
                        times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            failed = r"^1 of 24 shard\(s\) failed:(.|\n)*S3 refused"  # only the 403's
            with pytest.raises(AtdataError, match=failed):
                await promote_to_atmosphere(
                    entry, index, client, data_store=dest,
                    executor=DaskExecutor(dc, credentials=ON_WORKERS, group_size=12))
            raised = time.monotonic()
            assert await busy(dc) == [(0, 0), (0, 0)]
            late = await quiet_after(proxy, 2.0)
        assert refused.fired == 1
        assert late == 0
        assert open_uploads(second_moto_server.url, dest_bucket) == []
        # (before: the rest of the failing group, 2 more waves of 1 s PUTs)
        assert raised - fired[0] < 1.5
    assert await datasets(client) == []
    await rerun_completes(entry, index, client, dc, dest_bucket, second_moto_server.url)


async def test_a_cancelled_promotion_stops_its_groups_on_the_workers(
        index, client, tmp_path, second_moto_server, dc):
    """The coordinator cancelled while its groups copy (every PUT held 1 s): once the
    cancelled call has returned, which takes about a second, nothing of it runs on the
    workers, no PUT follows, no upload is left open; a rerun completes."""
    entry = await insert(index, tmp_path, "cancel", shards=16, per_shard=300, stem="cancel")
    dest_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        held = proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/", seconds=1.0,
                               times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            cancelled: list[float] = []
            with anyio.CancelScope() as scope:

                async def cancel_when_copying() -> None:
                    await until(lambda: held.fired >= 8, "8 PUTs held at the proxy")
                    cancelled.append(time.monotonic())
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_when_copying)
                    await promote_to_atmosphere(
                        entry, index, client, data_store=dest,
                        executor=DaskExecutor(dc, credentials=ON_WORKERS, group_size=4))
            assert scope.cancelled_caught
            returned = time.monotonic()
            assert returned - cancelled[0] < 1.5 < STOP_WAIT  # the groups stopped in time
            assert await busy(dc) == [(0, 0), (0, 0)]
            late = await quiet_after(proxy, 2.0)
        assert late == 0
        assert open_uploads(second_moto_server.url, dest_bucket) == []
    assert await datasets(client) == []
    await rerun_completes(entry, index, client, dc, dest_bucket, second_moto_server.url)


async def test_a_group_of_a_stopped_run_that_arrives_later_ends_at_once(dc):
    """A group released at the scheduler may already be on its way to a worker when the
    coordinator stops its run there: it ends at once, before any Redis or S3 request
    (this one names a Redis and an S3 endpoint where nothing listens)."""
    spec = StoreSpec("nowhere", "http://127.0.0.1:9", None, ON_WORKERS)
    task = ShardTask("p" * 64, 0, ShardPlan("s3://nowhere/a.tar", "copy", "a.tar", 10, None),
                     spec, None, RedisSpec(url="redis://127.0.0.1:9/0"), False, epoch=7)
    group = ShardGroup((task,), run="stopped-run")
    assert all(v == (0, 0) for v in (await dc.run(_stop_run, "stopped-run", 0.1)).values())
    started = time.monotonic()
    got = await dc.submit(settle_group, group, pure=False)
    assert time.monotonic() - started < 2.0
    assert len(got) == 1 and "stopped: its promotion failed or was cancelled" in str(got[0])


# -- quieting per executor -------------------------------------------------------------


@pytest.fixture(scope="module")
def lone_worker():
    with new_cluster(1) as cluster:
        yield cluster


@pytest.fixture
async def lone(lone_worker):
    async with Client(lone_worker.scheduler_address, asynchronous=True) as dc:
        yield dc


async def test_a_loud_promotion_beside_a_quiet_one_runs_with_the_callbacks_on(
        index, client, tmp_path, second_moto_server, lone):
    """One worker; a quiet promotion (PUTs held 6 s) is copying when a promotion with
    ``quiet_workers=False`` starts beside it (PUTs held 1 s): the worker's profiler and
    watchdog run as Dask set them while the loud one copies (before: paused by the
    quiet one's group), the worker is quiet again once only the quiet one copies, and
    restored after both."""
    quiet = await insert(index, tmp_path, "hush", shards=4, per_shard=3, stem="hush")
    loud = await insert(index, tmp_path, "loud", shards=2, per_shard=3, stem="loud")
    quiet_bucket, loud_bucket = make_bucket(second_moto_server.url), make_bucket(
        second_moto_server.url)
    seen: dict[str, tuple[bool, float]] = {}
    assert await restored(lone)
    with FaultProxy(second_moto_server.url) as proxy:
        hushed = proxy.add(Fault("delay", method="PUT", path=rf"^/{quiet_bucket}/",
                                 seconds=6.0, times=None))
        noisy = proxy.add(Fault("delay", method="PUT", path=rf"^/{loud_bucket}/",
                                seconds=1.0, times=None))
        creds = make_credentials(proxy.url)
        async with store_for(creds, quiet_bucket) as qdest, \
                store_for(creds, loud_bucket) as ldest, anyio.create_task_group() as tg:

            async def promote_loud() -> None:
                await until(lambda: hushed.active > 0, "a quiet PUT held")
                seen["quiet alone"] = await callbacks(lone)
                async with anyio.create_task_group() as inner:

                    async def watch() -> None:
                        await until(lambda: noisy.active > 0, "a loud PUT held")
                        seen["both"] = await callbacks(lone)

                    inner.start_soon(watch)
                    await promote_to_atmosphere(
                        loud, index, client, data_store=ldest,
                        executor=DaskExecutor(lone, credentials=ON_WORKERS,
                                              quiet_workers=False))
                assert hushed.active > 0  # the quiet one still copies
                seen["quiet again"] = await callbacks(lone)

            tg.start_soon(promote_loud)
            # one task (its 4 shards share the worker's slots for it), leaving Dask
            # slots for the loud one's
            await promote_to_atmosphere(
                quiet, index, client, data_store=qdest,
                executor=DaskExecutor(lone, credentials=ON_WORKERS, group_size=4))
    assert seen == {"quiet alone": (False, 1000.0), "both": (True, 20.0),
                    "quiet again": (False, 1000.0)}
    await until(lambda: restored(lone), "the worker's callbacks restored")
    assert len(await datasets(client)) == 2


async def test_the_quiet_rule_counts_each_executors_groups():
    """The rule on its own, with the worker's real kinds of callbacks (tornado's
    PeriodicCallback) on a stand-in for the worker: a worker is quiet only while every
    engine group on it asked for it, in whatever order groups start and end."""
    from types import SimpleNamespace

    from tornado.ioloop import PeriodicCallback

    class Worker(SimpleNamespace):  # weakly referenced, as the engine keeps its state
        __hash__ = object.__hash__

    from atdata_async._pipeline.executor import _quiet_enter, _quiet_exit

    pcs = {name: PeriodicCallback(lambda: None, ms)
           for name, ms in (("profile", 10), ("profile-cycle", 1000), ("tick", 20))}
    for pc in pcs.values():
        pc.start()
    worker = Worker(periodic_callbacks=pcs, status=SimpleNamespace(name="running"))

    def state() -> tuple[bool, bool, float]:
        return pcs["profile"].is_running(), pcs["profile-cycle"].is_running(), \
            pcs["tick"].callback_time

    loud, quiet = (True, True, 20), (False, False, 1000.0)
    try:
        _quiet_enter(worker, quiet=False)  # a loud group first: nothing changes
        assert state() == loud
        _quiet_enter(worker)  # a quiet one beside it: still loud
        assert state() == loud
        _quiet_exit(worker, quiet=False)  # only the quiet one left
        assert state() == quiet
        _quiet_enter(worker, quiet=False)  # a loud one again: restored at once
        assert state() == loud
        _quiet_exit(worker, quiet=False)
        assert state() == quiet
        _quiet_exit(worker, grace=0)  # none left
        assert state() == loud
        _quiet_exit(worker, grace=0)  # an unmatched end changes nothing
        _quiet_exit(worker, quiet=False)
        assert state() == loud
    finally:
        for pc in pcs.values():
            pc.stop()
