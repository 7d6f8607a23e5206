"""Faults absorbed at the seam that owns them, against real servers (redis-server we
start, moto S3, the reference PDS), with faults injected by tests/faultproxy.py or by
the servers themselves (CLIENT KILL, the idle-client timeout, a restart)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import boto3
import pytest
import redis as sync_redis

from atdata_async import SourceChangedError, StorageError, XrpcError
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.local import LocalIndex, S3DataStore
from atdata_async.promote import promote_to_atmosphere
from tests import services
from tests.conftest import make_bucket, make_credentials
from tests.faultproxy import Fault, FaultProxy
from tests.samples import FeatureSample
from tests.test_promote import insert, read_s3, schema_records, store_for

pytestmark = pytest.mark.anyio


# -- Redis: a restart, a killed connection, the idle timeout cost a reconnect ------------


class OwnRedis:
    """A redis-server of this module's own (its config is changed, it is restarted)."""

    def __init__(self, workdir) -> None:
        self.workdir = workdir
        self.port = services.free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        services.wait_until(lambda: self.side().ping(), 15, "redis-server", self.proc)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(15)

    def side(self) -> sync_redis.Redis:
        return sync_redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = OwnRedis(tmp_path_factory.mktemp("own-redis"))
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(own_redis):
    side = own_redis.side()
    side.flushdb()
    side.config_set("timeout", 0)
    side.close()
    return own_redis


async def test_redis_idle_timeout_costs_a_reconnect(fresh_redis):
    side = fresh_redis.side()
    async with LocalIndex(fresh_redis.url) as index:
        assert await index.record_key_for("p", "k1") == "k1"
        side.config_set("timeout", 1)
        # wait (without sleeping a fixed time) until the server dropped our idle client
        services.wait_until(lambda: len(side.client_list(_type="normal")) == 1, 10,
                            "the server dropping our idle client")
        assert await index.record_key_for("p", "k2") == "k1"
        await index.publish_schema(FeatureSample)
    side.close()


async def test_redis_client_kill_costs_a_reconnect(fresh_redis):
    side = fresh_redis.side()
    async with LocalIndex(fresh_redis.url) as index:
        ref = await index.publish_schema(FeatureSample)
        for _ in range(3):
            assert side.client_kill_filter(_type="normal", skipme=True) >= 1
            assert (await index.get_schema(ref))["name"] == "FeatureSample"
            assert await index.record_key_for("p", "k") == "k"  # a pipeline-free write
    side.close()


async def test_redis_restart_costs_a_reconnect(fresh_redis):
    async with LocalIndex(fresh_redis.url) as index:
        await index.record_key_for("p", "k")
        fresh_redis.stop()
        fresh_redis.start()  # same port; an empty server (no persistence)
        assert await index.record_key_for("p", "k2") == "k2"
        await index.publish_schema(FeatureSample)
        assert len(await index.list_schemas()) == 1


@pytest.mark.pds
async def test_a_killed_redis_connection_mid_copy_does_not_fail_the_promotion(
        fresh_redis, s3_credentials, bucket, client, tmp_path, second_moto_server):
    side = fresh_redis.side()
    kills = []

    def kill_on_progress(_progress) -> None:
        if len(kills) < 2:
            kills.append(side.client_kill_filter(_type="normal", skipme=True))

    store = store_for(s3_credentials, bucket)
    async with store, LocalIndex(fresh_redis.url, data_store=store) as index:
        await index.publish_schema(FeatureSample)
        entry = await insert(index, tmp_path, "killed", shards=2, per_shard=200)
        side.client_kill_filter(_type="normal", skipme=True)
        dest_bucket = make_bucket(second_moto_server.url)
        async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                              progress=kill_on_progress)
    assert kills and (await AtmosphereIndex(client).get_dataset(uri)).name == "killed"
    side.close()


# -- S3: attempts that mean what they say; a cut body resumes; foreign errors translated -


def put_object(endpoint: str, bucket: str, key: str, body: bytes) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="y").put_object(
        Bucket=bucket, Key=key, Body=body)


@pytest.fixture
def s3_proxy(moto_server):
    with FaultProxy(moto_server.url) as proxy:
        yield proxy


async def test_max_attempts_5_means_5_attempts(s3_proxy, bucket):
    s3_proxy.add(Fault("status", method="HEAD", status=503, times=None))
    async with S3DataStore(make_credentials(s3_proxy.url), bucket=bucket,
                           max_attempts=5) as store:
        with pytest.raises(StorageError):
            await store.head(store.url("missing"))
        assert store.request_count == 5
    assert s3_proxy.count("HEAD") == 5


async def test_a_cut_body_resumes_from_the_byte_it_reached(s3_proxy, moto_server, bucket):
    data = bytes(range(256)) * 4096  # 1 MiB
    put_object(moto_server.url, bucket, "obj", data)
    s3_proxy.add(Fault("cut", method="GET", path=r"/obj", after=300_000, times=2))
    async with S3DataStore(make_credentials(s3_proxy.url), bucket=bucket) as store:
        assert bytes(await store.get_bytes(store.url("obj"))) == data
        assert bytes(await store.get_bytes(store.url("obj"), (1000, 500_000))) == \
            data[1000:500_000]
    gets = [p for m, p, _ in s3_proxy.seen if m == "GET"]
    assert len(gets) == 4  # two cut, each resumed once


async def test_a_resumed_read_never_mixes_two_versions(s3_proxy, moto_server, bucket):
    data = b"a" * 600_000
    put_object(moto_server.url, bucket, "obj", data)
    s3_proxy.add(Fault("cut", method="GET", path=r"/obj", after=100_000,
                       on_fire=lambda: put_object(moto_server.url, bucket, "obj", b"b" * 600_000)))
    async with S3DataStore(make_credentials(s3_proxy.url), bucket=bucket) as store:
        with pytest.raises(SourceChangedError):
            await store.get_bytes(store.url("obj"))


async def test_a_body_cut_every_time_is_a_storage_error_not_aiohttps(s3_proxy, moto_server,
                                                                       bucket):
    put_object(moto_server.url, bucket, "obj", b"x" * 400_000)
    s3_proxy.add(Fault("cut", method="GET", path=r"/obj", after=1000, times=None))
    async with S3DataStore(make_credentials(s3_proxy.url), bucket=bucket,
                           max_attempts=3) as store:
        with pytest.raises(StorageError) as info:
            await store.get_bytes(store.url("obj"))
    assert type(info.value) is StorageError and "cut" in str(info.value)
    assert s3_proxy.count("GET", r"/obj") == 3


@pytest.mark.pds
async def test_cross_endpoint_promotion_survives_cut_bodies(redis_url, moto_server, bucket,
                                                            s3_proxy, client, tmp_path,
                                                            second_moto_server):
    """The source store is reached through the proxy, which cuts two GET bodies."""
    upload = store_for(make_credentials(moto_server.url), bucket)
    async with upload, LocalIndex(redis_url, data_store=upload) as index:
        await index.publish_schema(FeatureSample)
        entry = await insert(index, tmp_path, "cut", shards=2, per_shard=1500)
    s3_proxy.add(Fault("cut", method="GET", path=r"\.tar", after=50_000, times=2))
    source = store_for(make_credentials(s3_proxy.url), bucket)
    dest_bucket = make_bucket(second_moto_server.url)
    async with source, LocalIndex(redis_url, data_store=source) as index, \
            store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
    got = await AtmosphereIndex(client).get_dataset(uri)
    for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
        body = read_s3(second_moto_server.url, dst)
        assert body == read_s3(moto_server.url, src)
        assert hashlib.sha256(body).hexdigest() == got.checksums[dst]
    assert sum(1 for _, _, kind in s3_proxy.seen if kind == "cut") == 2


# -- PDS: the schema record's create retried; permanent errors are not --------------------


@pytest.mark.pds
@pytest.mark.parametrize("kind", ["status", "lose", "reset"])
async def test_schema_create_is_retried_after_5xx_lost_answer_or_reset(
        kind, index, proxied, pds_proxy, client, tmp_path):
    entry = await insert(index, tmp_path, f"schema-{kind}", shards=1, per_shard=5)
    pds_proxy.add(Fault(kind, method="POST", path=r"createRecord", status=502))
    uri = await promote_to_atmosphere(entry, index, proxied)
    assert (await AtmosphereIndex(client).get_dataset(uri)).name == entry.name
    assert len(await schema_records(client)) == 1
    creates = pds_proxy.count("POST", "createRecord")
    assert creates == (1 if kind == "lose" else 2)  # a lost answer: found at its key


@pytest.mark.pds
@pytest.mark.parametrize("status", [400, 403, 404])
async def test_schema_create_permanent_errors_are_not_retried(status, index, proxied,
                                                              pds_proxy, client, tmp_path):
    entry = await insert(index, tmp_path, f"perm-{status}", shards=1, per_shard=5)
    pds_proxy.add(Fault("status", method="POST", path=r"createRecord", status=status,
                        times=None))
    with pytest.raises(XrpcError) as info:
        await promote_to_atmosphere(entry, index, proxied)
    assert info.value.status == status
    assert pds_proxy.count("POST", "createRecord") == 1
    assert pds_proxy.count("GET", "getRecord") == 0
    assert await schema_records(client) == []
