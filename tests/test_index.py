"""LocalIndex against fakeredis (fast) and a real redis-server, in atdata's key layout."""

from __future__ import annotations

import json

import anyio
import fakeredis
import msgspec
import pytest
import redis.asyncio as aioredis

from atdata_async import Dataset, EntryNotFoundError, LocalIndexError, SchemaNotFoundError
from atdata_async._model.cid import entry_cid
from atdata_async.local import LocalIndex
from tests.samples import FeatureSample, write_shards

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["fakeredis", "redis-server"])
async def index(request):
    if request.param == "fakeredis":
        client = fakeredis.FakeAsyncRedis()
    else:
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield LocalIndex(client)
    await client.aclose()


async def test_publish_and_get_schema(index):
    ref = await index.publish_schema(FeatureSample, version="1.2.0", description="feat")
    assert ref == "atdata://local/schema/FeatureSample@1.2.0"
    stored = json.loads(await index.redis.get("LocalSchema:FeatureSample@1.2.0"))
    assert stored["name"] == "FeatureSample" and stored["description"] == "feat"
    assert await index.get_schema(ref) == stored
    assert await index.get_schema("local://schemas/tests.samples.FeatureSample@1.2.0") == stored
    with pytest.raises(KeyError, match=r"FeatureSample@9\.9\.9"):
        await index.get_schema("atdata://local/schema/FeatureSample@9.9.9")
    with pytest.raises(SchemaNotFoundError):
        await index.get_schema("atdata://local/schema/Nope@1.0.0")
    with pytest.raises(ValueError):
        await index.get_schema("nonsense")
    assert [s["version"] for s in await index.list_schemas()] == ["1.2.0"]


async def test_add_entry_layout_cid_and_lookup(index, tmp_path):
    write_shards(tmp_path, 3, 5)
    ds = Dataset[FeatureSample](str(tmp_path / "shard-{000000..000002}.tar"))
    await index.publish_schema(FeatureSample, version="1.0.0")
    await index.publish_schema(FeatureSample, version="1.10.0")
    entry = await index.add_entry(ds, name="feats", metadata={"split": "train"})
    assert entry.schema_ref.endswith("FeatureSample@1.10.0")  # highest semver, not lexical
    assert entry.cid == entry_cid(entry.schema_ref, entry.data_urls)
    raw = await index.redis.hgetall(f"LocalDatasetEntry:{entry.cid}")
    assert raw[b"name"] == b"feats" and raw[b"cid"] == entry.cid.encode()
    assert msgspec.msgpack.decode(raw[b"data_urls"]) == entry.data_urls
    assert msgspec.msgpack.decode(raw[b"metadata"]) == {"split": "train"}
    assert await index.get_entry_by_name("feats") == entry
    assert await index.get_entry(entry.cid) == entry
    assert [e.name for e in await index.list_entries()] == ["feats"]
    with pytest.raises(KeyError, match="'missing'"):
        await index.get_entry_by_name("missing")
    with pytest.raises(EntryNotFoundError):
        await index.get_entry("bafyreinope")


async def test_entries_written_by_atdata_are_found_by_scan(index):
    """atdata writes no name index and no metadata field when metadata is None."""
    urls = ["s3://legacy/data--x--000000.tar"]
    ref = "atdata://local/schema/FeatureSample@1.0.0"
    cid = entry_cid(ref, urls)
    await index.redis.hset(f"LocalDatasetEntry:{cid}", mapping={
        "name": "legacy", "schema_ref": ref, "cid": cid,
        "data_urls": msgspec.msgpack.encode(urls), "legacy_uuid": "u-1"})
    entry = await index.get_entry_by_name("legacy")
    assert (entry.data_urls, entry.metadata, entry.cid) == (urls, None, cid)
    # the scan backfilled our name index: the next lookup is one HGET
    assert await index.redis.hget("atdata_async:entry_names", "legacy") == cid.encode()


async def test_stale_name_index_falls_back_to_scan(index, tmp_path):
    write_shards(tmp_path, 1, 2)
    ds = Dataset[FeatureSample](str(tmp_path / "shard-000000.tar"))
    entry = await index.add_entry(ds, name="a")
    await index.redis.hset("atdata_async:entry_names", "a", "bafyreigone")
    assert await index.get_entry_by_name("a") == entry


async def test_unreachable_redis_is_a_clear_error():
    index = LocalIndex("redis://127.0.0.1:1/0")
    with pytest.raises(LocalIndexError) as info:
        await index.get_schema("atdata://local/schema/A@1.0.0")
    assert "Redis at redis://127.0.0.1:1/0" in str(info.value)
    await index.aclose()


async def test_a_redis_that_stops_answering_is_a_clear_error_not_a_hang(monkeypatch):
    """A server that answers, then hangs with the connection open (a stuck Redis, a
    half-open connection after a failover): each attempt times out, and after the
    retries the command fails with our error instead of waiting for good."""
    import asyncio

    from atdata_async._backends import redis_index

    monkeypatch.setattr(redis_index, "REDIS_SOCKET_TIMEOUT", 0.2)
    monkeypatch.setattr(redis_index, "REDIS_RETRIES", 1)
    hung = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):  # "+OK" to each command, until hung
            if not hung.is_set():
                starts = data.count(b"\r\n*") + data.startswith(b"*")
                writer.write(b"+OK\r\n" * starts)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    index = LocalIndex(url)
    try:
        assert await index.redis.set("probe", "1") is True  # connected, answering
        hung.set()
        with anyio.fail_after(10):  # without a socket timeout it waits here for good
            with pytest.raises(LocalIndexError) as info:
                await index.get_schema("atdata://local/schema/A@1.0.0")
    finally:
        await index.aclose()
        server.close()
    assert f"Redis at {url}" in str(info.value)


def test_repr_hides_the_redis_password():
    assert "hunter2" not in repr(LocalIndex("redis://:hunter2@localhost:6379/0"))
    assert repr(LocalIndex()).startswith("LocalIndex(redis://localhost:6379/0")
