"""The Dask engine against the local task group: the copy phase of one promotion.

    .venv/bin/python benchmarks/bench_dask.py [--shards 256] [--kib 64] [--workers 1,2,4]
                                              [--repeat 3] [--before] [--no-control]
                                              [--moto keep-alive|moto_server]

Starts its own redis-server and two moto S3 servers, each a process of its own on
127.0.0.1 (so that neither engine shares a GIL with S3; moto's app served with keep-alive
by default, as real S3 servers do: moto_server closes every connection, and then a
quarter of a copy's client CPU is TCP connects and closes), puts N shards in one, and
copies them into the other (streamed cross-endpoint, journaled) with the promotion's own
shard step: in this process's task group, and on a Dask cluster (DaskExecutor) whose
scheduler and workers are processes of their own (``dask scheduler``, ``dask worker
--nworkers N``: a LocalCluster would run its scheduler on a thread of this process,
competing with the coordinator for its GIL), paired: per worker count, one warm-up run on
the cluster, then ``--repeat`` rounds of (local, control, cluster), so that all see the
same machine. The control is the local task group split over N plain processes (no
Dask), each with its share of the shards and of the concurrency: what N processes on
these cores cost by themselves, so that the cluster over the control is what the engine
adds. Medians; "vs local" is over the local median of the same rounds.
Wall and CPU are those of the copy phase alone (set-up and the byte checks after are
left out), CPU and context switches per process too: per shard, of the coordinator, each
moto, redis, the scheduler, the workers and the control's processes.
The coordinator groups the shards and keeps ``in_flight(concurrency)`` of them at the
cluster, as a promotion does; ``--before`` adds a cluster run per round with one task per
shard (``group_size=1``, the engine before issue 13's groups), so both are measured side
by side.
The PDS writes are the same in both and are left out. Every copy is checked byte for
byte (sha256) afterwards and no upload may stay open.
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
# the cluster's configuration, in the environment of `dask scheduler` and `dask worker`:
# "recommended" is docs/scale-out.md's for copy workers (their periodic callbacks at most
# once a second, the worker's profiler off; benchmarks/bench_dask_idle.py measures each)
DASK_CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "recommended": {
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
        "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
        "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "1s",
        "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "1s",
    },
}
CLUSTER_ROLES = ("scheduler", "workers")


def creds(url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT": url, "AWS_ACCESS_KEY_ID": "bench-key",
            "AWS_SECRET_ACCESS_KEY": "bench-s"}


async def idle_rate(client, seconds: float, quiet: bool) -> dict[str, float]:
    """CPU seconds per second the cluster's processes (scheduler, nannies, workers) burn
    idle, measured just before a copy, in the state they copy in: with the engine's
    quieting (``quiet``) applied to the workers meanwhile, as during a copy."""
    if seconds <= 0:
        return {}
    if quiet:
        await client.run(_quiet_on)
    try:
        before, t0 = tree_cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        after, took = tree_cpu(), time.perf_counter() - t0
    finally:
        if quiet:
            await client.run(_quiet_off)
    return {k: (after.get(k, 0.0) - before.get(k, 0.0)) / took for k in CLUSTER_ROLES}


def _quiet_on(dask_worker) -> None:
    from atdata_async._pipeline.executor import _quiet_enter

    _quiet_enter(dask_worker)


def _quiet_off(dask_worker) -> None:
    from atdata_async._pipeline.executor import _quiet_exit

    _quiet_exit(dask_worker, grace=0)


async def copy_phase(redis_url: str, src_url: str, dst_url: str, src_bucket: str,
                     keys: list[str], sums: dict[str, str], executor, concurrency: int,
                     idle: dict[str, float] | None = None, processes: int = 0) -> dict:
    """One copy phase: in this process's task group, on the cluster (``executor``), or
    (``processes``, the control) in that many processes of plain local task groups, each
    with its share of the shards and of ``concurrency``."""
    from atdata_async._backends.http_reader import HttpShardReader
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

        commands_before = await redis_commands(index)
        if processes:
            limit = max(1, concurrency // processes)
            wall, cpu, settled = await split_phase(
                processes, (redis_url, src_url, dst_url, src_bucket, dst_bucket, pkey,
                            journal.epoch),
                list(enumerate(plans)), limit)
        else:
            before = tree_cpu()
            started = time.perf_counter()
            async with HttpShardReader() as http:
                flusher = asyncio.ensure_future(journal.run_flusher())

                async def one(item):
                    i, plan = item
                    if remote is not None:
                        return await settle_elsewhere(remote, i, plan, _resume(), logs[i],
                                                      tracker)
                    return await _settle_shard(plan, source, http, dest, True, tracker,
                                               logs[i], _resume())

                limit = concurrency  # the local task group's
                if remote is not None:  # as promote.py plans and keeps them
                    await remote.plan([(i, p, _resume()) for i, p in enumerate(plans)],
                                      journal)
                    limit = await remote.in_flight(concurrency)
                settled = await run_per_shard([p.source_url for p in plans],
                                              list(enumerate(plans)), one, limit, tracker)
                if remote is not None:
                    await remote.sweep([p.dest_key for p in plans])
                wall = time.perf_counter() - started
                cpu = window_cpu(before, tree_cpu(), executor is not None)
                flusher.cancel()
            await journal.flush()
        commands = await redis_commands(index) - commands_before - 1  # less the INFO
        await journal.release()
        ok = 0
        for plan, got in zip(plans, settled, strict=True):
            body = await dest.get_bytes(dest.url(plan.dest_key))
            ok += hashlib.sha256(body).hexdigest() == sums[plan.source_url.rsplit("/", 1)[1]] \
                == got.sha256
        uploads = await dest.list_multipart_uploads()
        # moto keeps every object in memory: each run's copy goes again (a 1 GiB run
        # repeated 30 times outgrew this machine's RAM)
        await dest.delete_keys([p.dest_key for p in plans])
        await s3.delete_bucket(Bucket=dst_bucket)
        group = remote.group_size if remote is not None else 1
        # the engine-attributable CPU: the total less what the cluster's processes burn
        # idle over the same wall time (measured just before); never the total itself
        attributable = None
        if idle:
            attributable = cpu["cpu"] - sum(rate * wall for rate in idle.values())
        return {"wall": wall, "ok": ok, "uploads": len(uploads), "limit": limit,
                "group": group, "attributable": attributable, "commands": commands,
                "idle": sum(idle.values()) if idle else None, **cpu}


async def redis_commands(index) -> int:
    """Commands Redis has run so far (INFO commandstats, every client)."""
    stats = await index.redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))


ROLES: dict[int, str] = {}  # pid of a direct child -> what it is (moto src, scheduler, ...)


def tree_cpu() -> dict[str, float]:
    """CPU seconds used so far by this process and every descendant (moto, redis, the
    Dask scheduler and workers), per role (a direct child's name in ROLES, its
    descendants counted with it; this process is "coordinator") and in all ("total"):
    less at the mercy of a shared machine than wall time. Also each role's context
    switches so far (``switches`` + role): a process woken for fewer events at a time
    pays its cold caches more often."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    me = os.getpid()
    out: dict[str, float] = {"total": 0.0}
    for pid, cpu in used.items():
        p, child = pid, pid
        while p > 1 and p != me:
            child, p = p, parents.get(p, 0)
        if p == me:
            role = "coordinator" if pid == me else ROLES.get(child, "other")
            out[role] = out.get(role, 0.0) + cpu
            out["total"] += cpu
            out[SWITCHES + role] = out.get(SWITCHES + role, 0.0) + _switches(pid)
    return out


SWITCHES = "switches "  # tree_cpu's keys of context switches, per role


def _switches(pid: int) -> int:
    """A process's context switches so far (voluntary and not, every thread's: a Dask
    worker's comm and offload threads too), 0 if it is gone."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)
    return total


def window_cpu(before: dict[str, float], after: dict[str, float],
               cluster: bool) -> dict:
    """The copy window's CPU seconds, per role and in all, and context switches per role.
    A local run leaves the idle cluster's scheduler and workers out of its total (they
    exist only for the cluster's runs; shown apart as "idle")."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if k != "total"}
    roles = {k: v for k, v in delta.items() if not k.startswith(SWITCHES)}
    switches = {k[len(SWITCHES):]: v for k, v in delta.items() if k.startswith(SWITCHES)}
    if not cluster:  # shown apart: what the idle cluster burns meanwhile (heartbeats, ...)
        roles = {(f"idle {k}" if k in ("scheduler", "workers") else k): v
                 for k, v in roles.items()}
    return {"cpu": sum(v for k, v in roles.items() if not k.startswith("idle ")),
            "roles": roles, "switches": switches}


async def split_phase(processes: int, where: tuple, items: list, limit: int
                      ) -> tuple[float, dict, list]:
    """The control for the cluster's runs: the same copies by plain local task groups in
    ``processes`` processes of their own (no Dask), each with a contiguous share of the
    shards and ``limit`` slots, started together once each is ready (imports, clients):
    what splitting the work over processes on these cores costs by itself. Returns the
    window's wall, CPU (window_cpu) and the settled plans in order."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    shares = [items[k::processes] for k in range(processes)]
    pipes, procs = [], []
    for share in shares:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_split_child, args=(theirs, where, share, limit))
        proc.start()
        ROLES[proc.pid] = "local processes"
        pipes.append(mine)
        procs.append(proc)
    try:
        for pipe in pipes:
            await asyncio.to_thread(_expect, pipe, "ready")
        before = tree_cpu()
        started = time.perf_counter()
        for pipe in pipes:
            pipe.send("go")
        done = [await asyncio.to_thread(_expect, pipe, "done") for pipe in pipes]
        wall = time.perf_counter() - started
        cpu = window_cpu(before, tree_cpu(), False)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    settled = dict(pair for got in done for pair in got[1])
    return wall, cpu, [settled[i] for i, _ in items]


def _expect(pipe, what: str):
    got = pipe.recv()
    if isinstance(got, BaseException):
        raise got
    assert got == what or got[0] == what, got
    return got


def _split_child(pipe, where: tuple, share: list, limit: int) -> None:
    try:
        asyncio.run(_split_copy(pipe, where, share, limit))
    except BaseException as exc:  # to the parent, which raises it
        pipe.send(RuntimeError(f"{type(exc).__name__}: {exc}"))


async def _split_copy(pipe, where: tuple, share: list, limit: int) -> None:
    """One process of split_phase: its share copied as the local task group copies."""
    from atdata_async._backends.http_reader import HttpShardReader
    from atdata_async._backends.redis_index import LocalIndex
    from atdata_async._backends.s3_store import S3DataStore
    from atdata_async._backends.tasks import run_per_shard
    from atdata_async._model.progress import ProgressTracker
    from atdata_async._pipeline.journal import PromotionJournal
    from atdata_async._pipeline.promote import _settle_shard

    redis_url, src_url, dst_url, src_bucket, dst_bucket, pkey, epoch = where
    async with S3DataStore(creds(dst_url), bucket=dst_bucket) as dest, \
            S3DataStore(creds(src_url), bucket=src_bucket) as source, \
            LocalIndex(redis_url) as index, HttpShardReader() as http:
        journal = PromotionJournal(index, pkey, epoch)  # as a worker's
        logs = {i: journal.shard(i, p, _resume()) for i, p in share}
        tracker = ProgressTracker(None, len(share), 0)
        await dest.client(), await source.client()
        await index.redis.ping()
        pipe.send("ready")
        await asyncio.to_thread(pipe.recv)
        flusher = asyncio.ensure_future(journal.run_flusher(lease=False))

        async def one(item):
            i, plan = item
            return i, await _settle_shard(plan, source, http, dest, True, tracker, logs[i],
                                          _resume())

        got = await run_per_shard([p.source_url for _, p in share], share, one, limit,
                                  tracker)
        flusher.cancel()
        await journal.flush()
        pipe.send(("done", got))


def _resume():
    from atdata_async._pipeline.journal import ShardResume

    return ShardResume()


class Cluster:
    """``dask scheduler`` and ``dask worker --nworkers n`` as processes of their own,
    stopped by their PIDs."""

    def __init__(self, work: Path, n: int, threads: int, env: dict[str, str],
                 worker_args: tuple[str, ...] = ()) -> None:
        import subprocess

        self.file = work / f"scheduler-{n}-{uuid.uuid4().hex[:6]}.json"
        cli = [sys.executable, "-m"]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                 "env": {**os.environ, **env}}
        self.scheduler = subprocess.Popen(
            [*cli, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                   "--no-dashboard", "--scheduler-file", str(self.file)], **quiet)
        self.workers = subprocess.Popen(
            [*cli, "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
                   "--nworkers", str(n), "--nthreads", str(threads), "--host", "127.0.0.1",
                   "--no-dashboard", *worker_args], **quiet)
        self.n = n
        ROLES[self.scheduler.pid] = "scheduler"
        ROLES[self.workers.pid] = "workers"

    def address(self) -> str:
        import json

        deadline = time.monotonic() + 120
        while not (self.file.exists() and self.file.read_text()):
            if time.monotonic() > deadline:
                raise RuntimeError("the dask scheduler did not start")
            time.sleep(0.1)
        return json.loads(self.file.read_text())["address"]

    def stop(self) -> None:
        for proc in (self.workers, self.scheduler):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except Exception:
                    proc.kill()
                    proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=256)
    ap.add_argument("--kib", type=int, default=64, help="shard size")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="paired rounds per worker count")
    ap.add_argument("--before", action="store_true",
                    help="also run the cluster with one task per shard (before groups)")
    ap.add_argument("--dask-config", choices=sorted(DASK_CONFIGS), default="recommended",
                    help="the cluster processes' environment (docs/scale-out.md)")
    ap.add_argument("--no-quiet", action="store_true",
                    help="DaskExecutor(quiet_workers=False): the workers' profiler and "
                         "watchdog left as configured while they copy")
    ap.add_argument("--moto", choices=("keep-alive", "moto_server"), default="keep-alive",
                    help="moto's app served with keep-alive (waitress, as real S3 servers "
                         "do) or by moto_server, which closes every connection")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the control run per round: the local task group split over "
                         "as many plain processes as the cluster has workers (no Dask)")
    ap.add_argument("--idle-seconds", type=float, default=3.0,
                    help="the cluster's idle CPU measured this long before each cluster "
                         "run (for the engine-attributable column; 0: not measured)")
    args = ap.parse_args()
    quiet = not args.no_quiet
    load_before = os.getloadavg()
    os.environ.update(SECRET_ENV)  # the workers' own environment (LocalCluster inherits it)

    import statistics

    import boto3
    from distributed import Client

    from atdata_async._pipeline.executor import CredentialSource, DaskExecutor
    from tests import services

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    redis = services.start_redis(work)
    keep_alive = args.moto == "keep-alive"
    src = services.start_moto(in_process=False, keep_alive=keep_alive)
    dst = services.start_moto(in_process=False, keep_alive=keep_alive)
    for service, role in ((redis, "redis"), (src, "moto src"), (dst, "moto dst")):
        if service.proc is not None:
            ROLES[service.proc.pid] = role
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

        def local() -> dict:
            return asyncio.run(copy_phase(redis.url, src.url, dst.url, bucket, keys, sums,
                                          None, args.concurrency))

        local()  # warm: imports, S3 clients, moto's first requests
        locals_all: list[dict] = []
        rows = []
        for n in [int(x) for x in args.workers.split(",") if x]:
            cluster = Cluster(work, n, max(1, args.concurrency // n),
                              DASK_CONFIGS[args.dask_config])
            try:
                address = cluster.address()

                async def on_cluster(address: str = address, n: int = n,
                                     group: int | None = None) -> dict:
                    async with Client(address, asynchronous=True) as dc:
                        await dc.wait_for_workers(n)
                        ex = DaskExecutor(dc, credentials=CredentialSource(env_prefix="BENCH_"),
                                          group_size=group, quiet_workers=quiet)
                        idle = await idle_rate(dc, args.idle_seconds, quiet)
                        return await copy_phase(redis.url, src.url, dst.url, bucket, keys,
                                                sums, ex, args.concurrency, idle)

                asyncio.run(on_cluster())  # warm: worker imports, S3 clients
                paired_local, paired_dask, paired_plain, paired_split = [], [], [], []
                for _ in range(args.repeat):
                    paired_local.append(local())
                    if not args.no_control:
                        paired_split.append(asyncio.run(copy_phase(
                            redis.url, src.url, dst.url, bucket, keys, sums, None,
                            args.concurrency, processes=n)))
                    if args.before:
                        paired_plain.append(asyncio.run(on_cluster(group=1)))
                    paired_dask.append(asyncio.run(on_cluster()))
            finally:
                cluster.stop()
            locals_all += paired_local
            rows.append((n, paired_local, paired_dask, paired_plain, paired_split))

        def median(runs: list[dict], what: str = "wall") -> float:
            return statistics.median(r[what] for r in runs)

        def checked(runs: list[dict]) -> tuple[int, int]:
            return min(r["ok"] for r in runs), max(r["uploads"] for r in runs)

        print(f"{args.shards} shards x {args.kib} KiB ({total:.0f} MiB), cross-endpoint "
              f"streamed copy, concurrency {args.concurrency}, {os.cpu_count()} cores, moto "
              f"in its own processes ({args.moto}); median of {args.repeat} paired round(s)")
        print(f"load average (1/5/15 min) at the start {load_before[0]:.2f} "
              f"{load_before[1]:.2f} {load_before[2]:.2f}, at the end "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        config = DASK_CONFIGS[args.dask_config]
        print(f"cluster config: {args.dask_config} "
              f"({' '.join(f'{k}={v}' for k, v in config.items()) or 'Dask defaults'}); "
              f"DaskExecutor(quiet_workers={quiet})")
        print("wall: median wall time of the copy phase; CPU: median CPU seconds in that "
              "window of every process involved (this one, moto, redis, and on the cluster "
              "the scheduler and workers; the idle cluster is left out of local runs); vs "
              "local: over the local median of the same rounds. THE TOTAL CPU IS THE "
              "NUMBER THAT COUNTS.")
        print("attrib. CPU (a separate column, not the total): the cluster run's CPU less "
              "its scheduler's and workers' idle CPU over the same wall time (idle rate "
              f"measured {args.idle_seconds:g} s just before, workers in the state they copy "
              "in); idle: that rate, CPU s per s")
        print(f"{'engine':<28} {'workers':>7} {'wall s':>8} {'MiB/s':>7} {'vs local':>9} "
              f"{'CPU s':>7} {'vs local':>9} {'runs (s)':>20} {'identical':>10} "
              f"{'open uploads':>12} {'| attrib. CPU s':>15} {'vs local':>9} {'idle':>6}")

        def row(name: str, n: str, runs: list[dict], base: list[dict]) -> None:
            wall, cpu = median(runs), median(runs, "cpu")
            ok, uploads = checked(runs)
            each = " ".join(f"{r['wall']:.2f}" for r in runs)
            extra = ""
            if all(r.get("attributable") is not None for r in runs):
                attrib = median(runs, "attributable")
                extra = (f" | {attrib:>13.2f} {attrib / median(base, 'cpu'):>8.3f}x "
                         f"{median(runs, 'idle'):>6.3f}")
            print(f"{name:<28} {n:>7} {wall:>8.2f} {total / wall:>7.1f} "
                  f"{wall / median(base):>8.3f}x {cpu:>7.2f} {cpu / median(base, 'cpu'):>8.3f}x "
                  f"{each:>20} {ok:>5}/{args.shards:<4} {uploads:>12}{extra}")

        row("local task group", "-", locals_all, locals_all)
        for n, paired_local, paired_dask, paired_plain, paired_split in rows:
            if paired_split:
                row(f"local, {n} process(es)", str(n), paired_split, paired_local)
            for runs in (paired_plain, paired_dask):
                if runs:
                    row(f"dask, {runs[0]['group']}/task, {runs[0]['limit']} in flight", str(n),
                        runs, paired_local)

        def per_shard(name: str, runs: list[dict], what: str = "roles",
                      unit: float = 1000.0) -> str:
            roles = sorted({k for r in runs for k in r[what]})
            ms = {k: statistics.median(r[what].get(k, 0.0) for r in runs) * unit
                  / args.shards for k in roles}
            return f"  {name:<26} " + "  ".join(f"{k} {v:.2f}" for k, v in ms.items())

        def over(runs: list[dict], base: list[dict]) -> str:
            """Each run over the base run of its own round (just before it)."""
            ratios = [r["cpu"] / b["cpu"] for r, b in zip(runs, base, strict=True)]
            return (" ".join(f"{x:.3f}" for x in ratios)
                    + f" (median {statistics.median(ratios):.3f}x)")

        labelled = []  # (label, runs, the local runs of its rounds, the controls)
        for n, paired_local, paired_dask, paired_plain, paired_split in rows:
            if paired_split:
                labelled.append((f"local, {n} process(es)", paired_split, paired_local, []))
            for runs in (paired_plain, paired_dask):
                if runs:
                    labelled.append((f"dask {n} worker(s), {runs[0]['group']}/task", runs,
                                     paired_local, paired_split))
        print("CPU s of each run (in round order; the local runs of every worker count):")
        print(f"  {'local task group':<26} " + " ".join(f"{r['cpu']:.2f}" for r in locals_all))
        for label, runs, paired_local, _ in labelled:
            print(f"  {label:<26} " + " ".join(f"{r['cpu']:.2f}" for r in runs)
                  + "   over its round's local run: " + over(runs, paired_local))
        if any(split for *_, split in labelled):
            print("The engine over its control (total CPU; the same copies split over as "
                  "many plain processes as workers, no Dask, in the same rounds):")
            for label, runs, _, paired_split in labelled:
                if paired_split:
                    print(f"  {label:<26} {median(runs, 'cpu') / median(paired_split, 'cpu'):.3f}x"
                          f" of the control's median; per round " + over(runs, paired_split))
        print("Redis commands per shard in the copy window (every client; medians): "
              + f"local {median(locals_all, 'commands') / args.shards:.2f}; "
              + "; ".join(f"{label} {median(runs, 'commands') / args.shards:.2f}"
                          for label, runs, *_ in labelled))
        print("CPU ms per shard by process (medians):")
        print(per_shard("local task group", locals_all))
        for label, runs, *_ in labelled:
            print(per_shard(label, runs))
        print("Context switches per shard by process (medians; voluntary and not):")
        print(per_shard("local task group", locals_all, "switches", 1.0))
        for label, runs, *_ in labelled:
            print(per_shard(label, runs, "switches", 1.0))
    finally:
        src.stop()
        dst.stop()
        redis.stop()


if __name__ == "__main__":
    main()
