"""Review of the Dask engine's stop path (0d54cb2) on a real LocalCluster (worker
processes) against redis-server, moto behind the fault proxy and the PDS: what stopping
one run must not do to another."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from distributed import Client

from atdata_async._pipeline import executor as engine
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.promote import DaskExecutor, promote_many
from tests.conftest import make_bucket, make_credentials, store_for
from tests.faultproxy import Fault, FaultProxy
from tests.test_dask import ON_WORKERS, assert_copied, new_cluster
from tests.test_dask_stop import open_uploads

pytestmark = [pytest.mark.anyio, pytest.mark.pds]


@pytest.fixture(scope="module")
def cluster():
    with new_cluster(2) as cluster:  # 2 worker processes, 4 slots each
        yield cluster


@pytest.fixture
async def dc(cluster):
    async with Client(cluster.scheduler_address, asynchronous=True) as dc:
        yield dc


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
        refused = proxy.add(Fault("status", method="PUT", path=r"/promoted/bad/.*partNumber=",
                                  status=403, inflight=3, times=1,
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
