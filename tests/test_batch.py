"""promote_many against real redis-server + moto S3 + the reference PDS (one of them with
its real rate limiter on), with faults from tests/faultproxy.py."""

from __future__ import annotations

import argparse
import inspect
import json
import time

import pytest

from atdata_async import (
    EntryError,
    RateLimitedError,
    RecordTooLargeError,
    SchemaNotFoundError,
    ShardTransferError,
)
from atdata_async._pipeline import batch as batch_module
from atdata_async._pipeline import promote as promote_module
from atdata_async.atmosphere import DATASET_COLLECTION, AtmosphereClient, AtmosphereIndex
from atdata_async.local import LocalDatasetEntry, LocalIndex
from atdata_async.promote import promote_many, promote_to_atmosphere
from tests import services, test_cli
from tests.conftest import make_bucket, make_credentials
from tests.faultproxy import Fault, FaultProxy
from tests.samples import FeatureSample
from tests.test_promote import insert, read_s3, schema_records, store_for

pytestmark = [pytest.mark.anyio, pytest.mark.pds]


def record_waits(monkeypatch, module) -> list[float]:
    """``module._wait`` (its rate-limit sleep) records the seconds instead of sleeping."""
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(module, "_wait", no_sleep)
    return waits


async def dataset_records(client) -> list[dict]:
    return [r async for r in client.list_records(DATASET_COLLECTION)]


async def entries(index, tmp_path, n: int, prefix: str = "e") -> list[LocalDatasetEntry]:
    return [await insert(index, tmp_path, f"{prefix}{i}", shards=1, per_shard=4)
            for i in range(n)]


async def test_many_entries_one_schema_one_applywrites_then_a_rerun_writes_nothing(
        index, proxied, pds_proxy, client, tmp_path):
    batch = await entries(index, tmp_path, 5)
    outcomes = await promote_many(batch, index, proxied, tags=["batch"])
    assert [o.name for o in outcomes] == [e.name for e in batch]
    assert all(o.ok and not o.existing for o in outcomes), outcomes
    assert pds_proxy.count("POST", "applyWrites") == 1
    assert pds_proxy.count("POST", "createRecord") == 1  # the schema record
    assert pds_proxy.count("GET", "listRecords") == 1   # one schema lookup for the batch
    assert pds_proxy.count("POST", "putRecord") == 0
    records = await dataset_records(client)
    assert sorted(r["uri"] for r in records) == sorted(o.uri for o in outcomes)
    assert len(await schema_records(client)) == 1
    got = await AtmosphereIndex(client).get_dataset(outcomes[2].uri)
    assert got.name == "e2" and got.tags == ["batch"]
    assert got.checksums == {u: batch[2].checksums[u] for u in batch[2].data_urls}

    # a rerun with two more entries publishes only those two, never a duplicate
    pds_proxy.seen.clear()
    more = batch + await entries(index, tmp_path, 2, prefix="more")
    again = await promote_many(more, index, proxied)
    assert [o.existing for o in again] == [True] * 5 + [False] * 2
    assert [o.uri for o in again[:5]] == [o.uri for o in outcomes]
    assert pds_proxy.count("POST", "applyWrites") == 1
    assert len(await dataset_records(client)) == 7
    # a single promotion of a batch-published entry lands at the same record key
    uri = await promote_to_atmosphere(batch[0], index, client)
    assert uri == outcomes[0].uri and len(await dataset_records(client)) == 7


async def test_a_bad_entry_fails_alone(index, client, tmp_path):
    good = await entries(index, tmp_path, 2)
    empty = LocalDatasetEntry("empty", good[0].schema_ref, [])
    unknown = LocalDatasetEntry("unknown", "atdata://local/schema/Nope@1.0.0",
                                good[0].data_urls)
    outcomes = await promote_many([good[0], empty, unknown, good[1], good[0]], index, client)
    assert [o.ok for o in outcomes] == [True, False, False, True, True]
    assert isinstance(outcomes[1].error, EntryError)
    assert isinstance(outcomes[2].error, SchemaNotFoundError)
    assert outcomes[4].uri == outcomes[0].uri  # the same entry twice: published once
    assert len(await dataset_records(client)) == 2


async def test_copies_share_one_limit_and_land_byte_for_byte(index, client, tmp_path,
                                                             moto_server, second_moto_server):
    batch = [await insert(index, tmp_path, f"c{i}", shards=3, per_shard=300) for i in range(3)]
    dest_bucket = make_bucket(second_moto_server.url)
    seen = []
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        outcomes = await promote_many(batch, index, client, data_store=dest,
                                      max_concurrency=4, progress=seen.append)
    assert all(o.ok for o in outcomes), outcomes
    assert seen[-1].shards_done == seen[-1].shards_total == 9
    for entry, outcome in zip(batch, outcomes, strict=True):
        got = await AtmosphereIndex(client).get_dataset(outcome.uri)
        for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
            assert read_s3(second_moto_server.url, dst) == read_s3(moto_server.url, src)


async def test_a_failed_copy_fails_its_entry_and_the_rerun_finishes_it(
        redis_url, moto_server, bucket, client, tmp_path, second_moto_server):
    upload = store_for(make_credentials(moto_server.url), bucket)
    async with upload, LocalIndex(redis_url, data_store=upload) as index:
        await index.publish_schema(FeatureSample)
        batch = [await insert(index, tmp_path, f"r{i}", shards=2, per_shard=300)
                 for i in range(3)]
    dest_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(moto_server.url) as s3_proxy:
        s3_proxy.add(Fault("status", method="GET", path=r"/r1/", status=403, times=None))
        source = store_for(make_credentials(s3_proxy.url), bucket)
        async with source, LocalIndex(redis_url, data_store=source) as index, \
                store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            first = await promote_many(batch, index, client, data_store=dest)
            assert [o.ok for o in first] == [True, False, True]
            assert isinstance(first[1].error, ShardTransferError)
            s3_proxy.clear()
            again = await promote_many(batch, index, client, data_store=dest)
            assert [o.existing for o in again] == [True, False, True]
            assert all(o.ok for o in again)
            assert await dest.list_multipart_uploads() == []
    assert len(await dataset_records(client)) == 3
    got = await AtmosphereIndex(client).get_dataset(again[1].uri)
    for src, dst in zip(batch[1].data_urls, got.data_urls, strict=True):
        assert read_s3(second_moto_server.url, dst) == read_s3(moto_server.url, src)


async def test_in_place_shards_are_checked_by_one_listing_not_a_head_each(
        redis_url, moto_server, bucket, client, tmp_path):
    upload = store_for(make_credentials(moto_server.url), bucket)
    async with upload, LocalIndex(redis_url, data_store=upload) as index:
        await index.publish_schema(FeatureSample)
        batch = await entries(index, tmp_path, 22)
        changed = batch[5].data_urls[0]
        await upload.put_bytes(changed.split("/", 3)[3], b"not what insert saw")
    with FaultProxy(moto_server.url) as s3_proxy:
        source = store_for(make_credentials(s3_proxy.url), bucket)
        async with source, LocalIndex(redis_url, data_store=source) as index:
            outcomes = await promote_many(batch, index, client)
    assert [o.ok for o in outcomes] == [i != 5 for i in range(22)]
    assert isinstance(outcomes[5].error, ShardTransferError)
    assert "changed since it was inserted" in str(outcomes[5].error)
    assert s3_proxy.count("GET", r"list-type=2") == 1
    assert s3_proxy.count("HEAD") == 1  # only the changed one, checked the usual way


async def test_chunks_obey_the_write_count_and_the_request_size(
        index, proxied, pds_proxy, client, tmp_path, monkeypatch):
    batch = await entries(index, tmp_path, 7)
    monkeypatch.setattr(batch_module, "MAX_WRITES_PER_CALL", 3)
    outcomes = await promote_many(batch, index, proxied)
    assert all(o.ok for o in outcomes)
    assert pds_proxy.count("POST", "applyWrites") == 3  # 3 + 3 + 1
    pds_proxy.seen.clear()
    more = await entries(index, tmp_path, 4, prefix="big")
    monkeypatch.setattr(batch_module, "MAX_WRITE_BYTES", 1500)  # about one record per call
    outcomes = await promote_many(more, index, proxied, description="x" * 600)
    assert all(o.ok for o in outcomes)
    assert pds_proxy.count("POST", "applyWrites") == 4
    assert len(await dataset_records(client)) == 11


@pytest.mark.parametrize("kind", ["lose", "status", "reset"])
async def test_a_failed_or_lost_applywrites_publishes_each_record_once(
        kind, index, proxied, pds_proxy, client, tmp_path):
    batch = await entries(index, tmp_path, 3)
    pds_proxy.add(Fault(kind, method="POST", path="applyWrites", status=502))
    outcomes = await promote_many(batch, index, proxied)
    assert all(o.ok for o in outcomes), outcomes
    assert len(await dataset_records(client)) == 3
    assert pds_proxy.count("POST", "applyWrites") == (1 if kind == "lose" else 2)


async def test_a_refused_record_fails_alone(index, proxied, pds_proxy, client, tmp_path):
    batch = await entries(index, tmp_path, 3)
    pds_proxy.add(Fault("status", method="POST", path="applyWrites", status=400))
    outcomes = await promote_many(batch, index, proxied)
    # the chunk was refused once; written one by one, every record goes through
    assert all(o.ok for o in outcomes) and len(await dataset_records(client)) == 3
    assert pds_proxy.count("POST", "applyWrites") == 4


async def test_a_429_waits_for_its_reset(index, proxied, pds_proxy, client, tmp_path,
                                        monkeypatch):
    waits = record_waits(monkeypatch, batch_module)
    proxied.max_rate_limit_wait = 0  # the client gives up at once: the batch must wait
    batch = await entries(index, tmp_path, 3)
    reset = str(int(time.time()) + 120)
    pds_proxy.add(Fault("status", method="POST", path="applyWrites", status=429,
                        headers={"ratelimit-limit": "5000", "ratelimit-remaining": "0",
                                 "ratelimit-reset": reset, "retry-after": "120"}))
    outcomes = await promote_many(batch, index, proxied)
    assert all(o.ok for o in outcomes) and len(await dataset_records(client)) == 3
    assert len(waits) == 1 and 100 < waits[0] <= 122


async def test_headers_saying_the_budget_is_spent_make_the_batch_wait(
        index, proxied, pds_proxy, client, tmp_path, monkeypatch):
    waits = record_waits(monkeypatch, batch_module)
    monkeypatch.setattr(batch_module, "MAX_WRITES_PER_CALL", 2)
    batch = await entries(index, tmp_path, 4)
    pds_proxy.add(Fault("headers", method="POST", path="applyWrites", headers={
        "ratelimit-limit": "5000", "ratelimit-remaining": "4",
        "ratelimit-reset": str(int(time.time()) + 30)}))
    outcomes = await promote_many(batch, index, proxied)
    assert all(o.ok for o in outcomes)
    # 2 written; 4 points left = 1 create: 1 written at once, then a wait, then the last
    assert pds_proxy.count("POST", "applyWrites") == 3
    assert len(waits) == 1 and 0 < waits[0] <= 32
    assert len(await dataset_records(client)) == 4


# -- the PDS's own rate limiter ----------------------------------------------------------


@pytest.fixture
async def limited_client(limited_pds):
    account = services.create_account(limited_pds.url, f"rl{int(time.time() * 1000) % 10**8}")
    async with AtmosphereClient(limited_pds.url) as client:
        await client.login(account["handle"], account["password"])
        yield client


class Stop(Exception):
    pass


async def test_the_real_rate_limiter_paces_the_batch(index, limited_client, tmp_path,
                                                    monkeypatch):
    client = limited_client
    batch = await entries(index, tmp_path, 3)
    outcomes = await promote_many(batch, index, client)
    assert all(o.ok for o in outcomes)
    # the headers speak of the tightest limit: now the per-IP one (3000 calls / 5 min)
    limit = client.rate_limits[batch_module.APPLY_WRITES]
    assert limit.policy == "3000;w=300" and limit.remaining < limit.limit
    # spend the hour's write budget (5000 points; three creates and the schema record's
    # took 12) but for two points, as another writer might
    spend = (5000 - 4 * batch_module.CREATE_POINTS) // batch_module.CREATE_POINTS
    filler = {"$type": "science.alt.test.filler", "n": 1}
    for start in range(0, spend, 200):
        writes = [{"$type": "com.atproto.repo.applyWrites#create",
                   "collection": "science.alt.test.filler", "value": filler}
                  for _ in range(min(200, spend - start))]
        await client.procedure(batch_module.APPLY_WRITES, {"repo": client.did,
                                                           "writes": writes})
    spent = client.rate_limits[batch_module.APPLY_WRITES]
    assert spent.policy == "5000;w=3600" and spent.remaining == 2
    waits = []

    async def stop_instead_of_an_hour(seconds):
        waits.append(seconds)
        raise Stop

    monkeypatch.setattr(batch_module, "_wait", stop_instead_of_an_hour)
    more = await entries(index, tmp_path, 2, prefix="late")
    with pytest.raises(Stop):
        await promote_many(more, index, client)
    assert len(waits) == 1 and waits[0] > 60  # it waits for the reset instead of failing
    # and with a shorter patience it says so per entry, writing nothing
    outcomes = await promote_many(more, index, client, max_rate_limit_wait=5)
    assert all(isinstance(o.error, RateLimitedError) for o in outcomes)
    assert len(await dataset_records(client)) == 3


# -- the CLI: promote NAME... | --all | --match GLOB --------------------------------------


cli_env = test_cli.cli_env


def test_cli_promotes_a_batch_then_reruns_it(cli_env, s3_credentials, bucket, tmp_path):
    from atdata_async.sync import Dataset as SyncDataset
    from atdata_async.sync.local import LocalIndex as SyncIndex
    from atdata_async.sync.local import S3DataStore as SyncStore
    from tests.samples import write_shards

    cli = test_cli.cli
    with SyncStore(s3_credentials, bucket=bucket) as store, \
            SyncIndex(cli_env["ATDATA_REDIS_URL"], data_store=store) as idx:
        for name in ("cli-two", "other"):
            directory = tmp_path / name
            directory.mkdir()
            paths = write_shards(directory, 1, 5)
            idx.insert_dataset(SyncDataset[FeatureSample]([str(p) for p in paths]), name=name)
    cli_env = test_cli.s3_env(cli_env)  # AWS_* in the environment: the shards are proven
    out = cli(cli_env, "--json", "promote", "--match", "cli-*", "--tag", "b")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["entries"]
    assert [r["name"] for r in rows] == ["cli-data", "cli-two"]
    assert all(r["uri"] and not r["existing"] and r["error"] is None for r in rows)
    again = cli(cli_env, "promote", "--all")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[:2] == [f"exists    cli-data  {rows[0]['uri']}",
                         f"exists    cli-two  {rows[1]['uri']}"]
    assert lines[2].startswith("published other  at://") and lines[3] == "3 of 3 entries published"
    for bad in (["promote"], ["promote", "cli-data", "--all"],
                ["promote", "cli-data", "other", "--name", "x"]):
        usage = cli(cli_env, *bad)
        assert usage.returncode == 2 and "Traceback" not in usage.stderr, usage.stderr
    missing = cli(cli_env, "promote", "--match", "zzz*")
    assert missing.returncode == 3


# -- benchmark smoke runs (the real runs: benchmarks/bench_batch.py) ----------------------


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_batch.py"
    spec = importlib.util.spec_from_file_location("bench_batch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_bench_batch_smoke(redis_url, moto_server, second_moto_server, pds, tmp_path,
                                 capsys):
    bench = _bench()
    rows = await bench.compare(redis_url, moto_server.url, pds.url, 3)
    assert [(r["records"], r["failed"]) for r in rows] == [(3, 0), (3, 0)]
    result = await bench.soak(redis_url, moto_server.url, second_moto_server.url, pds.url, 2,
                              7, tmp_path)
    assert (result["published"], result["duplicates"], result["open_uploads"]) == (2, 0, 0)
    assert result["records"] == 2 and not result["failed_after_rerun"]
    bench.print_compare(rows)
    bench.print_soak(result)
    assert "records/s" in capsys.readouterr().out


# -- the two calls take the same options ---------------------------------------------------


def keyword_options(fn) -> dict[str, object]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


# Each option of promote_many and the flag of `atdata-async promote NAME...` that sets it
# (None: no flag, on purpose). A new option fails the test until it is listed here.
CLI_FLAGS = {"data_store": "--copy-to", "copy_prefix": "--copy-to",
             "description": "--description", "tags": "--tag", "license": "--license",
             "compute_checksums": None, "max_concurrency": "--concurrency",
             "max_server_copies": "--server-copies",
             "max_streamed_copies": "--streamed-copies",
             "progress": "--progress", "verify": "--no-verify", "executor": "--scheduler",
             "source_store": "--source-credentials", "max_record_bytes": "--max-record-bytes",
             "max_rate_limit_wait": "--max-rate-limit-wait"}


def test_promote_many_and_promote_to_atmosphere_take_the_same_options():
    """Same names, defaults and order (but ``name``: a batch keeps each entry's), in the
    async core, the sync facade and the CLI: they cannot drift apart again."""
    from atdata_async import cli
    from atdata_async.sync import promote as sync_promote

    one, many = keyword_options(promote_to_atmosphere), keyword_options(promote_many)
    assert one.pop("name") is None
    assert list(one.items()) == list(many.items())
    assert keyword_options(sync_promote.promote_many) == many
    assert keyword_options(sync_promote.promote_to_atmosphere) == keyword_options(
        promote_to_atmosphere)
    assert set(CLI_FLAGS) == set(many)
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {s for a in commands.choices["promote"]._actions for s in a.option_strings}
    flags |= {s for a in parser._actions for s in a.option_strings}  # global: --progress
    assert {f for f in CLI_FLAGS.values() if f} <= flags


async def test_promote_many_reads_through_source_store(index, client, tmp_path, redis_url,
                                                      monkeypatch):
    """Shards in place, an index without a store and no AWS credentials around: only
    ``source_store=`` can prove their checksums (as for promote_to_atmosphere)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    batch = await entries(index, tmp_path, 2)
    async with LocalIndex(redis_url) as bare:
        refused = await promote_many(batch, bare, client)
        assert all(isinstance(o.error, EntryError) for o in refused), refused
        assert "source_store" in str(refused[0].error)
        assert await dataset_records(client) == []
        outcomes = await promote_many(batch, bare, client, source_store=index.data_store)
    assert all(o.ok for o in outcomes), outcomes
    assert len(await dataset_records(client)) == 2


async def test_promote_many_refuses_a_record_over_max_record_bytes(index, client, tmp_path):
    batch = await entries(index, tmp_path, 2)
    with pytest.raises(RecordTooLargeError):
        await promote_to_atmosphere(batch[0], index, client, max_record_bytes=300)
    outcomes = await promote_many(batch, index, client, max_record_bytes=300)
    assert all(isinstance(o.error, RecordTooLargeError) for o in outcomes), outcomes
    assert await dataset_records(client) == [] and await schema_records(client) == []
    assert all(o.ok for o in await promote_many(batch, index, client))


async def test_promote_to_atmosphere_waits_out_a_spent_write_budget(
        index, proxied, pds_proxy, client, tmp_path, monkeypatch):
    waits = record_waits(monkeypatch, promote_module)
    proxied.max_rate_limit_wait = 0  # the client gives up at once: the promotion waits
    entry = await insert(index, tmp_path, "paced", shards=1, per_shard=4)
    reset = str(int(time.time()) + 120)
    spent = {"ratelimit-limit": "5000", "ratelimit-remaining": "0", "ratelimit-reset": reset,
             "retry-after": "120"}
    pds_proxy.add(Fault("status", method="POST", path="putRecord", status=429,
                        headers=spent))
    with pytest.raises(RateLimitedError):  # resets later than the caller will wait
        await promote_to_atmosphere(entry, index, proxied, max_rate_limit_wait=60)
    assert waits == [] and await dataset_records(client) == []
    pds_proxy.add(Fault("status", method="POST", path="putRecord", status=429,
                        headers=spent))
    uri = await promote_to_atmosphere(entry, index, proxied)
    assert len(waits) == 1 and 100 < waits[0] <= 122
    assert [r["uri"] for r in await dataset_records(client)] == [uri]
