"""Benchmark (i): a cross-endpoint promotion killed with SIGKILL about halfway, then rerun.

    .venv/bin/python benchmarks/bench_resume.py [--shards 512] [--small-kib 64]
                                                [--big-every 8] [--big-kib 1024]

Services run as separate processes (redis-server, two moto_server endpoints, the
reference PDS). The entry has ``--shards`` shards; every ``--big-every``-th one is a
multipart upload (256 KiB parts; moto's minimum part size is lowered). A promotion runs
in a child process, which is SIGKILLed once its journal shows about half the shards
copied. What was missing is measured from S3 itself (complete objects, the parts of open
uploads), then the promotion is rerun in this process, counting the bytes and requests
it sends. Target: the rerun sends at most 5% more than the missing part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    boto,
    creds,
    kill_when_journaled,
    local_services,
    new_bucket,
    throttle_store,
)

PART = 256 * 1024
os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", str(PART))  # read by the moto servers
os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(16 * 1024 * 1024))


def store(endpoint: str, bucket: str, concurrency: int = 8) -> Any:
    from atdata_async.local import S3DataStore

    return S3DataStore(creds(endpoint), bucket=bucket, part_size=PART,
                       multipart_threshold=2 * PART, min_part_size=PART,
                       copy_multipart_threshold=4 * PART, copy_part_size=PART,
                       max_concurrency=concurrency)


def write_shards(directory: Path, shards: int, small_kib: int, big_every: int,
                 big_kib: int) -> list[Path]:
    """Tar shards of FeatureSamples (512 B each), every ``big_every``-th one large."""
    import numpy as np
    import webdataset as wds

    from tests.samples import FeatureSample

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        kib = big_kib if big_every and s % big_every == big_every - 1 else small_kib
        path = directory / f"shard-{s:06d}.tar"
        with wds.writer.TarWriter(str(path)) as sink:
            for n in range(max(1, kib * 1024 // 1536)):
                sample = FeatureSample(rng.standard_normal(128).astype(np.float32), n % 10)
                sink.write({**sample.as_wds, "__key__": f"{s:06d}{n:06d}"})
        paths.append(path)
    return paths


# -- the promotion (child process and rerun) --------------------------------------------


class Counted:
    """Bytes the destination was sent (PUT bodies and parts), by wrapping the store."""

    def __init__(self) -> None:
        from atdata_async._backends.s3_store import S3DataStore

        self.bytes = 0
        put, part = S3DataStore.put_bytes, S3DataStore._send_part
        stream = S3DataStore.stream_copy
        counted = self
        self.undo = lambda: (setattr(S3DataStore, "put_bytes", put),
                             setattr(S3DataStore, "_send_part", part),
                             setattr(S3DataStore, "stream_copy", stream))

        async def put_bytes(self: Any, key: str, data: bytes, *a: Any, **kw: Any) -> str:
            etag = await put(self, key, data, *a, **kw)
            counted.bytes += len(data)
            return etag

        async def send_part(self: Any, key: str, upload_id: str, number: int, data: bytes,
                            *a: Any, **kw: Any) -> None:
            await part(self, key, upload_id, number, data, *a, **kw)
            counted.bytes += len(data)

        async def stream_copy(self: Any, source: Any, src_url: str, key: str, size: int,
                              *a: Any, **kw: Any) -> Any:
            done = await stream(self, source, src_url, key, size, *a, **kw)
            counted.bytes += size  # one PUT streamed from the source (a recorded sha256)
            return done

        S3DataStore.put_bytes = put_bytes  # type: ignore[method-assign]
        S3DataStore._send_part = send_part  # type: ignore[method-assign]
        S3DataStore.stream_copy = stream_copy  # type: ignore[method-assign]


async def promote(ctx: dict[str, Any]) -> dict[str, Any]:
    from atdata_async.atmosphere import AtmosphereClient
    from atdata_async.local import LocalIndex
    from atdata_async.promote import promote_to_atmosphere

    src = store(ctx["src"], ctx["src_bucket"])
    dest = store(ctx["dst"], ctx["dst_bucket"])
    async with src, dest, LocalIndex(ctx["redis"], data_store=src) as index, \
            AtmosphereClient(ctx["pds"]) as client:
        await client.login(ctx["handle"], ctx["password"])
        entry = await index.get_entry_by_name(ctx["entry"])
        start = time.perf_counter()
        uri = await promote_to_atmosphere(entry, index, client, data_store=dest)
        wall = time.perf_counter() - start
        return {"uri": uri, "wall": wall, "dest_requests": dest.request_count,
                "src_requests": src.request_count}


def child(ctx: dict[str, Any]) -> None:
    """The promotion to kill. ``throttle`` (seconds per upload request) slows tiny runs
    down enough for the kill to land mid-copy."""
    import anyio

    throttle_store(float(ctx.get("throttle", 0)), ("put_bytes", "_send_part", "stream_copy"))
    print(json.dumps(anyio.run(promote, ctx)))


def missing_in_s3(ctx: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
    """What the destination lacks, from S3 itself: shards without a complete object, less
    the parts their open uploads already hold."""
    s3 = boto(ctx["dst"])
    present = {o["Key"]: o["Size"] for page in
               s3.get_paginator("list_objects_v2").paginate(Bucket=ctx["dst_bucket"])
               for o in page.get("Contents", [])}
    uploads = s3.list_multipart_uploads(Bucket=ctx["dst_bucket"]).get("Uploads", [])
    held, held_parts = 0, {}
    for u in uploads:
        parts = s3.list_parts(Bucket=ctx["dst_bucket"], Key=u["Key"], UploadId=u["UploadId"])
        held += sum(p["Size"] for p in parts.get("Parts", []))
        held_parts[u["Key"]] = len(parts.get("Parts", []))
    lacking = {k: n for k, n in sizes.items() if present.get(k) != n}
    # the requests a run of only the missing part needs at the destination: one PUT per
    # small shard; (create) + the missing parts + complete per large one (verified by its
    # ETag, which matches the insert's: same part layout)
    needed = 0
    for key, size in lacking.items():
        if size <= 2 * PART:
            needed += 1
        else:
            kept = held_parts.get(key)
            needed += (-(-size // PART)) - (kept or 0) + 1 + (0 if kept is not None else 1)
    return {"done_shards": len(sizes) - len(lacking), "open_uploads": len(uploads),
            "missing_bytes": sum(lacking.values()) - held, "held_part_bytes": held,
            "missing_shards": len(lacking), "needed_requests": needed}


def kill_halfway(ctx: dict[str, Any], shards: int) -> float:
    """Run the promotion in a child; SIGKILL it once half the shards are journaled."""
    return kill_when_journaled([sys.executable, __file__, "--child", json.dumps(ctx)],
                               ctx["redis"], "atdata_async:journal:*", shards // 2, "promotion")


def run_case(ctx: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    """Insert, promote + kill, measure what is missing, rerun; returns the numbers."""
    import anyio

    from atdata_async import Dataset
    from atdata_async._pipeline.promote import copy_key
    from atdata_async.local import LocalIndex
    from tests.samples import FeatureSample

    async def insert() -> dict[str, int]:
        src = store(ctx["src"], ctx["src_bucket"])
        async with src, LocalIndex(ctx["redis"], data_store=src) as index:
            await index.publish_schema(FeatureSample, version="1.0.0")
            entry = await index.insert_dataset(
                Dataset[FeatureSample]([str(p) for p in paths]), name=ctx["entry"])
        return {copy_key("promoted", ctx["entry"], entry.cid, i, u.rsplit("/", 1)[1]):
                entry.shard_sizes[u] for i, u in enumerate(entry.data_urls)}

    sizes = anyio.run(insert)
    until_kill = kill_halfway(ctx, len(paths))
    gap = missing_in_s3(ctx, sizes)
    counted = Counted()
    try:
        rerun = anyio.run(promote, ctx)
    finally:
        counted.undo()
    after = missing_in_s3(ctx, sizes)
    records = records_of(ctx)
    return {"shards": len(paths), "bytes": sum(sizes.values()), "killed_after": until_kill,
            **gap, "rerun_bytes": counted.bytes, "rerun_wall": rerun["wall"],
            "rerun_dest_requests": rerun["dest_requests"],
            "rerun_src_requests": rerun["src_requests"],
            "open_uploads_after": after["open_uploads"], "missing_after": after["missing_shards"],
            "dataset_records": records}


def schema_create_cost(ctx: dict[str, Any], n: int = 15) -> dict[str, float]:
    """The price of publishing a new schema record only once every shard has settled:
    its createRecord is no longer overlapped with the copies, so one call's latency joins
    the critical path (the listing that decides it still overlaps). Median of ``n``."""
    import statistics

    import anyio

    from atdata_async._model.lexicon import SCHEMA_COLLECTION
    from atdata_async.atmosphere import AtmosphereClient

    async def run() -> list[float]:
        async with AtmosphereClient(ctx["pds"]) as client:
            await client.login(ctx["handle"], ctx["password"])
            took = []
            for i in range(n):
                record = {"$type": SCHEMA_COLLECTION, "name": f"Bench{i}", "version": "1.0.0",
                          "schemaType": "jsonSchema", "schema": {"type": "object"},
                          "createdAt": "2026-01-01T00:00:00.000Z"}
                start = time.perf_counter()
                await client.create_record(SCHEMA_COLLECTION, record, rkey=f"bench-{i}")
                took.append(time.perf_counter() - start)
            return took

    took = anyio.run(run)
    return {"median_ms": statistics.median(took) * 1000, "max_ms": max(took) * 1000}


def records_of(ctx: dict[str, Any]) -> int:
    import anyio

    from atdata_async.atmosphere import DATASET_COLLECTION, AtmosphereClient

    async def count() -> int:
        async with AtmosphereClient(ctx["pds"]) as client:
            await client.login(ctx["handle"], ctx["password"])
            return len([r async for r in client.list_records(DATASET_COLLECTION)])

    return anyio.run(count)


def kill_rerun_args(doc: str) -> argparse.ArgumentParser:
    """The workload of a kill-and-rerun benchmark (this one, bench_insert_resume): the shard
    mix that ``write_shards`` makes, and ``--child`` for the run that is killed."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shards", type=int, default=512)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--big-every", type=int, default=8)
    parser.add_argument("--big-kib", type=int, default=1024)
    parser.add_argument("--child")
    return parser


def print_rows(rows: list[tuple[str, str]]) -> None:
    for label, value in rows:
        print(f"  {label:<48} {value}")


def print_table(r: dict[str, Any]) -> None:
    ratio = r["rerun_bytes"] / r["missing_bytes"] if r["missing_bytes"] else float("nan")
    print(f"\nbenchmark (i): {r['shards']} shards, {r['bytes'] / 2**20:.1f} MiB, "
          "cross-endpoint, SIGKILL about halfway, then rerun")
    rows = [
        ("killed after (s)", f"{r['killed_after']:.2f}"),
        ("shards complete at the kill", f"{r['done_shards']}/{r['shards']}"),
        ("open uploads at the kill (parts held)",
         f"{r['open_uploads']} ({r['held_part_bytes'] / 2**10:.0f} KiB)"),
        ("missing bytes (from S3)", f"{r['missing_bytes']:,}"),
        ("rerun bytes sent", f"{r['rerun_bytes']:,}"),
        ("rerun bytes / missing", f"{ratio:.4f}  (target <= 1.05)"),
        ("requests the missing part needs (destination)", f"{r['needed_requests']}"),
        ("rerun requests: destination / source",
         f"{r['rerun_dest_requests']} / {r['rerun_src_requests']}"),
        ("rerun destination requests / needed",
         f"{r['rerun_dest_requests'] / max(1, r['needed_requests']):.4f}"),
        ("rerun wall (s)", f"{r['rerun_wall']:.2f}"),
        ("after: open uploads / missing shards / records",
         f"{r['open_uploads_after']} / {r['missing_after']} / {r['dataset_records']}"),
    ]
    print_rows(rows)


def main() -> None:
    a = kill_rerun_args(__doc__).parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    with tempfile.TemporaryDirectory() as tmp, \
            local_services(Path(tmp), motos=2, pds=True) as started:
        (src, dst), account = started.motos, started.account
        paths = write_shards(Path(tmp) / "shards", a.shards, a.small_kib, a.big_every,
                             a.big_kib)
        ctx = {"redis": started.redis.url, "src": src.url, "dst": dst.url,
               "pds": started.pds.url, "handle": account["handle"],
               "password": account["password"], "src_bucket": new_bucket(src.url),
               "dst_bucket": new_bucket(dst.url), "entry": "bench-resume"}
        result = run_case(ctx, paths)
        print_table(result)
        cost = schema_create_cost(ctx)
        print("\nschema record after every shard (issue 9 item 3): the createRecord that "
              "used to overlap the copies")
        print(f"  createRecord median / max (ms)                   "
              f"{cost['median_ms']:.1f} / {cost['max_ms']:.1f}")
        print(f"  as a share of the rerun's wall                   "
              f"{cost['median_ms'] / 1000 / result['rerun_wall']:.2%}")


if __name__ == "__main__":
    main()
