"""Where shards live is never lost, claims are proven or refused, and a record too large for
the PDS is refused before anything is sent (real redis-server + moto S3 + the PDS)."""

from __future__ import annotations

import hashlib
import logging
import uuid

import msgspec
import pytest

from atdata_async import (
    EntryError,
    RecordTooLargeError,
    ShardTransferError,
    SourceChangedError,
)
from atdata_async._backends.redis_index import STORE_KEY, StoreLocation
from atdata_async._pipeline.promote import (
    MAX_RECORD_BYTES,
    check_record_size,
    copy_key,
    plan_promotion,
    putrecord_size,
)
from atdata_async.atmosphere import DATASET_COLLECTION, AtmosphereIndex
from atdata_async.local import LocalDatasetEntry, LocalIndex, S3DataStore
from atdata_async.promote import promote_to_atmosphere
from tests import test_promote as _promote_tests
from tests.conftest import make_bucket
from tests.test_promote import insert, read_s3, schema_records

client = _promote_tests.client  # the same fixtures: a logged-in client, an index with a store
index = _promote_tests.index

pytestmark = [pytest.mark.anyio, pytest.mark.pds]
REF = "atdata://local/schema/FeatureSample@1.0.0"


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """No AWS credentials in any standard source (environment, profile files)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    return monkeypatch


async def test_insert_records_endpoint_and_region_never_credentials(index, tmp_path,
                                                                    redis_url):
    entry = await insert(index, tmp_path, "located")
    assert entry.store_location == StoreLocation(index.data_store.endpoint, None)
    import redis

    raw = redis.Redis.from_url(redis_url).hgetall(f"LocalDatasetEntry:{entry.cid}")
    meta = msgspec.msgpack.decode(raw[b"metadata"])
    assert meta[STORE_KEY] == {"endpoint": index.data_store.endpoint, "region": None}
    secret = index.data_store.credentials.secret_access_key
    assert secret.encode() not in b"".join(raw.values())
    assert index.data_store.credentials.access_key_id.encode() not in b"".join(raw.values())


async def test_seed_flow_without_a_store_publishes_the_endpoint_and_proven_checksums(
        index, client, tmp_path, redis_url, s3_credentials, no_aws):
    """The seed's basic usage: LocalIndex() with no data store. The AWS credentials of the
    environment reach the endpoint recorded at insert; each shard is proven unchanged."""
    entry = await insert(index, tmp_path, "seed")
    no_aws.setenv("AWS_ACCESS_KEY_ID", s3_credentials["AWS_ACCESS_KEY_ID"])
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", s3_credentials["AWS_SECRET_ACCESS_KEY"])
    async with LocalIndex(redis_url) as bare:
        uri = await promote_to_atmosphere(await bare.get_entry_by_name("seed"), bare, client)
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert got.storage.endpoint == index.data_store.endpoint
    assert got.storage.bucket == index.data_store.bucket
    for url in entry.data_urls:
        body = read_s3(index.data_store.endpoint, url)
        assert got.checksums[url] == hashlib.sha256(body).hexdigest() == entry.checksums[url]


async def test_a_shard_overwritten_after_insert_is_caught_without_a_store(
        index, client, tmp_path, redis_url, s3_credentials, no_aws, raw_s3):
    entry = await insert(index, tmp_path, "stale")
    bucket, key = entry.data_urls[1].removeprefix("s3://").split("/", 1)
    raw_s3.put_object(Bucket=bucket, Key=key, Body=b"not the inserted shard")
    no_aws.setenv("AWS_ACCESS_KEY_ID", "ambient-key")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    async with LocalIndex(redis_url) as bare:
        with pytest.raises(ShardTransferError) as info:
            await promote_to_atmosphere(entry, bare, client)
    (failure,) = info.value.failures.values()
    assert isinstance(failure, SourceChangedError) and "changed since it was inserted" in str(
        failure)
    assert await schema_records(client) == []
    assert [r async for r in client.list_records(DATASET_COLLECTION)] == []


async def test_nothing_to_verify_with_is_refused_before_any_write(
        index, client, tmp_path, redis_url, no_aws, caplog):
    entry = await insert(index, tmp_path, "blind")
    async with LocalIndex(redis_url) as bare:
        before = client.request_count
        with pytest.raises(EntryError) as info:
            await promote_to_atmosphere(entry, bare, client)
        message = str(info.value)
        assert "cannot prove the checksums of the 3 shard(s)" in message
        assert index.data_store.endpoint in message and "verify=False" in message
        assert "AWS_ACCESS_KEY_ID" in message and "source_store=" in message
        assert client.request_count == before  # not even a listing
        # opting out, visibly: the record keeps the endpoint and the recorded checksums
        with caplog.at_level(logging.WARNING, logger="atdata_async.promote"):
            uri = await promote_to_atmosphere(entry, bare, client, verify=False)
        assert "verify=False" in caplog.text
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert got.storage.endpoint == index.data_store.endpoint
    assert got.checksums == entry.checksums


async def test_a_store_passed_per_call_reads_the_shards(index, client, tmp_path, redis_url,
                                                        s3_credentials, no_aws):
    entry = await insert(index, tmp_path, "percall")
    async with LocalIndex(redis_url) as bare, \
            S3DataStore(s3_credentials, bucket=index.data_store.bucket) as mine:
        uri = await promote_to_atmosphere(entry, bare, client, source_store=mine)
        assert mine.request_count == 3  # one HEAD per shard: ETag as inserted
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert got.storage.endpoint == mine.endpoint and got.checksums == entry.checksums


async def test_copy_without_source_credentials_is_refused_before_any_write(
        index, client, tmp_path, redis_url, s3_credentials, no_aws, moto_server):
    entry = await insert(index, tmp_path, "nocreds")
    other = {**s3_credentials, "AWS_ENDPOINT": "http://127.0.0.1:9"}  # another endpoint
    async with LocalIndex(redis_url) as bare, \
            S3DataStore(other, bucket=make_bucket(moto_server.url)) as dest:
        with pytest.raises(EntryError, match=r"copying the shards in .* needs credentials"):
            await promote_to_atmosphere(entry, bare, client, data_store=dest)
        assert dest.request_count == 0
    assert await schema_records(client) == []


# -- the record's size, before anything is sent ------------------------------------------

def _atdata_entry(n: int, name: str = "images-v1") -> LocalDatasetEntry:
    """n shards in atdata's key layout, each with a recorded sha256."""
    run = uuid.uuid4()
    urls = [f"s3://my-bucket/images/data--{run}--{i:06d}.tar" for i in range(n)]
    return LocalDatasetEntry(name, REF, urls, {
        "checksums": {u: "0" * 64 for u in urls},
        STORE_KEY: {"endpoint": "https://s3.us-west-2.example.com", "region": "us-west-2"}})


LOCATION = StoreLocation("https://s3.us-west-2.example.com", "us-west-2")


def largest_fitting(make, **kw) -> int:
    """The most shards whose record fits: the request grows by the same bytes per shard
    (keys of one length), so two sizes give it; the plan confirms N fits and N + 1 not."""
    def size(n: int) -> int:
        plan = plan_promotion(make(n), location=LOCATION, max_record_bytes=10**9, **kw)
        return check_record_size(plan.record, plan.shards, kw.get("copy_to"), LOCATION,
                                 "FeatureSample", "1.0.0", repo=kw.get("repo"),
                                 limit=10**9)

    one, per = size(1), size(2) - size(1)
    n = 1 + (MAX_RECORD_BYTES - one) // per
    plan_promotion(make(n), location=LOCATION, **kw)
    with pytest.raises(RecordTooLargeError):
        plan_promotion(make(n + 1), location=LOCATION, **kw)
    return n


async def test_a_6000_shard_entry_is_refused_before_any_request(index, client, no_aws):
    entry = _atdata_entry(6000)
    before = client.request_count
    with pytest.raises(RecordTooLargeError) as info:
        await promote_to_atmosphere(entry, index, client)
    err = info.value
    assert isinstance(err, ValueError) and err.field == "storage.shards"
    assert (err.shards, err.limit) == (6000, MAX_RECORD_BYTES) and err.size > err.limit
    for text in ("6,000 shards", f"{err.size:,}-byte", "1,000,000 bytes", "fewer, larger"):
        assert text in str(err)
    assert client.request_count == before and index.data_store.request_count == 0
    with pytest.raises(RecordTooLargeError, match="6,000 shards"):  # copies too
        await promote_to_atmosphere(entry, index, client, data_store=index.data_store,
                                    name="a-long-published-name-" + "x" * 40)
    assert client.request_count == before and index.data_store.request_count == 0
    assert await schema_records(client) == []


async def test_the_largest_record_that_fits_is_accepted_by_the_pds(client):
    """The estimate is the real request: N shards fit and the PDS takes that record;
    N + 1 are refused. (In place, atdata's key layout; see docs/user-guide.md.)"""
    n = largest_fitting(_atdata_entry, copy_to=None, repo=client.did)
    assert 5_000 < n < 6_000
    entry = _atdata_entry(n)
    plan = plan_promotion(entry, copy_to=None, location=LOCATION, repo=client.did)
    from atdata_async._model.lexicon import Checksum, S3Shard, StorageS3

    schema = await client.create_record(
        "science.alt.dataset.schema", __import__("tests.test_lexicon", fromlist=["SCHEMA"])
        .SCHEMA, rkey="FeatureSample_1.0.0")
    storage = StorageS3(bucket="my-bucket", endpoint=LOCATION.endpoint, region=LOCATION.region,
                        shards=[S3Shard(u.split("/", 3)[3], Checksum("sha256", "f" * 64))
                                for u in entry.data_urls])
    record = msgspec.structs.replace(
        plan.record, schema_ref=schema["uri"], storage=storage,
        size=msgspec.structs.replace(plan.record.size, bytes=123_456_789_012))
    from atdata_async._model.ids import next_tid
    from atdata_async._model.lexicon import to_json

    rkey = next_tid()
    size = putrecord_size(record, client.did, rkey)
    assert MAX_RECORD_BYTES - 300 < size <= MAX_RECORD_BYTES
    written = await client.put_record(DATASET_COLLECTION, rkey, to_json(record))
    got = await AtmosphereIndex(client).get_dataset(written["uri"])
    assert len(got.data_urls) == n


def test_short_copy_keys_buy_room():
    dest = S3DataStore({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                        "AWS_ENDPOINT": "https://s3.example.org"}, bucket="public-bucket")
    entry = _atdata_entry(3)
    plan = plan_promotion(entry, copy_to=dest, location=LOCATION)
    keys = [s.dest_key for s in plan.shards]
    assert keys == [f"promoted/images-v1/{entry.cid[-8:]}-{i:06d}.tar" for i in range(3)]
    assert copy_key("p", "n", entry.cid, 7, "x.tar.gz").endswith("-000007.tar.gz")
    assert copy_key("", "n", entry.cid, 0, "noext") == f"n/{entry.cid[-8:]}-000000.tar"
    copies = largest_fitting(_atdata_entry, copy_to=dest)
    in_place = largest_fitting(_atdata_entry, copy_to=None)
    assert copies > in_place > 5_000  # shorter keys than atdata's: more shards per record
    size = check_record_size(plan.record, plan.shards, dest, None, "FeatureSample", "1.0.0",
                             repo=None, limit=MAX_RECORD_BYTES)
    assert 0 < size < 5_000
