"""An audit of issue 13 (shard copies on a Dask cluster): what tests/test_dask.py left
unproven, on real servers (redis-server, one with a password; moto; the reference PDS)
and real Dask processes (LocalCluster with worker processes; ``dask scheduler`` and
``dask worker`` as processes of their own, logging at DEBUG to files).

- no secret (S3 key, Redis password, PDS password and tokens) in the scheduler's tasks,
  its log, the workers' logs, or the scheduler's, nanny's and workers' stderr at DEBUG,
  a failed task's printed arguments included; a Redis URL with a password is refused
  before any write without ``redis_url_env``, and works with it;
- a worker SIGKILLed once parts of its upload were journaled: those parts are not sent
  again, the upload is continued (one object, its ETag of all the parts), bytes
  identical read with boto3; a worker SIGKILLed between CreateMultipartUpload and the
  journal's note of it: its upload is aborted by the coordinator's sweep;
- the scheduler gone, then a rerun on a *new* cluster completes (the coordinator sends
  nothing itself);
- ``promote_many`` with an executor: the copies ran on the cluster (the coordinator sent
  no byte), both records on the PDS, no PDS credential in a task;
- the CLI's ``--scheduler`` against a real cluster: published, the copies ran there;
- correctness with 1, 2 and 4 worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import boto3
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from atdata_async import AtdataError, ConfigurationError, ExecutorError
from atdata_async._pipeline.journal import journal_key
from atdata_async._pipeline.promote import promotion_key
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.local import LocalIndex
from atdata_async.promote import CredentialSource, DaskExecutor, promote_many, promote_to_atmosphere
from tests import services
from tests.conftest import TEST_PART, make_bucket, make_credentials, store_for
from tests.dask_faults import StallOnce
from tests.samples import FeatureSample
from tests.test_dask import (
    ON_WORKERS,
    SECRET,
    WORKER_ENV,
    LoneCluster,
    _stores_on_worker,
    datasets,
    until,
)
from tests.test_promote import insert
from tests.test_resume import Sent, cli_env, write_env

pytestmark = [pytest.mark.anyio, pytest.mark.pds]

REPO = Path(__file__).resolve().parent.parent


def s3(endpoint: str):
    """A plain boto3 client: what landed is judged by another S3 client than ours."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y")


def open_uploads(endpoint: str, bucket: str) -> list[str]:
    return [u["UploadId"] for u in s3(endpoint).list_multipart_uploads(Bucket=bucket)
            .get("Uploads", [])]


def objects(endpoint: str, bucket: str) -> dict[str, dict]:
    return {o["Key"]: o for o in s3(endpoint).list_objects_v2(Bucket=bucket)
            .get("Contents", [])}


def assert_identical(entry, got, source_endpoint: str, dest_endpoint: str,
                     dest_bucket: str) -> None:
    """Every copy's bytes, read with boto3, are the source object's (read with boto3
    too) and their sha256 the one insert recorded; the destination bucket holds exactly
    the record's shards (0 duplicates, nothing stray)."""
    keys = set()
    for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
        sb, sk = src.removeprefix("s3://").split("/", 1)
        db, dk = dst.removeprefix("s3://").split("/", 1)
        assert db == dest_bucket
        keys.add(dk)
        want = s3(source_endpoint).get_object(Bucket=sb, Key=sk)["Body"].read()
        body = s3(dest_endpoint).get_object(Bucket=db, Key=dk)["Body"].read()
        assert body == want
        assert hashlib.sha256(body).hexdigest() == entry.checksums[src] == got.checksums[dst]
    assert set(objects(dest_endpoint, dest_bucket)) == keys


async def assert_published(client, uri: str, entry, source_endpoint: str, dest_endpoint: str,
                           dest_bucket: str):
    """The record at ``uri`` names copies identical to the entry's shards
    (assert_identical, boto3) and no upload is left open; returns the record."""
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_identical(entry, got, source_endpoint, dest_endpoint, dest_bucket)
    assert open_uploads(dest_endpoint, dest_bucket) == []
    return got


class RunSpecs(SchedulerPlugin):
    """Every atdata task the scheduler was given, as it holds it (repr of the task
    state and of its run spec, and the run spec pickled), captured at its first
    transition: tasks forgotten since are seen too."""

    name = "atdata-audit-run-specs"

    def __init__(self) -> None:
        self.seen: dict[str, bytes] = {}

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if not str(key).startswith("atdata-shard-") or str(key) in self.seen:
            return
        ts = self.scheduler.tasks.get(key)
        if ts is not None and ts.run_spec is not None:
            self.seen[str(key)] = (repr(ts).encode() + repr(ts.run_spec).encode()
                                   + pickle.dumps(ts.run_spec))

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler


def _run_specs(dask_scheduler) -> dict[str, bytes]:
    return dict(dask_scheduler.plugins[RunSpecs.name].seen)


async def run_specs_of(dc) -> dict[str, bytes]:
    return await dc.run_on_scheduler(_run_specs)


def secrets_of(client, *more: str) -> list[str]:
    """What must never leave the coordinator: the S3 secret key, the PDS account's
    password and its session's tokens, and whatever else the test names."""
    session = client.export_session()
    tokens = [v for k, v in session.items() if "jwt" in k.lower() and v]
    assert len(tokens) == 2, sorted(session)
    return [SECRET, *tokens, *more]


def assert_no_secret(blobs: list[bytes], words: list[str]) -> None:
    for word in words:
        assert len(word) >= 8
        hits = [b[max(0, b.find(word.encode()) - 200):b.find(word.encode()) + 50]
                for b in blobs if word.encode() in b]
        assert not hits, f"a secret leaked: {hits[:1]!r}"


# -- services of our own ------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_redis(tmp_path_factory):
    """A redis-server that wants a password (ours: started here, stopped by its PID)."""
    password = "audit-" + secrets.token_hex(12)
    port = services.free_port()
    workdir = tmp_path_factory.mktemp("redis-pw")
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    def ping() -> bool:
        return redis.Redis(port=port, password=password).ping()

    services.wait_until(ping, 15, "redis-server (password)", proc)
    yield f"redis://:{password}@127.0.0.1:{port}/0", password
    proc.terminate()
    proc.wait(15)


@pytest.fixture(scope="module")
def pair():
    """Two worker processes (Dask's nanny restarts a killed one)."""
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=4, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", env=WORKER_ENV) as cluster:
        yield cluster


@pytest.fixture
async def dc(pair):
    async with Client(pair.scheduler_address, asynchronous=True) as dc:
        yield dc


DEBUG_PRELOAD = """\
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, force=True,
                    format="%(levelname)s %(name)s %(message)s")
for name in ("", "distributed", "atdata_async", "botocore", "aiobotocore", "redis",
             "urllib3", "asyncio", "httpx", "httpcore"):
    logging.getLogger(name).setLevel(logging.DEBUG)
"""


class DebugCluster:
    """``dask scheduler`` and ``dask worker`` (with its nanny) as processes of their own,
    every logger at DEBUG (Dask's config and a preload that sets the root logger's
    level), their stderr kept in files; the workers' environment holds the S3
    credentials and the Redis URL with its password."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.dir = tmp_path
        self.file = tmp_path / "scheduler.json"
        preload = tmp_path / "debug_logging.py"
        preload.write_text(DEBUG_PRELOAD)
        env = {**os.environ, **WORKER_ENV, "ATDATA_AUDIT_REDIS_URL": redis_url,
               "PYTHONPATH": str(REPO), "DASK_LOGGING__DISTRIBUTED": "debug"}
        dask = [sys.executable, "-m"]
        with open(tmp_path / "scheduler.stderr", "wb") as err:  # the child keeps its own
            self.scheduler = subprocess.Popen(
                [*dask, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                 "0", "--no-dashboard", "--scheduler-file", str(self.file), "--preload",
                 str(preload)], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        with open(tmp_path / "worker.stderr", "wb") as err:
            self.worker = subprocess.Popen(
                [*dask, "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
                 "--nthreads", "4", "--host", "127.0.0.1", "--no-dashboard",
                 "--preload", str(preload)],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)

    async def address(self) -> str:
        with anyio.fail_after(60):
            while not self.file.exists() or not self.file.read_text():
                await anyio.sleep(0.05)
        return json.loads(self.file.read_text())["address"]

    def stderr(self, name: str) -> bytes:
        return (self.dir / f"{name}.stderr").read_bytes()

    def stop(self) -> None:
        for proc in (self.worker, self.scheduler):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# -- secrets ------------------------------------------------------------------------------


async def test_no_secret_reaches_a_task_or_any_log_at_debug_and_a_redis_password_stays_home(
        client, tmp_path, s3_credentials, bucket, second_moto_server, secret_redis):
    """On a scheduler and a worker (with its nanny) of their own, everything logging at
    DEBUG: a promotion whose index is a Redis with a password is refused before any write
    without ``redis_url_env``; with it, it publishes; a second promotion fails on the
    worker as a whole task (its credential source is empty there), so Dask prints the
    task's arguments in the worker's log. Then not one secret (S3 key, Redis password,
    PDS password and tokens) in any task the scheduler held, its log or the workers'
    (Dask's), or the scheduler's and the worker's stderr."""
    url, password = secret_redis
    source = store_for(s3_credentials, bucket)
    async with source, LocalIndex(url, data_store=source) as index:
        import redis.asyncio

        await index.publish_schema(FeatureSample, version="1.0.0")
        entry = await insert(index, tmp_path, "pw", shards=2, per_shard=300, stem="pw")
        failing = await insert(index, tmp_path, "nocreds", shards=1, per_shard=20,
                               stem="nocreds")
        words = secrets_of(client, password)
        dest_bucket = make_bucket(second_moto_server.url)
        cluster = DebugCluster(tmp_path, url)
        try:
            async with Client(await cluster.address(), asynchronous=True, timeout=30) as dc, \
                    store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
                await dc.wait_for_workers(1)
                await dc.register_plugin(RunSpecs())
                raw = redis.asyncio.Redis.from_url(url)
                before = set(await raw.keys("*"))
                # the URL with its password would go into the task: refused, nothing written
                with pytest.raises(ConfigurationError, match="redis_url_env"):
                    await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                executor=DaskExecutor(dc, credentials=ON_WORKERS))
                assert set(await raw.keys("*")) == before
                await raw.aclose()
                assert objects(second_moto_server.url, dest_bucket) == {}
                assert await datasets(client) == []
                # the workers read it from their own environment
                executor = DaskExecutor(dc, credentials=ON_WORKERS,
                                        redis_url_env="ATDATA_AUDIT_REDIS_URL")
                uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                  executor=executor)
                empty = DaskExecutor(dc, credentials=CredentialSource(env_prefix="ATDATA_NONE_"),
                                     redis_url_env="ATDATA_AUDIT_REDIS_URL")
                with pytest.raises(AtdataError, match="ATDATA_NONE_AWS"):
                    await promote_to_atmosphere(failing, index, client, data_store=dest,
                                                executor=empty)
                specs = await run_specs_of(dc)
                dask_logs = [str(await dc.get_scheduler_logs(n=10_000)).encode()]
                dask_logs += [str(v).encode() for v in
                              (await dc.get_worker_logs(n=10_000)).values()]
                dask_logs += [str(v).encode() for v in
                              (await dc.get_worker_logs(n=10_000, nanny=True)).values()]
        finally:
            cluster.stop()
        await assert_published(client, uri, entry, s3_credentials["AWS_ENDPOINT"],
                               second_moto_server.url, dest_bucket)
    scheduler_err, worker_err = cluster.stderr("scheduler"), cluster.stderr("worker")
    # what was looked at is what the issue names, at DEBUG: the tasks (both promotions'),
    # Dask's own logs, and every logger's output of each process
    assert len(specs) >= 2 and all(b"settle_group" in s for s in specs.values())
    assert re.search(rb"distributed\.scheduler - DEBUG - ", scheduler_err)  # Dask's format
    assert re.search(rb"distributed\.worker - DEBUG - ", worker_err)
    assert b"DEBUG atdata_async.executor malloc thresholds" in worker_err  # our logger
    assert re.search(rb"DEBUG (aio)?botocore", worker_err)
    # the signed requests' headers were logged (their key id is no secret): a secret key
    # used to sign or sent along would have been in there
    assert b"Credential=testing-key-id/" in worker_err
    assert re.search(rb"Compute Failed\s+Key: +atdata-shard-", worker_err)  # the failed task
    assert any(b"Compute Failed" in b for b in dask_logs)
    assert_no_secret([*specs.values(), *dask_logs, scheduler_err, worker_err], words)


# -- a worker killed mid-copy ------------------------------------------------------------


async def test_a_worker_killed_after_journaling_parts_sends_none_of_them_again(
        index, client, tmp_path, second_moto_server, s3_credentials, dc):
    """One shard of 9 parts; its worker is SIGKILLed once its upload and some of its
    parts are in the journal (read from Redis before the kill). The scheduler reruns the
    task on another worker process, which continues that upload: none of the journaled
    parts goes up again, the object is one multipart upload of all 9 parts, its bytes
    (boto3) the source's; 1 object, 0 open uploads, 1 record."""
    entry = await insert(index, tmp_path, "nine", shards=1, per_shard=900, stem="nine")
    size = entry.shard_sizes[entry.data_urls[0]]
    parts = -(-size // TEST_PART)
    assert parts >= 8
    dest_bucket = make_bucket(second_moto_server.url)
    flag, sent_log = tmp_path / "stalled.pid", tmp_path / "sent.log"
    sent_log.touch()
    await dc.register_plugin(StallOnce(str(flag), 3, str(sent_log)))
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    key = journal_key(promotion_key(client.did, entry, entry.name, dest))
    at_kill: dict[str, object] = {}
    try:
        async with dest, anyio.create_task_group() as tg:

            async def journaled() -> bool:
                fields = {f.decode() for f in await index.redis.hkeys(key)}
                return "u:0" in fields and any(f.startswith("p:0:") for f in fields)

            async def kill_once_parts_are_journaled() -> None:
                await until(lambda: flag.exists() and bool(flag.read_text()), "a stall")
                await until(journaled, "the upload and a part journaled")
                await anyio.sleep(0.3)  # the dead worker's last batch is out
                fields = await index.redis.hgetall(key)
                at_kill["upload"] = json.loads(fields[b"u:0"])["id"]
                at_kill["parts"] = {int(f.decode().rsplit(":", 1)[1]) for f in fields
                                    if f.startswith(b"p:0:")}
                at_kill["sent"] = len(sent_log.read_text().splitlines())
                assert at_kill["upload"] in open_uploads(second_moto_server.url, dest_bucket)
                os.kill(int(flag.read_text()), signal.SIGKILL)

            tg.start_soon(kill_once_parts_are_journaled)
            uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                              executor=DaskExecutor(dc, credentials=ON_WORKERS),
                                              max_concurrency=4)
    finally:
        await dc.unregister_worker_plugin(StallOnce.name)
    journaled_parts = at_kill["parts"]
    assert journaled_parts and len(journaled_parts) < parts  # killed mid-copy
    sent = sent_log.read_text().splitlines()
    after = {int(line.rsplit(" ", 1)[1]) for line in sent[at_kill["sent"]:]}
    assert not after & journaled_parts, (sorted(after), sorted(journaled_parts))
    assert len(sent) == len(set(sent)) == parts  # every part went up, exactly once
    await assert_published(client, uri, entry, s3_credentials["AWS_ENDPOINT"],
                           second_moto_server.url, dest_bucket)
    (only,) = objects(second_moto_server.url, dest_bucket).values()
    assert only["ETag"].strip('"').endswith(f"-{parts}")  # one upload, all its parts
    assert len(await datasets(client)) == 1


class OrphanOnce(WorkerPlugin):
    """The first worker to open a multipart upload writes "pid upload-id" to ``flag`` and
    then blocks its whole event loop before the journal hears of the upload (so no
    batch can carry its id out): the test SIGKILLs it there. Workers started or
    opening later run clean."""

    name = "atdata-audit-orphan-once"

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def setup(self, worker) -> None:
        from atdata_async._pipeline import journal

        self._original = original = journal.ShardLog.opened
        flag = self.flag

        def opened(log, upload_id, part_size):
            try:
                fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return original(log, upload_id, part_size)
            os.write(fd, f"{os.getpid()} {upload_id}".encode())
            os.close(fd)
            time.sleep(600)  # blocks the loop: the journal never gets the id

        journal.ShardLog.opened = opened

    def teardown(self, worker) -> None:
        from atdata_async._pipeline import journal

        journal.ShardLog.opened = self._original


async def test_a_worker_killed_before_journaling_its_upload_leaves_none_open(
        index, client, tmp_path, second_moto_server, s3_credentials, dc):
    """A worker SIGKILLed between CreateMultipartUpload and the journal's note of it: its
    upload is open at S3 and named nowhere. The rerun (another worker) opens its own and
    completes; the coordinator's sweep then aborts the orphan: 0 open uploads (boto3),
    1 object, bytes identical, 1 record."""
    entry = await insert(index, tmp_path, "orphan", shards=1, per_shard=300, stem="orphan")
    dest_bucket = make_bucket(second_moto_server.url)
    flag = tmp_path / "opened.flag"
    await dc.register_plugin(OrphanOnce(str(flag)))
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    key = journal_key(promotion_key(client.did, entry, entry.name, dest))
    orphan: list[str] = []
    try:
        async with dest, anyio.create_task_group() as tg:

            async def kill_before_the_journal_knows() -> None:
                await until(lambda: flag.exists() and len(flag.read_text().split()) == 2,
                            "an upload opened")
                pid, upload_id = flag.read_text().split()
                assert upload_id in open_uploads(second_moto_server.url, dest_bucket)
                assert b"u:0" not in await index.redis.hkeys(key)
                orphan.append(upload_id)
                os.kill(int(pid), signal.SIGKILL)

            tg.start_soon(kill_before_the_journal_knows)
            uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                              executor=DaskExecutor(dc, credentials=ON_WORKERS))
    finally:
        await dc.unregister_worker_plugin(OrphanOnce.name)
    assert orphan
    assert open_uploads(second_moto_server.url, dest_bucket) == []
    await assert_published(client, uri, entry, s3_credentials["AWS_ENDPOINT"],
                           second_moto_server.url, dest_bucket)
    assert len(await datasets(client)) == 1


# -- the scheduler gone, the rerun on a new cluster ----------------------------------------


async def test_scheduler_gone_then_a_rerun_on_a_new_cluster_completes(
        index, client, tmp_path, second_moto_server, s3_credentials, dc, monkeypatch):
    """The scheduler of a cluster of its own is SIGKILLed mid-copy: ExecutorError, no
    record, the journal still there (plan, running). The rerun goes to another cluster
    (the module's): it completes there, the coordinator itself sending no byte."""
    entry = await insert(index, tmp_path, "moved", shards=3, per_shard=300, stem="moved")
    dest_bucket = make_bucket(second_moto_server.url)
    flag, sent_log = tmp_path / "stalled.pid", tmp_path / "sent.log"
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    key = journal_key(promotion_key(client.did, entry, entry.name, dest))
    lone = LoneCluster(tmp_path)
    try:
        async with Client(await lone.address(), asynchronous=True, timeout=3) as first, dest:
            await first.wait_for_workers(1)
            await first.register_plugin(StallOnce(str(flag), 3, str(sent_log)))
            async with anyio.create_task_group() as tg:

                async def kill_scheduler() -> None:
                    await until(flag.exists, "a stall")
                    await anyio.sleep(0.3)
                    lone.scheduler.kill()

                tg.start_soon(kill_scheduler)
                with pytest.raises(ExecutorError, match="rerun the promotion to resume"):
                    await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                executor=DaskExecutor(first,
                                                                      credentials=ON_WORKERS))
    finally:
        lone.stop()
    assert await datasets(client) == []
    fields = await index.redis.hgetall(key)
    assert b"plan" in fields and fields[b"status"] == b"running"
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        sent = Sent(monkeypatch)  # this process's sends only: the workers are processes
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                          executor=DaskExecutor(dc, credentials=ON_WORKERS))
    assert sent.bytes == 0 and sent.keys == []
    assert sum((await dc.run(_stores_on_worker)).values()) >= 1
    await assert_published(client, uri, entry, s3_credentials["AWS_ENDPOINT"],
                           second_moto_server.url, dest_bucket)
    assert len(await datasets(client)) == 1
    assert (await index.redis.hgetall(key))[b"status"] == b"published"


# -- promote_many and the CLI on a cluster ------------------------------------------------


async def test_promote_many_copies_on_the_cluster_and_only_the_coordinator_writes_records(
        index, client, tmp_path, second_moto_server, s3_credentials, dc, monkeypatch):
    """promote_many with an executor: every entry's shards were tasks at the scheduler
    and the coordinator sent no byte itself; both records are on the PDS; no task
    carried a secret (the S3 key, the PDS password or tokens)."""
    entries = [await insert(index, tmp_path, f"many{i}", shards=3, per_shard=300,
                            stem=f"many{i}") for i in range(2)]
    dest_bucket = make_bucket(second_moto_server.url)
    await dc.register_plugin(RunSpecs())
    try:
        async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            keys = [promotion_key(client.did, e, e.name, dest) for e in entries]
            sent = Sent(monkeypatch)
            outcomes = await promote_many(entries, index, client, data_store=dest,
                                          executor=DaskExecutor(dc, credentials=ON_WORKERS))
        specs = await run_specs_of(dc)
    finally:
        await dc.unregister_scheduler_plugin(RunSpecs.name)
    assert [o.error for o in outcomes] == [None, None]
    assert sent.bytes == 0 and sent.keys == []
    for k in keys:  # atdata-shard-{promotion[:12]}-...
        assert any(name.startswith(f"atdata-shard-{k[:12]}-") for name in specs), sorted(specs)
    assert_no_secret(list(specs.values()), secrets_of(client))
    records = await datasets(client)
    assert sorted(r["uri"] for r in records) == sorted(o.uri for o in outcomes)
    copied = []
    for entry, outcome in zip(entries, outcomes, strict=True):
        got = await AtmosphereIndex(client).get_dataset(outcome.uri)
        copied += [u.removeprefix(f"s3://{dest_bucket}/") for u in got.data_urls]
        for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
            body = s3(second_moto_server.url).get_object(
                Bucket=dest_bucket, Key=dst.removeprefix(f"s3://{dest_bucket}/"))["Body"].read()
            assert hashlib.sha256(body).hexdigest() == entry.checksums[src]
    assert sorted(objects(second_moto_server.url, dest_bucket)) == sorted(copied)
    assert open_uploads(second_moto_server.url, dest_bucket) == []


async def test_the_cli_scheduler_flag_copies_on_a_real_cluster(
        index, client, tmp_path, pds, pds_account, redis_url, s3_credentials,
        second_moto_server, pair, dc):
    """``atdata-async promote --scheduler tcp://...`` (the real CLI, its own process):
    published, the shards were tasks at that scheduler, the copies identical."""
    entry = await insert(index, tmp_path, "viacli", shards=3, per_shard=300, stem="viacli")
    dest_bucket = make_bucket(second_moto_server.url)
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    pkey = promotion_key(client.did, entry, "viacli", dest)
    args = ["promote", "viacli", "--copy-to", f"s3://{dest_bucket}/promoted",
            "--credentials", write_env(tmp_path / "dst.env", second_moto_server.url),
            "--source-credentials", write_env(tmp_path / "src.env",
                                              s3_credentials["AWS_ENDPOINT"]),
            "--scheduler", pair.scheduler_address,
            "--worker-credentials-prefix", "ATDATA_TEST_"]
    await dc.register_plugin(RunSpecs())
    try:
        done = await anyio.run_process(
            [sys.executable, "-m", "atdata_async.cli", *args], cwd=REPO, check=False,
            env=cli_env(redis_url, pds, pds_account))
        specs = await run_specs_of(dc)
    finally:
        await dc.unregister_scheduler_plugin(RunSpecs.name)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"published at://" in done.stdout, done.stdout
    assert any(k.startswith(f"atdata-shard-{pkey[:12]}-") for k in specs), sorted(specs)
    assert_no_secret(list(specs.values()), [SECRET, pds_account["password"]])
    (record,) = await datasets(client)
    await assert_published(client, record["uri"], entry, s3_credentials["AWS_ENDPOINT"],
                           second_moto_server.url, dest_bucket)


# -- correctness with 1, 2 and 4 worker processes -----------------------------------------


@pytest.mark.parametrize("workers", [1, 2, 4])
async def test_correct_with_1_2_and_4_worker_processes(index, client, tmp_path, workers,
                                                       second_moto_server, s3_credentials):
    """8 multipart shards on N worker processes (default groups): bytes identical
    (boto3), exactly the record's objects, 0 open uploads, 1 record, the journal
    published; and the copies were spread over the workers."""
    entry = await insert(index, tmp_path, f"n{workers}", shards=8, per_shard=300,
                         stem=f"n{workers}")
    dest_bucket = make_bucket(second_moto_server.url)
    with LocalCluster(n_workers=workers, processes=True, threads_per_worker=2,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      env=WORKER_ENV) as cluster:
        async with Client(cluster.scheduler_address, asynchronous=True) as c, \
                store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            await c.wait_for_workers(workers)
            uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                              executor=DaskExecutor(c, credentials=ON_WORKERS))
            used = [n for n in (await c.run(_stores_on_worker)).values() if n]
            key = journal_key(promotion_key(client.did, entry, entry.name, dest))
    assert len(used) >= min(workers, 2), used
    await assert_published(client, uri, entry, s3_credentials["AWS_ENDPOINT"],
                           second_moto_server.url, dest_bucket)
    assert len(await datasets(client)) == 1
    assert (await index.redis.hgetall(key))[b"status"] == b"published"


# -- the extra, and a credentials file on the worker's disk ---------------------------------


def test_the_dask_extra_is_declared():
    """``pip install 'atdata-async[dask]'`` brings distributed (the installed metadata)."""
    import importlib.metadata

    meta = importlib.metadata.metadata("atdata-async")
    assert "dask" in meta.get_all("Provides-Extra")
    assert any(r.startswith("dask[distributed]") and r.endswith('extra == "dask"')
               for r in meta.get_all("Requires-Dist"))


async def test_workers_read_credentials_from_a_file_named_in_the_task(
        index, client, tmp_path, second_moto_server, s3_credentials, dc):
    """``CredentialSource(path=...)``: the task names the file, a worker reads it from
    its own disk (here the same machine's); its contents never reach the scheduler."""
    entry = await insert(index, tmp_path, "byfile", shards=2, per_shard=300, stem="byfile")
    dest_bucket = make_bucket(second_moto_server.url)
    creds = tmp_path / "worker-only.env"
    creds.write_text(f"AWS_ACCESS_KEY_ID=file-key-id\nAWS_SECRET_ACCESS_KEY={SECRET}\n")
    await dc.register_plugin(RunSpecs())
    try:
        async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            uri = await promote_to_atmosphere(
                entry, index, client, data_store=dest,
                executor=DaskExecutor(dc, credentials=CredentialSource(path=str(creds))))
        specs = await run_specs_of(dc)
    finally:
        await dc.unregister_scheduler_plugin(RunSpecs.name)
    assert specs and all(str(creds).encode() in s for s in specs.values())
    assert_no_secret(list(specs.values()), secrets_of(client))
    await assert_published(client, uri, entry, s3_credentials["AWS_ENDPOINT"],
                           second_moto_server.url, dest_bucket)
