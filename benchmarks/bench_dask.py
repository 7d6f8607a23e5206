"""The Dask engine against the local task group: the copy phase of one promotion.

    .venv/bin/python benchmarks/bench_dask.py [--shards 256] [--kib 256] [--workers 1,2,4]

Starts its own redis-server and two in-process moto S3 servers on 127.0.0.1, puts N
shards in one, and copies them into the other (streamed cross-endpoint, journaled) with
the promotion's own shard step: once in this process's task group, and once per worker
count on a LocalCluster of worker processes (DaskExecutor). The PDS writes are the same
in both and are left out. Every copy is checked byte for byte (sha256) afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import logging

logging.getLogger("werkzeug").setLevel(logging.WARNING)
SECRET_ENV = {"BENCH_AWS_ACCESS_KEY_ID": "bench-key", "BENCH_AWS_SECRET_ACCESS_KEY": "bench-s"}


def creds(url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT": url, "AWS_ACCESS_KEY_ID": "bench-key",
            "AWS_SECRET_ACCESS_KEY": "bench-s"}


async def copy_phase(redis_url: str, src_url: str, dst_url: str, src_bucket: str,
                     keys: list[str], sums: dict[str, str], executor, concurrency: int) -> dict:
    from atdata_async._backends.redis_index import LocalIndex
    from atdata_async._backends.s3_store import S3DataStore
    from atdata_async._backends.tasks import run_per_shard
    from atdata_async._model.progress import ProgressTracker
    from atdata_async._pipeline.journal import PromotionJournal, plan_document
    from atdata_async._pipeline.promote import ShardPlan, _settle_shard, settle_elsewhere

    dst_bucket = f"d-{uuid.uuid4().hex[:10]}"
    async with S3DataStore(creds(dst_url), bucket=dst_bucket) as dest, \
            S3DataStore(creds(src_url), bucket=src_bucket) as source, \
            LocalIndex(redis_url) as index:
        s3 = await dest.client()
        await s3.create_bucket(Bucket=dst_bucket)
        plans = [ShardPlan(f"s3://{src_bucket}/{k}", "s3", f"promoted/bench/{k}", None,
                           sums[k]) for k in keys]
        pkey = uuid.uuid4().hex
        journal = PromotionJournal(index, pkey)
        await journal.open(plan_document(plans, entry_cid="bench", name="bench",
                                         bucket=dst_bucket, endpoint=dst_url), plans)
        tracker = ProgressTracker(None, len(plans), 0)
        logs = [journal.shard(i, p, _resume()) for i, p in enumerate(plans)]
        remote = None
        if executor is not None:
            remote = executor.bind(promotion=pkey, local_index=index, dest=dest,
                                   source=source, compute_checksums=True)
        from atdata_async._backends.http_reader import HttpShardReader

        started = time.perf_counter()
        async with HttpShardReader() as http:
            flusher = asyncio.ensure_future(journal.run_flusher())

            async def one(item):
                i, plan = item
                if remote is not None:
                    return await settle_elsewhere(remote, i, plan, _resume(), logs[i], tracker)
                return await _settle_shard(plan, source, http, dest, True, tracker, logs[i],
                                           _resume())

            settled = await run_per_shard([p.source_url for p in plans],
                                          list(enumerate(plans)), one, concurrency, tracker)
            if remote is not None:
                await remote.sweep([p.dest_key for p in plans])
            wall = time.perf_counter() - started
            flusher.cancel()
        await journal.release()
        ok = 0
        for plan, got in zip(plans, settled, strict=True):
            body = await dest.get_bytes(dest.url(plan.dest_key))
            ok += hashlib.sha256(body).hexdigest() == sums[plan.source_url.rsplit("/", 1)[1]] \
                == got.sha256
        uploads = await dest.list_multipart_uploads()
        return {"wall": wall, "ok": ok, "uploads": len(uploads)}


def _resume():
    from atdata_async._pipeline.journal import ShardResume

    return ShardResume()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=256)
    ap.add_argument("--kib", type=int, default=256, help="shard size")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    os.environ.update(SECRET_ENV)  # the workers' own environment (LocalCluster inherits it)

    import boto3
    from distributed import Client, LocalCluster

    from atdata_async._pipeline.executor import CredentialSource, DaskExecutor
    from tests import services

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    redis = services.start_redis(work)
    src, dst = services.start_moto(in_process=True), services.start_moto(in_process=True)
    try:
        raw = boto3.client("s3", endpoint_url=src.url, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="y")
        bucket = f"s-{uuid.uuid4().hex[:10]}"
        raw.create_bucket(Bucket=bucket)
        keys, sums = [], {}
        for i in range(args.shards):
            body = os.urandom(args.kib * 1024)
            key = f"shard-{i:06d}.tar"
            raw.put_object(Bucket=bucket, Key=key, Body=body)
            keys.append(key)
            sums[key] = hashlib.sha256(body).hexdigest()
        total = args.shards * args.kib / 1024

        def run(executor) -> dict:
            return asyncio.run(copy_phase(redis.url, src.url, dst.url, bucket, keys, sums,
                                          executor, args.concurrency))

        rows = [("local task group", "-", run(None))]
        for n in [int(x) for x in args.workers.split(",") if x]:
            with LocalCluster(n_workers=n, processes=True,
                              threads_per_worker=max(1, args.concurrency // n),
                              host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:

                async def on_cluster(address=cluster.scheduler_address) -> dict:
                    async with Client(address, asynchronous=True) as dc:
                        ex = DaskExecutor(dc, credentials=CredentialSource(env_prefix="BENCH_"))
                        return await copy_phase(redis.url, src.url, dst.url, bucket, keys,
                                                sums, ex, args.concurrency)

                asyncio.run(on_cluster())  # warm: worker imports, S3 clients
                rows.append((f"dask, {n} worker process(es)", str(n),
                             asyncio.run(on_cluster())))
        base = rows[0][2]["wall"]
        print(f"{args.shards} shards x {args.kib} KiB ({total:.0f} MiB), cross-endpoint "
              f"streamed copy, concurrency {args.concurrency}, {os.cpu_count()} cores")
        print(f"{'engine':<28} {'workers':>7} {'wall s':>8} {'MiB/s':>7} {'vs local':>9} "
              f"{'identical':>10} {'open uploads':>12}")
        for name, n, r in rows:
            print(f"{name:<28} {n:>7} {r['wall']:>8.2f} {total / r['wall']:>7.1f} "
                  f"{r['wall'] / base:>8.2f}x {r['ok']:>5}/{args.shards:<4} {r['uploads']:>12}")
    finally:
        src.stop()
        dst.stop()
        redis.stop()


if __name__ == "__main__":
    main()
