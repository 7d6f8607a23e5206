"""Records from others are untrusted input: what a published record can make a reader
touch (real http server, moto S3 and the reference PDS), and what ``show`` prints."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import uuid

import anyio
import boto3
import httpx
import pytest

from atdata_async import (
    ChecksumMismatchError,
    Dataset,
    StorageError,
    UntrustedSourceError,
)
from atdata_async._backends.atmosphere_index import AtmosphereDatasetEntry
from atdata_async._model.lexicon import (
    DATASET_COLLECTION,
    BlobShard,
    Checksum,
    HttpShard,
    S3Shard,
    StorageBlobs,
    StorageExternal,
    StorageHttp,
    StorageS3,
)
from atdata_async._model.trust import printable, record_sources
from atdata_async.atmosphere import AtmosphereClient, AtmosphereIndex
from atdata_async.local import LocalIndex, S3DataStore
from atdata_async.promote import promote_to_atmosphere
from tests import services
from tests.conftest import make_bucket, make_credentials
from tests.lexicon_check import assert_valid
from tests.samples import FeatureSample, write_shards

pytestmark = pytest.mark.anyio
URI = "at://did:plc:abcdefghijklmnopqrstuvwx/science.alt.dataset.entry/3kabc"


def entry(storage, checksums=None, pds_url=None) -> AtmosphereDatasetEntry:
    from atdata_async._backends.atmosphere_index import _shard_urls

    urls, sums = _shard_urls(storage)
    return AtmosphereDatasetEntry(uri=URI, name="x", schema_ref="at://x/y/z", data_urls=urls,
                                  checksums=checksums if checksums is not None else sums,
                                  storage=storage, pds_url=pds_url)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the rules, without I/O --------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "/etc/passwd", "../../secrets.tar", "shard.tar",
    "ftp://example.org/a.tar", "gopher://x/y", "http://example.org/a.tar",
    "data:application/x-tar;base64,AAAA", "https:///no-host"])
def test_a_record_never_names_a_local_file_or_an_odd_scheme(url):
    for storage in (StorageHttp([HttpShard(url)]), StorageExternal([url])):
        with pytest.raises(UntrustedSourceError):
            record_sources(entry(storage))
        with pytest.raises(UntrustedSourceError):
            Dataset[FeatureSample].from_entry(entry(storage))


def test_plain_http_only_when_asked():
    storage = StorageHttp([HttpShard("http://127.0.0.1:9/a.tar", Checksum("sha256", "ab" * 32))])
    with pytest.raises(UntrustedSourceError, match="allow_http"):
        record_sources(entry(storage))
    (src,) = record_sources(entry(storage), allow_http=True)
    assert (src.read_url, src.sha256) == ("http://127.0.0.1:9/a.tar", "ab" * 32)


def test_an_s3_record_is_read_from_its_own_bucket_and_endpoint(moto_server,
                                                               second_moto_server):
    storage = StorageS3("their-bucket", [S3Shard("data/a b.tar")], endpoint=moto_server.url)
    anonymous = record_sources(entry(storage), allow_http=True)
    assert [s.read_url for s in anonymous] == [f"{moto_server.url}/their-bucket/data/a%20b.tar"]
    with pytest.raises(UntrustedSourceError, match="allow_http"):
        record_sources(entry(storage))  # the endpoint is plain http
    mine = S3DataStore(make_credentials(moto_server.url), bucket="my-bucket")
    with pytest.raises(UntrustedSourceError, match=r"'their-bucket'.*'my-bucket'"):
        record_sources(entry(storage), store=mine, allow_http=True)
    elsewhere = S3DataStore(make_credentials(second_moto_server.url), bucket="their-bucket")
    with pytest.raises(UntrustedSourceError, match="pass a store for that bucket"):
        record_sources(entry(storage), store=elsewhere, allow_http=True)
    same = S3DataStore(make_credentials(moto_server.url + "/"), bucket="their-bucket")
    assert [s.read_url for s in record_sources(entry(storage), store=same, allow_http=True)] \
        == ["s3://their-bucket/data/a b.tar"]
    aws = StorageS3("their-bucket", [S3Shard("k.tar")], region="eu-west-1")
    assert record_sources(entry(aws))[0].read_url == \
        "https://their-bucket.s3.eu-west-1.amazonaws.com/k.tar"
    with pytest.raises(UntrustedSourceError, match="AWS S3"):
        record_sources(entry(aws), store=same)  # an AWS record is not read from moto
    creds = StorageS3("b", [S3Shard("k")], endpoint="https://user:pw@s3.example.org")
    with pytest.raises(UntrustedSourceError, match="credentials"):
        record_sources(entry(creds))


def test_blobs_come_from_the_authors_pds():
    blob = {"$type": "blob", "ref": {"$link": "bafkreiabc"}, "mimeType": "application/x-tar",
            "size": 3}
    storage = StorageBlobs([BlobShard(blob, Checksum("sha256", "cd" * 32))])
    with pytest.raises(UntrustedSourceError, match="get_dataset"):
        record_sources(entry(storage))
    (src,) = record_sources(entry(storage, pds_url="https://pds.example.org"))
    assert src.read_url == ("https://pds.example.org/xrpc/com.atproto.sync.getBlob?"
                            "did=did%3Aplc%3Aabcdefghijklmnopqrstuvwx&cid=bafkreiabc")
    assert src.sha256 == "cd" * 32


def test_printable_strips_terminal_controls():
    assert printable("ok\x1b[2J\x1b]0;pwned\x07\rname\u202egpj.exe\x9b") == \
        "ok[2J]0;pwnednamegpj.exe"
    assert printable("two\nlines\ttab") == "two lines tab"
    assert printable("naïve ✓ 数据") == "naïve ✓ 数据"


def test_a_dataset_of_the_users_own_paths_keeps_working(tmp_path):
    paths = write_shards(tmp_path, 2, 5)
    ds = Dataset[FeatureSample]([str(paths[0]), f"file://{paths[1]}"])
    assert len(list(ds.shard_urls)) == 2 and not ds.untrusted
    from atdata_async.sync import Dataset as SyncDataset

    assert len(list(SyncDataset[FeatureSample]([str(p) for p in paths]))) == 10


# -- real servers ------------------------------------------------------------------------


class Redirecting(http.server.BaseHTTPRequestHandler):
    """``/to/HOST:PORT/PATH`` answers 302 to http://HOST:PORT/PATH; ``/same/PATH`` to
    /PATH on this server."""

    def do_GET(self) -> None:
        if self.path.startswith("/to/"):
            target = "http://" + self.path.removeprefix("/to/")
        else:
            target = self.path.removeprefix("/same")
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def redirector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def served(http_server):
    name = f"r{uuid.uuid4().hex[:8]}"
    directory = http_server.extra["root"] / name
    directory.mkdir()
    paths = write_shards(directory, 2, 20)
    urls = [f"{http_server.url}/{name}/{p.name}" for p in paths]
    return paths, urls, name


def http_entry(urls, paths) -> AtmosphereDatasetEntry:
    return entry(StorageHttp([HttpShard(u, Checksum("sha256", sha(p.read_bytes())))
                              for u, p in zip(urls, paths, strict=True)]))


async def test_http_shards_are_verified_while_they_stream(served):
    paths, urls, _ = served
    ds = Dataset[FeatureSample].from_entry(http_entry(urls, paths), allow_http=True)
    assert ds.untrusted and set(ds.checksums) == set(urls)
    assert len([s async for s in ds]) == 40
    # the second shard is replaced by another valid shard after publication
    paths[1].write_bytes(paths[0].read_bytes())
    seen = []
    with pytest.raises(ChecksumMismatchError) as info:
        async for s in ds:
            seen.append(s)
    assert info.value.url == urls[1] and urls[1] in str(info.value)
    assert info.value.expected != info.value.actual == sha(paths[0].read_bytes())
    # a garbled shard fails to decode: the error says it is not the published one
    paths[0].write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ChecksumMismatchError) as garbled:
        await ds.read_shard(urls[0])
    assert garbled.value.url == urls[0]
    with pytest.raises(ChecksumMismatchError):
        [s async for s in ds]
    # the blocking facade verifies too
    from atdata_async.sync import Dataset as SyncDataset

    sync_ds = SyncDataset[FeatureSample].from_entry(http_entry(urls, paths[1:] * 2),
                                                    allow_http=True)
    with pytest.raises(ChecksumMismatchError):
        list(sync_ds)


async def test_a_loop_left_early_is_not_a_mismatch(served):
    paths, urls, _ = served
    ds = Dataset[FeatureSample].from_entry(http_entry(urls, paths), allow_http=True)
    async for _ in ds:
        break


async def test_redirects_stay_on_the_host_unless_allowed(served, redirector, http_server):
    paths, _, name = served
    port = http_server.url.rsplit(":", 1)[1]
    cross = f"{redirector}/to/localhost:{port}/{name}/{paths[0].name}"
    sums = [Checksum("sha256", sha(paths[0].read_bytes()))]
    ds = Dataset[FeatureSample].from_entry(
        entry(StorageHttp([HttpShard(cross, sums[0])])), allow_http=True)
    with pytest.raises(UntrustedSourceError, match="another host, localhost"):
        await ds.read_shard(cross)
    ok = Dataset[FeatureSample].from_entry(entry(StorageHttp([HttpShard(cross, sums[0])])),
                                           allow_http=True, allow_redirects_to=["localhost"])
    assert len([s async for s in ok]) == 20
    # a redirect on the same host and port is followed
    hop = f"{redirector}/same/to/127.0.0.1:{port}/{name}/{paths[0].name}"
    with pytest.raises(UntrustedSourceError, match=r"another host, 127\.0\.0\.1"):
        await Dataset[FeatureSample].from_entry(
            entry(StorageHttp([HttpShard(hop, sums[0])])), allow_http=True).read_shard(hop)
    # https -> http is a downgrade: refused even to an allowed host
    from atdata_async._model.trust import RedirectPolicy

    with pytest.raises(UntrustedSourceError, match="only https"):
        RedirectPolicy(False, frozenset({"b.example"})).check(
            "s", "https://a.example/x", "http://b.example/x")
    # the user's own URLs: redirects are followed as before
    assert len([s async for s in Dataset[FeatureSample](cross)]) == 20


@pytest.fixture
def s3_published(moto_server, bucket, tmp_path):
    """A storageS3 entry over shards in moto (as a record would name them)."""
    paths = write_shards(tmp_path, 2, 15)
    raw = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="y")
    shards = []
    for p in paths:
        raw.put_object(Bucket=bucket, Key=f"pub/{p.name}", Body=p.read_bytes(),
                       ACL="public-read")  # anonymous readers need a public object
        shards.append(S3Shard(f"pub/{p.name}", Checksum("sha256", sha(p.read_bytes()))))
    return entry(StorageS3(bucket, shards, endpoint=moto_server.url)), raw, paths


async def test_s3_records_with_the_matching_store_or_anonymously(s3_published, moto_server,
                                                                 second_moto_server, bucket):
    published, raw, paths = s3_published
    async with S3DataStore(make_credentials(moto_server.url), bucket=bucket) as store:
        assert len([s async for s in Dataset[FeatureSample].from_entry(
            published, store=store, allow_http=True)]) == 30
        before = store.request_count
        anonymous = Dataset[FeatureSample].from_entry(published, allow_http=True)
        assert all(u.startswith(f"{moto_server.url}/{bucket}/") for u in anonymous.shard_urls)
        assert len([s async for s in anonymous]) == 30 and store.request_count == before
        raw.put_object_acl(Bucket=bucket, Key=f"pub/{paths[0].name}", ACL="private")
        with pytest.raises(StorageError, match="HTTP 403"):  # not public: no anonymous read
            await anonymous.read_shard(anonymous.shard_urls[0])
        other = make_bucket(moto_server.url)
        async with S3DataStore(make_credentials(moto_server.url), bucket=other) as mine:
            with pytest.raises(UntrustedSourceError, match=bucket):
                Dataset[FeatureSample].from_entry(published, store=mine, allow_http=True)
        async with S3DataStore(make_credentials(second_moto_server.url), bucket=bucket) as far:
            with pytest.raises(UntrustedSourceError):
                Dataset[FeatureSample].from_entry(published, store=far, allow_http=True)
        raw.put_object(Bucket=bucket, Key=f"pub/{paths[0].name}", Body=paths[1].read_bytes())
        with pytest.raises(ChecksumMismatchError, match=f"s3://{bucket}/pub/{paths[0].name}"):
            [s async for s in Dataset[FeatureSample].from_entry(published, store=store,
                                                                allow_http=True)]


# -- hostile records on the real PDS -----------------------------------------------------


def raw_create(pds_url: str, account: dict, record: dict) -> str:
    """createRecord straight over HTTP: our own client would refuse some of these."""
    answer = httpx.post(f"{pds_url}/xrpc/com.atproto.repo.createRecord",
                        headers={"authorization": f"Bearer {account['accessJwt']}"},
                        json={"repo": account["did"], "collection": DATASET_COLLECTION,
                              "record": record}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["uri"]


def hostile(storage: dict, **fields) -> dict:
    return {"$type": DATASET_COLLECTION, "name": "hostile", "createdAt": "2026-01-01T00:00:00Z",
            "schemaRef": "at://did:plc:abcdefghijklmnopqrstuvwx/science.alt.dataset.schema/1",
            "storage": storage, **fields}


@pytest.mark.pds
@pytest.mark.writes_invalid_records(reason="a file:// shard URL: readers must refuse it")
@pytest.mark.parametrize("storage", [
    {"$type": "science.alt.dataset.storageHttp",
     "shards": [{"url": "file:///etc/passwd", "checksum": {"algorithm": "sha256",
                                                           "digest": "00" * 32}}]},
    {"$type": "science.alt.dataset.storageExternal", "urls": ["/etc/hostname"]},
    {"$type": "science.alt.dataset.storageExternal", "urls": ["../../.ssh/id_rsa"]},
])
async def test_a_hostile_record_makes_no_reader_touch_a_local_file(pds, pds_account, storage):
    uri = raw_create(pds.url, pds_account, hostile(storage))
    async with AtmosphereClient(pds.url) as stranger:
        got = await AtmosphereIndex(stranger).get_dataset(uri)
    with pytest.raises(UntrustedSourceError, match="local file"):
        Dataset[FeatureSample].from_entry(got, allow_http=True)


@pytest.mark.pds
async def test_a_record_naming_another_bucket_is_not_read_with_my_store(
        pds, pds_account, moto_server, bucket):
    uri = raw_create(pds.url, pds_account, hostile({
        "$type": "science.alt.dataset.storageS3", "bucket": "victims-bucket",
        "endpoint": moto_server.url, "shards": [{"key": "secret.tar", "checksum": {
            "algorithm": "sha256", "digest": "00" * 32}}]}))
    async with AtmosphereClient(pds.url) as stranger, \
            S3DataStore(make_credentials(moto_server.url), bucket=bucket) as mine:
        got = await AtmosphereIndex(stranger).get_dataset(uri)
        with pytest.raises(UntrustedSourceError, match="'victims-bucket'"):
            Dataset[FeatureSample].from_entry(got, store=mine, allow_http=True)
        assert mine.request_count == 0


@pytest.mark.pds
async def test_blob_shards_are_read_from_the_authors_pds_and_verified(pds, second_pds,
                                                                      tmp_path, request):
    author = services.create_account(second_pds.url, f"blob{uuid.uuid4().hex[:6]}")
    # The record passes @atproto/lexicon as JSON (tests/lexicon_check.validate_records);
    # the session audit, replaying it from the firehose, misjudges its blob ref.
    second_pds.extra["lexicon_audit"].account_created(
        author["did"], request.node.nodeid, "blob refs replayed from the firehose")
    paths = write_shards(tmp_path, 2, 10)
    async with AtmosphereClient(second_pds.url) as writer:
        await writer.login(author["handle"], author["password"])
        blobs = [await writer.upload_blob(p.read_bytes(), "application/x-tar") for p in paths]
    claims = [sha(paths[0].read_bytes()), "11" * 32]  # the second claim is a lie
    record = hostile({"$type": "science.alt.dataset.storageBlobs",
                      "blobs": [{"blob": b, "checksum": {"algorithm": "sha256", "digest": c}}
                                for b, c in zip(blobs, claims, strict=True)]})
    assert_valid(DATASET_COLLECTION, record)
    uri = raw_create(second_pds.url, author, record)
    async with AtmosphereClient(pds.url) as reader:  # a client of the other PDS
        got = await AtmosphereIndex(reader).get_dataset(uri)
    assert got.pds_url == second_pds.extra["public_url"]
    ds = Dataset[FeatureSample].from_entry(got)  # a loopback PDS: no allow_http needed
    seen = []
    with pytest.raises(ChecksumMismatchError) as info:
        async for s in ds:
            seen.append(s)
    assert len(seen) == 20 and "getBlob" in info.value.url  # shard 1 read, shard 2 flagged
    assert info.value.expected == "11" * 32 and info.value.actual == sha(paths[1].read_bytes())


@pytest.mark.pds
async def test_show_strips_control_characters(pds, pds_account):
    uri = raw_create(pds.url, pds_account, hostile(
        {"$type": "science.alt.dataset.storageHttp", "shards": [
            {"url": "https://example.org/a\x1b[31m.tar", "checksum": {
                "algorithm": "sha256", "digest": "00" * 32}}]},
        name="evil\x1b[2J\x1b]0;owned\x07name\rX", description="line\r\nforged: yes\u202e",
        tags=["t\x1b[1m"], license="MIT\x9b"))
    env = {k: v for k, v in os.environ.items() if k not in ("ATDATA_HANDLE", "ATDATA_PASSWORD")}
    env.update(ATDATA_PDS_URL=pds.url, PYTHONPATH=os.getcwd())
    out = await anyio.to_thread.run_sync(functools.partial(
        subprocess.run, [sys.executable, "-W", "error", "-m", "atdata_async.cli", "show", uri],
        env=env, capture_output=True, text=True, timeout=120))
    assert out.returncode == 0, out.stderr
    assert "evil[2J]0;ownednameX" in out.stdout and "line forged: yes" in out.stdout
    for bad in ("\x1b", "\r", "\x07", "\x9b", "\u202e"):
        assert bad not in out.stdout
    assert len(out.stdout.splitlines()) == 7  # no forged lines


@pytest.mark.pds
async def test_a_promoted_dataset_reads_back_through_from_entry(redis_url, pds, pds_account,
                                                                 moto_server, bucket, tmp_path):
    """The round trip a user makes: promote, then a stranger reads it, verified."""
    paths = write_shards(tmp_path, 2, 12)
    async with S3DataStore(make_credentials(moto_server.url), bucket=bucket) as store, \
            LocalIndex(redis_url, data_store=store) as index, \
            AtmosphereClient(pds.url) as client:
        await client.login(pds_account["handle"], pds_account["password"])
        await index.publish_schema(FeatureSample, version="1.0.0")
        local = await index.insert_dataset(Dataset[FeatureSample]([str(p) for p in paths]),
                                           name="round-trip")
        uri = await promote_to_atmosphere(local, index, client)
        async with AtmosphereClient(pds.url) as stranger:
            got = await AtmosphereIndex(stranger).get_dataset(uri)
        ds = Dataset[FeatureSample].from_entry(got, store=store, allow_http=True)
        assert set(ds.checksums) == set(local.data_urls)
        assert len([s async for s in ds]) == 24
