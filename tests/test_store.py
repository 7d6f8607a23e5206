"""S3DataStore and insert_dataset against a moto S3 server and a real redis-server."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import anyio
import boto3
import pytest

from atdata_async import (
    ConfigurationError,
    Dataset,
    ShardTransferError,
    SourceChangedError,
    StorageError,
)
from atdata_async.local import LocalIndex, ObjectNotFoundError, S3DataStore
from tests import services
from tests.conftest import TEST_PART, make_bucket, make_credentials
from tests.samples import FeatureSample, write_shards

pytestmark = pytest.mark.anyio


def small_store(credentials, bucket, **kw) -> S3DataStore:
    kw.setdefault("part_size", TEST_PART)
    kw.setdefault("multipart_threshold", 2 * TEST_PART)
    kw.setdefault("min_part_size", TEST_PART)
    return S3DataStore(credentials, bucket=bucket, **kw)


def test_credentials_from_env_file(tmp_path):
    env = tmp_path / "creds.env"
    env.write_text("# comment\nAWS_ENDPOINT=http://127.0.0.1:9\nexport AWS_ACCESS_KEY_ID='id'\n"
                   "AWS_SECRET_ACCESS_KEY=\"top-secret\"\n")
    store = S3DataStore(str(env), bucket="b")
    assert (store.endpoint, store.credentials.access_key_id) == ("http://127.0.0.1:9", "id")
    assert "top-secret" not in repr(store) and "top-secret" not in repr(store.credentials)
    (tmp_path / "bad.env").write_text("AWS_SECRET_ACCESS_KEY=top-secret\n")
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID") as info:
        S3DataStore(str(tmp_path / "bad.env"), bucket="b")
    assert "top-secret" not in str(info.value)
    with pytest.raises(ValueError, match="AWS_ENDPOINT"):
        S3DataStore({"AWS_ENDPOINT": "localhost:9000", "AWS_ACCESS_KEY_ID": "a",
                     "AWS_SECRET_ACCESS_KEY": "b"}, bucket="b")
    with pytest.raises(ConfigurationError):
        S3DataStore(str(tmp_path / "missing.env"), bucket="b")


async def test_insert_dataset_uploads_shards_byte_for_byte(s3_credentials, bucket, raw_s3,
                                                           redis_url, tmp_path):
    # 6 shards; shard size ~ 40 x 600 B = 24 KiB (single put) and two big ones (multipart)
    paths = write_shards(tmp_path, 4, 40)
    paths += write_shards(tmp_path, 2, 1500, stem="big")  # ~ 830 KiB each: 4 parts
    seen = []
    async with small_store(s3_credentials, bucket) as store, LocalIndex(redis_url,
                                                                        data_store=store) as index:
        await index.publish_schema(FeatureSample, version="1.0.0")
        ds = Dataset[FeatureSample]([str(p) for p in paths])
        entry = await index.insert_dataset(ds, name="feats", prefix="features",
                                           progress=seen.append)
        assert await store.list_multipart_uploads() == []
        got = await index.get_entry_by_name("feats")
        # read back through the store, keys preserved
        keys = [k async for k, _ in Dataset[FeatureSample](entry.data_urls, store=store).items()]
    assert got == entry and len(entry.data_urls) == 6
    assert keys == [f"{i:06d}" for i in range(160)] + [f"{i:06d}" for i in range(3000)]
    assert entry.metadata["num_samples"] == 3160
    for path, url in zip(paths, entry.data_urls, strict=True):
        assert url.startswith(f"s3://{bucket}/features/data--") and url.endswith(".tar")
        body = raw_s3.get_object(Bucket=bucket, Key=url.split("/", 3)[3])["Body"].read()
        assert body == path.read_bytes()
        assert entry.checksums[url] == hashlib.sha256(body).hexdigest()
        assert entry.shard_sizes[url] == len(body)
    assert seen[-1].shards_done == 6 and seen[-1].bytes_done == seen[-1].bytes_total
    assert seen[-1].bytes_total == sum(p.stat().st_size for p in paths)


async def test_failed_multipart_upload_is_aborted(s3_credentials, bucket, tmp_path, monkeypatch):
    paths = write_shards(tmp_path, 3, 1500)
    store = small_store(s3_credentials, bucket)
    original = S3DataStore._send_part

    async def flaky(self, key, upload_id, number, *args):
        if key.endswith("000001.tar") and number == 3:
            raise StorageError("injected part failure")
        await original(self, key, upload_id, number, *args)

    monkeypatch.setattr(S3DataStore, "_send_part", flaky)
    with pytest.raises(ShardTransferError) as info:
        await store.upload_files([(p, f"k/{p.name}") for p in paths])
    assert list(info.value.failures) == [str(paths[1])]
    assert "injected part failure" in str(info.value)
    assert await store.list_multipart_uploads() == []
    await store.aclose()


async def test_cancelled_upload_leaves_no_multipart_upload(s3_credentials, bucket, tmp_path,
                                                           monkeypatch):
    paths = write_shards(tmp_path, 2, 1500)
    store = small_store(s3_credentials, bucket)
    original = S3DataStore._send_part
    started = anyio.Event()

    async def slow(self, *args):
        started.set()
        await anyio.sleep(30)
        await original(self, *args)

    monkeypatch.setattr(S3DataStore, "_send_part", slow)
    with anyio.move_on_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.upload_files, [(p, f"c/{p.name}") for p in paths])
            await started.wait()
            assert len(await store.list_multipart_uploads()) >= 1
            tg.cancel_scope.cancel()
    assert await store.list_multipart_uploads() == []
    await store.aclose()


async def test_cancel_while_the_create_answer_is_in_flight_leaves_no_upload(
        s3_credentials, bucket, tmp_path):
    """S3 opened the upload but its answer had not arrived when the caller was cancelled."""
    paths = write_shards(tmp_path, 1, 1500)
    store = small_store(s3_credentials, bucket)
    s3 = await store.client()
    real_create = s3.create_multipart_upload
    created = anyio.Event()

    async def slow_answer(**kwargs):
        response = await real_create(**kwargs)
        created.set()
        await anyio.sleep(0.5)
        return response

    s3.create_multipart_upload = slow_answer
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.upload_files, [(paths[0], "race/x.tar")])
        await created.wait()
        assert len(await store.list_multipart_uploads()) == 1
        tg.cancel_scope.cancel()
    assert await store.list_multipart_uploads() == []
    await store.aclose()


async def test_memory_tokens_bound_parts_in_flight(s3_credentials, bucket, tmp_path, monkeypatch):
    paths = write_shards(tmp_path, 4, 1500)
    store = small_store(s3_credentials, bucket, max_concurrency=3)
    peak = 0
    original = S3DataStore._send_part

    async def watch(self, *args):
        nonlocal peak
        peak = max(peak, self.buffers().borrowed_tokens)
        await original(self, *args)

    monkeypatch.setattr(S3DataStore, "_send_part", watch)
    await store.upload_files([(p, f"m/{p.name}") for p in paths])
    assert 1 <= peak <= 3
    await store.aclose()


async def test_clear_errors_for_bucket_credentials_endpoint(s3_credentials, bucket, moto_server):
    missing = S3DataStore(s3_credentials, bucket="no-such-bucket")
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket"):
        await missing.put_bytes("k", b"x")
    async with S3DataStore(s3_credentials, bucket=bucket) as store:
        with pytest.raises(KeyError):
            await store.get_bytes(f"s3://{bucket}/nope")
    dead = S3DataStore(make_credentials("http://127.0.0.1:1"), bucket=bucket, max_attempts=1)
    with pytest.raises(StorageError, match=r"cannot reach http://127\.0\.0\.1:1") as info:
        await dead.put_bytes("k", b"x")
    assert "testing-secret-key" not in str(info.value)
    for s in (missing, dead):
        await s.aclose()


@pytest.fixture(scope="module")
def strict_s3():
    """A moto server that checks signatures, with one IAM user allowed s3:* and a bucket."""
    service = services.start_moto(in_process=False, auth_after=4)
    try:
        unsigned = {"endpoint_url": service.url, "region_name": "us-east-1",
                    "aws_access_key_id": "x", "aws_secret_access_key": "y"}
        iam = boto3.client("iam", **unsigned)
        iam.create_user(UserName="promoter")
        key = iam.create_access_key(UserName="promoter")["AccessKey"]
        iam.put_user_policy(UserName="promoter", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        boto3.client("s3", **unsigned).create_bucket(Bucket="strict")  # the 4th, last free one
        yield service, {"AWS_ENDPOINT": service.url, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        service.stop()


@pytest.mark.parametrize("wrong", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
async def test_bad_credentials_are_one_clear_error_that_hides_the_secret(strict_s3, tmp_path,
                                                                         wrong):
    _, good = strict_s3
    async with S3DataStore(good, bucket="strict") as store:  # the right key works
        assert await store.put_bytes("ok", b"fine")
    creds = {**good, wrong: "AKIAWRONGWRONGWRONG" if wrong == "AWS_ACCESS_KEY_ID"
             else "a-wrong-secret-that-must-not-leak"}
    paths = write_shards(tmp_path, 1, 20)
    async with S3DataStore(creds, bucket="strict", max_attempts=1) as store:
        with pytest.raises(ShardTransferError) as info:
            await store.upload_files([(paths[0], "denied.tar")])
        with pytest.raises(StorageError) as head:
            await store.size_of("s3://strict/ok")
    for error in (info.value, head.value):
        assert "S3 refused the credentials" in str(error)
        assert creds["AWS_SECRET_ACCESS_KEY"] not in str(error) + repr(error)
    cause = next(iter(info.value.failures.values()))
    assert cause.code == ("InvalidAccessKeyId" if wrong == "AWS_ACCESS_KEY_ID"
                          else "SignatureDoesNotMatch")


async def test_sha256_of_streams_in_parts(s3_credentials, bucket, caplog):
    caplog.set_level(logging.DEBUG)
    store = small_store(s3_credentials, bucket)
    data = bytes(range(256)) * 5000  # 1.28 MB, 5 ranges
    await store.put_bytes("obj", data)
    assert await store.sha256_of(f"s3://{bucket}/obj") == (hashlib.sha256(data).hexdigest(),
                                                           len(data))
    await store.aclose()
    assert "testing-secret-key" not in caplog.text


async def test_single_puts_carry_our_sha256_for_the_server_to_check(s3_credentials, bucket,
                                                                    raw_s3):
    """Real S3 refuses a PutObject whose body does not match x-amz-checksum-sha256 (moto
    stores it without checking), so a single PUT needs no read-back; we check it is sent."""
    data = b"the real bytes"
    async with small_store(s3_credentials, bucket) as store:
        await store.put_bytes("k", data, hashlib.sha256(data).hexdigest())
        assert store.request_count == 1
    head = raw_s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]) == hashlib.sha256(data).digest()


async def test_datasets_stream_s3_shards_in_ranges_of_one_version(s3_credentials, bucket,
                                                                  tmp_path, raw_s3):
    paths = write_shards(tmp_path, 2, 1500)  # ~850 KB each: four 256 KiB ranges
    store = small_store(s3_credentials, bucket)
    for path in paths:
        raw_s3.upload_file(str(path), bucket, f"stream/{path.name}")
    urls = [f"s3://{bucket}/stream/{p.name}" for p in paths]
    local = [s async for s in Dataset[FeatureSample]([str(p) for p in paths])]
    before = store.request_count
    remote = [s async for s in Dataset[FeatureSample](urls, store=store)]
    ranges = sum(-(-p.stat().st_size // TEST_PART) for p in paths)
    assert store.request_count - before == len(paths) + ranges  # a HEAD, then its ranges
    assert len(remote) == 3000 and all(
        a.label == b.label and (a.features == b.features).all()
        for a, b in zip(local, remote, strict=True))
    # stopping early releases the stream: the next read starts cleanly
    keys = []
    async with contextlib.aclosing(Dataset[FeatureSample](urls, store=store).items()) as it:
        async for key, _ in it:
            keys.append(key)
            if len(keys) == 3:
                break
    assert keys == ["000000", "000001", "000002"]
    # a shard overwritten while it is being read is an error, never a mix of two versions
    with pytest.raises(SourceChangedError):
        async for key, _ in Dataset[FeatureSample](urls, store=store).items():
            if key == "000010":
                raw_s3.upload_file(str(paths[1]), bucket, f"stream/{paths[0].name}")
    assert store.buffers().borrowed_tokens == 0
    await store.aclose()


LEAVE_EARLY = """
import sys
import anyio
import atdata_async
from tests.samples import FeatureSample, write_shards
from pathlib import Path

async def main():
    urls = [str(p) for p in write_shards(Path(sys.argv[1]), 2, 500)]
    dataset = atdata_async.Dataset[FeatureSample](urls)
    async for _ in (dataset.items() if sys.argv[2] == "items" else dataset):
        break  # no aclosing: the stream is left open for the event loop to finalize
    print("done")

anyio.run(main)
"""


@pytest.mark.parametrize("loop", ["samples", "items"])
def test_a_dataset_loop_left_early_is_finalized_cleanly(tmp_path, loop):
    out = subprocess.run([sys.executable, "-W", "error", "-c", LEAVE_EARLY, str(tmp_path), loop],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout == "done\n", out.stderr
    assert out.stderr == ""


async def test_a_failed_insert_indexes_nothing_and_its_rerun_completes_it(
        s3_credentials, bucket, tmp_path, redis_url, raw_s3, monkeypatch):
    paths = write_shards(tmp_path, 4, 60)
    original = S3DataStore.upload_file
    landed: list[str] = []
    others = anyio.Event()

    async def third_fails(self, path, key, tracker=None, **kw):
        if str(path).endswith("000002.tar"):
            await others.wait()  # the others have landed by then
            raise StorageError("injected: connection reset")
        done = await original(self, path, key, tracker, **kw)
        landed.append(key)
        if len(landed) == 3:
            others.set()
        return done

    monkeypatch.setattr(S3DataStore, "upload_file", third_fails)
    store = small_store(s3_credentials, bucket)
    ds = Dataset[FeatureSample]([str(p) for p in paths])
    async with store, LocalIndex(redis_url, data_store=store) as index:
        with pytest.raises(ShardTransferError):
            await index.insert_dataset(ds, name="half", prefix="half")
        assert await index.list_entries() == []
        assert raw_s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        listed = raw_s3.list_objects_v2(Bucket=bucket, Prefix="half/").get("KeyCount")
        assert listed == 3  # kept for the rerun (its keys are the insert's own)
        monkeypatch.undo()
        entry = await index.insert_dataset(ds, name="half", prefix="half")
        assert [e.cid for e in await index.list_entries()] == [entry.cid]
    listed = raw_s3.list_objects_v2(Bucket=bucket, Prefix="half/")["Contents"]
    assert {f"s3://{bucket}/{o['Key']}" for o in listed} == set(entry.data_urls)


# -- a big shard across endpoints: parts streamed, not buffered ----------------------------


async def test_a_big_shard_streams_its_parts_across_endpoints(
        s3_credentials, bucket, second_moto_server, monkeypatch, tmp_path):
    """Above the multipart threshold, with a recorded sha256 and ETag: ranged GETs go
    straight into UploadPart (no part buffer filled, nothing hashed but each part's md5,
    checked against its ETag), every range conditional on the recorded version. Inserted
    with the same part layout, the copy's ETag is the recorded one: nothing read back."""
    from tests.faultproxy import Fault, FaultProxy

    data = bytes(range(256)) * 4500  # ~1.1 MiB: 5 parts of 256 KiB
    digest = hashlib.sha256(data).hexdigest()
    dest_bucket = make_bucket(second_moto_server.url)

    def refuse(*args, **kwargs):
        raise AssertionError("a streamed copy must not buffer or sha256-hash a part")

    with FaultProxy(s3_credentials["AWS_ENDPOINT"]) as proxy:
        source = small_store(make_credentials(proxy.url), bucket)
        dest = small_store(make_credentials(second_moto_server.url), dest_bucket)
        async with source, dest:
            (tmp_path / "big.tar").write_bytes(data)  # as insert uploads a big shard
            etag = (await source.upload_file(tmp_path / "big.tar", "in/big.tar")).etag
            assert etag.endswith("-5")
            url = source.url("in/big.tar")
            monkeypatch.setattr(S3DataStore, "get_bytes", refuse)
            monkeypatch.setattr("atdata_async._backends.s3_store._hash_into", refuse)
            # two source bodies cut mid-range: those parts are sent again
            proxy.add(Fault("cut", method="GET", path=r"big\.tar", after=100_000, times=2))
            done = await dest.copy_from(source, url, "out/big.tar", len(data),
                                        known_sha256=digest, source_etag=etag)
            assert (done.size, done.sha256, done.etag) == (len(data), digest, etag)
            assert sum(1 for *_, kind in proxy.seen if kind == "cut") == 2
            assert proxy.count("GET", r"big\.tar") == 5 + 2
            assert dest.buffers().borrowed_tokens == 0
            monkeypatch.undo()
            assert await dest.get_bytes(done.url) == data
            assert await dest.list_multipart_uploads() == []
            # the source overwritten: refused, and the upload aborted
            await source.put_bytes("in/big.tar", data[::-1])
            with pytest.raises(SourceChangedError):
                await dest.copy_from(source, url, "out/again.tar", len(data),
                                     known_sha256=digest, source_etag=etag)
            assert await dest.list_multipart_uploads() == []


@pytest.mark.parametrize("inserted", ["one PUT", "same parts"])
async def test_a_range_damaged_on_its_way_from_the_source_is_refused(
        s3_credentials, bucket, second_moto_server, tmp_path, inserted):
    """One byte of a ranged GET changed between the source and us: the part's md5 is
    that of the damaged bytes, so S3's part ETag agrees; the copy's ETag is not the
    recorded one (another layout, or other bytes in a part), the object read back does
    not hash to the recorded sha256: refused, deleted, no upload left open. (It was
    accepted and named by the recorded sha256.)"""
    from tests.faultproxy import Fault, FaultProxy

    data = b"A" + bytes(range(256)) * 4500
    digest = hashlib.sha256(data).hexdigest()
    dest_bucket = make_bucket(second_moto_server.url)
    with FaultProxy(s3_credentials["AWS_ENDPOINT"]) as proxy:
        source = small_store(make_credentials(proxy.url), bucket)
        dest = small_store(make_credentials(second_moto_server.url), dest_bucket)
        async with source, dest:
            if inserted == "one PUT":
                etag = await source.put_bytes("in/big.tar", data, digest)
            else:
                (tmp_path / "big.tar").write_bytes(data)
                etag = (await source.upload_file(tmp_path / "big.tar", "in/big.tar")).etag
            damage = proxy.add(Fault("body", method="GET", path=r"big\.tar",
                                     replace=(rb"^A", b"B"), times=None))
            with pytest.raises(StorageError, match="other bytes than the source"):
                await dest.copy_from(source, source.url("in/big.tar"), "out/big.tar",
                                     len(data), known_sha256=digest, source_etag=etag)
            assert damage.fired >= 1
            with pytest.raises(ObjectNotFoundError):
                await dest.head(dest.url("out/big.tar"))
            assert await dest.list_multipart_uploads() == []


async def test_a_big_shard_is_cut_as_its_recorded_etag_says_it_was_inserted(
        s3_credentials, bucket, second_moto_server, tmp_path):
    """A source inserted in 1 MiB parts (another store's part size than the copy's 256 KiB):
    the copy cuts its parts as the recorded ETag's "-6" implies, so S3 gives the copy the
    recorded ETag and nothing is read back (each range GET once, no whole GET)."""
    from tests.faultproxy import FaultProxy

    data = bytes(range(256)) * (5 * 4096 + 400)  # 5 MiB + 100 KiB: 6 parts of 1 MiB
    digest = hashlib.sha256(data).hexdigest()
    with FaultProxy(s3_credentials["AWS_ENDPOINT"]) as proxy:
        inserter = small_store(make_credentials(proxy.url), bucket, part_size=1 << 20,
                               multipart_threshold=2 << 20)
        source = small_store(make_credentials(proxy.url), bucket)
        dest = small_store(make_credentials(second_moto_server.url),
                           make_bucket(second_moto_server.url))
        async with inserter, source, dest:
            (tmp_path / "big.tar").write_bytes(data)
            etag = (await inserter.upload_file(tmp_path / "big.tar", "in/big.tar")).etag
            assert etag.endswith("-6")
            gets_before = proxy.count("GET", r"big\.tar")
            done = await dest.copy_from(source, source.url("in/big.tar"), "out/big.tar",
                                        len(data), known_sha256=digest, source_etag=etag)
            assert done.verified and (done.sha256, done.etag) == (digest, etag)
            assert proxy.count("GET", r"big\.tar") - gets_before == 6
    copied = boto3.client("s3", endpoint_url=second_moto_server.url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")
    assert copied.get_object(Bucket=dest.bucket, Key="out/big.tar")["Body"].read() == data


async def test_a_big_shard_inserted_in_other_parts_is_read_back_once(
        s3_credentials, bucket, second_moto_server):
    """A source ETag that is no md5 of the copy's parts' md5s (one PUT at insert, another
    part size): the copy is read back and hashed, and stands."""
    data = bytes(range(256)) * 4500
    digest = hashlib.sha256(data).hexdigest()
    async with small_store(s3_credentials, bucket) as source, \
            small_store(make_credentials(second_moto_server.url),
                        make_bucket(second_moto_server.url)) as dest:
        etag = await source.put_bytes("in/big.tar", data, digest)
        done = await dest.copy_from(source, source.url("in/big.tar"), "out/big.tar",
                                    len(data), known_sha256=digest, source_etag=etag)
        assert done.verified and done.sha256 == digest and done.etag.endswith("-5")
        assert await dest.get_bytes(done.url) == data


async def test_a_streamed_part_that_lands_as_other_bytes_is_refused(
        s3_credentials, bucket, second_moto_server, monkeypatch):
    """The part's ETag is the md5 of what S3 stored: a mismatch fails the copy."""
    from atdata_async._backends import s3_store

    data = bytes(range(256)) * 3000
    dest_bucket = make_bucket(second_moto_server.url)
    original = s3_store._StreamedBody._chunks

    async def flip_one_byte(self):
        first = True
        async for chunk in original(self):
            if first and self.start == TEST_PART:
                self.md5.update(b"?")  # what we think we sent differs from what landed
            first = False
            yield chunk

    monkeypatch.setattr(s3_store._StreamedBody, "_chunks", flip_one_byte)
    async with small_store(s3_credentials, bucket) as source, \
            small_store(make_credentials(second_moto_server.url), dest_bucket) as dest:
        etag = await source.put_bytes("in/x.tar", data)
        with pytest.raises(StorageError, match=r"UploadPart 2 .*other bytes than were sent"):
            await dest.copy_from(source, source.url("in/x.tar"), "out/x.tar", len(data),
                                 known_sha256=hashlib.sha256(data).hexdigest(),
                                 source_etag=etag)
        assert await dest.list_multipart_uploads() == []


async def test_endpoints_are_resolved_once_per_bucket_not_per_key(s3_credentials, bucket,
                                                                  monkeypatch):
    """The endpoint cache leaves out only parameters S3's ruleset never reads: if botocore
    ever starts reading them, this fails and the cache must go."""
    import gzip

    import botocore
    from botocore.endpoint_provider import EndpointProvider

    from atdata_async._backends.s3_store import _UNREAD_ENDPOINT_PARAMS

    rules = Path(botocore.__file__).parent / "data/s3/2006-03-01/endpoint-rule-set-1.json.gz"
    ruleset = json.loads(gzip.decompress(rules.read_bytes()))
    text = json.dumps(ruleset["rules"])
    for name in _UNREAD_ENDPOINT_PARAMS:
        assert name in ruleset["parameters"] and json.dumps({"ref": name}) not in text
    resolve, calls = EndpointProvider.resolve_endpoint, []

    def counting(self, **params):
        calls.append(params)
        return resolve(self, **params)

    monkeypatch.setattr(EndpointProvider, "resolve_endpoint", counting)
    other = make_bucket(s3_credentials["AWS_ENDPOINT"])
    async with small_store(s3_credentials, bucket, max_concurrency=3) as store, \
            small_store(s3_credentials, other, max_concurrency=3) as second:
        for key in ("a", "b/c", "d"):
            await store.put_bytes(key, b"x")
            await second.put_bytes(key, b"y")
        assert await store.get_bytes(store.url("b/c")) == b"x"
        assert await second.get_bytes(second.url("b/c")) == b"y"  # its own bucket's URL
        s3 = await store.client()
        agent = s3._user_agent_creator.to_string()
        assert agent == s3._user_agent_creator.to_string() and "Botocore" in agent
    # resolved per bucket (and what else the rules read), not per key: 8 requests
    assert {c["Bucket"] for c in calls} == {bucket, other} and len(calls) <= 4


async def test_the_pace_backs_off_under_slowdown_and_climbs_back(moto_server, bucket):
    """A server that answers 503 SlowDown beyond 3 requests in flight: the store's
    concurrency halves until the throttling stops, every upload still lands (botocore
    retried them), and once the server stops throttling it climbs back to the ceiling."""
    from atdata_async._model.pace import Pace
    from tests.faultproxy import SLOW_DOWN, Fault, FaultProxy

    with FaultProxy(moto_server.url) as proxy:
        throttle = proxy.add(Fault("status", method="PUT", status=503, payload=SLOW_DOWN,
                                   times=None, inflight=3))
        async with S3DataStore(make_credentials(proxy.url), bucket=bucket, max_concurrency=8,
                               max_attempts=10) as store:
            # short windows: the test is about the direction of the changes, not their speed
            store.pace = Pace(8, window=0.05, cooldown=0.1)
            tokens = store.buffers()
            seen = []

            async def put(i: int) -> None:
                async with tokens:
                    seen.append(tokens.total_tokens)
                    await store.put_bytes(f"pace/{i}", b"x" * 65536)

            async with anyio.create_task_group() as tg:
                for i in range(48):
                    tg.start_soon(put, i)
            assert throttle.fired > 0 and store.pace.throttles > 0
            assert min(seen) <= 4  # backed off (halved at most once per cooldown)
            throttled = throttle.fired
            proxy.clear()  # the server recovers
            done = 48
            with anyio.fail_after(120):  # a guard, not a timing: it must climb back at all
                while tokens.total_tokens < 8:
                    async with anyio.create_task_group() as tg:
                        for i in range(done, done + 16):
                            tg.start_soon(put, i)
                    done += 16
            assert store.pace.limit == 8 and tokens.total_tokens == 8
            listed = await store.list_objects("pace/")
    assert len(listed) == done and throttle.fired == throttled


async def test_server_side_copies_run_above_max_concurrency_and_back_off_under_slowdown(
        moto_server, bucket):
    """CopyObject holds no buffer: with max_concurrency=2 the store runs up to
    max_server_copies=12 at once. A server answering 503 SlowDown beyond 4 requests in
    flight halves that limit (every copy still lands); once it stops, the limit climbs
    back to 12, never to max_concurrency only."""
    from atdata_async._model.pace import Pace
    from tests.faultproxy import SLOW_DOWN, Fault, FaultProxy

    with FaultProxy(moto_server.url) as proxy:
        creds = make_credentials(proxy.url)
        async with S3DataStore(creds, bucket=bucket, max_concurrency=2, max_server_copies=12,
                               max_attempts=10) as store:
            store.copy_pace = Pace(12, window=0.05, cooldown=0.1)  # short windows
            await store.put_bytes("src/x", b"x" * 4096)
            slots = store.copy_slots()
            assert slots.total_tokens == 12 and store.buffers().total_tokens == 2
            # the first copies: held at the proxy until more than max_concurrency overlap
            held = proxy.add(Fault("delay", method="PUT", path=r"/copies/", seconds=0.3,
                                   times=None))

            async def copy(i: int) -> None:
                await store.copy_from(store, store.url("src/x"), f"copies/{i}", 4096)

            async with anyio.create_task_group() as tg:
                for i in range(12):
                    tg.start_soon(copy, i)
            assert 2 < held.peak <= 12
            proxy.clear()
            throttle = proxy.add(Fault("status", method="PUT", status=503, payload=SLOW_DOWN,
                                       times=None, inflight=4))
            seen = []

            async def watched(i: int) -> None:
                await copy(i)
                seen.append(slots.total_tokens)  # the limit as each copy lands

            async with anyio.create_task_group() as tg:
                for i in range(12, 60):
                    tg.start_soon(watched, i)
            assert throttle.fired > 0 and store.copy_pace.throttles > 0
            assert min(seen) <= 6  # backed off (halved at most once per cooldown)
            proxy.clear()  # the server recovers
            done = 60
            with anyio.fail_after(120):  # a guard, not a timing: it must climb back at all
                while slots.total_tokens < 12:
                    async with anyio.create_task_group() as tg:
                        for i in range(done, done + 24):
                            tg.start_soon(copy, i)
                    done += 24
            assert store.copy_pace.limit == 12 and slots.total_tokens == 12
            listed = await store.list_objects("copies/")
    assert len(listed) == done


def test_server_copies_stay_within_a_quarter_of_the_open_files_limit(monkeypatch):
    """Each server-side copy in flight holds a connection: a low soft limit on open files
    (macOS's default is 256) bounds the default 256 copies, never below 8."""
    import resource

    from atdata_async._backends import s3_store

    assert s3_store.copies_within_open_files(256) == 64
    assert s3_store.copies_within_open_files(1024) == 256
    assert s3_store.copies_within_open_files(12) == 8
    creds = {"AWS_ENDPOINT": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "k",
             "AWS_SECRET_ACCESS_KEY": "s"}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    store = S3DataStore(creds, bucket="b")
    assert store.max_server_copies == 64 and store.copy_slots().total_tokens == 64
    assert S3DataStore(creds, bucket="b", max_server_copies=12).max_server_copies == 12
    monkeypatch.setattr(resource, "getrlimit", lambda _: (100_000, 100_000))
    assert S3DataStore(creds, bucket="b").max_server_copies == s3_store.SERVER_COPIES
