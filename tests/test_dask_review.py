"""Review of the Dask engine's stop path (0d54cb2) on a real LocalCluster (worker
processes) against redis-server, moto behind the fault proxy and the PDS: what stopping
one run must not do to another."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import anyio
import pytest

from atdata_async import AtdataError
from atdata_async._pipeline import executor as engine
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.promote import DaskExecutor, promote_many, promote_to_atmosphere
from tests.conftest import make_bucket, make_credentials, store_for
from tests.faultproxy import Fault, FaultProxy
from tests.test_dask import ON_WORKERS, assert_copied
from tests.test_dask_stop import open_uploads

pytestmark = [pytest.mark.anyio, pytest.mark.pds]


@dataclass
class Beside(Fault):
    """A fault that fires only while requests another fault holds are in flight."""

    beside: Fault | None = None

    def matches(self, method: str, path: str, inflight: int = 0) -> bool:
        if self.beside is not None and self.beside.active == 0:
            return False
        return super().matches(method, path, inflight)


async def test_a_failed_entry_stops_only_its_own_groups_even_when_run_tokens_agree(
        index, client, tmp_path, second_moto_server, dc, monkeypatch):
    """promote_many: entry "bad" fails (a 403 on one of its parts) while entry "good"
    copies on the same workers (its PUTs held 1 s). The failed entry stops its run on
    every worker; the good one must not be stopped with it. Their runs' random tokens
    (32 bits) are made equal here: in a batch of 10,000 entries two agree with a chance
    of ~1%, and before the fix the workers knew a run by its token alone, so the good
    entry's groups were cancelled and it failed with "shard N's copy stopped: its
    promotion failed or was cancelled" (and its later groups for 10 minutes)."""
    monkeypatch.setattr(engine, "secrets", SimpleNamespace(token_hex=lambda n: "5a" * n))
    from tests.test_promote import insert

    bad = await insert(index, tmp_path, "bad", shards=4, per_shard=300, stem="bad")
    good = await insert(index, tmp_path, "good", shards=4, per_shard=300, stem="good")
    dest_bucket = make_bucket(second_moto_server.url)
    copying: list[int] = []  # the good entry's PUTs held when the 403 fired
    with FaultProxy(second_moto_server.url) as proxy:
        held = proxy.add(Fault("delay", method="PUT", path=r"/promoted/good/", seconds=1.0,
                               times=None))
        refused = proxy.add(Beside("status", method="PUT", path=r"/promoted/bad/.*partNumber=",
                                   status=403, times=1, beside=held,
                                   on_fire=lambda: copying.append(held.active)))
        proxy.add(Fault("delay", method="PUT", path=r"/promoted/bad/", seconds=0.5,
                        times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            outcomes = await promote_many(
                [bad, good], index, client, data_store=dest,
                executor=DaskExecutor(dc, credentials=ON_WORKERS, group_size=2))
    assert refused.fired == 1 and copying[0] > 0, copying
    assert outcomes[0].error is not None and "S3 refused" in str(outcomes[0].error)
    assert outcomes[1].error is None, outcomes[1].error
    got = await AtmosphereIndex(client).get_dataset(outcomes[1].uri)
    assert_copied(good, got, second_moto_server.url)
    assert open_uploads(second_moto_server.url, dest_bucket) == []


class _Answer:
    """A group's task as the coordinator sees it: its answer after ``delay`` seconds."""

    def __init__(self, outcome: list, delay: float) -> None:
        self.outcome, self.delay = outcome, delay

    def __await__(self):
        return self._wait().__await__()

    async def _wait(self) -> list:
        await anyio.sleep(self.delay)
        return self.outcome

    def release(self) -> None:
        pass


class _Cluster:
    """The Dask client's side a ShardRunner uses, answering each group with what the
    test prepared (the fault injected: a worker's answer), no scheduler behind it."""

    asynchronous = True
    scheduler = SimpleNamespace(address="tcp://nowhere:8786")

    def __init__(self, outcome: list) -> None:
        self.outcome = outcome
        self.submitted: list[str] = []

    def scheduler_info(self, n_workers: int = 0) -> dict:
        return {"n_workers": 1}

    def submit(self, fn, group, key: str, pure: bool, retries: int) -> _Answer:
        self.submitted.append(key)
        return _Answer(self.outcome, 0.05)


async def test_a_failed_shard_that_had_not_asked_yet_is_reported_once():
    """A group of 4 whose shard 3 failed on the worker (the others answer GroupStopped
    naming it), while only shards 0-2 had asked for the group: shard 3 still waited for
    a slot of the shared limit (promote_many's, or a promotion's when groups finish
    unevenly). Its error is the promotion's, reported once (one of the waiting shards
    raises it in its place, the others are cancelled with the rest). Before the fix each
    of the 3 raised it: "3 of 4 shard(s) failed", the one 403 listed three times under
    three shards that did not fail."""
    from atdata_async import StorageError
    from atdata_async._backends.tasks import run_per_shard
    from atdata_async._errors import ShardTransferError
    from atdata_async._pipeline.journal import ShardResume
    from atdata_async._pipeline.promote import ShardPlan

    promotion = "p" * 64
    refused = StorageError("UploadPart 1 s3://dest/a3.tar: S3 refused the credentials")
    cluster = _Cluster([engine.GroupStopped(promotion, i, 3) for i in range(3)] + [refused])
    runner = engine.ShardRunner(DaskExecutor(cluster, group_size=4), promotion, None, None,
                                None, False, False, None)
    plans = [ShardPlan(f"s3://src/a{i}.tar", "copy", f"a{i}.tar", 10, None)
             for i in range(4)]
    await runner.plan([(i, p, ShardResume()) for i, p in enumerate(plans)])

    async def settle(i: int):
        return await runner.settle(i, plans[i], ShardResume())

    with anyio.fail_after(10), pytest.raises(ShardTransferError) as raised:
        await run_per_shard([p.source_url for p in plans], list(range(4)), settle, 3)
    assert len(cluster.submitted) == 1  # one task for the group
    assert list(raised.value.failures.values()) == [refused], str(raised.value)


async def test_a_failed_promotion_releases_its_lease_only_once_its_workers_aborts_ended(
        index, client, tmp_path, second_moto_server, dc):
    """8 multipart shards in 2 groups of 4 on 2 workers; a part of the first group is
    refused (403), so the promotion fails and stops the second group, whose shards then
    abort their uploads: those aborts (admitted by the fence under the coordinator's
    lease) are held 4 s at the proxy. The coordinator must not release its lease while
    they are in flight: a rerun takes a released lease at once (it waits for admitted
    requests only when it takes a dead holder's), continues the uploads the journal
    still names, and the held aborts would land on them. Before the fix the
    coordinator gave up waiting after STOP_WAIT (3 s) and released the lease with the
    aborts still held."""
    from tests.test_promote import insert

    entry = await insert(index, tmp_path, "slowabort", shards=8, per_shard=300,
                         stem="slowabort")
    dest_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(second_moto_server.url) as proxy:
        refused = proxy.add(Fault("status", method="PUT", path=r"-00000[0-3]\.tar\?.*partNumber=",
                                  status=403, skip=4, times=1))
        proxy.add(Fault("delay", method="PUT", path=r"-00000[0-3]\.tar\?", seconds=0.5,
                        times=None))
        proxy.add(Fault("delay", method="PUT", path=r"-00000[4-7]\.tar\?", seconds=2.0,
                        times=None))
        aborts = proxy.add(Fault("delay", method="DELETE", path=r"-00000[4-7]\.tar\?uploadId=",
                                 seconds=4.0, times=None))
        async with store_for(make_credentials(proxy.url), dest_bucket) as dest:
            with pytest.raises(AtdataError, match=r"^1 of 8 shard\(s\) failed:(.|\n)*S3 refused"):
                await promote_to_atmosphere(
                    entry, index, client, data_store=dest,
                    executor=DaskExecutor(dc, credentials=ON_WORKERS, group_size=4))
            in_flight = aborts.active
        assert refused.fired == 1
        assert aborts.fired >= 1  # the second group had uploads open when it was stopped
        assert in_flight == 0  # none was still on its way when the lease was released
    assert open_uploads(second_moto_server.url, dest_bucket) == []
