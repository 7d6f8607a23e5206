"""Resume after a failure or a kill, and cleanup, against redis-server + moto + the PDS."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from atdata_async import Dataset, PromotionBusyError, ShardTransferError, StorageError
from atdata_async._backends.s3_store import _StreamedBody
from atdata_async._pipeline.cleanup import cleanup_promotions
from atdata_async._pipeline.insert import INSERT_KEY_PREFIX, insert_keys, insert_run_id
from atdata_async._pipeline.journal import (
    JOURNALS,
    OpenUpload,
    ShardState,
    decide_resume,
    fingerprint,
    journal_key,
    parse_states,
)
from atdata_async._pipeline.promote import ShardPlan, promotion_key
from atdata_async.atmosphere import DATASET_COLLECTION, SCHEMA_COLLECTION, AtmosphereIndex
from atdata_async.local import LocalIndex, S3DataStore
from atdata_async.promote import promote_to_atmosphere
from tests.conftest import TEST_PART, make_bucket, make_credentials
from tests.faultproxy import Fault, FaultProxy
from tests.samples import FeatureSample, write_shards
from tests.test_promote import client, insert, read_s3, store_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio


# -- pure: what a rerun starts from ------------------------------------------------------


def shard(i: int, **kw) -> ShardPlan:
    return ShardPlan(f"s3://src/k{i}.tar", "s3", f"p/n/k{i}.tar", kw.pop("size", 10),
                     kw.pop("sha256", None), kw.pop("etag", None))


def test_decide_resume_trusts_only_what_the_listing_confirms():
    shards = [shard(0), shard(1), shard(2, sha256="ab", etag="e2"), shard(3), shard(4)]
    states = [ShardState(copied=("d0", "s0", 10)), ShardState(copied=("d1", "s1", 10)),
              ShardState(), ShardState(upload=OpenUpload("u3", 5, {1: "x"})),
              ShardState(upload=OpenUpload("gone", 5))]
    listing = {"p/n/k0.tar": (10, "d0"),  # as journaled: done
               "p/n/k1.tar": (9, "d1"),   # another size: copied again
               "p/n/k2.tar": (10, "e2")}  # a server-side copy of the inserted version: done
    uploads = [("p/n/k3.tar", "u3"), ("p/n/k3.tar", "older"), ("p/n/k4.tar", "dead"),
               ("p/other/x", "not-ours")]
    resumes, aborts = decide_resume(shards, states, listing, uploads)
    assert resumes[0].done == ("s0", 10) and resumes[2].done == ("ab", 10)
    assert resumes[1].done is None and resumes[1].upload is None
    assert resumes[3].upload is not None and resumes[3].upload.parts == {1: "x"}
    assert resumes[4].upload is None  # its upload is no longer open
    assert sorted(aborts) == [("p/n/k3.tar", "older"), ("p/n/k4.tar", "dead")]


def test_states_of_another_plan_are_ignored():
    a, b = shard(0), shard(0, size=11)
    fp = fingerprint(a)
    raw = {"s:0": json.dumps({"fp": fp, "etag": "e", "sha256": None, "size": 10}),
           "u:0": json.dumps({"fp": fp, "id": "u", "ps": 5}), "p:0:1": "pe"}
    got = parse_states(raw, [a])[0]
    assert got.copied == ("e", None, 10) and got.upload.parts == {1: "pe"}
    assert parse_states(raw, [b])[0] == ShardState()


# -- against the real servers ------------------------------------------------------------


class Sent:
    """Bytes and uploads the destination store was sent (PUT bodies and parts)."""

    def __init__(self, monkeypatch, fail_on: str | None = None) -> None:
        self.bytes = 0
        self.keys: list[str] = []
        put, part = S3DataStore.put_bytes, S3DataStore._send_part
        stream = S3DataStore.stream_copy
        sent = self

        async def put_bytes(self, key, data, *args, **kw):
            if fail_on and key.endswith(fail_on):
                raise StorageError("injected: connection reset")
            result = await put(self, key, data, *args, **kw)
            sent.bytes += len(data)
            sent.keys.append(key)
            return result

        async def send_part(self, key, upload_id, number, data, *args, **kw):
            if fail_on and key.endswith(fail_on) and number == 2:
                slots = self.stream_slots() if isinstance(data, _StreamedBody) else self.buffers()
                slots.release_on_behalf_of(args[1])  # the token _send_part would give back
                raise StorageError("injected: connection reset mid-upload")
            await part(self, key, upload_id, number, data, *args, **kw)
            sent.bytes += len(data)

        async def stream_copy(self, source, src_url, key, size, *args, **kw):
            # a single PUT streamed from another endpoint (a recorded sha256)
            if fail_on and key.endswith(fail_on):
                raise StorageError("injected: connection reset")
            result = await stream(self, source, src_url, key, size, *args, **kw)
            sent.bytes += size
            sent.keys.append(key)
            return result

        monkeypatch.setattr(S3DataStore, "put_bytes", put_bytes)
        monkeypatch.setattr(S3DataStore, "_send_part", send_part)
        monkeypatch.setattr(S3DataStore, "stream_copy", stream_copy)


async def records(client, collection=DATASET_COLLECTION) -> list[dict]:
    return [r async for r in client.list_records(collection)]


@pytest.mark.pds
async def test_a_failed_copy_reruns_only_the_missing_shards(index, client, tmp_path,
                                                            second_moto_server, monkeypatch):
    small = await insert(index, tmp_path, "mixed", shards=3, per_shard=20)
    big = await insert(index, tmp_path, "big", shards=2, per_shard=1500, stem="big")
    entry = await index.add_entry(
        Dataset[FeatureSample](small.data_urls + big.data_urls), name="mixed-all",
        metadata={k: {**small.metadata[k], **big.metadata[k]}
                  for k in ("checksums", "shard_sizes", "etags")})
    sizes = [entry.shard_sizes[u] for u in entry.data_urls]
    dest_bucket = make_bucket(second_moto_server.url)
    failing = "-000003.tar"  # shard 3 of 5 (copy keys end in the index), multipart, fails
    # at part 2
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        first = Sent(monkeypatch, fail_on=failing)
        with pytest.raises(ShardTransferError):
            await promote_to_atmosphere(entry, index, client, data_store=dest,
                                        max_concurrency=1, max_streamed_copies=1)
        assert await dest.list_multipart_uploads() == []
        assert await records(client) == [] and await records(client, SCHEMA_COLLECTION) == []
        assert first.bytes >= sum(sizes[:3])
        monkeypatch.undo()
        again = Sent(monkeypatch)
        requests = dest.request_count
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        rerun_requests = dest.request_count - requests
        assert await dest.list_multipart_uploads() == []
    assert again.bytes == sum(sizes[3:])  # only the two shards that had not landed
    assert all(k.endswith(("-000003.tar", "-000004.tar")) for k in again.keys)
    # 2 listings + 2 x (create + parts + complete + HEAD) for the two multipart shards
    assert rerun_requests <= 2 + sum(4 + -(-s // (256 * 1024)) for s in sizes[3:])
    assert len(await records(client)) == 1
    got = await AtmosphereIndex(client).get_dataset(uri)
    for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
        body = read_s3(second_moto_server.url, dst)
        assert hashlib.sha256(body).hexdigest() == entry.checksums[src] == got.checksums[dst]
    # published: the journal is compacted to a few fields
    key = journal_key(promotion_key(client.did, entry, "mixed-all", dest))
    fields = await index.redis.hkeys(key)
    assert sorted(fields) == [b"done", b"plan", b"status", b"uri"]
    # a third run copies nothing: one listing says every shard is there
    third = Sent(monkeypatch)
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        assert await promote_to_atmosphere(entry, index, client, data_store=dest) == uri
        assert dest.request_count == 1
    assert third.bytes == 0 and len(await records(client)) == 1


# -- killed runs -------------------------------------------------------------------------


REPO = Path(__file__).resolve().parent.parent


def write_env(path: Path, endpoint: str) -> str:
    creds = make_credentials(endpoint)
    path.write_text("".join(f"{k}={v}\n" for k, v in creds.items()))
    return str(path)


def cli_env(redis_url: str, pds, account, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ATDATA_"))}
    env.update(ATDATA_REDIS_URL=redis_url, ATDATA_PDS_URL=pds.url,
               ATDATA_HANDLE=account["handle"], ATDATA_PASSWORD=account["password"],
               TEST_PART=str(TEST_PART), **{k: str(v) for k, v in extra.items()})
    return env


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.promote_child", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


async def kill_mid_copy(args: list[str], env: dict[str, str], redis, key: str,
                        wanted: Callable[[set[str]], bool]) -> set[str]:
    """Start a CLI promotion that stalls, wait until its journal shows ``wanted``, then
    SIGKILL it (and reap it, so its lease is seen to be dead). The journal's fields."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.promote_child", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with anyio.fail_after(90):
            while True:
                fields = {f.decode() for f in await redis.hkeys(key)}
                if wanted(fields):
                    break
                if proc.poll() is not None:
                    raise AssertionError(f"the promotion ended: {proc.communicate()}")
                await anyio.sleep(0.05)
        await anyio.sleep(0.1)  # the write-behind batch that was in flight lands
        return {f.decode() for f in await redis.hkeys(key)}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()


@pytest.mark.pds
async def test_sigkill_mid_copy_then_rerun_sends_only_what_is_missing(
        index, client, tmp_path, pds, pds_account, redis_url, s3_credentials, bucket,
        second_moto_server, monkeypatch):
    entry = await insert(index, tmp_path, "killme", shards=4, per_shard=1500)
    sizes = [entry.shard_sizes[u] for u in entry.data_urls]
    parts0 = -(-sizes[0] // TEST_PART)
    dest_bucket = make_bucket(second_moto_server.url)
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    key = journal_key(promotion_key(client.did, entry, "killme", dest))
    env = cli_env(redis_url, pds, pds_account, STALL_AFTER=parts0 + 3)
    args = ["promote", "killme", "--copy-to", f"s3://{dest_bucket}/promoted",
            "--credentials", write_env(tmp_path / "dst.env", second_moto_server.url),
            "--source-credentials", write_env(tmp_path / "src.env", s3_credentials["AWS_ENDPOINT"]),
            "--concurrency", "1", "--streamed-copies", "1"]  # one shard at a time

    def copied_one_and_three_parts(f: set[str]) -> bool:
        return "s:0" in f and len([x for x in f if x.startswith("p:1:")]) == 3

    fields = await kill_mid_copy(args, env, index.redis, key, copied_one_and_three_parts)
    async with dest:
        left = await dest.list_multipart_uploads()
        assert [u["Key"] for u in left] == [f"promoted/killme/{entry.cid[-8:]}-000001.tar"]
        assert await records(client) == [] and await records(client, SCHEMA_COLLECTION) == []
        kept_parts = len([x for x in fields if x.startswith("p:1:")])
        missing = sum(sizes) - sizes[0] - kept_parts * TEST_PART
        sent = Sent(monkeypatch)
        before = dest.request_count
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        rerun_requests = dest.request_count - before
        assert await dest.list_multipart_uploads() == []
    assert sent.bytes == missing  # exactly the missing part: 0% re-sent
    # the journal (and everything else in Redis) holds no secret
    dump = b""
    for k in await index.redis.keys("*"):
        kind = (await index.redis.type(k)).decode()
        value = {"hash": index.redis.hgetall, "string": index.redis.get,
                 "set": index.redis.smembers}[kind]
        dump += k + repr(await value(k)).encode()
    assert b"atdata_async:journal:" in dump
    for secret in (s3_credentials["AWS_SECRET_ACCESS_KEY"], pds_account["password"]):
        assert secret.encode() not in dump
    full = sum(4 + -(-s // TEST_PART) for s in sizes)
    assert rerun_requests < full - parts0 - kept_parts
    assert len(await records(client)) == 1 and len(await records(client, SCHEMA_COLLECTION)) == 1
    got = await AtmosphereIndex(client).get_dataset(uri)
    for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
        body = read_s3(second_moto_server.url, dst)
        assert body == read_s3(s3_credentials["AWS_ENDPOINT"], src)
        assert hashlib.sha256(body).hexdigest() == entry.checksums[src] == got.checksums[dst]


@pytest.mark.pds
async def test_cleanup_after_a_kill_removes_only_what_nothing_refers_to(
        index, client, tmp_path, pds, pds_account, redis_url, s3_credentials,
        second_moto_server):
    done = await insert(index, tmp_path, "published", shards=2, per_shard=20)
    victim = await insert(index, tmp_path, "victim", shards=3, per_shard=1500)
    dest_bucket = make_bucket(second_moto_server.url)
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    async with dest:
        first = await promote_to_atmosphere(done, index, client, data_store=dest)
    published = {k.key for k in (await AtmosphereIndex(client).get_dataset(first)).storage.shards}
    stray = "promoted/old-run/shard-000000.tar"  # an object no record or journal knows
    await dest.put_bytes(stray, b"left by a run before journals")
    dst_env = write_env(tmp_path / "dst.env", second_moto_server.url)
    args = ["promote", "victim", "--copy-to", f"s3://{dest_bucket}/promoted",
            "--credentials", dst_env,
            "--source-credentials", write_env(tmp_path / "src.env", s3_credentials["AWS_ENDPOINT"]),
            "--concurrency", "1", "--streamed-copies", "1"]  # one shard at a time
    parts0 = -(-victim.shard_sizes[victim.data_urls[0]] // TEST_PART)
    env = cli_env(redis_url, pds, pds_account, STALL_AFTER=parts0 + 2)
    key = journal_key(promotion_key(client.did, victim, "victim", dest))
    await kill_mid_copy(args, env, index.redis, key, lambda f: "s:0" in f and "u:1" in f)
    env.pop("STALL_AFTER")
    base = ["--json", "cleanup", f"s3://{dest_bucket}/promoted", "--credentials", dst_env]

    def run(*flags: str) -> dict:
        done = cli([*base, *flags], env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # the killed run can be resumed: its copy and its upload are kept
    report = run()
    assert sorted(j["state"] for j in report["journals"]) == ["published", "resumable"]
    assert report["uploads"] == [] and [o["key"] for o in report["objects"]] == [stray]
    # given up, they are garbage too; a dry run removes nothing
    report = run("--forget")
    victim_keys = {f"promoted/victim/{victim.cid[-8:]}-{i:06d}.tar"
                   for i in range(len(victim.data_urls))}
    assert len(report["uploads"]) == 1 and report["uploads"][0]["key"] in victim_keys
    garbage = {o["key"] for o in report["objects"]}
    assert stray in garbage and garbage - {stray} <= victim_keys and len(garbage) == 2
    assert report["kept"] == len(published) and not report["removed"]
    async with dest:
        assert len(await dest.list_multipart_uploads()) == 1
        report = run("--forget", "--yes")
        assert report["removed"]
        assert await dest.list_multipart_uploads() == []
        assert set(await dest.list_objects("")) == published
    assert await index.redis.exists(key) == 0
    # the promotion still completes afterwards, from scratch
    again = cli(args, env)
    assert again.returncode == 0, again.stderr
    assert len(await records(client)) == 2
    async with dest:
        assert await dest.list_multipart_uploads() == []
        assert set(await dest.list_objects("")) == published | victim_keys


@pytest.mark.pds
def test_bench_resume_smoke(redis_url, moto_server, second_moto_server, pds, pds_account,
                            tmp_path):
    from benchmarks import bench_resume

    paths = bench_resume.write_shards(tmp_path / "shards", 12, 16, 4, 1024)
    ctx = {"redis": redis_url, "src": moto_server.url, "dst": second_moto_server.url,
           "pds": pds.url, "handle": pds_account["handle"],
           "password": pds_account["password"], "src_bucket": make_bucket(moto_server.url),
           "dst_bucket": make_bucket(second_moto_server.url), "entry": "smoke",
           "throttle": 0.2}
    result = bench_resume.run_case(ctx, paths)
    bench_resume.print_table(result)
    assert 0 < result["missing_bytes"] < result["bytes"]
    # at most the parts in flight when the kill landed are sent twice
    assert result["missing_bytes"] <= result["rerun_bytes"] <= (
        result["missing_bytes"] + 8 * bench_resume.PART)
    assert (result["open_uploads_after"], result["missing_after"],
            result["dataset_records"]) == (0, 0, 1)


# -- inserts -----------------------------------------------------------------------------


def shard_files(tmp_path: Path, name: str, shards: int, per_shard: int) -> list[str]:
    directory = tmp_path / name
    directory.mkdir()
    return [str(p) for p in write_shards(directory, shards, per_shard)]


def run_id_of(store: S3DataStore, stem: str, name: str, ref: str, paths: list[str]) -> str:
    files = [(os.path.realpath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
    return insert_run_id(store, stem, name, ref, files)


SCHEMA_REF = "atdata://local/schema/FeatureSample@1.0.0"


def insert_child_args(paths: list[str], name: str, dest: str, endpoint: str,
                      tmp_path: Path) -> list[str]:
    """The CLI arguments of an insert of ``paths`` run by tests.promote_child, one shard at
    a time (so that a test can stop or kill it between parts)."""
    return ["insert", *paths, "--name", name, "--schema-ref", SCHEMA_REF, "--to", dest,
            "--concurrency", "1", "--credentials", write_env(tmp_path / "src.env", endpoint)]


def check_landed(endpoint: str, entry, paths: list[str]) -> None:
    """Every shard byte for byte, with the sha256 and ETag the entry records."""
    assert len(entry.data_urls) == len(paths)
    for url, path in zip(entry.data_urls, paths, strict=True):
        body = read_s3(endpoint, url)
        assert body == Path(path).read_bytes()
        assert entry.checksums[url] == hashlib.sha256(body).hexdigest()
        assert entry.shard_sizes[url] == len(body)
        assert entry.etags[url]  # known even when CompleteMultipartUpload said nothing


EMPTY_ETAG = Fault("body", method="POST", path=r"uploadId=", times=None,
                   replace=(rb"<ETag>[^<]*</ETag>", b"<ETag></ETag>"))


@pytest.mark.parametrize("etags", ["answered", "empty"])
async def test_a_failed_insert_reruns_only_the_missing_shards(
        redis_url, moto_server, bucket, tmp_path, monkeypatch, etags):
    """Shard 3 of 4 fails mid-upload: nothing is indexed, no upload stays open, and the
    rerun sends only shard 3. "empty": every CompleteMultipartUpload answers an empty
    ETag (some radosgw versions do): the rerun must still skip the finished shards."""
    paths = shard_files(tmp_path, "half", 4, 1500)
    sizes = [os.path.getsize(p) for p in paths]
    proxy = FaultProxy(moto_server.url).start()
    if etags == "empty":
        proxy.add(replace(EMPTY_ETAG, fired=0))
    store = store_for(make_credentials(proxy.url), bucket, max_concurrency=1)
    try:
        async with store, LocalIndex(redis_url, data_store=store) as index:
            ds = Dataset[FeatureSample](paths)
            first = Sent(monkeypatch, fail_on="-000003.tar")
            with pytest.raises(ShardTransferError):
                await index.insert_dataset(ds, name="half", prefix="half")
            assert await index.list_entries() == []
            assert await store.list_multipart_uploads() == []
            assert len(await store.list_objects("half/")) == 3 and first.bytes > sum(sizes[:3])
            monkeypatch.undo()
            again = Sent(monkeypatch)
            entry = await index.insert_dataset(ds, name="half", prefix="half")
            assert again.bytes == sizes[3]  # only the shard that had not landed
            assert all(k.endswith("--000003.tar") for k in again.keys)
            assert await store.list_multipart_uploads() == []
            assert [e.cid for e in await index.list_entries()] == [entry.cid]
            assert set(await store.list_objects("half/")) == {
                u.removeprefix(f"s3://{bucket}/") for u in entry.data_urls}
            assert await index.redis.smembers(JOURNALS) == set()  # dropped once indexed
            # a third run finds the entry: no request, no upload, still one entry
            requests = store.request_count
            assert await index.insert_dataset(ds, name="half", prefix="half") == entry
            assert store.request_count == requests and again.bytes == sizes[3]
            assert len(await index.list_entries()) == 1
        check_landed(moto_server.url, entry, paths)
        if etags == "empty":
            assert proxy.faults[0].fired >= 4  # every multipart shard's answer was emptied
    finally:
        proxy.stop()


@pytest.mark.pds
async def test_sigkill_mid_insert_then_rerun_sends_only_what_is_missing(
        index, client, tmp_path, pds, pds_account, redis_url, s3_credentials, bucket,
        monkeypatch):
    paths = shard_files(tmp_path, "killins", 4, 1500)
    sizes = [os.path.getsize(p) for p in paths]
    parts0 = -(-sizes[0] // TEST_PART)
    run = run_id_of(index.data_store, "ins", "killins", SCHEMA_REF, paths)
    keys = insert_keys("ins", run, len(paths))
    key = journal_key(INSERT_KEY_PREFIX + run)
    env = cli_env(redis_url, pds, pds_account, STALL_AFTER=parts0 + 3)
    args = insert_child_args(paths, "killins", f"s3://{bucket}/ins",
                             s3_credentials["AWS_ENDPOINT"], tmp_path)

    def copied_one_and_three_parts(f: set[str]) -> bool:
        return "s:0" in f and len([x for x in f if x.startswith("p:1:")]) == 3

    fields = await kill_mid_copy(args, env, index.redis, key, copied_one_and_three_parts)
    store = index.data_store
    assert [u["Key"] for u in await store.list_multipart_uploads("ins/")] == [keys[1]]
    assert set(await store.list_objects("ins/")) == {keys[0]}
    assert await index.list_entries() == []
    # cleanup sees the killed insert: resumable, so its shard and upload are kept ...
    report = await cleanup_promotions(index, store, client, prefix="ins")
    assert [(j["kind"], j["state"], j["name"]) for j in report.journals] == [
        ("insert", "resumable", "killins")]
    assert (report.uploads, report.objects, report.kept) == ([], [], 1)
    # ... and garbage once given up (a dry run: nothing removed)
    report = await cleanup_promotions(index, store, client, prefix="ins", forget=True)
    assert [u["key"] for u in report.uploads] == [keys[1]]
    assert [o["key"] for o in report.objects] == [keys[0]] and not report.removed

    kept_parts = len([x for x in fields if x.startswith("p:1:")])
    missing = sum(sizes) - sizes[0] - kept_parts * TEST_PART
    sent = Sent(monkeypatch)
    before = store.request_count
    entry = await index.insert_dataset(Dataset[FeatureSample](paths), name="killins",
                                       prefix="ins")
    rerun_requests = store.request_count - before
    assert sent.bytes == missing  # exactly the missing part: 0% re-sent
    # 2 listings + 1 ListParts + shard 1's missing parts + complete, then 2 x (create +
    # parts + complete) for shards 2 and 3
    assert rerun_requests <= 3 + (parts0 - kept_parts + 1) + sum(
        2 + -(-s // TEST_PART) for s in sizes[2:])
    assert entry.data_urls == [store.url(k) for k in keys]  # the keys the killed run used
    assert await store.list_multipart_uploads() == []
    assert [e.cid for e in await index.list_entries()] == [entry.cid]
    assert set(await store.list_objects("ins/")) == set(keys)
    assert await index.redis.exists(key) == 0
    check_landed(s3_credentials["AWS_ENDPOINT"], entry, paths)
    report = await cleanup_promotions(index, store, client, prefix="ins")
    assert (report.journals, report.uploads, report.objects, report.kept) == ([], [], [], 4)


@pytest.mark.pds
async def test_a_promotion_resumes_when_complete_multipart_upload_has_no_etag(
        index, client, tmp_path, second_moto_server, monkeypatch):
    entry = await insert(index, tmp_path, "noetag", shards=3, per_shard=1500)
    dest_bucket = make_bucket(second_moto_server.url)
    proxy = FaultProxy(second_moto_server.url).start()
    emptied = proxy.add(replace(EMPTY_ETAG, fired=0))
    try:
        # parts of another size than insert's: the copies' ETags are not the sources'
        async with store_for(make_credentials(proxy.url), dest_bucket,
                             part_size=3 * TEST_PART) as dest:
            uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
            assert emptied.fired == 3  # each shard is a multipart upload, each answer empty
            copies = await dest.list_objects("")
            assert len(copies) == 3
            assert not {e for _, e in copies.values()} & set(entry.etags.values())
            sent = Sent(monkeypatch)
            requests = dest.request_count
            assert await promote_to_atmosphere(entry, index, client, data_store=dest) == uri
            assert dest.request_count - requests == 1  # one listing: every shard is there
            assert sent.bytes == 0
        assert len(await records(client)) == 1
    finally:
        proxy.stop()


def test_bench_insert_resume_smoke(redis_url, moto_server, tmp_path):
    from benchmarks import bench_insert_resume, bench_resume

    paths = [str(p) for p in bench_resume.write_shards(tmp_path / "shards", 12, 16, 4, 1024)]
    ctx = {"redis": redis_url, "s3": moto_server.url, "bucket": make_bucket(moto_server.url),
           "throttle": 0.2}
    result = bench_insert_resume.run_case(ctx, paths, repeats=1)
    bench_insert_resume.print_table(result)
    assert 0 < result["missing"] < result["bytes"]
    # at most the uploads in flight when the kill landed are sent twice
    assert result["missing"] <= result["rerun_bytes"] <= result["missing"] + 8 * TEST_PART
    assert (result["open_after"], result["objects_after"], result["entries"]) == (0, 12, 1)


async def test_the_same_insert_running_elsewhere_is_refused(index, tmp_path, redis_url,
                                                           s3_credentials, bucket):
    """Two runs of one insert never upload at once: the second is refused by the journal's
    lease while the first lives, and continues it once it is dead."""
    paths = shard_files(tmp_path, "twice", 2, 1500)
    run = run_id_of(index.data_store, "twice", "twice", SCHEMA_REF, paths)
    key = journal_key(INSERT_KEY_PREFIX + run)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ATDATA_"))}
    env.update(ATDATA_REDIS_URL=redis_url, TEST_PART=str(TEST_PART), STALL_AFTER="2")
    args = insert_child_args(paths, "twice", f"s3://{bucket}/twice",
                             s3_credentials["AWS_ENDPOINT"], tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "tests.promote_child", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ds = Dataset[FeatureSample](paths)
    try:
        with anyio.fail_after(90):
            while not any(f.startswith(b"p:0:") for f in await index.redis.hkeys(key)):
                assert proc.poll() is None, proc.communicate()
                await anyio.sleep(0.05)
        with pytest.raises(PromotionBusyError, match="this insert is already running"):
            await index.insert_dataset(ds, name="twice", prefix="twice")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    entry = await index.insert_dataset(ds, name="twice", prefix="twice")
    assert [e.cid for e in await index.list_entries()] == [entry.cid]
    assert await index.data_store.list_multipart_uploads() == []
    check_landed(s3_credentials["AWS_ENDPOINT"], entry, paths)
