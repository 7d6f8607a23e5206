"""Shard copies on a real Dask LocalCluster (2 worker processes) against redis-server,
moto S3 and the PDS: results, secrets kept out of the task graph, and faults (a worker
SIGKILLed mid-copy, the scheduler gone)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys

import anyio
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from atdata_async import ExecutorError, PromotionBusyError
from atdata_async._backends.s3_store import S3DataStore
from atdata_async._pipeline.executor import _per_loop
from atdata_async._pipeline.journal import PromotionJournal, epoch_key, journal_key
from atdata_async._pipeline.promote import _open_journal, plan_promotion, promotion_key
from atdata_async.atmosphere import DATASET_COLLECTION, AtmosphereIndex
from atdata_async.promote import CredentialSource, DaskExecutor, promote_to_atmosphere
from tests.conftest import make_bucket, make_credentials
from tests.dask_faults import FailOnce, Gate, SlowParts, StallOnce
from tests.test_promote import client, index, insert, read_s3, store_for  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.pds]

SECRET = make_credentials("http://x")["AWS_SECRET_ACCESS_KEY"]
# what the workers know: credentials under a prefix of their own environment
WORKER_ENV = {"ATDATA_TEST_AWS_ACCESS_KEY_ID": "testing-key-id",
              "ATDATA_TEST_AWS_SECRET_ACCESS_KEY": SECRET}
ON_WORKERS = CredentialSource(env_prefix="ATDATA_TEST_")


def new_cluster(n: int = 2, **kw) -> LocalCluster:
    return LocalCluster(n_workers=n, processes=True, threads_per_worker=4, host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", env=WORKER_ENV, **kw)


@pytest.fixture
def dask_client(dc):  # conftest's client of the module's cluster
    return dc


def _stores_on_worker() -> int:
    return sum(len(s.stores) for s in _per_loop.values())


def _malloc_of_worker() -> tuple[str | None, bool]:
    from atdata_async._pipeline import executor

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), executor._MALLOC_TUNED


async def datasets(client) -> list[dict]:
    return [r async for r in client.list_records(DATASET_COLLECTION)]


def assert_copied(entry, got, endpoint) -> None:
    for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
        body = read_s3(endpoint, dst)
        assert hashlib.sha256(body).hexdigest() == entry.checksums[src] == got.checksums[dst]


async def test_shards_copied_on_worker_processes(index, client, tmp_path,
                                                 second_moto_server, dask_client):
    small = await insert(index, tmp_path, "few", shards=3, per_shard=20)
    dest_bucket = make_bucket(second_moto_server.url)
    executor = DaskExecutor(dask_client, credentials=ON_WORKERS)
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        uri = await promote_to_atmosphere(small, index, client, data_store=dest,
                                          executor=executor)
        assert await dest.list_multipart_uploads() == []
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(small, got, second_moto_server.url)
    assert len(await datasets(client)) == 1
    ran = await dask_client.run(_stores_on_worker)
    assert sum(ran.values()) >= 2 and all(os.getpid() != int(a.rsplit(":", 1)[-1])
                                          for a in ran)
    # the nanny set MALLOC_TRIM_THRESHOLD_ on its workers; a worker that copied set the
    # malloc thresholds back (once per process)
    malloc = list((await dask_client.run(_malloc_of_worker)).values())
    assert all(env for env, _ in malloc) and any(tuned for _, tuned in malloc)


class InFlight(SchedulerPlugin):
    """Counts the shard tasks the scheduler holds unfinished (from their arrival until
    they are in memory, erred or released), and the most it held at once."""

    name = "atdata-in-flight"

    def __init__(self) -> None:
        self.now: set[str] = set()
        self.peak = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if not str(key).startswith("atdata-shard-"):
            return
        if finish in ("memory", "erred", "released", "forgotten"):
            self.now.discard(str(key))
        else:
            self.now.add(str(key))
            self.peak = max(self.peak, len(self.now))


def _peak_in_flight(dask_scheduler) -> int:
    return dask_scheduler.plugins[InFlight.name].peak


async def test_more_tasks_in_flight_than_max_concurrency_hide_the_round_trip(
        index, client, tmp_path, second_moto_server, dask_client):
    entry = await insert(index, tmp_path, "deep", shards=8, per_shard=20, stem="deep")
    dest_bucket = make_bucket(second_moto_server.url)
    executor = DaskExecutor(dask_client, credentials=ON_WORKERS)
    # 2 workers x max_concurrency 1 x 2 (prefetch); the local limit stays 1
    assert await executor.in_flight(1) == 4
    await dask_client.register_plugin(InFlight())
    try:
        async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                              executor=executor, max_concurrency=1)
            assert await dest.list_multipart_uploads() == []
        peak = await dask_client.run_on_scheduler(_peak_in_flight)
    finally:
        await dask_client.unregister_scheduler_plugin(InFlight.name)
    # with only max_concurrency in flight the scheduler never held more than 1
    assert 1 < peak <= 4
    assert_copied(entry, await AtmosphereIndex(client).get_dataset(uri),
                  second_moto_server.url)
    assert len(await datasets(client)) == 1


def _our_tasks(dask_scheduler) -> list[bytes]:
    """Every atdata task the scheduler holds, as the scheduler stores and shows it."""
    out = []
    for key, ts in dask_scheduler.tasks.items():
        if str(key).startswith("atdata-shard-"):
            out.append(repr(ts).encode() + repr(ts.run_spec).encode()
                       + pickle.dumps(ts.run_spec))
    return out


async def test_worker_killed_mid_copy_resumes_elsewhere_and_no_secret_leaks(
        index, client, tmp_path, second_moto_server, dask_client):
    entry = await insert(index, tmp_path, "big", shards=4, per_shard=300, stem="big")
    dest_bucket = make_bucket(second_moto_server.url)
    flag, sent_log = tmp_path / "stalled.pid", tmp_path / "sent.log"
    await dask_client.register_plugin(StallOnce(str(flag), 2, str(sent_log)))
    executor = DaskExecutor(dask_client, credentials=ON_WORKERS)
    seen_tasks: list[bytes] = []
    killed: list[int] = []
    try:
        async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            async with anyio.create_task_group() as tg:

                async def kill_when_stalled() -> None:
                    with anyio.fail_after(60):
                        while not flag.exists() or not flag.read_text():
                            await anyio.sleep(0.05)
                    await anyio.sleep(0.5)  # the dead worker's journal batches are out
                    seen_tasks.extend(await dask_client.run_on_scheduler(_our_tasks))
                    pid = int(flag.read_text())
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

                tg.start_soon(kill_when_stalled)
                uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                  executor=executor, max_concurrency=4)
            assert await dest.list_multipart_uploads() == []
        logs = [str(await dask_client.get_scheduler_logs())]
        logs += [str(v) for v in (await dask_client.get_worker_logs()).values()]
    finally:
        await dask_client.unregister_worker_plugin(StallOnce.name)
    assert killed and seen_tasks
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(entry, got, second_moto_server.url)
    assert len(await datasets(client)) == 1
    # finished parts were kept: no part of any shard went up twice
    sent = sent_log.read_text().split("\n")
    assert len(sent) == len(set(sent))
    for blob in seen_tasks + [s.encode() for s in logs]:
        assert SECRET.encode() not in blob
        assert b"testing-secret" not in blob


class LoneCluster:
    """A scheduler and one worker as processes of their own (``dask scheduler`` and
    ``dask worker --no-nanny``), so that each can be killed outright by its PID."""

    def __init__(self, tmp_path) -> None:
        self.file = tmp_path / "scheduler.json"
        env = {**os.environ, **WORKER_ENV, "PYTHONPATH": os.getcwd()}
        dask = [sys.executable, "-m", "distributed.cli.dask_"]
        self.scheduler = subprocess.Popen(
            [dask[0], dask[1], dask[2] + "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(self.file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.worker = subprocess.Popen(
            [dask[0], dask[1], dask[2] + "worker", "--scheduler-file", str(self.file),
             "--no-nanny", "--nthreads", "4", "--host", "127.0.0.1", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def address(self) -> str:
        with anyio.fail_after(60):
            while not self.file.exists() or not self.file.read_text():
                await anyio.sleep(0.05)
        return json.loads(self.file.read_text())["address"]

    def stop(self) -> None:
        for proc in (self.worker, self.scheduler):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


async def test_scheduler_gone_is_an_executor_error_and_a_local_rerun_completes(
        index, client, tmp_path, second_moto_server):
    entry = await insert(index, tmp_path, "lost", shards=3, per_shard=300, stem="lost")
    dest_bucket = make_bucket(second_moto_server.url)
    flag, sent_log = tmp_path / "stalled.pid", tmp_path / "sent.log"
    lone = LoneCluster(tmp_path)
    try:
        async with Client(await lone.address(), asynchronous=True, timeout=3) as dc, \
                store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            await dc.wait_for_workers(1)
            await dc.register_plugin(StallOnce(str(flag), 3, str(sent_log)))
            executor = DaskExecutor(dc, credentials=ON_WORKERS)
            async with anyio.create_task_group() as tg:

                async def kill_scheduler() -> None:
                    with anyio.fail_after(60):
                        while not flag.exists():
                            await anyio.sleep(0.05)
                    await anyio.sleep(0.3)
                    lone.scheduler.kill()

                tg.start_soon(kill_scheduler)
                with pytest.raises(ExecutorError, match="rerun the promotion"):
                    await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                executor=executor)
    finally:
        lone.stop()
    assert await datasets(client) == []
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        # the journal is intact (its plan is there; the parts the worker finished stay
        # in it unless the worker, closing for want of a scheduler, aborted its upload)
        fields = await index.redis.hkeys(journal_key(promotion_key(client.did, entry,
                                                                    entry.name, dest)))
        assert b"plan" in fields
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        assert await dest.list_multipart_uploads() == []
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(entry, got, second_moto_server.url)
    assert len(await datasets(client)) == 1


async def test_promote_many_fans_every_entry_out(index, client, tmp_path,
                                                 second_moto_server, dask_client):
    from atdata_async.promote import promote_many

    entries = [await insert(index, tmp_path, f"m{i}", shards=2, per_shard=20, stem=f"m{i}")
               for i in range(2)]
    dest_bucket = make_bucket(second_moto_server.url)
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        outcomes = await promote_many(entries, index, client, data_store=dest,
                                      executor=DaskExecutor(dask_client, credentials=ON_WORKERS))
    assert [o.error for o in outcomes] == [None, None]
    for entry, outcome in zip(entries, outcomes, strict=True):
        assert_copied(entry, await AtmosphereIndex(client).get_dataset(outcome.uri),
                      second_moto_server.url)
    assert len(await datasets(client)) == 2


async def test_coordinator_killed_a_rerun_keeps_what_the_workers_finished(
        index, client, tmp_path, pds, pds_account, redis_url, s3_credentials,
        second_moto_server, dask_client, cluster, monkeypatch):
    from tests.test_resume import Sent, cli_env, kill_mid_copy, write_env

    entry = await insert(index, tmp_path, "coord", shards=4, per_shard=300, stem="coord")
    dest_bucket = make_bucket(second_moto_server.url)
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    key = journal_key(promotion_key(client.did, entry, "coord", dest))
    args = ["promote", "coord", "--copy-to", f"s3://{dest_bucket}/promoted",
            "--credentials", write_env(tmp_path / "dst.env", second_moto_server.url),
            "--source-credentials", write_env(tmp_path / "src.env",
                                              s3_credentials["AWS_ENDPOINT"]),
            "--concurrency", "2", "--scheduler", cluster.scheduler_address,
            "--worker-credentials-prefix", "ATDATA_TEST_"]
    await dask_client.register_plugin(SlowParts(0.15))
    try:
        fields = await kill_mid_copy(args, cli_env(redis_url, pds, pds_account), index.redis,
                                     key, lambda f: any(x.startswith("s:") for x in f))
    finally:
        await dask_client.unregister_worker_plugin(SlowParts.name)
    # The dead coordinator's tasks may still run (or, cancelled, abort their uploads):
    # the rerun starts at once, beside them; their epoch is stale, so they are refused.
    fields = {f.decode() for f in await index.redis.hkeys(key)}
    done = [int(f[2:]) for f in fields if f.startswith("s:")]
    sizes = [entry.shard_sizes[u] for u in entry.data_urls]
    async with dest:
        sent = Sent(monkeypatch)
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        assert await dest.list_multipart_uploads() == []
    # what the workers finished for the dead coordinator is not sent again
    assert sent.bytes <= sum(sizes) - sum(sizes[i] for i in done)
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(entry, got, second_moto_server.url)
    assert len(await datasets(client)) == 1


async def until(check, what: str, timeout: float = 60) -> None:
    """Poll ``check()`` (sync or async) until it is true; fails after ``timeout``."""
    with anyio.fail_after(timeout):
        while True:
            got = check()
            if not isinstance(got, bool):
                got = await got
            if got:
                return
            await anyio.sleep(0.02)


async def test_a_stale_task_beside_a_rerun_touches_neither_its_upload_nor_its_journal(
        index, client, tmp_path, second_moto_server, dask_client):
    """An earlier run's task (epoch 1), held mid-upload, is let go while the rerun (epoch
    2) continues the same multipart upload: the stale task is refused, and neither aborts
    nor completes the upload, nor changes one journal field; the rerun then publishes."""
    entry = await insert(index, tmp_path, "stale", shards=1, per_shard=300, stem="stale")
    dest_bucket = make_bucket(second_moto_server.url)
    gate = tmp_path / "gate"
    gate.mkdir()
    await dask_client.register_plugin(Gate(str(gate), after=1))
    executor = DaskExecutor(dask_client, credentials=ON_WORKERS)
    outcome: list[BaseException | None] = []
    try:
        async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            plan = plan_promotion(entry, copy_to=dest, repo=client.did)
            pkey = promotion_key(client.did, entry, entry.name, dest)
            key, shard = journal_key(pkey), plan.shards[0]
            earlier = PromotionJournal(index, pkey)
            resumes = await _open_journal(earlier, plan, entry, dest)
            runner = executor.bind(promotion=pkey, local_index=index, dest=dest,
                                   source=index.data_store, compute_checksums=True)

            async def stale() -> None:
                try:
                    await runner.settle(0, shard, resumes[0], earlier)
                    outcome.append(None)
                except Exception as exc:
                    outcome.append(exc)

            async def fields() -> dict[bytes, bytes]:
                return await index.redis.hgetall(key)

            async def journaled_part() -> bool:
                got = await fields()
                return b"u:0" in got and any(f.startswith(b"p:0:") for f in got)

            async with anyio.create_task_group() as tg:
                tg.start_soon(stale)
                await until(lambda: (gate / f"waiting-{earlier.epoch}").exists(), "stale held")
                await until(journaled_part, "the stale task's first part journaled")
                upload_id = json.loads((await fields())[b"u:0"])["id"]
                await earlier.release()  # its coordinator is gone; its task is not
                published: list[str] = []

                async def rerun() -> None:
                    published.append(await promote_to_atmosphere(
                        entry, index, client, data_store=dest, executor=executor))

                tg.start_soon(rerun)
                await until(lambda: (gate / f"waiting-{earlier.epoch + 1}").exists(),
                            "the rerun held mid-upload")
                assert int(await index.redis.get(epoch_key(pkey))) == earlier.epoch + 1

                async def rerun_part_journaled() -> bool:  # part 1 kept, part 2 its own
                    return sum(f.startswith(b"p:0:") for f in await fields()) == 2

                await until(rerun_part_journaled, "the rerun's part journaled")
                before = await fields()
                assert json.loads(before[b"u:0"])["id"] == upload_id  # the rerun continues it
                (gate / f"open-{earlier.epoch}").touch()
                await until(lambda: bool(outcome), "the stale task's end")
                assert isinstance(outcome[0], PromotionBusyError), outcome
                assert await fields() == before  # not one journal field written or deleted
                assert upload_id in [u["UploadId"] for u in await dest.list_multipart_uploads()]
                assert await dest.list_objects(dest_prefix_of(shard.dest_key)) == {}
                (gate / f"open-{earlier.epoch + 1}").touch()
            assert await dest.list_multipart_uploads() == []
            # a stale task that starts after the rerun is refused before any request
            with pytest.raises(PromotionBusyError, match="no longer"):
                await runner.settle(0, shard, resumes[0], earlier)
            assert (await fields())[b"status"] == b"published"
    finally:
        (gate / "open-all").touch()
        await dask_client.unregister_worker_plugin(Gate.name)
    got = await AtmosphereIndex(client).get_dataset(published[0])
    assert_copied(entry, got, second_moto_server.url)
    assert len(await datasets(client)) == 1


def dest_prefix_of(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/"


@pytest.mark.parametrize("where", ["UploadPart", "CompleteMultipartUpload"])
async def test_a_vanished_upload_restarts_the_shard(index, client, tmp_path, where,
                                                    second_moto_server, monkeypatch):
    """The upload is aborted under the copy (by cleanup, or a stale worker): the shard
    restarts with a new upload and the promotion completes. moto answers UploadPart and
    CompleteMultipartUpload of an aborted upload with a 500 (a KeyError), so after the real
    abort the answer is what S3 and radosgw send: 404 NoSuchUpload."""
    from botocore.exceptions import ClientError

    entry = await insert(index, tmp_path, f"gone{where[0]}", shards=2, per_shard=300,
                         stem="gone")
    dest_bucket = make_bucket(second_moto_server.url)
    vanished: list[str] = []
    send, complete = S3DataStore._send_part, S3DataStore.complete_multipart

    async def vanish(store, key, upload_id) -> None:
        vanished.append(upload_id)  # before any await: the other shard runs meanwhile
        await store.abort_multipart(key, upload_id)
        with store.errors(where, store.url(key)):
            raise ClientError({"Error": {"Code": "NoSuchUpload", "Message": "gone"},
                               "ResponseMetadata": {"HTTPStatusCode": 404}}, where)

    async def send_part(store, key, upload_id, number, data, digest, token, *args):
        if where == "UploadPart" and number == 2 and not vanished:
            # the token _send_part would give back (a streamed part holds a stream slot)
            store.stream_slots().release_on_behalf_of(token)
            await vanish(store, key, upload_id)
        await send(store, key, upload_id, number, data, digest, token, *args)

    async def complete_multipart(store, key, upload_id, etags):
        if where == "CompleteMultipartUpload" and not vanished:
            await vanish(store, key, upload_id)
        return await complete(store, key, upload_id, etags)

    monkeypatch.setattr(S3DataStore, "_send_part", send_part)
    monkeypatch.setattr(S3DataStore, "complete_multipart", complete_multipart)
    async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        assert await dest.list_multipart_uploads() == []
    assert len(vanished) == 1
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(entry, got, second_moto_server.url)
    assert len(await datasets(client)) == 1


def test_bench_dask_smoke():
    """benchmarks/bench_dask.py runs end to end (tiny): every copy identical, none open;
    locally, in the control's plain process, one task per shard (--before) and in groups
    (16 shards, 1 worker: 4 per task), against moto served with keep-alive."""
    done = subprocess.run([sys.executable, "benchmarks/bench_dask.py", "--shards", "16",
                           "--kib", "16", "--workers", "1", "--concurrency", "2",
                           "--repeat", "1", "--before"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("local", "dask"))]
    # every copy identical, 0 open uploads (the cluster rows go on with the
    # engine-attributable CPU after a "|")
    assert len(rows) == 4 and all(" 16/16 " in r and r.split(" |")[0].endswith(" 0")
                                  for r in rows), done.stdout
    assert any(r.startswith("local, 1 process(es)") for r in rows), done.stdout
    assert "(keep-alive)" in done.stdout and "The engine over its control" in done.stdout
    assert all(" | " in r for r in rows if r.startswith("dask")), done.stdout
    assert "cluster config: recommended (DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" \
        in done.stdout
    assert "dask, 1/task, 4 in flight" in rows[2], done.stdout
    assert "dask, 4/task, 8 in flight" in rows[3], done.stdout


async def test_a_group_whose_worker_is_killed_keeps_its_finished_shards(
        index, client, tmp_path, second_moto_server, dask_client):
    """One task carries 8 shards; its worker is SIGKILLed once some of them finished:
    the scheduler reruns the group elsewhere, which skips the shards the journal says
    are copied and continues the open uploads from their journaled parts (no part sent
    twice), bytes identical, 1 record, 0 open uploads."""
    from tests.conftest import TEST_PART

    entry = await insert(index, tmp_path, "grp", shards=8, per_shard=300, stem="grp")
    parts = max(-(-entry.shard_sizes[u] // TEST_PART) for u in entry.data_urls)
    dest_bucket = make_bucket(second_moto_server.url)
    flag, sent_log = tmp_path / "stalled.pid", tmp_path / "sent.log"
    # the worker's 4 slots: the 5th shard starts only once one of the first 4 finished
    await dask_client.register_plugin(StallOnce(str(flag), 5 * parts, str(sent_log)))
    executor = DaskExecutor(dask_client, credentials=ON_WORKERS, group_size=8)
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    key = journal_key(promotion_key(client.did, entry, entry.name, dest))
    seen_tasks: list[bytes] = []
    finished: list[int] = []
    try:
        async with dest:
            async with anyio.create_task_group() as tg:

                async def kill_when_stalled() -> None:
                    with anyio.fail_after(60):
                        while not flag.exists() or not flag.read_text():
                            await anyio.sleep(0.05)
                    await anyio.sleep(0.5)  # the dead worker's journal batches are out
                    seen_tasks.extend(await dask_client.run_on_scheduler(_our_tasks))
                    finished.extend(int(f[2:]) for f in
                                    (x.decode() for x in await index.redis.hkeys(key))
                                    if f.startswith("s:"))
                    os.kill(int(flag.read_text()), signal.SIGKILL)

                tg.start_soon(kill_when_stalled)
                uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                  executor=executor, max_concurrency=4)
            assert await dest.list_multipart_uploads() == []
    finally:
        await dask_client.unregister_worker_plugin(StallOnce.name)
    assert len(seen_tasks) == 1  # the 8 shards went as one task
    assert finished, "no shard of the group had finished before the kill"
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(entry, got, second_moto_server.url)
    assert len(await datasets(client)) == 1
    sent = [line for line in sent_log.read_text().split("\n") if line]
    assert len(sent) == len(set(sent))  # no part of any shard went up twice
    by_key = {line.split(" ")[0] for line in sent}
    assert len(by_key) == 8  # every shard's parts went up, each exactly once


class Keys(SchedulerPlugin):
    """Every atdata task key the scheduler was given."""

    name = "atdata-keys"

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if str(key).startswith("atdata-shard-"):
            self.keys.add(str(key))


def _keys_seen(dask_scheduler) -> list[str]:
    return sorted(dask_scheduler.plugins[Keys.name].keys)


async def test_retries_send_only_the_failed_shard_of_a_group_again(
        index, client, tmp_path, second_moto_server, dask_client):
    """A group of 4 in which one shard's part fails once: with retries=1 only that shard
    goes again (a task of its own), the others are not redone; bytes identical."""
    entry = await insert(index, tmp_path, "retry", shards=4, per_shard=300, stem="retry")
    dest_bucket = make_bucket(second_moto_server.url)
    flag = tmp_path / "failed"
    await dask_client.register_plugin(FailOnce(str(flag)))
    await dask_client.register_plugin(Keys())
    executor = DaskExecutor(dask_client, credentials=ON_WORKERS, group_size=4, retries=1)
    try:
        async with store_for(make_credentials(second_moto_server.url), dest_bucket) as dest:
            uri = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                              executor=executor)
            assert await dest.list_multipart_uploads() == []
        keys = await dask_client.run_on_scheduler(_keys_seen)
    finally:
        await dask_client.unregister_worker_plugin(FailOnce.name)
        await dask_client.unregister_scheduler_plugin(Keys.name)
    assert flag.exists()
    first = [k for k in keys if not k.endswith("-r1")]
    again = [k for k in keys if k.endswith("-r1")]
    # atdata-shard-{promotion}-{first shard}-{shards}-{run}[-r{attempt}]
    assert len(first) == 1 and first[0].split("-")[3:5] == ["0", "4"], keys  # one task
    assert len(again) == 1 and again[0].split("-")[4] == "1", keys  # the failed shard
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert_copied(entry, got, second_moto_server.url)
    assert len(await datasets(client)) == 1
