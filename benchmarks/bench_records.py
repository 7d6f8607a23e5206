"""Record writes on the reference PDS: one createRecord per record vs applyWrites.

    .venv/bin/python benchmarks/bench_records.py [--records 400]

Prints per-call latency (median, p95) and records/s for each way, measured in one run
against a fresh PDS on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from atdata_async.atmosphere import AtmosphereClient, next_tid
from benchmarks._common import local_services

COLLECTION = "com.example.bench.record"


async def measure(pds_url: str, account: dict, records: int, batch: int) -> list[dict]:
    rows = []
    async with AtmosphereClient(pds_url) as client:
        await client.login(account["handle"], account["password"])
        latencies = []
        start = time.perf_counter()
        for i in range(records):
            t = time.perf_counter()
            await client.create_record(COLLECTION, {"i": i, "way": "createRecord"})
            latencies.append(time.perf_counter() - t)
        rows.append(("createRecord x1", time.perf_counter() - start, latencies, records))
        writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION,
                   "rkey": next_tid(), "value": {"i": i, "way": "applyWrites"}}
                  for i in range(records)]
        latencies = []
        start = time.perf_counter()
        for lo in range(0, records, batch):
            t = time.perf_counter()
            await client.apply_writes(writes[lo:lo + batch])
            latencies.append(time.perf_counter() - t)
        rows.append((f"applyWrites x{batch}", time.perf_counter() - start, latencies, records))
    return [{"way": w, "wall": wall, "median_ms": 1000 * statistics.median(lat),
             "p95_ms": 1000 * sorted(lat)[int(0.95 * (len(lat) - 1))],
             "records_per_s": n / wall} for w, wall, lat, n in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--batch", type=int, default=200)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            local_services(Path(tmp), redis=False, pds=True) as started:
        rows = anyio.run(measure, started.pds.url, started.account, a.records, a.batch)
    print(f"\n{a.records} records on the reference PDS")
    print(f"{'way':<18} {'wall s':>7} {'per call ms (median)':>21} {'p95 ms':>7} {'records/s':>10}")
    for r in rows:
        print(f"{r['way']:<18} {r['wall']:>7.2f} {r['median_ms']:>21.1f} {r['p95_ms']:>7.1f} "
              f"{r['records_per_s']:>10.0f}")
    print(f"applyWrites is {rows[1]['records_per_s'] / rows[0]['records_per_s']:.1f}x faster "
          "per record")


if __name__ == "__main__":
    main()
