"""Fencing at S3 (docs/scale-out.md, Fencing): a run completes or aborts a multipart
upload only while it owns the journal and its lease outlasts the request; a local run
stalled past its lease (SIGSTOP) is refused and leaves the rerun's upload and journal
as they were. Against redis-server and moto; time is a controllable clock, never a
timed assertion."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import anyio
import boto3
import pytest

from atdata_async import Dataset, PromotionBusyError
from atdata_async._pipeline import fence as fence_mod
from atdata_async._pipeline.fence import Fence, fenced, run_fence
from atdata_async._pipeline.insert import INSERT_KEY_PREFIX
from atdata_async._pipeline.journal import (
    PromotionJournal,
    epoch_key,
    inflight_key,
    journal_key,
    stale_run,
)
from atdata_async._pipeline.promote import ShardPlan, promotion_key
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.promote import promote_to_atmosphere
from tests.conftest import TEST_PART, make_bucket, make_credentials, store_for
from tests.faultproxy import Fault, FaultProxy
from tests.samples import FeatureSample
from tests.test_promote import client, index, insert, read_s3  # noqa: F401  (fixtures)
from tests.test_resume import (
    REPO,
    SCHEMA_REF,
    check_landed,
    cli_env,
    insert_child_args,
    records,
    run_id_of,
    shard_files,
    write_env,
)

pytestmark = pytest.mark.anyio
KEY = "fenced/data-000000.tar"
SHARDS = [ShardPlan("s3://src/k0.tar", "s3", KEY, TEST_PART, None)]


def raw(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y")


def open_upload(s3, bucket: str, body: bytes) -> tuple[str, dict[int, str]]:
    """A real multipart upload at KEY with one part: (upload id, {1: ETag})."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=1,
                          Body=body)["ETag"]
    return upload_id, {1: etag}


def still_open(s3, bucket: str) -> list[str]:
    return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


async def run_of(index, name: str) -> PromotionJournal:
    journal = PromotionJournal(index, name)
    await journal.open({"v": 1}, SHARDS)
    return journal


class Clock:
    """A monotonic clock the test moves: each reading advances it by ``step``."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now - self.step


async def test_a_live_lease_completes_and_renews_for_its_holder(index, moto_server):
    bucket, s3 = make_bucket(moto_server.url), raw(moto_server.url)
    body = os.urandom(1000)
    upload_id, etags = open_upload(s3, bucket, body)
    journal = await run_of(index, "a" * 64)
    lease = journal.lease_key
    await index.redis.pexpire(lease, 3000)  # too short for a worker; its holder renews it
    async with store_for(make_credentials(moto_server.url), bucket) as store:
        view = fenced(store, run_fence(journal, SHARDS))
        await view.complete_multipart(KEY, upload_id, etags)
        assert await index.redis.pttl(lease) > 3000  # renewed by the check itself
        assert view.request_count == store.request_count  # one store seen two ways
    assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == body
    assert still_open(s3, bucket) == []
    await journal.release()


@pytest.mark.parametrize("case", ["about to expire", "released", "slow check", "taken over",
                                  "epoch drawn again"])
async def test_a_run_without_enough_lease_refuses_to_complete(index, moto_server, case):
    bucket, s3 = make_bucket(moto_server.url), raw(moto_server.url)
    upload_id, etags = open_upload(s3, bucket, os.urandom(1000))
    journal = await run_of(index, "b" * 64)
    # a worker's fence (not the lease's holder: it never renews) or, released, the holder's
    fence = Fence(index, journal.promotion, journal.epoch or 0)
    match = "lease ends in"
    if case == "about to expire":
        await index.redis.pexpire(journal.lease_key, int((fence.timeout + fence.margin) * 900))
    elif case == "released":
        await journal.release()
        fence = run_fence(journal, SHARDS)
        match = "lease expired or was released"
    elif case == "slow check":  # a fresh lease, but the check's answer came 25 s late
        fence = Fence(index, journal.promotion, journal.epoch or 0, clock=Clock(25.0))
    elif case == "epoch drawn again":  # Redis lost its keys: a rerun drew the same epoch
        await index.redis.set(journal.lease_key, "elsewhere:1:rerun", ex=30)
        fence = run_fence(journal, SHARDS)
        match = "no longer the promotion's"
    else:
        await journal.release()
        rerun = await run_of(index, journal.promotion)
        assert rerun.epoch == (journal.epoch or 0) + 1
        match = "no longer the promotion's"
    async with store_for(make_credentials(moto_server.url), bucket) as store:
        with pytest.raises(PromotionBusyError, match=match):
            await fenced(store, fence).complete_multipart(KEY, upload_id, etags)
    assert still_open(s3, bucket) == [upload_id]
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("late", [4.0, 12.0])
async def test_a_workers_budget_ends_with_its_in_flight_mark(index, moto_server, late):
    """A worker's check marks its request in flight for timeout + margin from a moment
    after the check was sent, and a rerun taking over from a dead coordinator waits for
    that mark only: an answer that came ``late`` seconds after the check was sent leaves
    the request that much less (none at all past its timeout: refused), even with plenty
    of lease."""
    bucket, s3 = make_bucket(moto_server.url), raw(moto_server.url)
    upload_id, etags = open_upload(s3, bucket, os.urandom(1000))
    journal = await run_of(index, "f" * 64)
    worker = Fence(index, journal.promotion, journal.epoch or 0, clock=Clock(late))
    if late < worker.timeout:
        budget = await worker.admit("completing the upload", KEY, upload_id)
        assert budget == pytest.approx(worker.timeout - late)
    else:
        async with store_for(make_credentials(moto_server.url), bucket) as store:
            with pytest.raises(PromotionBusyError, match="epoch check took the whole 10s"):
                await fenced(store, worker).complete_multipart(KEY, upload_id, etags)
        assert still_open(s3, bucket) == [upload_id]
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    await journal.release()


async def test_a_complete_that_outlasts_its_budget_is_cancelled_and_refused(
        index, moto_server):
    """The request is bounded by its own timeout: answered later (the fault proxy holds
    it), it is cancelled and the run stops as stale, whatever the server does after."""
    bucket, s3 = make_bucket(moto_server.url), raw(moto_server.url)
    upload_id, etags = open_upload(s3, bucket, os.urandom(1000))
    journal = await run_of(index, "e" * 64)
    # its budget is what its timeout leaves after the check (a loaded Redis shortens it)
    worker = Fence(index, journal.promotion, journal.epoch or 0, timeout=1.0, margin=0.1)
    with FaultProxy(moto_server.url) as proxy:
        held = proxy.add(Fault("delay", method="POST", path=r"uploadId=", seconds=3.0))
        async with store_for(make_credentials(proxy.url), bucket, max_attempts=1) as store:
            with pytest.raises(PromotionBusyError, match=r"took longer than [01]\.\ds"):
                await fenced(store, worker).complete_multipart(KEY, upload_id, etags)
        assert held.fired == 1
        while held.active:  # the proxy still forwards it (the case docs/scale-out.md
            await anyio.sleep(0.05)  # argues is harmless): let it end before it closes
    await journal.release()


async def test_a_stale_run_aborts_only_what_no_journal_names(index, moto_server):
    """The rerun continues an upload its journal names: the stale run leaves it open. An
    upload the stale run opened and never journaled is nobody's: it aborts it."""
    bucket, s3 = make_bucket(moto_server.url), raw(moto_server.url)
    continued, _ = open_upload(s3, bucket, os.urandom(1000))
    own, _ = open_upload(s3, bucket, os.urandom(1000))
    stale = await run_of(index, "c" * 64)
    await stale.release()
    rerun = await run_of(index, stale.promotion)
    rerun.note("u:0", f'{{"fp": "x", "id": "{continued}", "ps": {TEST_PART}}}')
    await rerun.flush()
    async with store_for(make_credentials(moto_server.url), bucket) as store:
        view = fenced(store, run_fence(stale, SHARDS))
        await view.abort_multipart(KEY, continued)
        await view.abort_multipart(KEY, own)
    assert still_open(s3, bucket) == [continued]


async def test_an_abort_whose_epoch_check_hangs_gives_up_and_leaves_the_upload(
        index, moto_server, monkeypatch, caplog):
    """The abort is cleanup, shielded so that it runs after a cancellation: its epoch check
    is bounded there, or a Redis that never answers (fault: a check that never returns)
    would hold the cancelled run for good. Unchecked, the upload is left for the rerun."""
    bucket, s3 = make_bucket(moto_server.url), raw(moto_server.url)
    upload_id, _ = open_upload(s3, bucket, os.urandom(1000))
    journal = await run_of(index, "g" * 64)
    monkeypatch.setattr(fence_mod, "check_fence", lambda *a, **k: anyio.sleep_forever())
    fence = Fence(index, journal.promotion, journal.epoch or 0, timeout=0.2, margin=0.1)
    async with store_for(make_credentials(moto_server.url), bucket) as store:
        with anyio.CancelScope() as scope:
            scope.cancel()  # the run was cancelled: its cleanup aborts
            await fenced(store, fence).abort_multipart(KEY, upload_id)
    assert still_open(s3, bucket) == [upload_id]
    assert "cannot check the epoch: no answer in 0.2s" in caplog.text
    monkeypatch.undo()
    await journal.release()


async def test_fencing_errors_name_an_insert_and_a_stale_insert_keeps_the_rerun_journal(
        index):
    name = INSERT_KEY_PREFIX + "0123456789ab-cdef"
    stale = await run_of(index, name)
    await stale.release()
    rerun = await run_of(index, name)
    with pytest.raises(PromotionBusyError, match=r"insert 0123456789ab: dropping the journal "
                       r"refused: .* no longer the insert's"):
        await stale.forget()
    assert await index.redis.get(epoch_key(name)) == str(rerun.epoch).encode()
    assert await index.redis.exists(journal_key(name), rerun.lease_key) == 2
    assert "promotion" not in str(stale_run(name, 1, "completing the upload of k"))
    await rerun.forget()
    assert await index.redis.exists(journal_key(name), epoch_key(name)) == 0
    await rerun.forget()  # dropped already (another run found the work done): no refusal


async def test_an_insert_indexed_then_taken_over_returns_its_entry(
        index, tmp_path, monkeypatch):
    """A rerun that takes the journal over between the indexing and the journal's drop
    (fault: a new epoch drawn right after the entry is stored) leaves the insert done: it
    returns its entry (an insert that raises indexed nothing), and the newer run's journal
    stays."""
    paths = shard_files(tmp_path, "late", 1, 1500)
    original = type(index)._store_entry

    async def taken_over_after(self, entry):
        await original(self, entry)
        [name] = [k.decode() for k in await self.redis.smembers("atdata_async:journals")
                  if k.startswith(INSERT_KEY_PREFIX.encode())]
        await self.redis.incr(epoch_key(name))  # a newer run's epoch

    monkeypatch.setattr(type(index), "_store_entry", taken_over_after)
    entry = await index.insert_dataset(Dataset[FeatureSample](paths), name="late",
                                       prefix="late")
    assert [e.cid for e in await index.list_entries()] == [entry.cid]
    assert await index.redis.smembers("atdata_async:journals")  # the newer run's, kept


async def test_a_rerun_taking_over_from_a_dead_coordinator_waits_out_its_workers(
        index, moto_server):
    """A dead coordinator's lease is taken at once (its process is gone), but its workers
    live: a complete one was admitted to may still be under way. The rerun waits until
    none can be before it lists anything; with no such request it does not wait."""
    bucket, s3 = make_bucket(moto_server.url), raw(moto_server.url)
    upload_id, etags = open_upload(s3, bucket, os.urandom(1000))
    for admitted in (True, False):
        coordinator = await run_of(index, "d" * 64)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        await index.redis.set(coordinator.lease_key, f"{socket.gethostname()}:{dead.pid}:x",
                              ex=30)
        if admitted:
            # a real complete must end within timeout, and the rerun take the lease within
            # timeout + margin of the check: seconds, not tenths (2 loaded cores)
            worker = Fence(index, coordinator.promotion, coordinator.epoch or 0, timeout=3.0,
                           margin=1.0)
            async with store_for(make_credentials(moto_server.url), bucket) as store:
                await fenced(store, worker).complete_multipart(KEY, upload_id, etags)
            assert await index.redis.pttl(inflight_key(coordinator.promotion)) > 0
        rerun = await run_of(index, coordinator.promotion)
        assert rerun.epoch == (coordinator.epoch or 0) + 1
        assert (rerun.waited > 0) is admitted
        assert not await index.redis.exists(inflight_key(coordinator.promotion))
        await rerun.release()
    assert still_open(s3, bucket) == []


# -- a local run stalled past its lease ---------------------------------------------------


def stopped(proc: subprocess.Popen) -> bool:
    with open(f"/proc/{proc.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


class Held:
    """Holds the test process's fenced completes (the rerun's) until ``go`` is set."""

    def __init__(self, monkeypatch) -> None:
        self.reached, self.go = anyio.Event(), anyio.Event()
        original = fence_mod.FencedStore.complete_multipart

        async def held(store, *args, **kw):
            self.reached.set()
            await self.go.wait()
            return await original(store, *args, **kw)

        monkeypatch.setattr(fence_mod.FencedStore, "complete_multipart", held)


async def stall_rerun_and_resume(proc: subprocess.Popen, redis, key: str, rerun,
                                 held: Held, size: int, uploads) -> tuple[str, str]:
    """The child SIGSTOPped itself before its complete; its lease is forced to expire, the
    rerun takes over and is held at its own complete; the child is continued and must
    end refused, leaving the rerun's upload and journal as they were. (stderr, upload)."""
    try:
        with anyio.fail_after(90):
            while not stopped(proc):
                assert proc.poll() is None, proc.communicate()
                await anyio.sleep(0.05)
        stale_epoch = await redis.get(epoch_key(key.removeprefix("atdata_async:journal:")))
        stale_upload = json.loads(await redis.hget(key, "u:0"))["id"]
        await redis.pexpire(key + ":lease", 1)  # the stall outlasts the lease
        while await redis.exists(key + ":lease"):
            await anyio.sleep(0.01)
        async with anyio.create_task_group() as tg:
            tg.start_soon(rerun)
            with anyio.fail_after(90):
                await held.reached.wait()
                parts = -(-size // TEST_PART)
                while sum(f.startswith(b"p:0:") for f in await redis.hkeys(key)) < parts:
                    await anyio.sleep(0.01)  # the rerun's last part, journaled behind
            before = await redis.hgetall(key)
            assert await redis.get(epoch_key(key.removeprefix("atdata_async:journal:"))) \
                != stale_epoch
            proc.send_signal(signal.SIGCONT)
            _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=90))
            assert proc.returncode != 0, err
            assert await redis.hgetall(key) == before  # not one field written or deleted
            assert json.loads(before[b"u:0"])["id"] == stale_upload  # the rerun continues it
            assert stale_upload in [u["UploadId"] for u in await uploads()]  # still open
            held.go.set()
        return err.decode(), stale_upload
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.send_signal(signal.SIGCONT)
            proc.communicate()


@pytest.mark.pds
async def test_a_promotion_stopped_past_its_lease_is_refused_beside_the_rerun(
        index, client, tmp_path, pds, pds_account, redis_url, s3_credentials,
        second_moto_server, monkeypatch):
    entry = await insert(index, tmp_path, "stopme", shards=1, per_shard=1500)
    dest_bucket = make_bucket(second_moto_server.url)
    dest = store_for(make_credentials(second_moto_server.url), dest_bucket)
    key = journal_key(promotion_key(client.did, entry, "stopme", dest))
    args = ["promote", "stopme", "--copy-to", f"s3://{dest_bucket}/promoted",
            "--credentials", write_env(tmp_path / "dst.env", second_moto_server.url),
            "--source-credentials", write_env(tmp_path / "src.env",
                                              s3_credentials["AWS_ENDPOINT"]),
            "--concurrency", "1"]
    env = cli_env(redis_url, pds, pds_account, STOP_BEFORE_COMPLETE=1)
    proc = subprocess.Popen([sys.executable, "-m", "tests.promote_child", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    held, published = Held(monkeypatch), []
    s3 = raw(second_moto_server.url)

    async def rerun() -> None:
        published.append(await promote_to_atmosphere(entry, index, client, data_store=dest))

    async with dest:
        err, _ = await stall_rerun_and_resume(proc, index.redis, key, rerun, held,
                                              entry.shard_sizes[entry.data_urls[0]],
                                              dest.list_multipart_uploads)
        assert "stopping before CompleteMultipartUpload" in err
        # refused (first error: its complete, or its lease renewal, which may run first)
        assert "refused: this run (epoch" in err and "no longer the promotion's" in err, err
        assert "hint: another run holds it now" in err, err
        assert await dest.list_multipart_uploads() == []
    assert still_open(s3, dest_bucket) == []
    got = await AtmosphereIndex(client).get_dataset(published[0])
    for src, dst in zip(entry.data_urls, got.data_urls, strict=True):
        assert read_s3(second_moto_server.url, dst) == read_s3(s3_credentials["AWS_ENDPOINT"],
                                                               src)
    assert len(await records(client)) == 1
    assert (await index.redis.hget(key, "status")) == b"published"


async def test_an_insert_stopped_past_its_lease_is_refused_beside_the_rerun(
        index, tmp_path, redis_url, s3_credentials, bucket, monkeypatch):
    paths = shard_files(tmp_path, "stopins", 1, 1500)
    run = run_id_of(index.data_store, "stopins", "stopins", SCHEMA_REF, paths)
    key = journal_key(INSERT_KEY_PREFIX + run)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ATDATA_"))}
    env.update(ATDATA_REDIS_URL=redis_url, TEST_PART=str(TEST_PART), STOP_BEFORE_COMPLETE="1")
    args = insert_child_args(paths, "stopins", f"s3://{bucket}/stopins",
                             s3_credentials["AWS_ENDPOINT"], tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "tests.promote_child", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    held, entries = Held(monkeypatch), []

    async def rerun() -> None:
        entries.append(await index.insert_dataset(Dataset[FeatureSample](paths),
                                                  name="stopins", prefix="stopins"))

    err, _ = await stall_rerun_and_resume(proc, index.redis, key, rerun, held,
                                          os.path.getsize(paths[0]),
                                          index.data_store.list_multipart_uploads)
    assert f"insert {run[:12]}: " in err and "no longer the insert's" in err, err
    assert "promotion" not in err
    assert "hint: another run holds it now" in err, err
    assert await index.data_store.list_multipart_uploads() == []
    assert [e.cid for e in await index.list_entries()] == [entries[0].cid]
    assert await index.redis.exists(key) == 0  # the rerun dropped its journal at the end
    check_landed(s3_credentials["AWS_ENDPOINT"], entries[0], paths)
