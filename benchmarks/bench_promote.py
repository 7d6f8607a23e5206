"""Promotion of large multi-shard entries: our pipeline vs baselines, in one run.

    .venv/bin/python benchmarks/bench_promote.py [--cases 64x16,256x1] [--concurrency 8]

Services run as separate processes: two moto_server instances (source and a second
endpoint), a redis-server and the reference PDS. For each case (shards x MiB) and
scenario, every variant runs in a fresh interpreter (so peak RSS is its own):

  (a) keep URLs        ours | ours sequential (concurrency 1)
  (b) copy, same server ours | sequential | decode/re-encode (atdata-like) | bare CopyObject loop
  (c) copy, 2 servers  ours | sequential | decode/re-encode | GET-only pass | PUT-only pass
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import MIB, boto, creds, local_services, measure, new_bucket, run_child

FEATURE_DIM = 4096  # 16 KiB of float32 per sample: ~1000 samples per 16 MiB shard


# -- variants (each runs in its own process; ``a`` carries the run's parameters) ----------


def _promote(a: argparse.Namespace, concurrency: int) -> dict:
    import anyio

    from atdata_async.atmosphere import AtmosphereClient
    from atdata_async.local import LocalIndex, S3DataStore
    from atdata_async.promote import promote_to_atmosphere

    async def main() -> dict:
        source = S3DataStore(creds(a.src_endpoint), bucket=a.src_bucket,
                             max_concurrency=concurrency)
        dest = None
        if a.dest_endpoint:
            dest = S3DataStore(creds(a.dest_endpoint), bucket=a.dest_bucket,
                               max_concurrency=concurrency)
        async with source, LocalIndex(a.redis, data_store=source) as index, \
                AtmosphereClient(a.pds) as client:
            await client.login(session=json.loads(a.session))
            entry = await index.get_entry_by_name(a.entry)
            await promote_to_atmosphere(entry, index, client, data_store=dest,
                                        max_concurrency=concurrency,
                                        name=f"bench-{uuid.uuid4().hex[:6]}")
            s3_requests = source.request_count + (dest.request_count if dest else 0)
            if dest is not None:
                await dest.aclose()
            return {"s3_requests": s3_requests, "xrpc_requests": client.request_count}

    return measure(lambda: anyio.run(main))


def variant_ours(a: argparse.Namespace) -> dict:
    return _promote(a, a.concurrency)


def variant_sequential(a: argparse.Namespace) -> dict:
    return _promote(a, 1)


def variant_reencode(a: argparse.Namespace) -> dict:
    """What atdata does: GET, decode every sample, re-encode with new keys, PUT; one thread."""
    import webdataset as wds

    from tests.samples import FeatureSample

    src, dst = boto(a.src_endpoint), boto(a.dest_endpoint)
    keys = a.keys

    def run() -> dict:
        for i, key in enumerate(keys):
            body = src.get_object(Bucket=a.src_bucket, Key=key)["Body"].read()
            out = io.BytesIO()
            with tarfile.open(fileobj=io.BytesIO(body), mode="r|") as tar, \
                    wds.writer.TarWriter(out) as sink:
                for member in tar:
                    sample = FeatureSample.from_bytes(tar.extractfile(member).read())
                    sink.write(sample.as_wds)
            dst.put_object(Bucket=a.dest_bucket, Key=f"reencoded/{i:06d}.tar",
                           Body=out.getvalue())
        return {"s3_requests": 2 * len(keys)}

    return measure(run)


def _concurrent(a: argparse.Namespace, op) -> dict:
    import aioboto3
    import anyio

    async def main() -> dict:
        limiter = anyio.CapacityLimiter(a.concurrency)
        session = aioboto3.Session()
        async with session.client("s3", endpoint_url=a.src_endpoint, region_name="us-east-1",
                                  aws_access_key_id="bench",
                                  aws_secret_access_key="bench-secret") as s3:
            async def one(i: int, key: str) -> None:
                async with limiter:
                    await op(s3, i, key)

            async with anyio.create_task_group() as tg:
                for i, key in enumerate(a.keys):
                    tg.start_soon(one, i, key)
        return {"s3_requests": len(a.keys)}

    return measure(lambda: anyio.run(main))


def variant_bare_copy(a: argparse.Namespace) -> dict:
    async def op(s3, i, key):
        await s3.copy_object(Bucket=a.dest_bucket, Key=f"bare/{i:06d}.tar",
                             CopySource={"Bucket": a.src_bucket, "Key": key})
    return _concurrent(a, op)


def variant_get_only(a: argparse.Namespace) -> dict:
    async def op(s3, i, key):
        response = await s3.get_object(Bucket=a.src_bucket, Key=key)
        async with response["Body"] as body:
            await body.read()
    return _concurrent(a, op)


def variant_put_only(a: argparse.Namespace) -> dict:
    import aioboto3
    import anyio

    async def main() -> dict:
        limiter = anyio.CapacityLimiter(a.concurrency)
        async with aioboto3.Session().client(
                "s3", endpoint_url=a.dest_endpoint, region_name="us-east-1",
                aws_access_key_id="bench", aws_secret_access_key="bench-secret") as s3:
            async def one(i: int, path: str) -> None:
                async with limiter:
                    data = await anyio.Path(path).read_bytes()
                    await s3.put_object(Bucket=a.dest_bucket, Key=f"put/{i:06d}.tar", Body=data)

            async with anyio.create_task_group() as tg:
                for i, path in enumerate(a.paths):
                    tg.start_soon(one, i, path)
        return {"s3_requests": len(a.paths)}

    return measure(lambda: anyio.run(main))


VARIANTS = {
    "ours": variant_ours, "sequential": variant_sequential, "decode/re-encode": variant_reencode,
    "bare CopyObject loop": variant_bare_copy, "GET-only pass": variant_get_only,
    "PUT-only pass": variant_put_only,
}
SCENARIOS = {
    "a": ("keep URLs", ["ours", "sequential"]),
    "b": ("copy, same server", ["ours", "sequential", "decode/re-encode", "bare CopyObject loop"]),
    "c": ("copy, two servers", ["ours", "sequential", "decode/re-encode", "GET-only pass",
                                "PUT-only pass"]),
}


# -- orchestration -----------------------------------------------------------------------


def write_feature_shards(directory: Path, shards: int, shard_mib: float) -> list[Path]:
    import numpy as np
    import webdataset as wds

    from tests.samples import FeatureSample

    directory.mkdir(parents=True, exist_ok=True)
    per_shard = max(1, int(shard_mib * MIB) // (FEATURE_DIM * 4 + 1024))
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = directory / f"shard-{s:06d}.tar"
        if not path.exists():
            with wds.writer.TarWriter(str(path)) as sink:
                for i in range(per_shard):
                    sample = FeatureSample(rng.standard_normal(FEATURE_DIM).astype(np.float32), i)
                    sink.write({**sample.as_wds, "__key__": f"{s:06d}-{i:06d}"})
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="64x16,256x1")
    parser.add_argument("--scenarios", default="abc")
    parser.add_argument("--concurrency", type=int, default=8)
    for name in ("variant", "src-endpoint", "src-bucket", "dest-endpoint", "dest-bucket",
                 "redis", "pds", "session", "entry"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--keys", nargs="*")
    parser.add_argument("--paths", nargs="*")
    a = parser.parse_args()
    if a.variant:
        print(json.dumps(VARIANTS[a.variant](a)))
        return
    run_all(a)


def run_all(a: argparse.Namespace) -> None:
    import anyio

    from atdata_async import Dataset
    from atdata_async.local import LocalIndex, S3DataStore
    from tests.samples import FeatureSample

    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp, \
            local_services(Path(tmp), motos=2, pds=True) as started:
        redis, (src, other), pds = started.redis, started.motos, started.pds
        session = json.dumps(started.session)
        results = []
        for case in a.cases.split(","):
            shards, mib = case.split("x")
            paths = write_feature_shards(here / ".data" / f"promote-{case}", int(shards),
                                         float(mib))
            total = sum(p.stat().st_size for p in paths)
            bucket = new_bucket(src.url)
            entry_name = f"case-{case}"

            async def insert(bucket=bucket, paths=paths, entry_name=entry_name):
                store = S3DataStore(creds(src.url), bucket=bucket)
                async with store, LocalIndex(redis.url, data_store=store) as index:
                    await index.publish_schema(FeatureSample, version="1.0.0")
                    entry = await index.insert_dataset(
                        Dataset[FeatureSample]([str(p) for p in paths]), name=entry_name)
                    return [u.split("/", 3)[3] for u in entry.data_urls]

            keys = anyio.run(insert)
            for scenario in a.scenarios:
                title, variants = SCENARIOS[scenario]
                rows = []
                for variant in variants:
                    dest_endpoint = {"a": "", "b": src.url, "c": other.url}[scenario]
                    dest_bucket = new_bucket(dest_endpoint) if dest_endpoint else ""
                    args = ["--variant", variant, "--src-endpoint", src.url,
                            "--src-bucket", bucket, "--dest-endpoint", dest_endpoint,
                            "--dest-bucket", dest_bucket, "--redis", redis.url,
                            "--pds", pds.url, "--session", session, "--entry", entry_name,
                            "--concurrency", str(a.concurrency),
                            "--keys", *keys, "--paths", *map(str, paths)]
                    rows.append({"variant": variant, **run_child(__file__, args)})
                results.append({"case": case, "scenario": f"({scenario}) {title}",
                                "total": total, "rows": rows})
                print_case(results[-1], a.concurrency)


def print_case(result: dict, concurrency: int) -> None:
    total = result["total"]
    rows = {r["variant"]: r for r in result["rows"]}
    ours = rows["ours"]
    print(f"\n{result['case']} MiB shards, {result['scenario']}: {total / MIB:.0f} MiB, "
          f"concurrency {concurrency}")
    print(f"  {'variant':<22} {'wall s':>8} {'MiB/s':>8} {'peak RSS':>9} {'growth':>7} "
          f"{'S3 req':>7} {'XRPC req':>8} {'ours faster by':>15}")
    for name, r in rows.items():
        growth = r["peak_rss_mib"] - r["start_rss_mib"]
        print(f"  {name:<22} {r['wall']:>8.2f} {total / MIB / r['wall']:>8.1f} "
              f"{r['peak_rss_mib']:>8.0f}M {growth:>6.0f}M {r.get('s3_requests', 0):>7} "
              f"{r.get('xrpc_requests', '-'):>8} {r['wall'] / ours['wall']:>14.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
