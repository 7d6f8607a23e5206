"""Promotion against real redis-server + moto S3 + the reference PDS."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from atdata_async import (
    AuthError,
    Dataset,
    ShardTransferError,
    SourceChangedError,
    StorageError,
    XrpcError,
)
from atdata_async._model.lexicon import schema_record_from_local, to_json
from atdata_async.atmosphere import (
    DATASET_COLLECTION,
    SCHEMA_COLLECTION,
    AtmosphereClient,
    AtmosphereIndex,
)
from atdata_async.local import LocalDatasetEntry, LocalIndex, S3DataStore
from atdata_async.promote import promote_to_atmosphere
from tests import conftest
from tests.conftest import make_bucket, make_credentials, store_for
from tests.samples import FeatureSample, write_shards
from tests.test_facade import seed_with_test_endpoints

pytestmark = [pytest.mark.anyio, pytest.mark.pds]


def __getattr__(name: str):
    """The ``client`` and ``index`` fixtures moved to conftest; modules that still import
    them from here (test_dask, test_resume, test_records) get conftest's, the one definition."""
    if name in ("client", "index"):
        return getattr(conftest, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def insert(index: LocalIndex, tmp_path, name: str, shards: int = 3, per_shard: int = 20,
                 **kw) -> LocalDatasetEntry:
    directory = tmp_path / name
    directory.mkdir()
    paths = write_shards(directory, shards, per_shard, **kw)
    return await index.insert_dataset(Dataset[FeatureSample]([str(p) for p in paths]), name=name,
                                      metadata={"split": "train", "origin": "unit-test"})


async def schema_records(client) -> list[dict]:
    return [r async for r in client.list_records(SCHEMA_COLLECTION)]


def read_s3(endpoint: str, url: str) -> bytes:
    import boto3

    bucket, key = url.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


async def test_keep_urls_record_has_real_checksums_and_metadata(index, client, tmp_path,
                                                                moto_server):
    entry = await insert(index, tmp_path, "keep")
    uri = await promote_to_atmosphere(entry, index, client, description="Training vectors",
                                      tags=["features", "embeddings"], license="MIT")
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert (got.name, got.description, got.tags, got.license) == (
        "keep", "Training vectors", ["features", "embeddings"], "MIT")
    assert got.data_urls == entry.data_urls
    assert got.storage.endpoint == moto_server.url and got.storage.bucket == index.data_store.bucket
    for url in entry.data_urls:
        assert got.checksums[url] == hashlib.sha256(read_s3(moto_server.url, url)).hexdigest()
    assert got.metadata == {"split": "train", "origin": "unit-test"}  # as inserted
    assert got.size == {"samples": 60, "shards": 3,
                        "bytes": sum(entry.shard_sizes.values())}
    schema = await AtmosphereIndex(client).get_schema(got.schema_ref)
    assert schema["name"] == "FeatureSample" and schema["version"] == "1.0.0"
    assert schema["schema"]["properties"]["features"]["$ref"].endswith("#/$defs/ndarray")


async def test_missing_checksums_are_computed_by_streaming(index, client, tmp_path, moto_server):
    entry = await insert(index, tmp_path, "nosums", shards=2)
    bare = LocalDatasetEntry(entry.name, entry.schema_ref, entry.data_urls, {"split": "x"})
    got = await AtmosphereIndex(client).get_dataset(
        await promote_to_atmosphere(bare, index, client))
    assert got.checksums == entry.checksums and got.size["bytes"] == sum(
        entry.shard_sizes.values())


async def test_schema_dedup_two_entries_and_ten_concurrent(index, client, tmp_path):
    first = await insert(index, tmp_path, "one")
    second = await insert(index, tmp_path, "two")
    u1 = await promote_to_atmosphere(first, index, client)
    u2 = await promote_to_atmosphere(second, index, client)
    assert len(await schema_records(client)) == 1
    entries = [await insert(index, tmp_path, f"c{i}", shards=1, per_shard=3) for i in range(10)]
    # a fresh client: no cached listing, ten promotions racing for one schema
    async with AtmosphereClient(client.base_url) as other:
        await other.login(session=client.export_session())
        uris = []
        async with anyio.create_task_group() as tg:
            for e in entries:
                async def go(e=e):
                    uris.append(await promote_to_atmosphere(e, index, other))
                tg.start_soon(go)
    assert len(await schema_records(client)) == 1
    assert len({u1, u2, *uris}) == 12
    refs = {(await AtmosphereIndex(client).get_dataset(u)).schema_ref for u in uris}
    assert len(refs) == 1


async def test_schema_record_written_by_atdata_is_reused(index, client, tmp_path):
    atdata_schema = {
        "$type": SCHEMA_COLLECTION, "name": "FeatureSample", "version": "1.0.0",
        "schemaType": "jsonSchema", "createdAt": "2025-06-01T00:00:00Z",
        "schema": {"$type": f"{SCHEMA_COLLECTION}#jsonSchemaFormat",
                   "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "properties": {}, "required": []}}
    existing = await client.create_record(SCHEMA_COLLECTION, atdata_schema)  # a TID key
    entry = await insert(index, tmp_path, "reuse")
    got = await AtmosphereIndex(client).get_dataset(
        await promote_to_atmosphere(entry, index, client))
    assert got.schema_ref == existing["uri"]
    assert len(await schema_records(client)) == 1


async def test_copy_within_one_server_multi_shard_with_multipart(index, client, tmp_path,
                                                                 moto_server, s3_credentials):
    # 22 shards: 20 small, 2 large enough (~2.3 MB) for UploadPartCopy ranges
    entry = await insert(index, tmp_path, "many", shards=20, per_shard=5)
    big = await insert(index, tmp_path, "big", shards=2, per_shard=1500, stem="big")
    merged = await index.add_entry(
        Dataset[FeatureSample](entry.data_urls + big.data_urls), name="merged",
        metadata={"checksums": {**entry.checksums, **big.checksums},
                  "shard_sizes": {**entry.shard_sizes, **big.shard_sizes}})
    dest_bucket = make_bucket(moto_server.url)
    seen = []
    async with store_for(s3_credentials, dest_bucket) as dest:
        uri = await promote_to_atmosphere(merged, index, client, data_store=dest,
                                          name="merged-public", progress=seen.append)
        assert await dest.list_multipart_uploads() == []
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert len(got.data_urls) == 22 and got.storage.bucket == dest_bucket
    for i, (src, dst) in enumerate(zip(merged.data_urls, got.data_urls, strict=True)):
        assert dst == f"s3://{dest_bucket}/promoted/merged-public/{merged.cid[-8:]}-{i:06d}.tar"
        body = read_s3(moto_server.url, dst)
        assert body == read_s3(moto_server.url, src)
        assert got.checksums[dst] == hashlib.sha256(body).hexdigest()
    assert seen[-1].shards_done == 22 and seen[-1].bytes_done == seen[-1].bytes_total > 0


def test_only_small_streamed_shards_take_the_wide_streams_limit():
    """Small streamed copies wait on latency (more in flight pays); big ones on bytes (more
    in flight only adds buffers): the big ones stay under max_concurrency. Server-side,
    unrecorded and unsized shards never take the streams limit."""
    from atdata_async._pipeline.promote import WIDE_STREAMS_BELOW, ShardPlan, streams_through

    def plan(size, **kw):
        fields = {"sha256": "ab" * 32, "etag": "e", **kw}
        return ShardPlan("s3://src/k.tar", "s3", "dst/k.tar", size, **fields)

    assert streams_through(plan(1024 * 1024))
    assert streams_through(plan(WIDE_STREAMS_BELOW - 1))
    assert not streams_through(plan(WIDE_STREAMS_BELOW))
    assert not streams_through(plan(32 * 1024 * 1024))
    assert not streams_through(plan(None))
    assert not streams_through(plan(1024, server_side=True))
    assert not streams_through(plan(1024, sha256=None))
    assert not streams_through(plan(1024, etag=None))


def test_evolve_is_dataclasses_replace():
    """The pipeline's fast copy of a ShardPlan with some fields changed: equal to
    dataclasses.replace's, the original untouched, an unknown field refused."""
    import dataclasses

    from atdata_async._pipeline.promote import ShardPlan, evolve

    shard = ShardPlan("s3://src/k.tar", "s3", "dst/k.tar", 10, "ab" * 32, "e")
    changed = evolve(shard, size=11, server_side=True)
    assert changed == dataclasses.replace(shard, size=11, server_side=True)
    assert shard.size == 10 and not shard.server_side
    assert hash(changed) == hash(dataclasses.replace(shard, size=11, server_side=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.size = 12  # type: ignore[misc]
    with pytest.raises(TypeError):
        evolve(shard, sizes=1)


async def test_server_side_and_streamed_copies_run_above_max_concurrency_buffered_within(
        index, client, tmp_path, moto_server, redis_url):
    """Same endpoint and account: the shards are copied by the server (no GET of a source
    body), more than max_concurrency at once, up to max_server_copies. Another account on
    the same server: streamed (GET passed into the PUT), more than max_concurrency at once,
    up to max_streamed_copies. Local files (buffered): never more than max_concurrency.
    The proxy holds each PUT to the destination a moment so that copies overlap; what is
    asserted is how many overlapped, not how long anything took."""
    from tests.faultproxy import Fault, FaultProxy

    entry = await insert(index, tmp_path, "wide", shards=12, per_shard=3)
    (tmp_path / "files").mkdir()
    paths = write_shards(tmp_path / "files", 12, 3)
    src_bucket = index.data_store.bucket
    limits = {"max_concurrency": 2, "max_server_copies": 6, "max_streamed_copies": 4}
    async with LocalIndex(redis_url) as plain:
        await plain.publish_schema(FeatureSample, version="1.0.0")
        files = await plain.add_entry(Dataset[FeatureSample]([str(p) for p in paths]),
                                      name="wide-files")
        with FaultProxy(moto_server.url) as proxy:
            same = make_credentials(proxy.url)
            other = {**same, "AWS_ACCESS_KEY_ID": "another-account-key"}
            peaks = {}
            for label, dest_creds, what, idx in (("same", same, entry, index),
                                                 ("other", other, entry, index),
                                                 ("files", other, files, plain)):
                proxy.clear()
                dest_bucket = make_bucket(moto_server.url)
                held = proxy.add(Fault("delay", method="PUT", path=rf"^/{dest_bucket}/",
                                       seconds=1.0, times=None))
                gets = proxy.count("GET", rf"^/{src_bucket}/")
                async with store_for(same, src_bucket, max_concurrency=2) as source, \
                        store_for(dest_creds, dest_bucket, **limits) as dest:
                    uri = await promote_to_atmosphere(what, idx, client, data_store=dest,
                                                      source_store=source, **limits,
                                                      name=f"wide-{label}")
                got = await AtmosphereIndex(client).get_dataset(uri)
                for src, dst in zip(what.data_urls, got.data_urls, strict=True):
                    want = (read_s3(moto_server.url, src) if src.startswith("s3://")
                            else Path(src).read_bytes())
                    assert read_s3(moto_server.url, dst) == want
                assert held.fired == 12
                peaks[label] = (held.peak, proxy.count("GET", rf"^/{src_bucket}/") - gets)
    assert 2 < peaks["same"][0] <= 6 and peaks["same"][1] == 0  # CopyObject: no GET
    assert 2 < peaks["other"][0] <= 4 and peaks["other"][1] >= 12  # streamed GET -> PUT
    assert 0 < peaks["files"][0] <= 2 and peaks["files"][1] == 0  # buffered uploads


async def test_copy_across_endpoints_streams_and_hashes(index, client, tmp_path,
                                                        second_moto_server):
    entry = await insert(index, tmp_path, "cross", shards=2, per_shard=1500)
    other_bucket = make_bucket(second_moto_server.url)
    async with store_for(make_credentials(second_moto_server.url), other_bucket) as dest:
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        assert await dest.list_multipart_uploads() == []
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert got.storage.endpoint == second_moto_server.url
    for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
        body = read_s3(second_moto_server.url, dst)
        assert hashlib.sha256(body).hexdigest() == entry.checksums[src] == got.checksums[dst]


async def test_local_file_entries_are_uploaded_when_copying(redis_url, client, tmp_path,
                                                            s3_credentials, bucket, moto_server):
    paths = write_shards(tmp_path, 2, 10)
    async with LocalIndex(redis_url) as plain, store_for(s3_credentials, bucket) as dest:
        await plain.publish_schema(FeatureSample, version="1.0.0")
        entry = await plain.add_entry(Dataset[FeatureSample]([str(p) for p in paths]),
                                      name="files")
        with pytest.raises(ValueError, match="data_store="):
            await promote_to_atmosphere(entry, plain, client)
        got = await AtmosphereIndex(client).get_dataset(
            await promote_to_atmosphere(entry, plain, client, data_store=dest))
    for path, dst in zip(paths, got.data_urls, strict=True):
        assert read_s3(moto_server.url, dst) == path.read_bytes()


async def count_datasets(client) -> int:
    return len([r async for r in client.list_records(DATASET_COLLECTION)])


async def test_failed_shard_copy_writes_no_record_and_leaves_no_upload(
        index, client, tmp_path, moto_server, s3_credentials, monkeypatch):
    entry = await insert(index, tmp_path, "fails", shards=4, per_shard=1500)
    original = S3DataStore.server_side_copy

    async def flaky(self, src_url, *args):
        if src_url.endswith("000002.tar"):
            await anyio.sleep(0.2)
            raise StorageError("injected: connection reset mid-copy")
        return await original(self, src_url, *args)

    monkeypatch.setattr(S3DataStore, "server_side_copy", flaky)
    async with store_for(s3_credentials, make_bucket(moto_server.url)) as dest:
        with pytest.raises(ShardTransferError) as info:
            await promote_to_atmosphere(entry, index, client, data_store=dest)
        assert await dest.list_multipart_uploads() == []
    assert list(info.value.failures) == [entry.data_urls[2]]
    assert "connection reset" in str(info.value)
    assert await count_datasets(client) == 0


@pytest.mark.parametrize("problem", ["missing bucket", "unreachable endpoint"])
async def test_an_unusable_destination_writes_nothing_to_the_pds(
        index, client, tmp_path, moto_server, s3_credentials, problem):
    entry = await insert(index, tmp_path, "nowhere", shards=3)
    if problem == "missing bucket":
        dest = store_for(s3_credentials, "no-such-bucket-here")
    else:
        dest = store_for(make_credentials("http://127.0.0.1:1"), "any", max_attempts=1)
    async with dest:
        with pytest.raises(ShardTransferError) as info:
            await promote_to_atmosphere(entry, index, client, data_store=dest)
    assert ("does not exist" if problem == "missing bucket" else "cannot reach") in str(
        info.value)
    assert await schema_records(client) == []  # the schema was new: not published either
    assert await count_datasets(client) == 0


async def test_cancellation_mid_copy_leaves_no_upload_and_no_record(
        index, client, tmp_path, moto_server, monkeypatch):
    entry = await insert(index, tmp_path, "cancel", shards=3, per_shard=1500)
    other = make_bucket(moto_server.url)
    started = anyio.Event()
    original = S3DataStore.complete_multipart

    async def stall(self, *args):
        started.set()
        await anyio.sleep(60)
        return await original(self, *args)

    monkeypatch.setattr(S3DataStore, "complete_multipart", stall)
    # different credentials on the same server: the streamed (multipart upload) path
    creds = {**make_credentials(moto_server.url), "AWS_ACCESS_KEY_ID": "another-key"}
    async with store_for(creds, other) as dest:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(promote_to_atmosphere, entry, index, client,
                                                data_store=dest))
                await started.wait()
                assert len(await dest.list_multipart_uploads()) >= 1
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert await dest.list_multipart_uploads() == []
    assert await count_datasets(client) == 0


async def test_bad_input_is_refused_before_any_remote_write(index, client, tmp_path, pds):
    entry = await insert(index, tmp_path, "valid")
    before = client.request_count
    with pytest.raises(ValueError, match="no data URLs"):
        await promote_to_atmosphere(LocalDatasetEntry("e", entry.schema_ref, []), index, client)
    with pytest.raises(KeyError, match=r"Missing@1\.0\.0"):
        await promote_to_atmosphere(
            LocalDatasetEntry("e", "atdata://local/schema/Missing@1.0.0", entry.data_urls),
            index, client)
    for kw, field in [({"name": "n" * 201}, "name"), ({"tags": ["t"] * 31}, "tags"),
                      ({"description": "d" * 5001}, "description"),
                      ({"license": "l" * 201}, "license")]:
        with pytest.raises(ValueError) as info:
            await promote_to_atmosphere(entry, index, client, **kw)
        assert info.value.field == field
    huge = LocalDatasetEntry("f", entry.schema_ref, entry.data_urls, {"blob": "x" * 100_001})
    with pytest.raises(ValueError, match="metadata"):
        await promote_to_atmosphere(huge, index, client)
    with pytest.raises(ValueError, match="data_store="):
        await promote_to_atmosphere(
            LocalDatasetEntry("l", entry.schema_ref, ["/data/x.tar"]), index, client)
    assert client.request_count == before  # nothing was sent
    async with AtmosphereClient(pds.url) as anonymous:
        with pytest.raises(AuthError, match="not logged in"):
            await promote_to_atmosphere(entry, index, anonymous)
    assert await count_datasets(client) == 0 and await schema_records(client) == []


SEED_PROMOTE = """
# 5. Promote to atmosphere
client = AtmosphereClient()
client.login("myhandle.bsky.social", "app-password")
at_uri = promote_to_atmosphere(
    local_entry,
    local_index,
    client,
    description="Feature vectors for classification",
    tags=["features", "embeddings"],
    license="MIT",
)
print(f"Dataset published: {at_uri}")

# 6. Verify on atmosphere
from atdata_async.sync.atmosphere import AtmosphereIndex
atm_index = AtmosphereIndex(client)
entry = atm_index.get_dataset(at_uri)
print(f"Name: {entry.name}")
print(f"Schema: {entry.schema_ref}")
print(f"URLs: {entry.data_urls}")
"""


def test_seed_complete_workflow_through_the_sync_facade(moto_server, redis_url, bucket, pds,
                                                        pds_account, tmp_path):
    imports = ("from atdata_async.sync.atmosphere import AtmosphereClient\n"
               "from atdata_async.sync.promote import promote_to_atmosphere\n")
    script = imports + seed_with_test_endpoints(moto_server.url, redis_url, bucket) + (
        SEED_PROMOTE.replace("AtmosphereClient()", f"AtmosphereClient({pds.url!r})")
        .replace('"myhandle.bsky.social", "app-password"',
                 f"{pds_account['handle']!r}, {pds_account['password']!r}"))
    out = subprocess.run([sys.executable, "-W", "error", "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"Dataset published: at://{pds_account['did']}/{DATASET_COLLECTION}/")
    assert lines[1] == "Name: feature-vectors-v1"
    assert lines[2].startswith(f"Schema: at://{pds_account['did']}/{SCHEMA_COLLECTION}/")
    assert lines[3].startswith(f"URLs: ['s3://{bucket}/features/data--")
    assert pds_account["password"] not in out.stdout + out.stderr


async def test_a_copy_that_lands_short_is_caught_before_the_record(
        index, client, tmp_path, moto_server, s3_credentials, monkeypatch):
    entry = await insert(index, tmp_path, "short", shards=2)
    original = S3DataStore.server_side_copy

    async def lying(self, *args):
        done = await original(self, *args)
        return type(done)(done.url, done.size + 1, None, etag=None)  # claims one byte more

    monkeypatch.setattr(S3DataStore, "server_side_copy", lying)
    async with store_for(s3_credentials, make_bucket(moto_server.url)) as dest:
        with pytest.raises(ShardTransferError, match="expected"):
            await promote_to_atmosphere(entry, index, client, data_store=dest)
    assert await count_datasets(client) == 0


async def test_http_urls_become_a_storage_http_record(index, client):
    urls = [f"https://data.example.org/set/shard-{i}.tar" for i in range(2)]
    entry = await index.add_entry(
        Dataset[FeatureSample](urls), name="web",
        metadata={"checksums": {u: f"{i:064x}" for i, u in enumerate(urls)},
                  "shard_sizes": {u: 100 for u in urls}})
    # Claimed checksums nobody can check (the host does not exist) are never published:
    # verify=False (with compute_checksums=False) publishes the shards without them.
    got = await AtmosphereIndex(client).get_dataset(await promote_to_atmosphere(
        entry, index, client, verify=False, compute_checksums=False))
    assert type(got.storage).__name__ == "StorageHttp" and got.data_urls == urls
    assert got.checksums == {} and got.size["bytes"] == 200


def http_shards(http_server, name: str, **kw) -> tuple[list, list[str]]:
    """Shards under the HTTP server's root, and the URLs it serves them at."""
    directory = http_server.extra["root"] / name
    directory.mkdir()
    paths = write_shards(directory, **{"shards": 3, "per_shard": 40, **kw})
    return paths, [f"{http_server.url}/{name}/{p.name}" for p in paths]


def sha256_hex(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_http_shards_without_checksums_are_hashed_by_streaming_and_read_back(
        index, client, http_server):
    paths, urls = http_shards(http_server, "web-hashed")
    entry = await index.add_entry(Dataset[FeatureSample](urls), name="web-hashed")
    assert entry.checksums == {} and entry.shard_sizes == {}
    seen = []
    got = await AtmosphereIndex(client).get_dataset(
        await promote_to_atmosphere(entry, index, client, progress=seen.append))
    assert got.data_urls == urls
    assert got.checksums == {u: sha256_hex(p) for u, p in zip(urls, paths, strict=True)}
    total = sum(p.stat().st_size for p in paths)
    assert got.size["bytes"] == total
    # sizes unknown at the start: the progress total grows as they are learned
    assert seen[0].bytes_total < total and all(s.bytes_done <= s.bytes_total for s in seen)
    assert (seen[-1].shards_done, seen[-1].bytes_done, seen[-1].bytes_total) == (3, total, total)
    # anyone can read it back from the record alone: no account, no credentials
    async with AtmosphereClient(client.base_url) as stranger:
        assert not stranger.is_authenticated
        public = AtmosphereIndex(stranger)
        seen_by_stranger = await public.get_dataset(got.uri)
        schema = await public.get_schema(seen_by_stranger.schema_ref)
    assert seen_by_stranger.data_urls == urls and seen_by_stranger.checksums == got.checksums
    assert schema["name"] == "FeatureSample"
    local = [s async for s in Dataset[FeatureSample]([str(p) for p in paths])]
    remote = [s async for s in Dataset[FeatureSample](seen_by_stranger.data_urls)]
    assert len(remote) == 120 and all(
        a.label == b.label and (a.features == b.features).all()
        for a, b in zip(local, remote, strict=True))


async def test_http_shards_are_copied_into_s3_byte_for_byte(index, client, http_server,
                                                           moto_server, s3_credentials):
    small, urls = http_shards(http_server, "web-copied", shards=2, per_shard=40)
    big = write_shards(small[0].parent, 1, 1500, stem="big")  # multipart upload
    paths, urls = small + big, [*urls, f"{http_server.url}/web-copied/{big[0].name}"]
    entry = await index.add_entry(Dataset[FeatureSample](urls), name="web-copied")
    async with store_for(s3_credentials, make_bucket(moto_server.url)) as dest:
        got = await AtmosphereIndex(client).get_dataset(
            await promote_to_atmosphere(entry, index, client, data_store=dest))
        assert await dest.list_multipart_uploads() == []
    for path, dst in zip(paths, got.data_urls, strict=True):
        assert read_s3(moto_server.url, dst) == path.read_bytes()
        assert got.checksums[dst] == sha256_hex(path)


async def test_a_missing_http_shard_fails_the_promotion_and_is_named(index, client,
                                                                     http_server):
    paths, urls = http_shards(http_server, "web-missing", shards=2)
    paths[1].unlink()
    entry = await index.add_entry(Dataset[FeatureSample](urls), name="web-missing")
    with pytest.raises(ShardTransferError) as info:
        await promote_to_atmosphere(entry, index, client)
    assert list(info.value.failures) == [urls[1]]
    assert "404" in str(info.value)
    assert await count_datasets(client) == 0


async def test_schema_created_by_a_racing_process_is_reused(index, client, tmp_path):
    from atdata_async._pipeline.promote import SchemaRegistry, schema_rkey

    registry = SchemaRegistry()
    local = await index.get_schema("atdata://local/schema/FeatureSample@1.0.0")
    assert await registry.lookup(client, local) is None  # listed: nothing there yet
    # another process publishes the same schema at the same deterministic key meanwhile
    raced = await client.put_record(SCHEMA_COLLECTION, schema_rkey(local), to_json(
        schema_record_from_local(local, "2026-01-01T00:00:00.000Z")))
    assert await registry.find_or_publish(client, local) == raced["uri"]
    assert len(await schema_records(client)) == 1


async def test_retries_and_reruns_never_duplicate_the_dataset_record(index, client, tmp_path,
                                                                     monkeypatch):
    entry = await insert(index, tmp_path, "once", shards=2)
    original = AtmosphereClient.put_record
    calls = []

    async def lost_response(self, *args, **kwargs):
        result = await original(self, *args, **kwargs)  # the write lands...
        calls.append(result["uri"])
        if len(calls) == 1:  # ...but the first answer never reaches us
            raise XrpcError("com.atproto.repo.putRecord", None, "ReadError", "connection reset")
        return result

    monkeypatch.setattr(AtmosphereClient, "put_record", lost_response)
    with pytest.raises(XrpcError):
        await promote_to_atmosphere(entry, index, client, description="first")
    uri = await promote_to_atmosphere(entry, index, client, description="second")
    assert uri == calls[0] and await count_datasets(client) == 1
    again = await promote_to_atmosphere(entry, index, client, description="third")
    assert again == uri and await count_datasets(client) == 1
    assert (await AtmosphereIndex(client).get_dataset(uri)).description == "third"
    renamed = await promote_to_atmosphere(entry, index, client, name="once-renamed")
    assert renamed != uri and await count_datasets(client) == 2


async def test_secrets_stay_out_of_logs_redis_and_records(index, client, tmp_path, caplog,
                                                          pds_account, s3_credentials,
                                                          moto_server):
    import logging

    caplog.set_level(logging.DEBUG)
    entry = await insert(index, tmp_path, "secretive", shards=2, per_shard=1500)
    session = client.export_session()
    async with store_for({**s3_credentials, "AWS_ACCESS_KEY_ID": "other-key"},
                         make_bucket(moto_server.url)) as dest:
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        secrets = [pds_account["password"], session["accessJwt"], session["refreshJwt"],
                   s3_credentials["AWS_SECRET_ACCESS_KEY"]]
        record = await client.get_record(DATASET_COLLECTION, uri.rsplit("/", 1)[1])
        stored = [repr(await index.redis.dump(k)) async for k in index.redis.scan_iter()]
        seen = "\n".join([caplog.text, repr(record), *stored, repr(dest), repr(index),
                          repr(client), repr(client.session)])
    assert "secretive" in seen  # the haystack is real
    for secret in secrets:
        assert secret not in seen


@pytest.mark.parametrize("per_shard", [20, 1500], ids=["single-part", "multipart"])
@pytest.mark.parametrize("where", ["keep", "same-account copy", "streamed copy"])
async def test_a_shard_changed_since_insert_is_never_published_with_its_old_checksum(
        index, client, tmp_path, moto_server, s3_credentials, raw_s3, where, per_shard):
    entry = await insert(index, tmp_path, "changed", shards=2, per_shard=per_shard)
    changed = entry.data_urls[1]
    bucket, key = changed.removeprefix("s3://").split("/", 1)
    body = bytearray(raw_s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 0xFF  # same size, one byte different: only a checksum can tell
    raw_s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    creds = dict(s3_credentials)
    if where == "streamed copy":
        creds["AWS_ACCESS_KEY_ID"] = "another-key"
    dest = None if where == "keep" else store_for(creds, make_bucket(moto_server.url))
    try:
        with pytest.raises(ShardTransferError) as info:
            await promote_to_atmosphere(entry, index, client, data_store=dest)
        assert list(info.value.failures) == [changed]
        assert isinstance(info.value.failures[changed], SourceChangedError)
        assert "changed since it was inserted" in str(info.value)
        assert await count_datasets(client) == 0
        assert dest is None or await dest.list_multipart_uploads() == []
    finally:
        if dest is not None:
            await dest.aclose()
