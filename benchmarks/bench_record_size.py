"""How many shards fit in one dataset record (pure: no server needed).

    .venv/bin/python benchmarks/bench_record_size.py

The reference PDS refuses a request body over 1,000,000 bytes (413, measured); the
putRecord request of a dataset record spells out every shard's key and sha256. Prints,
for a few key layouts, the bytes per shard and the largest shard count that fits, as
promotion computes it before any copy or write (``plan_promotion``).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atdata_async._backends.redis_index import LocalDatasetEntry, StoreLocation
from atdata_async._pipeline.promote import MAX_RECORD_BYTES, check_record_size, plan_promotion
from atdata_async.local import S3DataStore

REF = "atdata://local/schema/ImageSample@1.0.0"
LOCATION = StoreLocation("https://s3.us-west-2.amazonaws.com", "us-west-2")
DEST = S3DataStore({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                    "AWS_ENDPOINT": "https://s3.us-west-2.amazonaws.com",
                    "AWS_REGION": "us-west-2"}, bucket="my-public-datasets")


def entry(n: int, name: str, prefix: str) -> LocalDatasetEntry:
    run = uuid.uuid4()
    urls = [f"s3://my-datasets/{prefix}/data--{run}--{i:06d}.tar" for i in range(n)]
    return LocalDatasetEntry(name, REF, urls, {"checksums": {u: "0" * 64 for u in urls}})


def fit(name: str, prefix: str, dest: S3DataStore | None) -> tuple[int, int, int]:
    """(bytes per shard, fixed bytes, largest shard count that fits)."""
    def size(n: int) -> int:
        plan = plan_promotion(entry(n, name, prefix), copy_to=dest, location=LOCATION,
                              max_record_bytes=10**9)
        return check_record_size(plan.record, plan.shards, dest, LOCATION, "ImageSample",
                                 "1.0.0", repo=None, limit=10**9)

    one, per = size(1), size(2) - size(1)
    return per, one - per, 1 + (MAX_RECORD_BYTES - one) // per


def main() -> None:
    rows = [
        ("in place, atdata keys", "images-v1", "images", None),
        ("in place, long prefix", "images-v1", "team/projects/vision/images-2026", None),
        ("copy, default keys", "images-v1", "images", DEST),
        ("copy, 60-char name", "n" * 60, "images", DEST),
    ]
    print(f"limit: {MAX_RECORD_BYTES:,} bytes per putRecord request (sha256 for every shard)")
    print(f"{'layout':<24} {'example key':<58} {'B/shard':>8} {'max shards':>11}")
    for label, name, prefix, dest in rows:
        per, _fixed, most = fit(name, prefix, dest)
        plan = plan_promotion(entry(1, name, prefix), copy_to=dest, location=LOCATION)
        key = plan.shards[0].dest_key or plan.shards[0].source_url.split("/", 3)[3]
        shown = key if len(key) <= 58 else key[:55] + "..."
        print(f"{label:<24} {shown:<58} {per:>8} {most:>11,}")


if __name__ == "__main__":
    main()
