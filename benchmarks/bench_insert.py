"""insert_dataset through S3DataStore vs a sequential single-PutObject loop.

    .venv/bin/python benchmarks/bench_insert.py [--shards 64] [--shard-mib 16]

Runs a moto S3 server and a redis-server as separate processes, writes the shards once
(into benchmarks/.data), then runs each variant in its own interpreter so peak RSS is
per variant. Prints wall time, MiB/s, peak RSS and the speed-up over the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    MIB,
    local_services,
    measure,
    new_bucket,
    print_table,
    run_child,
    write_tar_shards,
)


def credentials(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def variant_ours(a: argparse.Namespace) -> dict:
    import anyio

    from atdata_async import Dataset
    from atdata_async.local import LocalIndex, S3DataStore
    from tests.samples import FeatureSample

    async def main() -> None:
        store = S3DataStore(credentials(a.endpoint), bucket=a.bucket, max_concurrency=a.concurrency,
                            part_size=a.part_mib * MIB,
                            multipart_threshold=a.threshold_mib * MIB)
        async with store, LocalIndex(a.redis, data_store=store) as index:
            ds = Dataset[FeatureSample](a.paths)
            await index.insert_dataset(ds, name=f"bench-{uuid.uuid4().hex[:6]}")

    return measure(lambda: anyio.run(main))


def variant_sequential_put(a: argparse.Namespace) -> dict:
    import boto3

    s3 = boto3.client("s3", endpoint_url=a.endpoint, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench-secret")

    def run() -> dict:
        for i, path in enumerate(a.paths):
            s3.put_object(Bucket=a.bucket, Key=f"seq/{i:06d}.tar", Body=Path(path).read_bytes())
        return {}

    return measure(run)


VARIANTS = {"atdata_async insert_dataset": variant_ours,
            "sequential PutObject (baseline)": variant_sequential_put}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--shard-mib", type=float, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--threshold-mib", type=int, default=32)
    parser.add_argument("--variant")
    parser.add_argument("--endpoint")
    parser.add_argument("--redis")
    parser.add_argument("--bucket")
    parser.add_argument("--paths", nargs="*")
    a = parser.parse_args()
    if a.variant:
        print(json.dumps(VARIANTS[a.variant](a)))
        return

    data = Path(__file__).resolve().parent / ".data" / f"insert-{a.shards}x{a.shard_mib}"
    paths = [str(p) for p in write_tar_shards(data, a.shards, a.shard_mib)]
    total = sum(Path(p).stat().st_size for p in paths)
    with tempfile.TemporaryDirectory() as tmp, \
            local_services(Path(tmp), motos=1) as started:
        redis, (moto,) = started.redis, started.motos
        rows = []
        for name in VARIANTS:
            bucket = new_bucket(moto.url)
            result = run_child(__file__, [
                "--variant", name, "--endpoint", moto.url, "--redis", redis.url,
                "--bucket", bucket, "--concurrency", str(a.concurrency),
                "--part-mib", str(a.part_mib), "--threshold-mib", str(a.threshold_mib),
                "--paths", *paths])
            rows.append({"name": name, **result})
    print_table(f"insert {a.shards} shards x {a.shard_mib} MiB = {total / MIB:.0f} MiB into moto "
                f"(concurrency {a.concurrency}, part {a.part_mib} MiB, "
                f"multipart above {a.threshold_mib} MiB)", rows, total,
                "sequential PutObject (baseline)")


if __name__ == "__main__":
    main()
