"""Where a warm same-endpoint promotion's time goes: phases of one promote_to_atmosphere
call (timed inside one warm process), beside s5cmd's whole process, on the same seeded
objects and cluster (issue 10, the 1,024 x 1 MiB same-endpoint target).

    flock /work/bench.lock .venv/bin/python benchmarks/probe_same_endpoint.py \\
        --attach /work/rgw.info --case 1024x1 --repeat 3

Each round: s5cmd (its own process, /usr/bin/time), then one warm call in a child that
imported, logged in and opened its clients first (as bench_s3_servers' "ours, warm");
the child prints each phase (start, end, CPU) relative to the call's start, the
CopyObjects' first start and last end, and the TCP connections it opened to the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import local_services
from benchmarks.bench_s3_servers import (
    Servers,
    empty_bucket,
    find_s5cmd,
    index_entry,
    seed_case,
    timed,
)


def child(p: dict) -> dict:
    import resource

    if p.get("root"):  # another checkout's library (an A/B in the same rounds)
        sys.path.insert(0, p["root"])

    import anyio

    from atdata_async._backends import s3_light
    from atdata_async._backends.redis_index import LocalIndex as _LI
    from atdata_async._pipeline import journal as journal_mod
    from atdata_async._pipeline import promote as promote_mod
    from atdata_async.atmosphere import AtmosphereClient
    from atdata_async.local import LocalIndex, S3DataStore
    from atdata_async.promote import promote_to_atmosphere

    t0 = [0.0]
    phases: list[tuple[str, float, float, float]] = []
    copies = {"n": 0, "first": None, "last": 0.0}

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def timed_async(owner, name, label=None):
        original = getattr(owner, name)

        async def wrapper(*args, **kwargs):
            s, c = time.perf_counter(), cpu()
            try:
                return await original(*args, **kwargs)
            finally:
                phases.append((label or name, s - t0[0], time.perf_counter() - t0[0],
                               cpu() - c))
        setattr(owner, name, wrapper)

    def timed_sync(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            s, c = time.perf_counter(), cpu()
            try:
                return original(*args, **kwargs)
            finally:
                phases.append((name, s - t0[0], time.perf_counter() - t0[0], cpu() - c))
        setattr(owner, name, wrapper)

    timed_sync(promote_mod, "plan_promotion")
    timed_async(_LI, "get_schema")
    timed_async(promote_mod, "resolve_source")
    timed_async(promote_mod, "_open_journal")
    timed_async(journal_mod.PromotionJournal, "_take_lease")
    timed_async(promote_mod, "run_per_shard")
    timed_async(promote_mod.SchemaRegistry, "_load", "schema listing")
    timed_async(_LI, "record_key_for")
    timed_async(promote_mod, "put_waiting")
    timed_async(journal_mod.PromotionJournal, "publish")
    timed_async(journal_mod.PromotionJournal, "release")
    timed_sync(promote_mod, "validate_dataset")
    timed_sync(promote_mod, "to_json")
    flushes = {"n": 0, "t": 0.0}
    original_flush = journal_mod.PromotionJournal.flush

    async def flush(self):
        s = time.perf_counter()
        try:
            return await original_flush(self)
        finally:
            flushes["n"] += 1
            flushes["t"] += time.perf_counter() - s
    journal_mod.PromotionJournal.flush = flush

    original_copy = s3_light.LightRequests.copy

    async def copy(self, *args, **kwargs):
        s = time.perf_counter() - t0[0]
        if copies["first"] is None:
            copies["first"] = s
        try:
            return await original_copy(self, *args, **kwargs)
        finally:
            copies["n"] += 1
            copies["last"] = time.perf_counter() - t0[0]
    s3_light.LightRequests.copy = copy

    import gc

    gcs = {"n": [0, 0, 0], "t": [0.0, 0.0, 0.0], "start": 0.0}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gcs["start"] = time.perf_counter()
        else:
            g = info["generation"]
            gcs["n"][g] += 1
            gcs["t"][g] += time.perf_counter() - gcs["start"]

    def connections() -> int:
        port = p["src"]["AWS_ENDPOINT"].rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-tnpH", "state", "all", f"( dport = :{port} )"],
                             capture_output=True, text=True).stdout
        return sum(1 for ln in out.splitlines() if f"pid={os.getpid()}," in ln)

    async def main() -> dict:
        limits = {"max_server_copies": p["copies"]} if p.get("copies") else {}
        source = S3DataStore(p["src"], bucket=p["src_bucket"], **limits)
        dest = S3DataStore(p["dst"], bucket=p["dst_bucket"], **limits)
        async with source, dest, LocalIndex(p["redis"], data_store=source) as index, \
                AtmosphereClient(p["pds"]) as client:
            await client.login(session=p["session"])
            entry = await index.get_entry_by_name(p["entry"])
            await source.client()
            await dest.client()
            await index.get_schema(entry.schema_ref)
            await client.describe_repo()
            phases.clear()
            conns0 = connections()
            profiler = None
            if p.get("profile"):
                import cProfile
                profiler = cProfile.Profile()
            if p.get("freeze"):
                gc.freeze()
            gc.callbacks.append(on_gc)
            c0 = cpu()
            t0[0] = time.perf_counter()
            if profiler:
                profiler.enable()
            await promote_to_atmosphere(entry, index, client, data_store=dest,
                                        name=f"probe-{uuid.uuid4().hex[:6]}", **limits)
            if profiler:
                profiler.disable()
                profiler.dump_stats(p["profile"])
            wall = time.perf_counter() - t0[0]
            gc.callbacks.remove(on_gc)
            return {"gc": gcs, "call_wall": wall, "call_cpu": cpu() - c0, "phases": phases,
                    "copies": copies, "flushes": flushes,
                    "conns_before": conns0, "conns_after": connections(),
                    "requests": source.request_count + dest.request_count}

    return anyio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attach", default="/work/rgw.info")
    ap.add_argument("--case", default="1024x1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--via", default=None, help="an endpoint URL the variants use instead "
                    "of the gateway's (a logging proxy in front of it)")
    ap.add_argument("--variants", default="s5cmd,ours")
    ap.add_argument("--base", default=None, help="the checkout variant 'base' imports")
    ap.add_argument("--freeze", action="store_true", help="gc.freeze() before the call")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(Path(a.child).read_text()))))
        return
    s5cmd = find_s5cmd()
    shards, mib = a.case.split("x")
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp_name:
        tmp = Path(tmp_name)
        with Servers("radosgw", tmp, a.attach) as servers, \
                local_services(tmp, pds=True) as started:
            src_bucket = f"src-{uuid.uuid4().hex[:8]}"
            seeded = seed_case(servers, int(shards), float(mib), src_bucket)
            index_entry(started.redis.url, "probe", seeded)
            print(f"# seeded; load {os.getloadavg()}", file=sys.stderr)
            names = a.variants.split(",")
            rows: dict[str, list[dict]] = {n: [] for n in names}
            try:
                for rep in range(a.repeat):
                    for variant in names:
                        dst = f"dst-{uuid.uuid4().hex[:8]}"
                        servers.boto(0).create_bucket(Bucket=dst)
                        cpu0, req0 = servers.cpu(), servers.requests()
                        aux0 = aux_cpu(started)
                        try:
                            if variant == "s5cmd":
                                env = {**os.environ, "AWS_ACCESS_KEY_ID": servers.key,
                                       "AWS_SECRET_ACCESS_KEY": servers.secret,
                                       "AWS_REGION": "us-east-1"}
                                r = timed([s5cmd, "--endpoint-url", a.via or servers.endpoints[0],
                                           "cp", f"s3://{src_bucket}/data/*",
                                           f"s3://{dst}/s5cmd/"], env)
                            else:
                                creds = servers.creds(0)
                                if a.via:
                                    creds["AWS_ENDPOINT"] = a.via
                                p = {"src": creds, "dst": creds,
                                     "src_bucket": src_bucket, "dst_bucket": dst,
                                     "redis": started.redis.url, "pds": started.pds.url,
                                     "session": started.session, "entry": "probe",
                                     "root": a.base if variant.startswith("base") else None,
                                     "copies": (int(variant.split("@")[1]) if "@" in variant
                                                else None),
                                     "freeze": a.freeze,
                                     "profile": (f"{a.profile}-{rep}.pstats"
                                                 if a.profile else None)}
                                params = tmp / "p.json"
                                params.write_text(json.dumps(p))
                                params.chmod(0o600)
                                r = timed([sys.executable, __file__, "--child", str(params)],
                                          dict(os.environ))
                        finally:
                            cpu1, req1 = servers.cpu(), servers.requests()
                            aux1 = aux_cpu(started)
                            empty_bucket(servers.boto(0), dst)
                        r["server_cpu"], r["gw_requests"] = cpu1 - cpu0, req1 - req0
                        r["redis_cpu"], r["pds_cpu"] = aux1[0] - aux0[0], aux1[1] - aux0[1]
                        r["load"] = os.getloadavg()[0]
                        rows[variant].append(r)
                        report(variant, rep, r)
            finally:
                empty_bucket(servers.boto(0), src_bucket)
            for name, got in rows.items():
                key = "wall" if name == "s5cmd" else "call_wall"
                cpu = "cpu" if name == "s5cmd" else "call_cpu"
                print(f"median {name:<6} {statistics.median(x[key] for x in got):.2f} s "
                      f"(runs {', '.join(f'{x[key]:.2f}' for x in got)}), CPU "
                      f"{statistics.median(x[cpu] for x in got):.2f} s, server CPU "
                      f"{statistics.median(x['server_cpu'] for x in got):.2f} s")


def aux_cpu(started) -> tuple[float, float]:
    """CPU seconds redis-server and the PDS (with its children) have used so far."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(x) for x in fields[11:15]) / tick

    def tree(pid: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        kids = [int(x) for x in out.stdout.split()]
        return [pid] + [k for kid in kids for k in tree(kid)]

    return (of(started.redis.proc.pid),
            sum(of(pid) for pid in tree(started.pds.proc.pid)))


def report(variant: str, rep: int, r: dict) -> None:
    if variant == "s5cmd":
        print(f"run {rep + 1} s5cmd: wall {r['wall']:.2f} cpu {r['cpu']:.2f} server "
              f"{r['server_cpu']:.2f} requests {r['gw_requests']} load {r['load']:.1f}")
        return
    c = r["copies"]
    print(f"run {rep + 1} {variant}: call {r['call_wall']:.2f} cpu {r['call_cpu']:.2f} server "
          f"{r['server_cpu']:.2f} requests {r['gw_requests']} load {r['load']:.1f}; "
          f"copies {c['n']} from {c['first']:.3f} to {c['last']:.3f}; journal flushes "
          f"{r['flushes']['n']} ({r['flushes']['t']:.3f} s); connections "
          f"{r['conns_before']} -> {r['conns_after']}; redis CPU {r['redis_cpu']:.2f}, PDS "
          f"CPU {r['pds_cpu']:.2f}; gc runs {r['gc']['n']} "
          f"({', '.join(f'{t:.3f}' for t in r['gc']['t'])} s)")
    for name, s, e, cpu in sorted(r["phases"], key=lambda x: x[1]):
        print(f"    {name:<18} {s:7.3f} -> {e:7.3f}  ({e - s:6.3f} s, cpu {cpu:.3f})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
