"""Per-shard progress of a promotion on a real Dask LocalCluster (worker processes)
against redis-server, moto behind the fault proxy and the PDS: the coordinator counts
each shard the workers settle as soon as the journal shows it, while its group is still
at the cluster, and never counts a shard twice (its group's answer, a retry, a failure).
And the ProgressTracker's bookkeeping that makes it so."""

from __future__ import annotations

import itertools
import json
import time

import anyio
import boto3
import pytest

from atdata_async import AtdataError
from atdata_async._backends.redis_index import LocalIndex
from atdata_async._backends.tasks import run_per_shard
from atdata_async._model.progress import ProgressTracker, TransferProgress
from atdata_async._pipeline.executor import PROGRESS_POLL, ShardRunner
from atdata_async._pipeline.journal import (
    PromotionJournal,
    ShardResume,
    fingerprint,
    journal_key,
)
from atdata_async._pipeline.promote import ShardPlan
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.promote import DaskExecutor, promote_to_atmosphere
from tests.conftest import make_bucket, make_credentials, store_for
from tests.faultproxy import Fault, FaultProxy
from tests.test_dask import ON_WORKERS, assert_copied, datasets
from tests.test_promote import insert

pytestmark = [pytest.mark.anyio]


# -- the tracker alone ---------------------------------------------------------------------


def test_a_keyed_shard_counts_once_however_often_it_is_reported():
    seen: list[TransferProgress] = []
    tracker = ProgressTracker(seen.append, 3, 300)
    assert tracker.watched and not ProgressTracker(None, 1, 1).watched
    # the coordinator's poll of the journal sees shard 0 settled
    assert tracker.shard_done(("p", 0), 100)
    assert tracker.counted(("p", 0)) and not tracker.counted(("p", 1))
    assert not tracker.shard_done(("p", 0), 100)  # a second poll: nothing
    # its group answers: its coroutine reports it, then run_per_shard's returned()
    tracker.returning(("p", 0), 100)
    tracker.returned()
    assert tracker.state == TransferProgress(1, 3, 100, 300)
    # shard 1: not seen by a poll, counted when its group answers, once
    tracker.returning(("p", 1), 100)
    tracker.returned()
    assert tracker.state == TransferProgress(2, 3, 200, 300)
    assert not tracker.shard_done(("p", 1), 100)  # a poll after the answer: nothing
    # the same index of another promotion (promote_many: one tracker) is another shard;
    # its size was not in the plan, so the total grows with it
    assert tracker.shard_done(("q", 0), 50, unplanned=True)
    # a local shard (bytes added on the way): counted each time its coroutine returns
    tracker.add_bytes(100)
    tracker.returned()
    assert tracker.state == TransferProgress(4, 3, 350, 350)
    assert [s.shards_done for s in seen] == [1, 2, 3, 3, 4]  # one snapshot per change


async def test_run_per_shard_counts_a_shard_that_counted_itself_once():
    seen: list[TransferProgress] = []
    tracker = ProgressTracker(seen.append, 4, 40)

    async def work(i: int) -> int:
        if i % 2:  # "on the cluster": counted under its key, maybe by a poll first
            tracker.shard_done(("p", i), 10)
            tracker.returning(("p", i), 10)
        else:
            tracker.add_bytes(10)
        return i

    assert await run_per_shard([f"s{i}" for i in range(4)], list(range(4)), work, 2,
                               tracker) == [0, 1, 2, 3]
    assert tracker.state == TransferProgress(4, 4, 40, 40)
    assert sorted(s.shards_done for s in seen)[-1] == 4


class _OneWorker:
    """What ShardRunner.plan asks of its executor."""

    group_size = None

    async def workers(self) -> int:
        return 1


async def test_the_poll_counts_only_what_this_runs_workers_journaled(redis_url):
    """The coordinator's poll against a real redis-server: a shard's "s:{i}" an earlier
    run left (journal.open keeps it when the listing did not confirm the object, which
    is copied again) does not count until this run writes its own; a field for another
    plan (fingerprint) never counts; a shard counts once; what is counted is not asked
    again."""
    plans = [ShardPlan(f"s3://src/s{i}.tar", "s3", f"dst/s{i}.tar", 100 + i, None)
             for i in range(4)]
    total = sum(p.size for p in plans)

    def state(plan: ShardPlan, etag: str = '"e"', fp: str | None = None) -> str:
        return json.dumps({"fp": fp or fingerprint(plan), "etag": etag, "sha256": None,
                           "size": plan.size})

    async with LocalIndex(redis_url) as index:
        pkey = "p" * 64
        key = journal_key(pkey)
        await index.redis.hset(key, "s:0", state(plans[0]))  # the earlier run's
        runner = ShardRunner(_OneWorker(), pkey, None, None, None, False, True, None)
        await runner.plan([(i, p, ShardResume()) for i, p in enumerate(plans)],
                          PromotionJournal(index, pkey))
        tracker = ProgressTracker(lambda s: None, len(plans), total)
        runner.tracker = tracker  # as settle() keeps a tracker with a callback
        await runner._read_before()  # before the first group goes out
        runner._at_cluster.update(runner._groups.values())  # every group submitted
        await runner._poll()
        assert tracker.state == TransferProgress(0, 4, 0, total)
        await index.redis.hset(key, mapping={"s:1": state(plans[1]),
                                             "s:2": state(plans[2], fp="0" * 16)})
        await runner._poll()
        await runner._poll()
        assert tracker.state == TransferProgress(1, 4, 101, total)
        await index.redis.hset(key, "s:0", state(plans[0], etag='"f"'))  # copied again
        await runner._poll()
        assert tracker.state == TransferProgress(2, 4, 201, total)
        await index.redis.hset(key, mapping={"s:2": state(plans[2]), "s:3": state(plans[3])})
        await runner._poll()
        assert tracker.state == TransferProgress(4, 4, total, total)
        polls = runner.polls
        await runner._poll()  # all counted: nothing to ask
        assert runner.polls == polls == 5


# -- on a cluster --------------------------------------------------------------------------


@pytest.fixture
def answers(monkeypatch) -> list[float]:
    """When each group's answer reached the coordinator (monotonic)."""
    got: list[float] = []
    answer = ShardRunner._answer

    async def timed(self, future):
        try:
            return await answer(self, future)
        finally:
            got.append(time.monotonic())

    monkeypatch.setattr(ShardRunner, "_answer", timed)
    return got


@pytest.fixture
def runners(monkeypatch) -> list[ShardRunner]:
    """Every ShardRunner made (one per promotion)."""
    made: list[ShardRunner] = []
    init = ShardRunner.__init__

    def spy(self, *args, **kw):
        init(self, *args, **kw)
        made.append(self)

    monkeypatch.setattr(ShardRunner, "__init__", spy)
    return made


def sizes(endpoint: str, bucket: str) -> dict[str, int]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    return {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def assert_steps(seen: list[tuple[float, TransferProgress]]) -> None:
    """Monotonic, one shard at a time, the totals never shrinking."""
    for (_, a), (_, b) in itertools.pairwise(seen):
        assert b.shards_done - a.shards_done in (0, 1)
        assert b.bytes_done >= a.bytes_done and b.bytes_total >= a.bytes_total
        assert b.shards_total == a.shards_total


@pytest.mark.pds
async def test_shards_count_one_by_one_while_their_group_is_at_the_cluster(
        index, client, tmp_path, second_moto_server, dc, answers):
    """16 shards in ONE group on a worker with 4 slots, each PUT held 1 s: the group
    answers after ~4 s, but the callback sees the shards rise one at a time well before
    (before the change: nothing until the answer, then 16 at once); the end is exact,
    nothing counted twice."""
    entry = await insert(index, tmp_path, "steps", shards=16, per_shard=20, stem="steps")
    dest_bucket = make_bucket(second_moto_server.url)
    seen: list[tuple[float, TransferProgress]] = []
    with FaultProxy(second_moto_server.url) as proxy:
        proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/", seconds=1.0,
                        times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            uri = await promote_to_atmosphere(
                entry, index, client, data_store=dest,
                executor=DaskExecutor(dc, credentials=ON_WORKERS, group_size=16),
                progress=lambda s: seen.append((time.monotonic(), s)))
    assert len(answers) == 1  # one group, one answer
    early = {s.shards_done for t, s in seen if t < answers[0] and 0 < s.shards_done < 16}
    # 4 waves of ~1 s, a poll every 0.5 s: the first three waves (12) come before the
    # answer on a quiet machine; several distinct values on a loaded one
    assert PROGRESS_POLL <= 1.0
    assert len(early) >= 4, sorted(early)
    assert_steps(seen)
    landed = sizes(second_moto_server.url, dest_bucket)
    final = seen[-1][1]
    assert final == TransferProgress(16, 16, sum(landed.values()), sum(landed.values()))
    assert [s.shards_done for _, s in seen].count(16) == 1  # the answer added nothing
    assert_copied(entry, await AtmosphereIndex(client).get_dataset(uri),
                  second_moto_server.url)
    assert len(await datasets(client)) == 1


@pytest.mark.pds
async def test_a_shard_counted_early_is_not_counted_again_when_its_group_is_retried(
        index, client, tmp_path, second_moto_server, dc, answers):
    """One group of 16 (PUTs held 0.5 s), the 9th PUT refused once (a 403, which the
    store does not retry) with retries=1: the group answers with one failed shard,
    which is sent again and copied. The shards the poll counted while the first attempt
    ran are not counted again by either answer: the end is exactly 16 shards and their
    bytes."""
    entry = await insert(index, tmp_path, "retry", shards=16, per_shard=20, stem="retry")
    dest_bucket = make_bucket(second_moto_server.url)
    seen: list[tuple[float, TransferProgress]] = []
    with FaultProxy(second_moto_server.url) as proxy:
        refused = proxy.add(Fault("status", method="PUT", path=rf"^/{dest_bucket}/",
                                  status=403, skip=8, times=1))
        proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/", seconds=0.5,
                        times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            await promote_to_atmosphere(
                entry, index, client, data_store=dest,
                executor=DaskExecutor(dc, credentials=ON_WORKERS, group_size=16, retries=1),
                progress=lambda s: seen.append((time.monotonic(), s)))
    assert refused.fired == 1
    assert len(answers) == 2  # the group, then its failed shard again
    assert {s.shards_done for t, s in seen if t < answers[0] and s.shards_done} >= {1, 2}
    assert_steps(seen)
    landed = sizes(second_moto_server.url, dest_bucket)
    assert len(landed) == 16
    assert seen[-1][1] == TransferProgress(16, 16, sum(landed.values()), sum(landed.values()))


@pytest.mark.pds
async def test_shards_counted_before_their_group_failed_stay_counted_once(
        index, client, tmp_path, second_moto_server, dc, runners):
    """The promotion fails (a 403 on the 9th PUT, no retry): the shards the journal
    showed settled before are copied and journaled, so they stay counted (a rerun keeps
    them); none is counted twice, and none that did not land is counted. The poll ends
    with the promotion."""
    entry = await insert(index, tmp_path, "fails", shards=16, per_shard=20, stem="fails")
    dest_bucket = make_bucket(second_moto_server.url)
    seen: list[tuple[float, TransferProgress]] = []
    with FaultProxy(second_moto_server.url) as proxy:
        proxy.add(Fault("status", method="PUT", path=rf"^/{dest_bucket}/", status=403,
                        skip=8, times=1))
        proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/", seconds=1.0,
                        times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            with pytest.raises(AtdataError, match="S3 refused"):
                await promote_to_atmosphere(
                    entry, index, client, data_store=dest,
                    executor=DaskExecutor(dc, credentials=ON_WORKERS, group_size=16),
                    progress=lambda s: seen.append((time.monotonic(), s)))
    assert_steps(seen)
    landed = sizes(second_moto_server.url, dest_bucket)
    done = seen[-1][1] if seen else TransferProgress()
    assert 4 <= done.shards_done <= len(landed) < 16, (done, len(landed))
    assert done.bytes_done <= sum(landed.values())
    assert await datasets(client) == []
    [runner] = runners
    polls = runner.polls
    assert polls >= 2 and not runner._polling
    await anyio.sleep(3 * PROGRESS_POLL)
    assert runner.polls == polls
