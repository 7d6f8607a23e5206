"""promote_many against one promotion per entry (ii), and a soak under faults (iii).

    .venv/bin/python benchmarks/bench_batch.py [--entries 1000] [--soak 50] [--seed 1]

(ii) N entries whose shards stay where they are (one 16 KiB shard each, checksums
recorded at insert), published to a fresh account each way: records/s and wall time.
(iii) N promotions (4 shards each, one multipart, copied across endpoints) through
fault-injecting proxies in front of both S3 servers and the PDS, with Redis connections
killed at random; a failed promotion is rerun once. Counts what was published, the
duplicates, the open multipart uploads and the faults that fired.
Starts its own redis-server, moto servers and PDS on 127.0.0.1 (stopped by PID).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", str(256 * 1024))
os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(16 * 1024 * 1024))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import boto3
import redis as sync_redis

from atdata_async import Dataset
from atdata_async.atmosphere import DATASET_COLLECTION, AtmosphereClient
from atdata_async.local import LocalDatasetEntry, LocalIndex, S3DataStore
from atdata_async.promote import promote_many, promote_to_atmosphere
from benchmarks._common import creds, local_services
from tests import services
from tests.faultproxy import Fault, FaultProxy
from tests.samples import FeatureSample, write_shards

PART = 256 * 1024


def make_bucket(endpoint: str, name: str) -> str:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="y").create_bucket(Bucket=name)
    return name


def small_store(endpoint: str, bucket: str, **kw) -> S3DataStore:
    return S3DataStore(creds(endpoint), bucket=bucket, part_size=PART,
                       multipart_threshold=2 * PART, min_part_size=PART,
                       copy_multipart_threshold=4 * PART, copy_part_size=PART, **kw)


async def login(pds_url: str, name: str) -> AtmosphereClient:
    account = services.create_account(pds_url, name)
    client = AtmosphereClient(pds_url)
    await client.login(account["handle"], account["password"])
    return client


async def count_records(client: AtmosphereClient) -> list[dict]:
    return [r async for r in client.list_records(DATASET_COLLECTION)]


# -- (ii) promote_many vs one promotion per entry ----------------------------------------


async def make_entries(index: LocalIndex, store: S3DataStore, n: int, tag: str
                       ) -> list[LocalDatasetEntry]:
    """n entries of one 16 KiB object each, checksums and ETags recorded as insert does."""
    ref = await index.publish_schema(FeatureSample)
    entries: list[LocalDatasetEntry] = [None] * n  # type: ignore[list-item]
    limiter = anyio.CapacityLimiter(16)

    async def one(i: int) -> None:
        body = os.urandom(16 * 1024)
        digest = hashlib.sha256(body).hexdigest()
        key = f"{tag}/e{i:05d}/data--000000.tar"
        async with limiter:
            etag = await store.put_bytes(key, body, digest)
        url = store.url(key)
        entry = LocalDatasetEntry(f"{tag}-{i:05d}", ref, [url], {
            "checksums": {url: digest}, "shard_sizes": {url: len(body)},
            "etags": {url: etag}, "num_samples": 4})
        await index._store_entry(entry)
        entries[i] = entry

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return entries


async def compare(redis_url: str, s3_url: str, pds_url: str, n: int) -> list[dict]:
    bucket = make_bucket(s3_url, f"bench-{os.getpid()}-{int(time.time())}")
    rows = []
    async with small_store(s3_url, bucket) as store, \
            LocalIndex(redis_url, data_store=store) as index:
        for way in ("one promotion per entry", "promote_many"):
            tag = "single" if way.startswith("one") else "batch"
            entries = await make_entries(index, store, n, tag)
            client = await login(pds_url, f"b{tag[:3]}{os.getpid() % 10000}{n}")
            try:
                start = time.perf_counter()
                if tag == "single":
                    for entry in entries:
                        await promote_to_atmosphere(entry, index, client)
                    failed = 0
                else:
                    outcomes = await promote_many(entries, index, client)
                    failed = sum(1 for o in outcomes if not o.ok)
                    errors = [o.error for o in outcomes if o.error is not None]
                    if errors:
                        print(f"first failure: {errors[0]!r}", file=sys.stderr)
                wall = time.perf_counter() - start
                records = len(await count_records(client))
                requests = client.request_count
            finally:
                await client.aclose()
            rows.append({"way": way, "entries": n, "wall": wall, "records": records,
                         "failed": failed, "requests": requests})
    return rows


def print_compare(rows: list[dict]) -> None:
    base = rows[0]
    print(f"\n(ii) {base['entries']} entries, shards kept in place, one fresh account each way")
    print(f"{'way':<26} {'wall s':>8} {'records/s':>10} {'PDS requests':>13} "
          f"{'records':>8} {'failed':>7} {'speed-up':>9}")
    for r in rows:
        print(f"{r['way']:<26} {r['wall']:>8.2f} {r['entries'] / r['wall']:>10.1f} "
              f"{r['requests']:>13} {r['records']:>8} {r['failed']:>7} "
              f"{base['wall'] / r['wall']:>8.1f}x")


# -- (iii) the soak ----------------------------------------------------------------------

S3_FAULTS = [
    ("cut a source GET body", lambda: Fault("cut", method="GET", path=r"\.tar", after=40_000)),
    ("503 on a source GET", lambda: Fault("status", method="GET", path=r"\.tar", status=503)),
    ("503 on an UploadPart", lambda: Fault("status", method="PUT", path=r"partNumber",
                                           status=503)),
    ("reset on a PutObject", lambda: Fault("reset", method="PUT", path=r"\.tar$")),
    ("500 on CompleteMultipartUpload", lambda: Fault("status", method="POST",
                                                     path=r"uploadId", status=500)),
]
PDS_FAULTS = [
    ("502 on the schema createRecord", lambda: Fault("status", method="POST",
                                                     path="createRecord", status=502)),
    ("lost answer of the schema createRecord", lambda: Fault("lose", method="POST",
                                                             path="createRecord")),
    ("reset on putRecord", lambda: Fault("reset", method="POST", path="putRecord")),
    ("lost answer of putRecord", lambda: Fault("lose", method="POST", path="putRecord")),
    ("503 on listRecords", lambda: Fault("status", method="GET", path="listRecords",
                                         status=503)),
]
REDIS_FAULTS = ["CLIENT KILL mid-promotion", "idle timeout of 1 s mid-promotion"]


class RedisSaboteur:
    """Kills our Redis connections, or turns the idle timeout on, at a random moment."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.timers: list[threading.Timer] = []

    def _side(self, command: str) -> None:
        side = sync_redis.Redis.from_url(self.url)  # a new connection: the old may be dead
        try:
            if command == "kill":
                side.client_kill_filter(_type="normal", skipme=True)
            else:
                side.config_set("timeout", int(command))
        finally:
            side.close()

    def arm(self, kind: str, rng: random.Random) -> None:
        command = "kill" if kind.startswith("CLIENT KILL") else "1"
        timer = threading.Timer(rng.uniform(0.05, 0.6), self._side, (command,))
        timer.start()
        self.timers.append(timer)

    def disarm(self) -> None:
        for t in self.timers:
            t.cancel()
            t.join()
        self.timers.clear()
        self._side("0")


async def soak(redis_url: str, moto_a: str, moto_b: str, pds_url: str, n: int, seed: int,
               workdir: Path) -> dict:
    rng = random.Random(seed)
    source_bucket = make_bucket(moto_a, f"soak-src-{seed}-{os.getpid()}")
    dest_bucket = make_bucket(moto_b, f"soak-dst-{seed}-{os.getpid()}")
    s3_src, s3_dst, pds = FaultProxy(moto_a), FaultProxy(moto_b), FaultProxy(pds_url)
    for proxy in (s3_src, s3_dst, pds):
        proxy.start()
    saboteur = RedisSaboteur(redis_url)
    fired: dict[str, int] = {}
    result = {"promotions": n, "published": 0, "reruns": 0, "failed_after_rerun": [],
              "duplicates": 0, "open_uploads": 0, "faults": fired}
    direct = await login(pds_url, f"soak{seed}{os.getpid() % 100000}")
    client = AtmosphereClient(pds.url, backoff_base=0.05)
    await client.login(session={**direct.export_session(), "pdsUrl": pds.url})
    try:
        upload = small_store(moto_a, source_bucket)
        async with upload, LocalIndex(redis_url, data_store=upload) as index:
            entries = []
            for i in range(n):
                await index.publish_schema(FeatureSample, version=f"1.{i}.0")
                folder = workdir / f"soak-{i}"
                folder.mkdir(parents=True, exist_ok=True)
                paths = write_shards(folder, 4, 40, dim=4096 if i % 3 == 0 else 64)
                entries.append(await index.insert_dataset(
                    Dataset[FeatureSample]([str(p) for p in paths]), name=f"soak-{i:03d}"))
        source = small_store(s3_src.url, source_bucket)
        dest = small_store(s3_dst.url, dest_bucket)
        async with source, dest, LocalIndex(redis_url, data_store=source) as index:
            for entry in entries:
                for attempt in (1, 2):
                    armed = []
                    for proxy in (s3_src, s3_dst, pds):
                        proxy.clear()
                    for (name, make), kind in ((rng.choice(S3_FAULTS), "s3"),
                                               (rng.choice(PDS_FAULTS), "pds")):
                        fault = make()
                        fault.skip = rng.randrange(0, 3)
                        target = pds if kind == "pds" else (
                            s3_src if fault.method == "GET" else s3_dst)
                        armed.append((name, target.add(fault)))
                    redis_fault = rng.choice(REDIS_FAULTS)
                    saboteur.arm(redis_fault, rng)
                    try:
                        await promote_to_atmosphere(entry, index, client, data_store=dest)
                        result["published"] += 1
                        break
                    except Exception as exc:
                        if attempt == 2:
                            result["failed_after_rerun"].append(
                                f"{entry.name}: {type(exc).__name__}: {exc}")
                        else:
                            result["reruns"] += 1
                    finally:
                        saboteur.disarm()
                        for name, fault in armed:
                            fired[name] = fired.get(name, 0) + fault.fired
                        fired[redis_fault] = fired.get(redis_fault, 0) + 1
            for proxy in (s3_src, s3_dst, pds):
                proxy.clear()
            records = await count_records(direct)
            names = [r["value"].get("name") for r in records]
            result["records"] = len(records)
            result["duplicates"] = len(names) - len(set(names))
            async with small_store(moto_b, dest_bucket) as check:
                result["open_uploads"] = len(await check.list_multipart_uploads())
    finally:
        await client.aclose()
        await direct.aclose()
        for proxy in (s3_src, s3_dst, pds):
            proxy.stop()
    return result


def print_soak(r: dict) -> None:
    print(f"\n(iii) soak: {r['promotions']} promotions under injected faults, each rerun at "
          "most once")
    print(f"  published             {r['published']} / {r['promotions']} "
          f"({100 * r['published'] / r['promotions']:.0f}%)")
    print(f"  reruns needed         {r['reruns']}")
    print(f"  dataset records       {r['records']} (duplicates: {r['duplicates']})")
    print(f"  open multipart uploads {r['open_uploads']}")
    print("  faults fired:")
    for name, count in sorted(r["faults"].items()):
        print(f"    {count:>4}  {name}")
    for line in r["failed_after_rerun"]:
        print(f"  FAILED: {line.splitlines()[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--soak", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp, \
            local_services(Path(tmp), motos=2, pds=True, account=False) as started:
        redis_svc, (moto_a, moto_b), pds_svc = started.redis, started.motos, started.pds
        if args.entries:
            print_compare(anyio.run(compare, redis_svc.url, moto_a.url, pds_svc.url,
                                    args.entries))
        if args.soak:
            print_soak(anyio.run(soak, redis_svc.url, moto_a.url, moto_b.url, pds_svc.url,
                                 args.soak, args.seed, Path(tmp) / "soak"))


if __name__ == "__main__":
    main()
