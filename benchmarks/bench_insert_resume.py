"""An insert killed with SIGKILL about halfway, then rerun (issue 9: "the same for
insert_dataset"); and what the journal costs a clean insert.

    .venv/bin/python benchmarks/bench_insert_resume.py [--shards 512] [--small-kib 64]
                                                       [--big-every 8] [--big-kib 1024]

redis-server and a moto_server run as processes of their own. The shards are those of
bench_resume (every ``--big-every``-th one a multipart upload of 256 KiB parts). An
insert runs in a child process, SIGKILLed once its journal shows about half the shards
uploaded. What was missing is measured from S3 itself (complete objects, the parts of
open uploads), then the insert is rerun in this process, counting the bytes and
requests it sends. Before this change a rerun used fresh keys: it sent 100%.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import boto, kill_when_journaled, local_services, new_bucket, throttle_store
from benchmarks.bench_resume import (
    PART,
    Counted,
    kill_rerun_args,
    print_rows,
    store,
    write_shards,
)

NAME = "bench-insert"


async def insert(ctx: dict[str, Any], paths: list[str], name: str = NAME) -> dict[str, Any]:
    from atdata_async import Dataset
    from atdata_async.local import LocalIndex
    from tests.samples import FeatureSample

    dest = store(ctx["s3"], ctx["bucket"])
    async with dest, LocalIndex(ctx["redis"], data_store=dest) as index:
        await index.publish_schema(FeatureSample, version="1.0.0")
        start = time.perf_counter()
        entry = await index.insert_dataset(Dataset[FeatureSample](paths), name=name,
                                           prefix=name)
        wall = time.perf_counter() - start
        entries = len([e for e in await index.list_entries() if e.name == name])
        return {"wall": wall, "requests": dest.request_count, "urls": entry.data_urls,
                "entries": entries}


async def old_insert(ctx: dict[str, Any], paths: list[str], run: int) -> float:
    """The insert before this change, for the journal's cost: ``upload_files`` under
    fresh keys with the sample count beside it, then the entry (no journal, no resume)."""
    import anyio

    from atdata_async._backends.dataset import count_samples
    from atdata_async.local import LocalDatasetEntry, LocalIndex

    dest = store(ctx["s3"], ctx["bucket"])
    async with dest, LocalIndex(ctx["redis"], data_store=dest) as index:
        start = time.perf_counter()
        counts = []

        async def count() -> None:
            for p in paths:
                counts.append(await anyio.to_thread.run_sync(count_samples, p))

        async with anyio.create_task_group() as tg:
            tg.start_soon(count)
            ups = await dest.upload_files([(p, f"old{run}/{i:06d}.tar")
                                           for i, p in enumerate(paths)])
        meta = {"checksums": {u.url: u.sha256 for u in ups}, "num_samples": sum(counts)}
        await index._store_entry(LocalDatasetEntry(f"old{run}", "atdata://local/schema/"
                                                   "FeatureSample@1.0.0",
                                                   [u.url for u in ups], meta))
        return time.perf_counter() - start


def child(ctx: dict[str, Any], paths: list[str]) -> None:
    """The insert to kill. ``throttle`` (seconds per upload request) slows tiny runs down
    enough for the kill to land mid-insert."""
    import anyio

    throttle_store(float(ctx.get("throttle", 0)), ("put_bytes", "_send_part"))
    print(json.dumps(anyio.run(insert, ctx, paths)))


def in_s3(ctx: dict[str, Any], prefix: str) -> tuple[dict[str, int], int, int]:
    """(key -> size of complete objects, open uploads, bytes their parts hold)."""
    s3 = boto(ctx["s3"])
    present = {o["Key"]: o["Size"] for page in
               s3.get_paginator("list_objects_v2").paginate(Bucket=ctx["bucket"], Prefix=prefix)
               for o in page.get("Contents", [])}
    uploads = s3.list_multipart_uploads(Bucket=ctx["bucket"], Prefix=prefix).get("Uploads", [])
    held = sum(p["Size"] for u in uploads for p in s3.list_parts(
        Bucket=ctx["bucket"], Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
    return present, len(uploads), held


def kill_halfway(ctx: dict[str, Any], paths: list[str]) -> float:
    """Run the insert in a child; SIGKILL it once half the shards are journaled."""
    return kill_when_journaled([sys.executable, __file__, "--child", json.dumps([ctx, paths])],
                               ctx["redis"], "atdata_async:journal:insert-*", len(paths) // 2,
                               "insert")


def run_case(ctx: dict[str, Any], paths: list[str], repeats: int = 3) -> dict[str, Any]:
    import os

    import anyio

    sizes = [os.path.getsize(p) for p in paths]
    until_kill = kill_halfway(ctx, paths)
    present, open_uploads, held = in_s3(ctx, NAME + "/")
    complete = sum(present.values())
    missing = sum(sizes) - complete - held
    counted = Counted()
    try:
        rerun = anyio.run(insert, ctx, paths)
    finally:
        counted.undo()
    after, open_after, _ = in_s3(ctx, NAME + "/")
    import statistics

    clean, plain = [], []
    for run in range(repeats):  # alternated, medians: the machine is shared
        clean.append(anyio.run(insert, ctx, paths, f"clean{run}")["wall"])
        plain.append(anyio.run(old_insert, ctx, paths, run))
    return {"shards": len(paths), "bytes": sum(sizes), "killed_after": until_kill,
            "done_shards": len(present), "open_uploads": open_uploads, "held": held,
            "missing": missing, "rerun_bytes": counted.bytes, "rerun_wall": rerun["wall"],
            "rerun_requests": rerun["requests"], "open_after": open_after,
            "objects_after": len(after), "entries": rerun["entries"],
            "clean_wall": statistics.median(clean), "plain_wall": statistics.median(plain)}


def print_table(r: dict[str, Any]) -> None:
    ratio = r["rerun_bytes"] / r["missing"] if r["missing"] else float("nan")
    print(f"\ninsert killed about halfway, then rerun: {r['shards']} shards, "
          f"{r['bytes'] / 2**20:.1f} MiB, {PART // 1024} KiB parts")
    rows = [
        ("killed after (s)", f"{r['killed_after']:.2f}"),
        ("shards complete at the kill", f"{r['done_shards']}/{r['shards']}"),
        ("open uploads at the kill (parts held)",
         f"{r['open_uploads']} ({r['held'] / 2**10:.0f} KiB)"),
        ("missing bytes (from S3)", f"{r['missing']:,}"),
        ("rerun bytes sent", f"{r['rerun_bytes']:,}"),
        ("rerun bytes / missing",
         f"{ratio:.4f}  (before: {r['bytes'] / max(1, r['missing']):.2f})"),
        ("rerun requests", f"{r['rerun_requests']}"),
        ("rerun wall (s)", f"{r['rerun_wall']:.2f}"),
        ("after: open uploads / objects / entries",
         f"{r['open_after']} / {r['objects_after']} / {r['entries']}"),
        ("clean insert wall (s) / the old insert's (s), medians",
         f"{r['clean_wall']:.2f} / {r['plain_wall']:.2f} "
         f"({r['clean_wall'] / r['plain_wall']:.2f}x)"),
    ]
    print_rows(rows)


def main() -> None:
    a = kill_rerun_args(__doc__).parse_args()
    if a.child:
        child(*json.loads(a.child))
        return
    with tempfile.TemporaryDirectory() as tmp, \
            local_services(Path(tmp), motos=1) as started:
        paths = [str(p) for p in write_shards(Path(tmp) / "shards", a.shards, a.small_kib,
                                              a.big_every, a.big_kib)]
        s3 = started.motos[0].url
        ctx = {"redis": started.redis.url, "s3": s3, "bucket": new_bucket(s3)}
        print_table(run_case(ctx, paths))


if __name__ == "__main__":
    main()
