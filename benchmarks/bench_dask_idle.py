"""What an idle Dask cluster burns, per process, and which of its periodic sources it is.

    .venv/bin/python benchmarks/bench_dask_idle.py [--seconds 10] [--rounds 2]
                                                   [--mode runtime,env]

A ``dask scheduler`` and one ``dask worker --nthreads 8`` (nanny + worker process), each a
process of its own on 127.0.0.1, with an asynchronous Client connected (as during a
promotion). CPU (utime + stime of every thread, /proc) of the scheduler, the nanny and
the worker process over ``--seconds``, as ms of CPU per second.

``runtime``: one cluster; each variant stops some periodic callbacks in every process
that has them (``client.run`` on workers and nannies, ``run_on_scheduler``), measures,
and starts them again; every variant is paired with a baseline measured just before it.
``env``: a fresh cluster per configuration given as DASK_* environment variables (what
a copy worker can be started with), measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_dask import Cluster as DaskProcesses

# periodic callbacks by what they are (names as in each Server's periodic_callbacks)
SOURCES: dict[str, tuple[str, ...]] = {
    "profiler (worker: profile, profile-cycle)": ("profile", "profile-cycle"),
    "tick (event-loop watchdog, every process)": ("tick", "ticks"),
    "system monitor (every process)": ("monitor",),
    "memory monitor (worker, nanny)": ("memory_monitor",),
    "heartbeat (worker: heartbeat, keep-alive, find-missing)": ("heartbeat", "keep-alive",
                                                                "find-missing"),
    "scheduler checks (idle, no-workers, stealing, amm)": ("idle-timeout",
                                                            "no-workers-timeout",
                                                            "stealing", "amm"),
}

# configurations as a copy worker's environment
CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "profiler off": {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"},
    "profiler off, tick 1s": {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
                              "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s"},
    "profiler off, tick 1s, monitors 1s": {
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
        "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
        "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "1s",
        "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "1s"},
}


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / ticks


def measure(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """ms of CPU per second of each process over ``seconds``."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    return {k: (cpu_seconds(p) - before[k]) * 1000 / took for k, p in pids.items()}


def Cluster(work: Path, env: dict[str, str], nanny: bool = True) -> DaskProcesses:
    """One scheduler and one ``dask worker`` (8 slots; ``nanny=False``: no nanny), as
    bench_dask starts them."""
    cluster = DaskProcesses(work, 1, 8, env, () if nanny else ("--no-nanny",))
    cluster.nanny = nanny
    return cluster


def _switch(names: tuple[str, ...], on: bool, dask_worker=None, dask_scheduler=None) -> list:
    server = dask_worker if dask_worker is not None else dask_scheduler
    hit = []
    for name, pc in server.periodic_callbacks.items():
        if name in names or any(name.startswith(n + "-") for n in names):
            (pc.start if on else pc.stop)()
            hit.append(name)
    return hit


def _engine_pause(dask_worker) -> None:
    from atdata_async._pipeline.executor import _quiet_enter

    _quiet_enter(dask_worker)


def _engine_resume(dask_worker) -> None:
    from atdata_async._pipeline.executor import _quiet_exit

    _quiet_exit(dask_worker, grace=0)


async def pids_of(client, cluster: Cluster) -> dict[str, int]:
    worker = next(iter((await client.run(os.getpid)).values()))
    out = {"scheduler": cluster.scheduler.pid}
    if cluster.nanny:
        out["nanny"] = cluster.workers.pid
    out["worker"] = worker
    return out


async def switch_all(client, names: tuple[str, ...], on: bool, nanny: bool) -> None:
    await client.run(lambda dask_worker: _switch(names, on, dask_worker=dask_worker))
    if nanny:
        await client.run(lambda dask_worker: _switch(names, on, dask_worker=dask_worker),
                         nanny=True)
    await client.run_on_scheduler(
        lambda dask_scheduler: _switch(names, on, dask_scheduler=dask_scheduler))


def show(name: str, runs: list[dict[str, float]]) -> str:
    roles = list(runs[0])
    med = {k: statistics.median(r[k] for r in runs) for k in roles}
    cells = "  ".join(f"{k} {v:5.1f}" for k, v in med.items())
    worker_total = med.get("nanny", 0.0) + med["worker"]
    return f"  {name:<58} {cells}  | nanny+worker {worker_total:5.1f}"


async def runtime_mode(work: Path, seconds: float, rounds: int, only: str = "") -> None:
    from distributed import Client

    cluster = Cluster(work, {})
    try:
        async with Client(cluster.address(), asynchronous=True) as client:
            await client.wait_for_workers(1)
            pids = await pids_of(client, cluster)
            await asyncio.sleep(3)
            print("runtime: one cluster (default config), each source stopped in turn; "
                  "ms CPU/s, medians; each variant after its own baseline")
            everything = tuple(n for names in SOURCES.values() for n in names)
            variants = {**{f"- {k}": v for k, v in SOURCES.items()},
                        "- all of the above": everything,
                        "- all but heartbeat": tuple(n for k, v in SOURCES.items()
                                                     if not k.startswith("heartbeat")
                                                     for n in v)}
            variants["DaskExecutor's pause (worker: profiler off, tick 1s)"] = ()
            for name, names in variants.items():
                if only and only not in name:
                    continue
                base, off = [], []
                for _ in range(rounds):
                    base.append(await asyncio.to_thread(measure, pids, seconds))
                    if names:
                        await switch_all(client, names, False, True)
                    else:
                        await client.run(_engine_pause)
                    await asyncio.sleep(0.5)
                    off.append(await asyncio.to_thread(measure, pids, seconds))
                    if names:
                        await switch_all(client, names, True, True)
                    else:
                        await client.run(_engine_resume)
                    await asyncio.sleep(0.5)
                print(show("baseline", base))
                print(show(name, off))
    finally:
        cluster.stop()


async def env_mode(work: Path, seconds: float, rounds: int) -> None:
    from distributed import Client

    print("env: a fresh cluster per configuration (environment of scheduler and worker); "
          "ms CPU/s, medians")
    configs = [(k, v, True) for k, v in CONFIGS.items()]
    configs.append(("default, --no-nanny", {}, False))
    configs.append(("profiler off, tick 1s, monitors 1s, --no-nanny",
                    CONFIGS["profiler off, tick 1s, monitors 1s"], False))
    for name, env, nanny in configs:
        cluster = Cluster(work, env, nanny)
        try:
            async with Client(cluster.address(), asynchronous=True) as client:
                await client.wait_for_workers(1)
                pids = await pids_of(client, cluster)
                await asyncio.sleep(3)
                runs = [await asyncio.to_thread(measure, pids, seconds) for _ in range(rounds)]
                print(show(name, runs))
                if env:
                    print("    " + " ".join(f"{k}={v}" for k, v in env.items()))
        finally:
            cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mode", default="runtime,env")
    ap.add_argument("--only", default="", help="runtime: only the variants naming this")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-dask-idle-"))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, "
          f"{os.cpu_count()} cores")
    modes = args.mode.split(",")
    if "runtime" in modes:
        asyncio.run(runtime_mode(work, args.seconds, args.rounds, args.only))
    if "env" in modes:
        asyncio.run(env_mode(work, args.seconds, args.rounds))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
